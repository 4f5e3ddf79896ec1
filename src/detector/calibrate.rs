//! Calibration math: thresholds at a target false-positive rate from clean scores, and the
//! onset detector's per-camera flicker statistics.

use super::DetectorKind;
use super::profile::{CameraProfile, Quantiles, ScoreProfile};
use super::score::{jump, kl_divergence};

/// One clean frame as calibration sees it.
#[derive(Debug, Clone)]
pub struct CleanFrame {
    /// Stream time, ms.
    pub pts_ms: u64,
    /// Pixel change from the previous frame, gray levels.
    pub pixel_change: Option<f64>,
    /// Softmax class distribution.
    pub probs: Vec<f32>,
    /// The paper's S̄.
    pub entropy: f64,
    /// Response concentration.
    pub concentration: f64,
    /// The frame's texture inside the concentration's box, gray levels.
    pub box_texture: Option<f64>,
    /// A detector camera's vanishing track on this frame.
    pub vanish: Option<super::vanish::Vanished>,
}

/// Calibration settings.
#[derive(Debug, Clone)]
pub struct CalibrationParams {
    /// Target per-frame false-positive rate of the start threshold (0 < fpr < 1).
    pub fpr: f64,
    /// Per-frame rate at which a clean jump may count as an onset event's end jump: the onset
    /// end threshold is the jump at this rate, capped at the start threshold.
    pub end_fpr: f64,
}

impl Default for CalibrationParams {
    fn default() -> Self {
        CalibrationParams {
            fpr: 0.01,
            end_fpr: 0.01,
        }
    }
}

/// The q-quantile (0–1) of sorted values, linear interpolation; 0 for an empty slice.
pub fn quantile_sorted(sorted: &[f64], q: f64) -> f64 {
    match sorted.len() {
        0 => 0.0,
        1 => sorted[0],
        n => {
            let pos = q.clamp(0.0, 1.0) * (n - 1) as f64;
            let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
            sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
        }
    }
}

