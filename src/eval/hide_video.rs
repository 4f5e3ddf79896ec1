//! The person-hiding patch on video (issue 14 §4): stretches of a real clip in which the patch
//! is pasted on every person the detector saw in the clean frame (so it follows their motion,
//! with a per-stretch scale, rotation and colour, and a small per-frame wobble), then the
//! frames go through the camera's H.264 encoder, and the vanishing-track signal judges them.
//!
//! Clean footage goes through the same encoder. The signal's threshold comes from the first
//! half of every clip's clean footage; false alarms are counted on the second half only.

use super::hide::Pasted;
use super::video::footage::{Clip, h264_round_trip};
use crate::attack::eot::Transform;
use crate::attack::hide::{self, HideConfig, box_iou};
use crate::attack::patch::Patch;
use crate::detector::vanish::{Loss, VanishConfig, VanishTracker};
use crate::engine::Guard;
use crate::engine::detect::{self, Detection};
use rand::{Rng, SeedableRng, rngs::StdRng};
use serde::{Deserialize, Serialize};

/// Stretch layout.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StretchPlan {
    /// Stretches per kind and clip.
    pub stretches: usize,
    /// Frames of a stretch.
    pub frames: usize,
    /// Clean frames before it (tracks form there).
    pub before: usize,
    /// Clean frames after it.
    pub after: usize,
}

impl Default for StretchPlan {
    fn default() -> Self {
        StretchPlan {
            stretches: 20,
            frames: 30,
            before: 15,
            after: 10,
        }
    }
}

/// The detections of every frame of a clip, after the encoder.
pub fn detect_all(
    guard: &mut Guard,
    frames: &[Vec<u8>],
    size: u32,
) -> anyhow::Result<Vec<Vec<Detection>>> {
    frames
        .iter()
        .map(|f| {
            let out = guard.forward_rgb8(f, size, size)?;
            Ok(detect::detections(guard, &out, size, size)?)
        })
        .collect()
}

/// The losses the vanishing-track signal reports on a run of frames (threshold ignored).
pub fn losses(
    frames: &[Vec<u8>],
    dets: &[Vec<Detection>],
    size: u32,
    cfg: &VanishConfig,
) -> Vec<(usize, Loss)> {
    let mut t = VanishTracker::new(cfg.clone());
    let mut out = vec![];
    for (i, (f, d)) in frames.iter().zip(dets).enumerate() {
        out.extend(t.update(d, f, size, size).into_iter().map(|l| (i, l)));
    }
    out
}

/// The signal's thresholds from the losses of clean footage: the scene counts as unchanged up
/// to `max_change` (fixed a priori), and a loss fires only for a track more confident than
/// every natural loss of an unchanged scene in that footage (so the calibration footage itself
/// never fires). Without such losses the operating threshold stands.
pub fn calibrate(clean: &[Loss], max_change: f64, threshold: f32) -> (f64, f32) {
    let c = clean
        .iter()
        .filter(|l| l.change <= max_change)
        .map(|l| l.confidence + 0.01)
        .fold(threshold, f32::max);
    (max_change, c)
}

/// One attacked stretch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StretchResult {
    /// Clip name.
    pub clip: String,
    /// What was pasted.
    pub pasted: Pasted,
    /// First frame of the stretch.
    pub start: usize,
    /// Person-frames pasted on (clean persons × frames).
    pub person_frames: usize,
    /// Of them, with no matching detection left (hidden).
    pub hidden_frames: usize,
    /// Frames from the stretch's first frame to the first firing loss inside it.
    pub first_fire: Option<usize>,
    /// Firing losses in the clean frames before it.
    pub fires_before: usize,
    /// Smallest pixel change of a loss inside the stretch.
    pub min_change: Option<f64>,
}

