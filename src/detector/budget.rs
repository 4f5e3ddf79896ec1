//! Calibration of the fused detector by a **false-alarm budget per camera-hour**.
//!
//! A per-frame false-positive rate is the wrong unit for an operator: what they live with is
//! false events per hour. At 12 frames/s an hour is 43 000 frames, so a budget of 0.1 false
//! events per hour is a per-frame rate of ~2e-6, far beyond what any clean footage measures
//! directly. So, per signal:
//! 1. replay the clean footage through the detector with that signal alone and get, for every
//!    frame, its **fire score**: the largest threshold at which the signal's rule would fire
//!    on that frame (k of n: the k-th largest of the last n scores; onset: the jump, capped by
//!    the next frame's jump from the reference before the jump, over the end-threshold ratio);
//! 2. decluster: fire scores above a low level that come within `merge_ms` of each other are
//!    one candidate event, represented by its peak;
//! 3. the false-event rate at threshold t is (#peaks > t) / hours. Where the budget asks for
//!    fewer events than the footage can show (budget × hours < `MIN_TAIL_EVENTS`), the rate
//!    is extrapolated with an exponential tail fitted to the highest peaks
//!    (peaks-over-threshold with a Generalised-Pareto shape of 0; Coles 2001, ch. 4):
//!    t = u + σ · ln(rate(u) / budget), σ = mean excess over u.
//! 4. the chosen threshold is replayed on the footage and the events it still gives are stored.
//!
//! The budget is shared equally among the signals in force.

use super::camera::FrameInput;
use super::event::{ClassGuess, Phase};
use super::fused::{FusedConfig, FusedDetector, SignalConfig, SignalKind};
use super::profile::{FusedProfile, SignalProfile};
use super::vanish::Vanished;
use crate::response::FrameStats;
use std::collections::BTreeMap;

/// Peaks used for the tail fit at most.
pub const TAIL_PEAKS: usize = 20;
/// Below this many expected events on the footage the threshold is extrapolated.
pub const MIN_TAIL_EVENTS: f64 = 5.0;

/// One clean frame as the fused calibration needs it.
#[derive(Debug, Clone)]
pub struct Sample {
    /// Stream time, ms.
    pub pts_ms: u64,
    /// Softmax class distribution.
    pub probs: Vec<f32>,
    /// The paper's S̄.
    pub entropy: f64,
    /// Response concentration.
    pub concentration: f64,
    /// The frame's texture inside the concentration's box, gray levels (the patch signal's
    /// gate); `None` where it was not measured.
    pub box_texture: Option<f64>,
    /// Pixel change from the previous frame, gray levels.
    pub pixel_change: Option<f64>,
    /// A detector camera's vanishing track on this frame.
    pub vanish: Option<Vanished>,
}

impl Sample {
    /// The response statistics it stores (no map, no box).
    pub fn stats(&self) -> FrameStats {
        let mut st = FrameStats::scalar(self.entropy, self.concentration);
        st.box_texture = self.box_texture;
        st
    }
}

/// Per-frame scores of one signal on one session, as the detector computes them.
pub fn signal_scores(session: &[Sample], cfg: &FusedConfig, kind: SignalKind) -> Vec<f64> {
    signal_series(session, cfg, kind).0
}

/// Per-frame scores of one signal and each frame's onset confirmation score
/// ([`FusedDetector::onset_confirm`]; only the onset's fire score reads it).
pub fn signal_series(
    session: &[Sample],
    cfg: &FusedConfig,
    kind: SignalKind,
) -> (Vec<f64>, Vec<f64>) {
    let mut c = cfg.clone();
    c.signals = vec![(
        kind,
        SignalConfig {
            threshold: f64::INFINITY,
            end_threshold: f64::INFINITY,
            ..SignalConfig::default_for(kind)
        },
    )];
    let mut d = FusedDetector::new("calibration", "", c);
    session
        .iter()
        .map(|s| {
            let o = d.observe(&input(s, &s.stats()), &mut || (None, None));
            (kind.score(&o.scores), d.onset_confirm())
        })
        .unzip()
}

/// A detector input from a stored sample (no pixels, no box).
pub fn input<'a>(s: &'a Sample, stats: &'a FrameStats) -> FrameInput<'a> {
    let (k, p) = s
        .probs
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map_or((0, 0.0), |(k, p)| (k, *p));
    FrameInput {
        pts_ms: s.pts_ms,
        probs: &s.probs,
        stats,
        top1: ClassGuess {
            index: k,
            label: String::new(),
            prob: p,
        },
        bbox: None,
        pixel_change: s.pixel_change,
        vanish: s.vanish,
        fresh: true,
    }
}

