//! A person-hiding patch for a centre-heat-map detector (Thys, Van Ranst & Goedemé 2019,
//! "Fooling automated surveillance cameras", adapted to CenterNet).
//!
//! One universal patch is pasted on the torso of every person the detector finds in a training
//! photo, scaled with the person's box (0.2 × its diagonal, as Thys et al.), shifted a little,
//! rotated, with brightness/contrast jitter, always as 8-bit pixels. The loss is their
//! objectness loss on a centre heat map: the sum of the person channel's peaks (the cells the
//! decode's max-pool NMS keeps, at or above a low floor; the strongest cell where none is). Its
//! gradient is exactly what a plain guard graph seeded with `Seed::Peaks` returns as its
//! response, so one guard call per transformed photo gives the loss, the detections and the
//! gradient. Training is Adam on mini-batches with a cosine-decayed step.
//!
//! A person counts as hidden when no detection of the class at the operating threshold
//! overlaps its clean box with IoU ≥ 0.5 (the usual detection match).

use super::AttackError;
use super::eot::{Adam, Jitter, Transform};
use super::patch::{Patch, PatchConfig, Placement};
use crate::engine::compile::{CompileOptions, Mode, Seed};
use crate::engine::detect::{self, Detection};
use crate::engine::{Guard, GuardOptions, GuardOutput};
use ndarray::{Array3, ArrayView3, Axis};
use rand::{Rng, SeedableRng, rngs::StdRng};
use serde::{Deserialize, Serialize};

/// IoU at which a detection still finds a person.
pub const MATCH_IOU: f32 = 0.5;

/// Hiding-patch parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HideConfig {
    /// Patch side in its own pixels (it is pasted scaled to each person).
    pub side: usize,
    /// Pasted side as a share of the person box's diagonal, before the scale jitter.
    pub rel_size: f32,
    /// Heat-map channel of the hidden class (COCO person = 0).
    pub class: usize,
    /// Operating threshold: a person below it is not detected.
    pub threshold: f32,
    /// Peaks at or above this floor enter the loss (below the operating threshold, so the
    /// patch keeps pushing a person it has only just hidden).
    pub loss_floor: f32,
    /// Optimiser steps.
    pub steps: u32,
    /// Transformed photos per step.
    pub batch: usize,
    /// Initial Adam step, pixel units; cosine-decayed to a tenth of it.
    pub lr: f32,
    /// Scale, rotation and colour jitter (scale multiplies `rel_size`).
    pub jitter: Jitter,
    /// Largest shift of the patch centre from the torso point, as a share of the box side.
    pub shift: f32,
}

impl Default for HideConfig {
    fn default() -> Self {
        HideConfig {
            side: 64,
            rel_size: 0.2,
            class: 0,
            threshold: 0.3,
            loss_floor: 0.05,
            steps: 300,
            batch: 4,
            lr: 8.0,
            jitter: Jitter::default(),
            shift: 0.05,
        }
    }
}

/// The persons of one photo: their clean boxes (x0, y0, x1, y1, model-input pixels).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Persons {
    /// Clean boxes at the operating threshold.
    pub boxes: Vec<[f32; 4]>,
    /// Their clean scores.
    pub scores: Vec<f32>,
}

/// What training cost and reached.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct HideStats {
    /// Wall time, seconds.
    pub seconds: f64,
    /// Guard calls (each a forward + backward).
    pub calls: u64,
    /// Persons hidden in the training batches of the last tenth of the steps.
    pub train_hidden: f64,
    /// Mean loss over the first and the last tenth of the steps.
    pub loss_first: f64,
    /// Mean loss over the last tenth of the steps.
    pub loss_last: f64,
}

/// One pasted person's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PersonOutcome {
    /// Clean score.
    pub clean: f32,
    /// Best score of a same-class detection matching the clean box (IoU ≥ 0.5), 0 if none.
    pub pasted: f32,
    /// Whether no such detection is left at the operating threshold.
    pub hidden: bool,
}