/// Runs the stretches of one kind on a clip. `clean_dets` are the detections of the clean,
/// encoded frames; the boxes the patch follows come from them.
#[allow(clippy::too_many_arguments)]
pub fn stretches(
    guard: &mut Guard,
    clip: &Clip,
    clean_dets: &[Vec<Detection>],
    pixels: &Patch,
    pasted: Pasted,
    cfg: &HideConfig,
    vcfg: &VanishConfig,
    plan: &StretchPlan,
    seed: u64,
) -> anyhow::Result<Vec<StretchResult>> {
    let size = clip.size;
    let n = clip.frames.len();
    let span = plan.before + plan.frames + plan.after;
    let persons = |i: usize| -> Vec<[f32; 4]> {
        clean_dets[i]
            .iter()
            .filter(|d| d.class == cfg.class && d.score >= cfg.threshold)
            .map(|d| d.bbox)
            .collect()
    };
    // Onsets where a person is in view at the stretch's first frame.
    let starts: Vec<usize> = (plan.before..n.saturating_sub(plan.frames + plan.after))
        .filter(|&i| !persons(i).is_empty())
        .collect();
    if starts.is_empty() || n < span {
        return Ok(vec![]);
    }
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out = vec![];
    for _ in 0..plan.stretches {
        let s = starts[rng.random_range(0..starts.len())];
        let w0 = s - plan.before;
        // One sticker pose per stretch (the printed patch), a wobble per frame.
        let base = hide::torso_transform([0.0, 0.0, 100.0, 100.0], pixels.side(), cfg, &mut rng);
        let mut frames = clip.frames[w0..w0 + span].to_vec();
        let mut pasted_on = vec![vec![]; span];
        for (k, f) in frames
            .iter_mut()
            .enumerate()
            .skip(plan.before)
            .take(plan.frames)
        {
            let boxes = persons(w0 + k);
            let ts: Vec<Transform> = boxes
                .iter()
                .map(|b| {
                    let mut t = hide::torso_transform(*b, pixels.side(), cfg, &mut rng);
                    // The stretch's scale draw, applied to this frame's box.
                    t.placement.scale =
                        base.placement.scale * diag(*b) / diag([0.0, 0.0, 100.0, 100.0]);
                    t.placement.angle = base.placement.angle + rng.random_range(-0.05f32..=0.05);
                    t.brightness = base.brightness;
                    t.contrast = base.contrast;
                    t
                })
                .collect();
            let px = super::video::attacks::to_px(f, size);
            let (x, _) = hide::paste_all(pixels, px.view(), &ts);
            *f = super::video::attacks::to_rgb(&x);
            pasted_on[k] = boxes;
        }
        let encoded = h264_round_trip(&frames, size, clip.frame_ms())?;
        let dets = detect_all(guard, &encoded, size)?;
        let (mut pf, mut hf) = (0, 0);
        for (k, boxes) in pasted_on.iter().enumerate() {
            for b in boxes {
                pf += 1;
                let seen = dets[k].iter().any(|d| {
                    d.class == cfg.class
                        && d.score >= cfg.threshold
                        && box_iou(d.bbox, *b) >= hide::MATCH_IOU
                });
                hf += (!seen) as usize;
            }
        }
        let ls = losses(&encoded, &dets, size, vcfg);
        let inside = |i: usize| {
            i >= plan.before && i < plan.before + plan.frames + vcfg.lost_frames as usize
        };
        out.push(StretchResult {
            clip: clip.name.clone(),
            pasted,
            start: s,
            person_frames: pf,
            hidden_frames: hf,
            first_fire: ls
                .iter()
                .filter(|(i, l)| l.fires && inside(*i))
                .map(|(i, _)| i - plan.before)
                .min(),
            fires_before: ls
                .iter()
                .filter(|(i, l)| l.fires && *i < plan.before)
                .count(),
            min_change: ls
                .iter()
                .filter(|(i, _)| inside(*i))
                .map(|(_, l)| l.change)
                .reduce(f64::min),
        });
    }
    Ok(out)
}

fn diag(b: [f32; 4]) -> f32 {
    ((b[2] - b[0]).powi(2) + (b[3] - b[1]).powi(2)).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loss(change: f64, confidence: f32) -> Loss {
        Loss {
            track: 0,
            bbox: [0.0; 4],
            age: 5,
            score: confidence,
            confidence,
            change,
            fires: false,
        }
    }

    #[test]
    fn natural_losses_of_an_unchanged_scene_set_the_confidence_bar() {
        let clean = [loss(0.7, 0.32), loss(3.0, 0.41), loss(40.0, 0.9)];
        // The person who walked off (change 40) does not raise the bar; the two dropouts do.
        let (m, c) = calibrate(&clean, 10.0, 0.3);
        assert_eq!(m, 10.0);
        assert!((c - 0.42).abs() < 1e-6);
        assert_eq!(calibrate(&[], 10.0, 0.3).1, 0.3);
    }
}
