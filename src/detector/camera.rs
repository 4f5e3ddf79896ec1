//! One camera's detector state: scores → rule → events.

use super::DetectorKind;
use super::event::{ClassGuess, Event};
use super::profile::CameraProfile;
use super::rule::{OnsetConfig, OnsetRule, Rule, RuleConfig, Transition};
use super::score::{FrameScores, jump, kl_divergence};
use super::tracker::{EventTracker, FrameFacts, Media};
use crate::response::FrameStats;

/// Default frames an onset candidate must last before it is an event.
pub const DEFAULT_CONFIRM: usize = 2;

/// How a camera turns scores into events.
#[derive(Debug, Clone, PartialEq)]
pub struct DetectorConfig {
    /// The score that drives events.
    pub kind: DetectorKind,
    /// Temporal rule (thresholds, k of n, hysteresis). For `onset` only the thresholds and
    /// `max_event_ms` apply: the onset jump opens, the end jump closes.
    pub rule: RuleConfig,
    /// `onset`: frames a candidate must last without an end jump.
    pub confirm_frames: usize,
    /// Spacing of `update` messages, stream ms.
    pub update_interval_ms: u64,
    /// Where the threshold came from ("profile", "default", "command line"), for logs.
    pub source: &'static str,
}

impl DetectorConfig {
    /// Uncalibrated defaults (see docs/STREAMING.md for where the numbers come from).
    ///
    /// - `onset`: a jump (symmetric KL to the previous frame) > 3.0 nats opens, confirmed by
    ///   the next frame; a jump > 2.0 closes. Measured with SqueezeNet on car-detection.mp4
    ///   (every 2nd frame): the largest clean jump was 2.92, the second 1.96 (docs/STREAMING.md).
    /// - `entropy`: S̄ > 3.0 bits (16 bins), 3 of 5; the paper's score, weak here.
    /// - `concentration`: share > 0.6 in the best 56×56 window, 3 of 5 (FINDINGS.md: the
    ///   largest clean share over 400 photos was 0.66; calibrate per camera).
    pub fn default_for(kind: DetectorKind) -> Self {
        let (t, k, n) = match kind {
            DetectorKind::Onset => (3.0, 1, 1),
            DetectorKind::Entropy => (3.0, 3, 5),
            DetectorKind::Concentration => (0.6, 3, 5),
        };
        DetectorConfig {
            kind,
            rule: RuleConfig {
                threshold: t,
                end_threshold: if kind == DetectorKind::Onset { 2.0 } else { t },
                k,
                n,
                clear_frames: 3,
                max_event_ms: 300_000,
            },
            confirm_frames: DEFAULT_CONFIRM,
            update_interval_ms: 5_000,
            source: "default",
        }
    }

    /// Defaults with the thresholds of a calibrated camera, when it has this score.
    pub fn from_profile(kind: DetectorKind, p: &CameraProfile) -> Self {
        let mut c = Self::default_for(kind);
        if let Some(s) = p.score(kind) {
            c.rule.threshold = s.threshold;
            c.rule.end_threshold = s.end_threshold;
            c.source = "profile";
        }
        c
    }
}

/// What the detector needs from one processed frame.
pub struct FrameInput<'a> {
    /// Stream time, ms.
    pub pts_ms: u64,
    /// Softmax class distribution.
    pub probs: &'a [f32],
    /// Response statistics: of this frame, or of the last guard frame when `fresh` is false.
    pub stats: &'a FrameStats,
    /// Whether `stats` and `bbox` are this frame's (false on the cascade's forward-only
    /// frames, where response-based rules hold their state instead of counting a frame).
    pub fresh: bool,
    /// Top-1 class.
    pub top1: ClassGuess,
    /// Response box scaled to frame pixels.
    pub bbox: Option<[u32; 4]>,
    /// Mean absolute change of the gray frame from the previous one, gray levels (scene cuts).
    pub pixel_change: Option<f64>,
    /// A detector camera's track lost on this frame with its pixels unchanged (none on
    /// classifiers): the fused detector's `vanish` signal.
    pub vanish: Option<super::vanish::Vanished>,
}