/// Fire scores (see the module docs) of one session; `confirm` is the onset's confirmation
/// series (unused by the other signals).
fn fire_scores(scores: &[f64], confirm: &[f64], kind: SignalKind, rule: &SignalConfig) -> Vec<f64> {
    match kind {
        SignalKind::Onset => {
            let ratio = (rule.end_threshold / rule.threshold).clamp(1e-6, 1.0);
            (0..scores.len())
                .map(|i| match confirm.get(i + 1) {
                    Some(next) if rule.k >= 2 => scores[i].min(next / ratio),
                    Some(_) | None if rule.k <= 1 => scores[i],
                    _ => 0.0,
                })
                .collect()
        }
        _ => {
            let (k, n) = (rule.k.max(1), rule.n.max(1));
            (0..scores.len())
                .map(|i| {
                    let lo = (i + 1).saturating_sub(n);
                    let mut w: Vec<f64> = scores[lo..=i].to_vec();
                    if w.len() < k {
                        return 0.0;
                    }
                    w.sort_by(|a, b| b.total_cmp(a));
                    w[k - 1]
                })
                .collect()
        }
    }
}

/// Declustered peaks: runs of fire scores above `floor` closer than `gap_ms` are one peak.
fn peaks(fire: &[f64], pts: &[u64], floor: f64, gap_ms: u64) -> Vec<f64> {
    let mut out = Vec::new();
    let mut cur: Option<(f64, u64)> = None;
    for (&f, &t) in fire.iter().zip(pts) {
        if f.is_nan() || f <= floor {
            continue;
        }
        match cur {
            Some((p, last)) if t.saturating_sub(last) < gap_ms => cur = Some((p.max(f), t)),
            Some((p, _)) => {
                out.push(p);
                cur = Some((f, t));
            }
            None => cur = Some((f, t)),
        }
    }
    out.extend(cur.map(|c| c.0));
    out
}

/// The threshold for a false-event rate of `budget` per hour from clean peaks over `hours`.
/// Returns (threshold, expected rate per hour, how it was found).
pub fn threshold_for_rate(peaks: &[f64], hours: f64, budget: f64) -> (f64, f64, String) {
    let mut p: Vec<f64> = peaks.iter().copied().filter(|v| v.is_finite()).collect();
    p.sort_by(|a, b| b.total_cmp(a));
    if p.is_empty() || hours <= 0.0 {
        return (
            0.0,
            0.0,
            "no clean peaks: nothing to set the threshold from".into(),
        );
    }
    let allowed = budget * hours;
    if allowed >= MIN_TAIL_EVENTS && (allowed as usize) < p.len() {
        let i = allowed.floor() as usize;
        return (
            p[i],
            i as f64 / hours,
            format!("empirical: {i} of {} clean peaks above it", p.len()),
        );
    }
    let m = p.len().min(TAIL_PEAKS);
    if m < 2 {
        let t = p[0] * 1.5;
        return (
            t,
            0.0,
            "one clean peak only: threshold 1.5× above it (no tail to fit)".into(),
        );
    }
    // Exponential tail over the top m peaks, anchored at the m-th.
    let u = p[m - 1];
    let sigma = (p[..m - 1].iter().map(|v| v - u).sum::<f64>() / (m - 1) as f64).max(1e-9);
    let rate_u = (m - 1) as f64 / hours;
    let t = if rate_u > budget {
        u + sigma * (rate_u / budget).ln()
    } else {
        u
    };
    (
        t.max(p[0]),
        budget.min(rate_u),
        format!(
            "tail fit: u = {u:.4}, σ = {sigma:.4} over the top {m} of {} clean peaks",
            p.len()
        ),
    )
}

/// The camera's usual pixel change: the median over the clean frames that have one (at least
/// 0.1 gray levels, so a frozen test pattern does not discount every jump); `None` without any.
pub fn motion_scale(sessions: &[Vec<Sample>]) -> Option<f64> {
    let mut v: Vec<f64> = sessions
        .iter()
        .flat_map(|s| s.iter().skip(1).filter_map(|f| f.pixel_change))
        .filter(|c| c.is_finite())
        .collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    Some(v[v.len() / 2].max(0.1))
}