/// The lowest threshold t (one of the scores) with at most ⌊fpr·n⌋ clean scores strictly
/// above it: the detector's per-frame false-positive rate on this footage is then ≤ fpr.
/// Non-finite scores are ignored; `None` without finite scores.
pub fn threshold_at_fpr(scores: &[f64], fpr: f64) -> Option<f64> {
    let mut v: Vec<f64> = scores.iter().copied().filter(|s| s.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let allowed = (fpr.clamp(0.0, 1.0) * v.len() as f64).floor() as usize;
    Some(v[v.len() - 1 - allowed.min(v.len() - 1)])
}

/// Per-frame false-positive rate of a threshold on clean scores.
pub fn fpr_at(scores: &[f64], threshold: f64) -> f64 {
    if scores.is_empty() {
        return 0.0;
    }
    scores.iter().filter(|&&s| s > threshold).count() as f64 / scores.len() as f64
}

fn summary(scores: &[f64], threshold: f64, end_threshold: f64) -> ScoreProfile {
    let mut v: Vec<f64> = scores.iter().copied().filter(|s| s.is_finite()).collect();
    v.sort_by(f64::total_cmp);
    let n = v.len().max(1) as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
    ScoreProfile {
        threshold,
        end_threshold,
        mean,
        std: var.sqrt(),
        quantiles: Quantiles {
            p50: quantile_sorted(&v, 0.5),
            p90: quantile_sorted(&v, 0.9),
            p99: quantile_sorted(&v, 0.99),
            max: v.last().copied().unwrap_or(0.0),
        },
    }
}

/// Onset (jump) scores of clean footage, as the detector computes them: the symmetric KL
/// between consecutive frames.
pub fn onset_scores(frames: &[CleanFrame]) -> Vec<f64> {
    frames
        .windows(2)
        .map(|w| jump(&w[1].probs, &w[0].probs))
        .collect()
}

/// Share of consecutive frames whose top-1 class differs.
pub fn top1_change_rate(frames: &[CleanFrame]) -> Option<f64> {
    let top: Vec<usize> = frames
        .iter()
        .map(|f| {
            f.probs
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map_or(0, |(i, _)| i)
        })
        .collect();
    if top.len() < 2 {
        return None;
    }
    let changes = top.windows(2).filter(|w| w[0] != w[1]).count();
    Some(changes as f64 / (top.len() - 1) as f64)
}

/// KL(p_t ‖ p_{t−1}) of consecutive clean frames (flicker of the class distribution).
pub fn consecutive_kl(frames: &[CleanFrame]) -> Vec<f64> {
    frames
        .windows(2)
        .map(|w| kl_divergence(&w[1].probs, &w[0].probs))
        .collect()
}

/// Calibrates one camera from its clean frames; `None` with fewer than 2 frames.
pub fn calibrate_camera(
    frames: &[CleanFrame],
    model: &str,
    detector: DetectorKind,
    every_nth: u32,
    p: &CalibrationParams,
) -> Option<CameraProfile> {
    if frames.len() < 2 {
        return None;
    }
    let fixed = |scores: &[f64]| {
        let t = threshold_at_fpr(scores, p.fpr)?;
        Some(summary(scores, t, t))
    };
    let onset = {
        let s = onset_scores(frames);
        let t = threshold_at_fpr(&s, p.fpr)?;
        // Lower end threshold: the end jump of an attack tends to be smaller than its onset
        // (the scene moved on meanwhile), but a jump this large inside a stretch is rare.
        let end = threshold_at_fpr(&s, p.end_fpr)?.min(t);
        summary(&s, t, end)
    };
    let ent: Vec<f64> = frames.iter().map(|f| f.entropy).collect();
    let con: Vec<f64> = frames.iter().map(|f| f.concentration).collect();
    Some(CameraProfile {
        model: model.into(),
        detector,
        fpr: p.fpr,
        frames: frames.len(),
        every_nth,
        top1_change_rate: top1_change_rate(frames),
        onset: Some(onset),
        entropy: fixed(&ent),
        concentration: fixed(&con),
        fused: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threshold_keeps_the_false_positive_rate() {
        let scores: Vec<f64> = (0..1000).map(|i| i as f64 / 10.0).collect();
        for fpr in [0.0, 0.001, 0.01, 0.05, 0.2] {
            let t = threshold_at_fpr(&scores, fpr).unwrap();
            let got = fpr_at(&scores, t);
            assert!(got <= fpr + 1e-12, "fpr {fpr}: got {got}");
            // And it is the lowest such threshold: one step lower breaks the bound.
            if fpr > 0.0 {
                assert!(fpr_at(&scores, t - 0.1) > fpr - 1e-12);
            }
        }
        assert_eq!(threshold_at_fpr(&scores, 0.0), Some(99.9));
        assert_eq!(threshold_at_fpr(&[], 0.01), None);
        assert_eq!(threshold_at_fpr(&[f64::NAN, 1.0], 0.01), Some(1.0));
    }

    #[test]
    fn ties_do_not_break_the_bound() {
        let mut s = vec![1.0; 95];
        s.extend([5.0; 5]);
        let t = threshold_at_fpr(&s, 0.01).unwrap();
        assert!(fpr_at(&s, t) <= 0.01);
    }

    #[test]
    fn quantiles_interpolate() {
        let v = [0.0, 1.0, 2.0, 3.0, 4.0];
        assert_eq!(quantile_sorted(&v, 0.5), 2.0);
        assert_eq!(quantile_sorted(&v, 0.9), 3.6);
        assert_eq!(quantile_sorted(&v, 1.0), 4.0);
    }

    fn frame(p: &[f32]) -> CleanFrame {
        CleanFrame {
            pts_ms: 0,
            pixel_change: None,
            probs: p.to_vec(),
            entropy: 1.0,
            concentration: 0.2,
            box_texture: None,
            vanish: None,
        }
    }

    #[test]
    fn flicker_statistics_and_onset_calibration() {
        // A camera flickering between two classes every other frame.
        let a = [0.6, 0.3, 0.05, 0.05];
        let b = [0.3, 0.6, 0.05, 0.05];
        let frames: Vec<CleanFrame> = (0..200)
            .map(|i| frame(if i % 2 == 0 { &a } else { &b }))
            .collect();
        assert_eq!(top1_change_rate(&frames), Some(1.0));
        let p = CalibrationParams::default();
        let prof = calibrate_camera(&frames, "m", DetectorKind::Onset, 1, &p).unwrap();
        let on = prof.onset.unwrap();
        // The flicker stays at (not over) the threshold it calibrated...
        assert!(on.threshold >= on.quantiles.max - 1e-12);
        assert!(on.end_threshold <= on.threshold);
        // ...and a jump to a distribution the camera never showed is far over it.
        let attack = jump(&[0.02, 0.02, 0.94, 0.02], &a);
        assert!(
            attack > 5.0 * on.threshold.max(1e-3),
            "attack {attack} vs {}",
            on.threshold
        );
        assert_eq!(prof.frames, 200);
    }
}