/// The detector's verdict on one frame.
#[derive(Debug, Clone)]
pub struct Observation {
    /// All scores.
    pub scores: FrameScores,
    /// The driving score.
    pub score: f64,
    /// Whether it is over the start threshold.
    pub over: bool,
    /// Whether an event is open after this frame.
    pub in_event: bool,
    /// Event messages produced by this frame (start / update / end).
    pub events: Vec<Event>,
}

enum Rules {
    KofN(Rule),
    Onset(OnsetRule),
}

impl Rules {
    fn step(&mut self, score: f64, pts_ms: u64) -> Transition {
        match self {
            Rules::KofN(r) => r.step(score, pts_ms),
            Rules::Onset(r) => r.step(score, pts_ms),
        }
    }
    fn is_open(&self) -> bool {
        match self {
            Rules::KofN(r) => r.is_open(),
            Rules::Onset(r) => r.is_open(),
        }
    }
    fn finish(&mut self) -> bool {
        match self {
            Rules::KofN(r) => r.finish(),
            Rules::Onset(r) => r.finish(),
        }
    }
}

/// One camera's detector.
pub struct CameraDetector {
    cfg: DetectorConfig,
    rule: Rules,
    prev: Option<Vec<f32>>,
    tracker: EventTracker,
    last: Option<FrameFacts>,
    last_over: Option<FrameFacts>,
}