/// Events (starts) the detector gives on clean sessions.
pub fn count_events(sessions: &[Vec<Sample>], cfg: &FusedConfig) -> u32 {
    let mut n = 0;
    for s in sessions {
        let mut d = FusedDetector::new("calibration", "", cfg.clone());
        for f in s {
            let st = f.stats();
            let o = d.observe(&input(f, &st), &mut || (None, None));
            n += o.events.iter().filter(|e| e.phase == Phase::Start).count() as u32;
        }
    }
    n
}

/// Result of a budget calibration.
#[derive(Debug, Clone)]
pub struct BudgetCalibration {
    /// What goes into the profile.
    pub profile: FusedProfile,
    /// The detector configuration it gives.
    pub config: FusedConfig,
    /// How each threshold was found, and warnings (footage too short for the budget).
    pub notes: Vec<String>,
}

/// Calibrates the fused detector on clean sessions (each one a separate camera session: the
/// detector restarts between them) for `budget` false events per camera-hour in all.
pub fn calibrate(sessions: &[Vec<Sample>], base: &FusedConfig, budget: f64) -> BudgetCalibration {
    let hours: f64 = sessions
        .iter()
        .map(|s| match (s.first(), s.last()) {
            (Some(a), Some(b)) => (b.pts_ms - a.pts_ms) as f64 / 3.6e6,
            _ => 0.0,
        })
        .sum();
    let share = budget / base.signals.len().max(1) as f64;
    let mut notes = Vec::new();
    if hours * budget < 1.0 {
        notes.push(format!(
            "warning: {:.1} min of clean footage cannot show a rate of {budget}/hour (it would need \
             {:.0} min for one event); thresholds are extrapolated from the tail of the clean scores. \
             Calibrate on more footage of this camera.",
            hours * 60.0,
            60.0 / budget
        ));
    }
    let mut cfg = base.clone();
    if base.motion_scale.is_some() {
        cfg.motion_scale = motion_scale(sessions);
        if let Some(m) = cfg.motion_scale {
            notes.push(format!(
                "onset: motion scale {m:.2} gray levels (median pixel change of the clean frames)"
            ));
        }
    }
    if let Some(t) = cfg.patch_texture
        && cfg.signals.iter().any(|(k, _)| *k == SignalKind::Patch)
    {
        notes.push(format!(
            "patch: texture floor {t:.1} gray levels (a box smoother than that cannot fire the patch signal)"
        ));
    }
    let base = &cfg.clone();
    let mut signals = BTreeMap::new();
    for (kind, rule) in cfg.signals.iter_mut() {
        let mut all = Vec::new();
        for s in sessions {
            let (scores, confirm) = signal_series(s, base, *kind);
            let fire = fire_scores(&scores, &confirm, *kind, rule);
            let pts: Vec<u64> = s.iter().map(|f| f.pts_ms).collect();
            all.extend(peaks(&fire, &pts, 0.0, base.merge_ms));
        }
        let ratio = if rule.threshold > 0.0 {
            rule.end_threshold / rule.threshold
        } else {
            1.0
        };
        let expected = if all.is_empty() {
            // Nothing to fit (a vanishing track needs a tracked object that was lost): the
            // signal keeps its default bar rather than firing on anything above zero.
            notes.push(format!(
                "{kind}: threshold {:.4} (the default: no clean peaks to set it from)",
                rule.threshold
            ));
            0.0
        } else {
            let (t, expected, how) = threshold_for_rate(&all, hours, share);
            rule.threshold = t;
            rule.end_threshold = t * ratio;
            notes.push(format!("{kind}: threshold {t:.4} ({how})"));
            if *kind == SignalKind::Vanish && t >= 1.0 {
                notes.push(format!(
                    "warning: vanish: the budget puts its bar at {t:.3}, above any confidence: \
                     the detector drops tracked objects of this scene too often for it, so the \
                     signal cannot fire on this camera"
                ));
            }
            expected
        };
        signals.insert(
            *kind,
            SignalProfile {
                threshold: rule.threshold,
                end_threshold: rule.end_threshold,
                budget_per_hour: share,
                expected_per_hour: expected,
                events_on_footage: 0,
            },
        );
    }
    for (kind, sp) in signals.iter_mut() {
        let mut one = cfg.clone();
        one.signals.retain(|(k, _)| k == kind);
        sp.events_on_footage = count_events(sessions, &one);
    }
    cfg.source = "profile";
    BudgetCalibration {
        profile: FusedProfile {
            budget_per_hour: budget,
            hours,
            reference: cfg.reference,
            reference_frames: cfg.reference_frames,
            cut_threshold: cfg.cut_threshold,
            motion_scale: cfg.motion_scale,
            patch_texture: cfg.patch_texture,
            signals,
        },
        config: cfg,
        notes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn k_of_n_fire_score_is_the_kth_largest() {
        let rule = SignalConfig::default_for(SignalKind::Patch); // 3 of 5
        let f = fire_scores(
            &[0.1, 0.9, 0.2, 0.8, 0.7, 0.1],
            &[],
            SignalKind::Patch,
            &rule,
        );
        assert_eq!(f[..2], [0.0, 0.0]);
        assert_eq!(f[4], 0.7);
        assert_eq!(f[5], 0.7);
    }

    #[test]
    fn empirical_and_tail_thresholds() {
        // 100 peaks from an exponential tail with scale 1 over 10 hours.
        let peaks: Vec<f64> = (1..=100).map(|i| -((i as f64) / 101.0).ln()).collect();
        let (t, rate, how) = threshold_for_rate(&peaks, 10.0, 1.0);
        assert!(how.starts_with("empirical"), "{how}");
        assert_eq!(peaks.iter().filter(|&&p| p > t).count(), 10);
        assert!((rate - 1.0).abs() < 1e-9);
        // 0.01 per hour: 0.1 events expected on the footage, extrapolated above the largest peak.
        let (t2, _, how2) = threshold_for_rate(&peaks, 10.0, 0.01);
        assert!(how2.starts_with("tail fit"), "{how2}");
        let max = peaks.iter().cloned().fold(0.0, f64::max);
        assert!(t2 > max, "{t2} vs {max}");
        // An exponential(1) tail: the rate falls by e per unit, so 100× fewer events ≈ ln(100) higher.
        assert!((t2 - t - (100f64).ln()).abs() < 1.5, "{t} → {t2}");
    }

    /// The onset's fire score is the threshold at which the live detector starts firing on
    /// that frame, for both references: just under it the detector opens an event there, just
    /// over it none (a calibration that modelled another confirmation rule fails this).
    #[test]
    fn onset_fire_score_is_where_the_live_detector_starts_firing() {
        use super::super::fused::OnsetReference;
        let dist = |k: usize, p: f32| {
            let mut v = vec![(1.0 - p) / 9.0; 10];
            v[k] = p;
            v
        };
        // Flicker between two classes, then a stable attack (one target class, as targeted
        // PGD) to the end: the frame after the jump does not jump, yet stays away.
        let session: Vec<Sample> = (0..60u64)
            .map(|i| Sample {
                pts_ms: i * 100,
                probs: if i >= 20 {
                    dist(5, 0.8)
                } else {
                    dist(i as usize % 2, 0.6)
                },
                entropy: 1.0,
                concentration: 0.1,
                box_texture: None,
                pixel_change: Some(1.0),
                vanish: None,
            })
            .collect();
        for reference in [OnsetReference::Previous, OnsetReference::Mean] {
            let mut base = FusedConfig {
                reference,
                cut_threshold: None,
                ..FusedConfig::default()
            };
            base.signals = vec![(
                SignalKind::Onset,
                SignalConfig::default_for(SignalKind::Onset),
            )];
            let rule = base.signals[0].1;
            let (scores, confirm) = signal_series(&session, &base, SignalKind::Onset);
            let fire = fire_scores(&scores, &confirm, SignalKind::Onset, &rule);
            let top = fire.iter().cloned().fold(0.0, f64::max);
            assert!(top > 0.5, "{reference:?}: no fire score ({fire:?})");
            assert_eq!(
                fire.iter().position(|&f| f == top),
                Some(20),
                "{reference:?}"
            );
            let ratio = rule.end_threshold / rule.threshold;
            let at = |t: f64| {
                let mut c = base.clone();
                c.signals[0].1.threshold = t;
                c.signals[0].1.end_threshold = t * ratio;
                count_events(std::slice::from_ref(&session), &c)
            };
            assert_eq!(at(top * 0.99), 1, "{reference:?}: under the fire score");
            assert_eq!(at(top * 1.01), 0, "{reference:?}: over the fire score");
        }
    }

    #[test]
    fn peaks_decluster_runs() {
        let fire = [0.0, 1.0, 2.0, 0.0, 0.0, 0.0, 3.0];
        let pts = [0, 100, 200, 300, 400, 2000, 2100];
        assert_eq!(peaks(&fire, &pts, 0.5, 1000), vec![2.0, 3.0]);
        assert_eq!(peaks(&fire, &pts, 0.5, 5000), vec![3.0]);
    }
}
