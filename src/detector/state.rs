//! One camera's detector as the watch pipeline drives it: a trait, so the worker does not care
//! which detector runs, and the one factory that picks it from the camera's plan.

use super::camera::{CameraDetector, FrameInput, Observation};
use super::cascade::ResponseNeed;
use super::event::Event;
use super::score::{FrameScores, jump, kl_divergence};
use super::tracker::Media;
use crate::watch::CameraPlan;

/// One camera's detector, as the watch pipeline drives it.
pub trait CameraState: Send {
    /// Scores one frame and advances the rule; `media` renders the snapshot and heat map on demand.
    fn observe(&mut self, f: &FrameInput<'_>, media: &mut Media<'_>) -> Observation;
    /// Ends an open event at end of stream / shutdown; `None` when none is open.
    fn finish(&mut self) -> Option<Event>;
    /// The source restarted (a reconnect, a file started again): the next frame does not
    /// follow the last one, so frame-to-frame references restart instead of reading the gap
    /// as a jump. An open event stays open.
    fn stream_gap(&mut self) {}
    /// Short description for logs (signals and thresholds in force).
    fn describe(&self) -> String;
    /// Name of the driving score and its start threshold, for the overlay caption.
    fn headline(&self) -> (String, f64);
    /// What the detector needs of the response (the cascade's input); every frame unless the
    /// detector says otherwise.
    fn response_need(&self) -> ResponseNeed {
        ResponseNeed::EveryFrame
    }
    /// The next frame should get the guard pass whatever the cascade's schedule: the detector
    /// reads the response of an open event, or a response signal's rule is counting frames.
    /// (An onset-only detector never does: its events need only the class distribution.)
    fn wants_response(&self) -> bool {
        false
    }
}

/// The detector a camera runs in `advguard watch`.
///
/// The one place that chooses it: switching every camera to another detector is a change here.
pub fn for_camera(plan: &CameraPlan) -> Box<dyn CameraState> {
    match &plan.fused {
        Some(f) => Box::new(super::fused::FusedDetector::new(
            &plan.name,
            &plan.model,
            f.clone(),
        )),
        None => Box::new(CameraDetector::new(
            &plan.name,
            &plan.model,
            plan.detector.clone(),
        )),
    }
}

impl CameraState for CameraDetector {
    fn observe(&mut self, f: &FrameInput<'_>, media: &mut Media<'_>) -> Observation {
        CameraDetector::observe(self, f, media)
    }

    fn finish(&mut self) -> Option<Event> {
        CameraDetector::finish(self)
    }

    fn stream_gap(&mut self) {
        CameraDetector::stream_gap(self);
    }

    fn describe(&self) -> String {
        let c = self.config();
        format!(
            "{} > {} (end {}, {} of {}; threshold from {})",
            c.kind, c.rule.threshold, c.rule.end_threshold, c.rule.k, c.rule.n, c.source
        )
    }

    fn headline(&self) -> (String, f64) {
        (self.config().kind.to_string(), self.config().rule.threshold)
    }

    fn response_need(&self) -> ResponseNeed {
        // Only the onset reads the class distribution alone.
        match self.config().kind {
            super::DetectorKind::Onset => {
                ResponseNeed::from_onset(Some(self.config().rule.threshold))
            }
            _ => ResponseNeed::EveryFrame,
        }
    }
}

/// Scores frames like a detector and never opens an event: what a calibration run drives,
/// so that calibration needs no threshold at all (not even an unreachable one).
#[derive(Debug, Default)]
pub struct ScoresOnly {
    prev: Option<Vec<f32>>,
}

impl ScoresOnly {
    /// A fresh state (the first frame has no jump).
    pub fn new() -> Self {
        Self::default()
    }
}

impl CameraState for ScoresOnly {
    fn observe(&mut self, f: &FrameInput<'_>, _media: &mut Media<'_>) -> Observation {
        let (kl, onset) = match &self.prev {
            Some(q) => (kl_divergence(f.probs, q), jump(f.probs, q)),
            None => (0.0, 0.0),
        };
        self.prev = Some(f.probs.to_vec());
        let scores = FrameScores {
            entropy: f.stats.entropy,
            concentration: f.stats.concentration,
            patch: f.stats.concentration,
            kl,
            onset,
            vanish: f.vanish.map_or(0.0, |v| v.score),
        };
        Observation {
            scores,
            // The onset jump is the default detector's score; nothing is compared with it.
            score: if onset.is_finite() { onset } else { 0.0 },
            over: false,
            in_event: false,
            events: Vec::new(),
        }
    }

    fn finish(&mut self) -> Option<Event> {
        None
    }

    fn stream_gap(&mut self) {
        self.prev = None;
    }

    fn describe(&self) -> String {
        "no detector (scores only, for calibration)".into()
    }

    fn headline(&self) -> (String, f64) {
        ("onset".into(), f64::INFINITY)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detector::event::ClassGuess;
    use crate::detector::{DetectorConfig, DetectorKind};
    use crate::response::FrameStats;
    use ndarray::Array2;

    fn input<'a>(pts_ms: u64, probs: &'a [f32], stats: &'a FrameStats) -> FrameInput<'a> {
        FrameInput {
            pts_ms,
            probs,
            stats,
            top1: ClassGuess {
                index: 0,
                label: "x".into(),
                prob: probs[0],
            },
            bbox: None,
            pixel_change: None,
            vanish: None,
            fresh: true,
        }
    }

    /// The scores-only state computes the same scores as the real detector, frame by frame,
    /// and never opens an event where the detector (threshold 0) opens one at once.
    #[test]
    fn scores_only_matches_the_detector_and_stays_quiet() {
        let mut cfg = DetectorConfig::default_for(DetectorKind::Concentration);
        cfg.rule.threshold = 0.0;
        cfg.rule.end_threshold = 0.0;
        cfg.rule.k = 1;
        cfg.rule.n = 1;
        let mut det: Box<dyn CameraState> = Box::new(CameraDetector::new("c", "m", cfg));
        let mut quiet: Box<dyn CameraState> = Box::new(ScoresOnly::new());
        let stats = FrameStats {
            entropy: 0.8,
            concentration: 0.3,
            bbox: [0, 0, 4, 4],
            gray: Array2::zeros((1, 1)),
            box_texture: None,
        };
        let mut det_events = 0;
        for i in 0..20u64 {
            let a = 0.2 + 0.03 * (i % 7) as f32;
            let p = [a, 1.0 - a];
            let d = det.observe(&input(i * 40, &p, &stats), &mut || (None, None));
            let q = quiet.observe(&input(i * 40, &p, &stats), &mut || (None, None));
            det_events += d.events.len();
            assert!(q.events.is_empty() && !q.over && !q.in_event);
            assert_eq!(d.scores.kl.to_bits(), q.scores.kl.to_bits(), "frame {i}");
            assert_eq!(d.scores.onset.to_bits(), q.scores.onset.to_bits());
            assert_eq!(d.scores.entropy, q.scores.entropy);
        }
        assert!(det_events >= 1, "threshold 0 opens an event");
        assert!(det.finish().is_some());
        assert!(quiet.finish().is_none());
        assert!(det.describe().contains("concentration > 0"));
    }
}