/// The plain guard graph whose response is the gradient of the hiding loss: the detector's
/// heat map seeded at the hidden class's peaks ≥ `loss_floor`.
pub fn loss_options(
    guard_manifest: &crate::engine::manifest::Manifest,
    cfg: &HideConfig,
) -> GuardOptions {
    let heat = guard_manifest
        .detector
        .as_ref()
        .map(|d| (d.heatmap.clone(), d.nms))
        .unwrap_or_default();
    GuardOptions {
        compile: Some(CompileOptions {
            mode: Mode::Plain,
            seed: Seed::Peaks {
                tensor: heat.0,
                channels: vec![cfg.class],
                window: heat.1.max(1),
                threshold: cfg.loss_floor,
            },
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The persons a detector finds in a model-sized photo, at the operating threshold, with boxes
/// of at least `min_side` pixels on both sides (a smaller person cannot carry a visible patch).
pub fn persons_in(dets: &[Detection], cfg: &HideConfig, min_side: f32) -> Persons {
    let (boxes, scores) = dets
        .iter()
        .filter(|d| d.class == cfg.class && d.score >= cfg.threshold)
        .filter(|d| d.bbox[2] - d.bbox[0] >= min_side && d.bbox[3] - d.bbox[1] >= min_side)
        .map(|d| (d.bbox, d.score))
        .unzip();
    Persons { boxes, scores }
}

/// Where a patch of `side` pixels goes on a person box: the torso point (the box's centre
/// column, 45 % down from its top) shifted by up to `shift` of the box, scaled to `rel_size` of
/// the box diagonal times the jitter's scale, rotated and colour-jittered.
pub fn torso_transform(b: [f32; 4], side: usize, cfg: &HideConfig, rng: &mut StdRng) -> Transform {
    let uniform = |lo: f32, hi: f32, rng: &mut StdRng| {
        if hi > lo {
            rng.random_range(lo..=hi)
        } else {
            lo
        }
    };
    let (w, h) = ((b[2] - b[0]).max(1.0), (b[3] - b[1]).max(1.0));
    let s = cfg.shift.abs();
    let cx = (b[0] + b[2]) / 2.0 + uniform(-s, s, rng) * w;
    let cy = b[1] + 0.45 * h + uniform(-s, s, rng) * h;
    let scale = uniform(cfg.jitter.scale.0, cfg.jitter.scale.1, rng);
    let target = cfg.rel_size * (w * w + h * h).sqrt() * scale;
    let r = cfg.jitter.rotation_deg.abs().to_radians();
    let (br, cr) = (cfg.jitter.brightness.abs(), cfg.jitter.contrast.abs());
    Transform {
        placement: Placement {
            cx,
            cy,
            scale: target / side.max(1) as f32,
            angle: uniform(-r, r, rng),
        },
        brightness: uniform(-br, br, rng),
        contrast: uniform(1.0 - cr, 1.0 + cr, rng),
    }
}

/// A patch of `side` pixels as the paste code wants it (the area field is unused here).
pub fn as_patch(pixels: Array3<f32>, cfg: &HideConfig) -> Patch {
    Patch {
        pixels,
        target: None,
        config: PatchConfig {
            target: None,
            steps: cfg.steps,
            batch: cfg.batch,
            lr: cfg.lr,
            jitter: cfg.jitter,
            ..PatchConfig::default()
        },
    }
}

/// Pastes `patch` on every person, one transform each; returns the photo and the pasted boxes
/// (x, y, w, h).
pub fn paste_all(
    patch: &Patch,
    px: ArrayView3<f32>,
    transforms: &[Transform],
) -> (Array3<f32>, Vec<[u32; 4]>) {
    let mut out = px.to_owned();
    let mut boxes = vec![];
    for t in transforms {
        let (next, b) = patch.apply_transform(out.view(), t);
        out = next;
        boxes.push(b);
    }
    (out, boxes)
}

/// The hiding loss of one guard output: the sum of the class's peaks ≥ the floor, or its
/// strongest cell where there is none (the same cells the `Seed::Peaks` graph seeds).
pub fn loss(out: &GuardOutput, guard: &Guard, cfg: &HideConfig) -> Result<f64, AttackError> {
    let heat = detect::heat_map(guard, out).map_err(|e| AttackError::Invalid(e.to_string()))?;
    let nms = guard
        .manifest()
        .detector
        .as_ref()
        .map_or(3, |d| d.nms.max(1));
    let ch = heat.index_axis(Axis(0), cfg.class.min(heat.dim().0.saturating_sub(1)));
    let plane = ch.insert_axis(Axis(0));
    let p = detect::peaks(plane, nms, cfg.loss_floor);
    Ok(if p.is_empty() {
        ch.iter().copied().fold(0f32, f32::max) as f64
    } else {
        p.iter().map(|q| q.score as f64).sum()
    })
}

/// Matches each clean person box against the detections of the pasted photo.
pub fn outcomes(persons: &Persons, dets: &[Detection], cfg: &HideConfig) -> Vec<PersonOutcome> {
    persons
        .boxes
        .iter()
        .zip(&persons.scores)
        .map(|(b, &clean)| {
            let pasted = dets
                .iter()
                .filter(|d| d.class == cfg.class && box_iou(d.bbox, *b) >= MATCH_IOU)
                .map(|d| d.score)
                .fold(0f32, f32::max);
            PersonOutcome {
                clean,
                pasted,
                hidden: pasted < cfg.threshold,
            }
        })
        .collect()
}

pub use crate::engine::detect::box_iou;

/// Pastes the patch on every person of a photo with seeded transforms, runs the guard, and
/// returns the outcomes, the pasted photo, the pasted boxes and the guard's output.
pub fn judge_photo(
    guard: &mut Guard,
    patch: &Patch,
    px: ArrayView3<f32>,
    persons: &Persons,
    cfg: &HideConfig,
    seed: u64,
) -> Result<Judged, AttackError> {
    let mut rng = StdRng::seed_from_u64(seed);
    let ts: Vec<Transform> = persons
        .boxes
        .iter()
        .map(|b| torso_transform(*b, patch.side(), cfg, &mut rng))
        .collect();
    let (x, boxes) = paste_all(patch, px, &ts);
    let out = guard.run_pixels(x.view())?;
    let (h, w, _) = x.dim();
    let dets = detect::detections(guard, &out, w as u32, h as u32)
        .map_err(|e| AttackError::Invalid(e.to_string()))?;
    Ok(Judged {
        outcomes: outcomes(persons, &dets, cfg),
        pasted: x,
        boxes,
        output: out,
    })
}

/// What [`judge_photo`] found.
pub struct Judged {
    /// Per pasted person.
    pub outcomes: Vec<PersonOutcome>,
    /// The pasted photo.
    pub pasted: Array3<f32>,
    /// The pasted boxes, x, y, w, h.
    pub boxes: Vec<[u32; 4]>,
    /// The guard's output on it.
    pub output: GuardOutput,
}

/// Trains a hiding patch on `photos` (model-sized, 0–255) and their persons. `guard` must be
/// opened with [`loss_options`].
pub fn train(
    guard: &mut Guard,
    photos: &[Array3<f32>],
    persons: &[Persons],
    cfg: &HideConfig,
    seed: u64,
    mut progress: impl FnMut(u32, f64, f64),
) -> Result<(Patch, HideStats), AttackError> {
    let usable: Vec<usize> = (0..photos.len().min(persons.len()))
        .filter(|&i| !persons[i].boxes.is_empty())
        .collect();
    if usable.is_empty() {
        return Err(AttackError::Invalid(
            "no training photo has a person to hide".into(),
        ));
    }
    let t0 = std::time::Instant::now();
    let calls0 = guard.calls();
    let mut rng = StdRng::seed_from_u64(seed);
    let side = cfg.side.max(1);
    let mut latent: Vec<f32> = (0..side * side * 3)
        .map(|_| rng.random_range(0.0f32..=255.0).round())
        .collect();
    let mut adam = Adam::new(latent.len());
    let tenth = (cfg.steps / 10).max(1);
    let (mut first, mut last) = ((0.0, 0u64), (0.0, 0u64));
    let (mut hidden, mut tried) = (0u64, 0u64);
    let mut patch = as_patch(Array3::zeros((side, side, 3)), cfg);
    for step in 0..cfg.steps {
        patch.pixels = Array3::from_shape_vec((side, side, 3), latent.clone())
            .expect("same shape")
            .mapv(|v| v.round().clamp(0.0, 255.0));
        let mut grad = vec![0f32; latent.len()];
        let mut step_loss = 0.0;
        for _ in 0..cfg.batch.max(1) {
            let i = usable[rng.random_range(0..usable.len())];
            let ts: Vec<Transform> = persons[i]
                .boxes
                .iter()
                .map(|b| torso_transform(*b, side, cfg, &mut rng))
                .collect();
            let (x, _) = paste_all(&patch, photos[i].view(), &ts);
            let out = guard.run_pixels(x.view())?;
            step_loss += loss(&out, guard, cfg)?;
            if step >= cfg.steps - tenth {
                let (h, w, _) = x.dim();
                let dets = detect::detections(guard, &out, w as u32, h as u32)
                    .map_err(|e| AttackError::Invalid(e.to_string()))?;
                for o in outcomes(&persons[i], &dets, cfg) {
                    hidden += o.hidden as u64;
                    tried += 1;
                }
            }
            let g = out.response.insert_axis(Axis(0));
            let g = guard.preprocess().grad_to_pixels(g.view());
            for t in &ts {
                patch.scatter_grad(&g, t, &mut grad);
            }
        }
        step_loss /= cfg.batch.max(1) as f64;
        if step < tenth {
            first = (first.0 + step_loss, first.1 + 1);
        }
        if step >= cfg.steps - tenth {
            last = (last.0 + step_loss, last.1 + 1);
        }
        let frac = step as f32 / cfg.steps.max(1) as f32;
        let lr = cfg.lr * (0.1 + 0.9 * 0.5 * (1.0 + (std::f32::consts::PI * frac).cos()));
        adam.step(&mut latent, &grad, lr);
        latent.iter_mut().for_each(|v| *v = v.clamp(0.0, 255.0));
        progress(step + 1, step_loss, hidden as f64 / tried.max(1) as f64);
    }
    patch.pixels = Array3::from_shape_vec((side, side, 3), latent)
        .expect("same shape")
        .mapv(|v| v.round().clamp(0.0, 255.0));
    let mean = |(s, n): (f64, u64)| if n > 0 { s / n as f64 } else { f64::NAN };
    Ok((
        patch,
        HideStats {
            seconds: t0.elapsed().as_secs_f64(),
            calls: guard.calls() - calls0,
            train_hidden: hidden as f64 / tried.max(1) as f64,
            loss_first: mean(first),
            loss_last: mean(last),
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_patch_sits_on_the_torso_and_follows_the_box() {
        let cfg = HideConfig {
            jitter: Jitter::position_only(),
            shift: 0.0,
            ..HideConfig::default()
        };
        let mut rng = StdRng::seed_from_u64(1);
        let t = torso_transform([100.0, 50.0, 160.0, 250.0], 64, &cfg, &mut rng);
        assert_eq!((t.placement.cx, t.placement.cy), (130.0, 140.0));
        let diag = (60f32 * 60.0 + 200.0 * 200.0).sqrt();
        assert!((t.placement.scale * 64.0 - 0.2 * diag).abs() < 1e-3);
        let big = torso_transform([0.0, 0.0, 120.0, 400.0], 64, &cfg, &mut rng);
        assert!(big.placement.scale > t.placement.scale);
    }

    #[test]
    fn a_person_is_hidden_only_without_a_matching_detection() {
        let cfg = HideConfig::default();
        let persons = Persons {
            boxes: vec![[0.0, 0.0, 100.0, 200.0], [300.0, 0.0, 350.0, 100.0]],
            scores: vec![0.6, 0.5],
        };
        let det = |class, score, bbox| Detection {
            class,
            label: String::new(),
            score,
            bbox,
        };
        let dets = [
            det(0, 0.4, [5.0, 5.0, 100.0, 190.0]),
            det(0, 0.9, [300.0, 60.0, 350.0, 100.0]), // IoU 0.4: another object
            det(1, 0.9, [300.0, 0.0, 350.0, 100.0]),  // another class
        ];
        let o = outcomes(&persons, &dets, &cfg);
        assert!(!o[0].hidden && (o[0].pasted - 0.4).abs() < 1e-6);
        assert!(o[1].hidden && o[1].pasted == 0.0);
        assert!((box_iou([0.0, 0.0, 2.0, 2.0], [1.0, 0.0, 3.0, 2.0]) - 1.0 / 3.0).abs() < 1e-6);
    }
}