impl CameraDetector {
    /// A detector for `camera` running `model`.
    pub fn new(camera: &str, model: &str, cfg: DetectorConfig) -> Self {
        let rule = match cfg.kind {
            DetectorKind::Onset => Rules::Onset(OnsetRule::new(OnsetConfig {
                threshold: cfg.rule.threshold,
                end_threshold: cfg.rule.end_threshold,
                confirm_frames: cfg.confirm_frames,
                max_event_ms: cfg.rule.max_event_ms,
            })),
            _ => Rules::KofN(Rule::new(cfg.rule)),
        };
        CameraDetector {
            rule,
            prev: None,
            tracker: EventTracker::new(
                camera,
                model,
                cfg.kind.name(),
                cfg.rule.threshold,
                cfg.update_interval_ms,
            ),
            last: None,
            last_over: None,
            cfg,
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> &DetectorConfig {
        &self.cfg
    }

    /// Whether an event is open.
    pub fn in_event(&self) -> bool {
        self.rule.is_open()
    }

    /// Scores one frame and advances the rule. `media` renders the snapshot and heat map;
    /// it runs only when the frame becomes an event's peak.
    pub fn observe(&mut self, f: &FrameInput<'_>, media: &mut Media<'_>) -> Observation {
        let kl = self
            .prev
            .as_ref()
            .map_or(0.0, |q| kl_divergence(f.probs, q));
        let onset = self.prev.as_ref().map_or(0.0, |q| jump(f.probs, q));
        self.prev = Some(f.probs.to_vec());
        let scores = FrameScores {
            entropy: f.stats.entropy,
            concentration: f.stats.concentration,
            patch: f.stats.concentration,
            kl,
            onset,
            vanish: f.vanish.map_or(0.0, |v| v.score),
        };
        let score = match self.cfg.kind {
            DetectorKind::Onset => onset,
            DetectorKind::Entropy => scores.entropy,
            DetectorKind::Concentration => scores.concentration,
        };
        let score = if score.is_finite() { score } else { 0.0 };
        let over = score > self.cfg.rule.threshold;
        let facts = FrameFacts {
            pts_ms: f.pts_ms,
            score,
            over,
            top1: Some(f.top1.clone()),
            bbox: f.bbox,
        };
        let mut events = Vec::new();
        match self.rule.step(score, f.pts_ms) {
            Transition::Idle => {}
            Transition::Start { start_pts_ms } => {
                // The onset rule confirms one frame after the jump: open with the jump frame
                // (its score is the event's first peak), then count this frame.
                let first = self
                    .last_over
                    .take()
                    .filter(|o| o.pts_ms == start_pts_ms && o.pts_ms != facts.pts_ms);
                match first {
                    Some(o) => {
                        let start = self.tracker.start(start_pts_ms, &o, media);
                        let _ = self.tracker.observe(&facts, media);
                        events.push(start);
                    }
                    None => events.push(self.tracker.start(start_pts_ms, &facts, media)),
                }
            }
            Transition::Open => events.extend(self.tracker.observe(&facts, media)),
            Transition::End(_) => events.extend(self.tracker.end(Some(&facts))),
        }
        if over && !self.rule.is_open() {
            self.last_over = Some(facts.clone());
        }
        self.last = Some(facts);
        Observation {
            scores,
            score,
            over,
            in_event: self.rule.is_open(),
            events,
        }
    }

    /// The source restarted: the next frame's jump is measured from itself, not across the
    /// gap (an open event stays open).
    pub fn stream_gap(&mut self) {
        self.prev = None;
    }

    /// Ends an open event (end of stream, shutdown); `None` when none is open.
    pub fn finish(&mut self) -> Option<Event> {
        if self.rule.finish() {
            self.tracker.end(self.last.as_ref())
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detector::event::Phase;
    use ndarray::Array2;

    fn stats() -> FrameStats {
        FrameStats {
            entropy: 1.0,
            concentration: 0.1,
            bbox: [0, 0, 56, 56],
            gray: Array2::zeros((1, 1)),
            box_texture: None,
        }
    }

    /// A clean camera flickering between two neighbouring distributions, with an attacked
    /// stretch that pushes the mass onto class 7 (varying a little per frame, like per-frame FGSM).
    #[test]
    fn an_attacked_stretch_is_exactly_one_event() {
        let mut cfg = DetectorConfig::default_for(DetectorKind::Onset);
        cfg.rule.threshold = 2.0;
        cfg.rule.end_threshold = 1.5;
        let mut d = CameraDetector::new("cam", "m", cfg);
        let st = stats();
        let mut msgs = Vec::new();
        for i in 0..200u64 {
            let mut p = vec![0.01f32; 10];
            if (50..120).contains(&i) {
                p[7] = if i % 3 == 0 { 0.6 } else { 0.8 };
                p[(i % 2) as usize] = 0.1;
            } else {
                p[(i % 2) as usize] = 0.5;
                p[((i + 1) % 2) as usize] = 0.35;
            }
            let s: f32 = p.iter().sum();
            p.iter_mut().for_each(|v| *v /= s);
            let input = FrameInput {
                pts_ms: i * 80,
                probs: &p,
                stats: &st,
                top1: ClassGuess {
                    index: 0,
                    label: "x".into(),
                    prob: 0.5,
                },
                bbox: None,
                pixel_change: None,
                vanish: None,
                fresh: true,
            };
            let o = d.observe(&input, &mut || (None, None));
            msgs.extend(o.events);
        }
        msgs.extend(d.finish());
        let starts: Vec<&Event> = msgs.iter().filter(|m| m.phase == Phase::Start).collect();
        let ends: Vec<&Event> = msgs.iter().filter(|m| m.phase == Phase::End).collect();
        assert_eq!(starts.len(), 1, "{msgs:#?}");
        assert_eq!(ends.len(), 1);
        assert_eq!(starts[0].start_pts_ms, 50 * 80);
        // Ends within clear_frames after the stretch.
        assert!(
            ends[0].pts_ms >= 119 * 80 && ends[0].pts_ms <= 123 * 80,
            "{}",
            ends[0].pts_ms
        );
    }

    #[test]
    fn finish_ends_an_open_event_once() {
        let mut cfg = DetectorConfig::default_for(DetectorKind::Concentration);
        cfg.rule.k = 1;
        cfg.rule.n = 1;
        let mut d = CameraDetector::new("cam", "m", cfg);
        let mut st = stats();
        st.concentration = 0.9;
        let p = vec![0.1f32; 10];
        let input = FrameInput {
            pts_ms: 0,
            probs: &p,
            stats: &st,
            top1: ClassGuess {
                index: 0,
                label: "x".into(),
                prob: 0.1,
            },
            bbox: Some([1, 2, 3, 4]),
            pixel_change: None,
            vanish: None,
            fresh: true,
        };
        let o = d.observe(&input, &mut || (None, None));
        assert_eq!(o.events.len(), 1);
        assert!(o.in_event);
        let end = d.finish().unwrap();
        assert_eq!(end.phase, Phase::End);
        assert_eq!(end.bbox, Some([1, 2, 3, 4]));
        assert!(d.finish().is_none());
    }
}
