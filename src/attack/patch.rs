//! Universal adversarial patch (Brown et al. 2017), trained with expectation over
//! transformation ([`super::eot`]): random position, scale, rotation and brightness/contrast on
//! each training image, always pasted as 8-bit pixels.
//!
//! The patch is a square of `side`² pixels covering `area` of the image, placed with
//! nearest-neighbour sampling, so its gradient is a scatter-add of the image gradient. Training
//! is Adam on mini-batches of transformed training images (each item: one forward + one
//! gradient call), with a cosine-decayed step. The goal is targeted (raise one class) or
//! untargeted (lower the true class). An adaptive attacker adds a penalty on a detector
//! statistic, estimated by SPSA since the statistic itself has no gradient graph.
//! Natural stickers (noise, a crop of another photo) are built as [`Patch`]es too, so the
//! controls are pasted exactly the same way.

use super::eot::{Adam, Jitter, Transform};
use super::{Attack, AttackError, AttackResult, Model, check_class, finish};
use crate::engine::softmax;
use ndarray::{Array3, ArrayView3};
use rand::{Rng, SeedableRng, rngs::StdRng};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Patch training parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PatchConfig {
    /// Share of the image the (unscaled) patch covers, 0–1.
    pub area: f32,
    /// Target class (859 = "toaster", as Brown et al.); `None` = untargeted (lower the label).
    pub target: Option<usize>,
    /// Optimiser steps.
    pub steps: u32,
    /// Transformed training images per step.
    pub batch: usize,
    /// Initial Adam step, pixel units; cosine-decayed to a tenth of it.
    pub lr: f32,
    /// Transformation ranges used in training and when judging.
    pub jitter: Jitter,
}

impl Default for PatchConfig {
    fn default() -> Self {
        PatchConfig {
            area: 0.05,
            target: Some(859),
            steps: 500,
            batch: 8,
            lr: 8.0,
            jitter: Jitter::default(),
        }
    }
}

/// Where and how a patch is placed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Placement {
    /// Centre, image pixels.
    pub cx: f32,
    /// Centre, image pixels.
    pub cy: f32,
    /// Scale factor.
    pub scale: f32,
    /// Rotation, radians.
    pub angle: f32,
}

/// A patch: trained, or a natural sticker.
#[derive(Debug, Clone)]
pub struct Patch {
    /// side × side × 3 pixels, 0–255 integers once trained.
    pub pixels: Array3<f32>,
    /// Target class; `None` for untargeted patches and stickers.
    pub target: Option<usize>,
    /// Transformation ranges used in training (and when judging).
    pub config: PatchConfig,
}

/// What training cost and reached.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TrainStats {
    /// Wall time, seconds.
    pub seconds: f64,
    /// Engine calls, forward.
    pub forward_calls: u64,
    /// Engine calls, gradient (the adaptive penalty's detector calls are counted apart).
    pub gradient_calls: u64,
    /// Detector calls of the adaptive penalty.
    pub penalty_calls: u64,
    /// Success on the training batches of the last tenth of the steps.
    pub train_success: f64,
}

/// A detector statistic the adaptive attacker pushes down, with its SPSA settings.
pub struct Penalty<'a> {
    /// The statistic of one image (higher = flagged).
    pub stat: &'a mut dyn FnMut(ArrayView3<f32>) -> Result<f64, AttackError>,
    /// Weight of its (RMS-normalised) descent direction against the attack's.
    pub weight: f32,
    /// SPSA samples per step (two statistic calls each).
    pub samples: usize,
    /// SPSA perturbation, pixel units.
    pub delta: f32,
    /// Side of the SPSA perturbation's blocks, patch pixels (fewer dimensions, less noise).
    pub block: usize,
}

impl Patch {
    /// Side of the square patch for this area of an `size`×`size` image.
    pub fn side_for(area: f32, size: usize) -> usize {
        ((area.clamp(0.0, 1.0) * (size * size) as f32).sqrt().round() as usize).clamp(1, size)
    }

    /// Side in pixels.
    pub fn side(&self) -> usize {
        self.pixels.dim().0
    }

    /// A random placement that keeps the transformed patch inside a w×h image.
    pub fn random_placement(&self, w: usize, h: usize, rng: &mut StdRng) -> Placement {
        self.random_transform(w, h, rng).placement
    }

    /// A random transformation from the patch's jitter ranges.
    pub fn random_transform(&self, w: usize, h: usize, rng: &mut StdRng) -> Transform {
        self.config.jitter.sample(self.side(), w, h, rng)
    }

    /// A uniform-noise sticker of the size a patch of `config.area` has (8-bit).
    pub fn noise_sticker(config: &PatchConfig, size: usize, seed: u64) -> Patch {
        let side = Self::side_for(config.area, size);
        let mut rng = StdRng::seed_from_u64(seed);
        Patch {
            pixels: Array3::from_shape_fn((side, side, 3), |_| {
                rng.random_range(0.0f32..=255.0).round()
            }),
            target: None,
            config: config.clone(),
        }
    }

    /// A sticker cut from a real photo (H×W×3): a random `side`² crop, as large as the patch.
    pub fn photo_sticker(config: &PatchConfig, photo: ArrayView3<f32>, seed: u64) -> Patch {
        let (h, w, _) = photo.dim();
        let side = Self::side_for(config.area, h.min(w));
        let mut rng = StdRng::seed_from_u64(seed);
        let y0 = rng.random_range(0..=h - side);
        let x0 = rng.random_range(0..=w - side);
        let crop = photo.slice(ndarray::s![y0..y0 + side, x0..x0 + side, ..]);
        Patch {
            pixels: crop.mapv(|v| v.round().clamp(0.0, 255.0)),
            target: None,
            config: config.clone(),
        }
    }

    /// (image index y·w + x, patch index v·side + u) for every image pixel the patch covers,
    /// and the covered box [x, y, w, h].
    fn footprint(&self, w: usize, h: usize, p: &Placement) -> (Vec<(usize, usize)>, [u32; 4]) {
        let s = self.side() as f32;
        let half = s * p.scale * (p.angle.cos().abs() + p.angle.sin().abs()) / 2.0;
        let x0 = (p.cx - half).floor().max(0.0) as usize;
        let y0 = (p.cy - half).floor().max(0.0) as usize;
        let x1 = ((p.cx + half).ceil().max(0.0) as usize).min(w);
        let y1 = ((p.cy + half).ceil().max(0.0) as usize).min(h);
        let (c, sn) = (p.angle.cos(), p.angle.sin());
        let mut out = vec![];
        let (mut bx0, mut by0, mut bx1, mut by1) = (usize::MAX, usize::MAX, 0, 0);
        for y in y0..y1 {
            for x in x0..x1 {
                let (dx, dy) = (x as f32 + 0.5 - p.cx, y as f32 + 0.5 - p.cy);
                let u = (c * dx + sn * dy) / p.scale + s / 2.0;
                let v = (-sn * dx + c * dy) / p.scale + s / 2.0;
                if u >= 0.0 && v >= 0.0 && u < s && v < s {
                    out.push((y * w + x, v as usize * self.side() + u as usize));
                    bx0 = bx0.min(x);
                    by0 = by0.min(y);
                    bx1 = bx1.max(x + 1);
                    by1 = by1.max(y + 1);
                }
            }
        }
        let bbox = if out.is_empty() {
            [0; 4]
        } else {
            [
                bx0 as u32,
                by0 as u32,
                (bx1 - bx0) as u32,
                (by1 - by0) as u32,
            ]
        };
        (out, bbox)
    }

    /// Pastes the patch without a colour change; returns the image and the patch's box.
    pub fn apply(&self, px: ArrayView3<f32>, p: &Placement) -> (Array3<f32>, [u32; 4]) {
        self.apply_transform(px, &Transform::at(*p))
    }

    /// Pastes the patch under a transformation (8-bit output); returns the image and its box.
    pub fn apply_transform(&self, px: ArrayView3<f32>, t: &Transform) -> (Array3<f32>, [u32; 4]) {
        paste(self.pixels.view(), self.footprint_of(px, t), px, t)
    }

    fn footprint_of(&self, px: ArrayView3<f32>, t: &Transform) -> (Vec<(usize, usize)>, [u32; 4]) {
        let (h, w, _) = px.dim();
        self.footprint(w, h, &t.placement)
    }

    /// Trains a patch on `images` (H×W×3, 0–255) with true `labels`, EOT over the jitter.
    pub fn train(
        m: &mut dyn Model,
        images: &[Array3<f32>],
        labels: &[usize],
        config: &PatchConfig,
        seed: u64,
        progress: impl FnMut(u32, f64),
    ) -> Result<(Patch, TrainStats), AttackError> {
        let Some(first) = images.first() else {
            return Err(AttackError::Invalid(
                "patch training needs at least one image".into(),
            ));
        };
        let (h, w, _) = first.dim();
        let side = Self::side_for(config.area, h.min(w));
        let mut rng = StdRng::seed_from_u64(seed);
        let init = Patch {
            pixels: Array3::from_shape_fn((side, side, 3), |_| {
                rng.random_range(0.0f32..=255.0).round()
            }),
            target: config.target,
            config: config.clone(),
        };
        init.optimise(m, images, labels, None, seed ^ 0x9e37_79b9, progress)
    }

    /// Fine-tunes this patch against a detector statistic (the adaptive attacker): the attack's
    /// own loss plus `penalty.weight` × the statistic, both as RMS-normalised directions.
    pub fn train_adaptive(
        &self,
        m: &mut dyn Model,
        images: &[Array3<f32>],
        labels: &[usize],
        penalty: Penalty<'_>,
        seed: u64,
        progress: impl FnMut(u32, f64),
    ) -> Result<(Patch, TrainStats), AttackError> {
        self.optimise(m, images, labels, Some(penalty), seed, progress)
    }

    /// The optimisation loop shared by [`Patch::train`] and [`Patch::train_adaptive`].
    fn optimise(
        &self,
        m: &mut dyn Model,
        images: &[Array3<f32>],
        labels: &[usize],
        mut penalty: Option<Penalty<'_>>,
        seed: u64,
        mut progress: impl FnMut(u32, f64),
    ) -> Result<(Patch, TrainStats), AttackError> {
        let config = &self.config;
        if images.is_empty() || images.len() != labels.len() {
            return Err(AttackError::Invalid(format!(
                "patch training needs images with one label each (got {} images, {} labels)",
                images.len(),
                labels.len()
            )));
        }
        let start = (std::time::Instant::now(), m.calls());
        let (h, w, _) = images[0].dim();
        let mut rng = StdRng::seed_from_u64(seed);
        let mut patch = self.clone();
        let mut latent: Vec<f32> = patch.pixels.iter().copied().collect();
        let mut adam = Adam::new(latent.len());
        let (mut hits, mut tries, mut penalty_calls) = (0u64, 0u64, 0u64);
        let tail = config.steps - config.steps / 10;
        let batch = config.batch.max(1);
        for step in 0..config.steps {
            patch.pixels = Array3::from_shape_vec(patch.pixels.dim(), latent.clone())
                .expect("same shape")
                .mapv(|v| v.round().clamp(0.0, 255.0));
            let mut grad = vec![0f32; latent.len()];
            let mut last = None;
            for _ in 0..batch {
                let i = rng.random_range(0..images.len());
                let t = patch.random_transform(w, h, &mut rng);
                let (x, _) = patch.apply_transform(images[i].view(), &t);
                let logits = m.logits(x.view())?;
                let (seed_vec, ok) = goal_seed(&logits, labels[i], config.target)?;
                if step >= tail {
                    hits += ok as u64;
                    tries += 1;
                }
                if seed_vec.iter().any(|v| *v != 0.0) {
                    let g = m.gradient(x.view(), &seed_vec)?.1;
                    patch.scatter_grad(&g, &t, &mut grad);
                }
                last = Some((i, t));
            }
            if let (Some(p), Some((i, t))) = (penalty.as_mut(), last) {
                let gp = patch.spsa(p, images[i].view(), &t, &mut rng)?;
                penalty_calls += 2 * p.samples as u64;
                let (a, b) = (rms(&grad), rms(&gp));
                for (g, q) in grad.iter_mut().zip(&gp) {
                    *g = if a > 0.0 { *g / a } else { 0.0 }
                        + if b > 0.0 { p.weight * q / b } else { 0.0 };
                }
            }
            let frac = step as f32 / config.steps.max(1) as f32;
            let lr = config.lr * (0.1 + 0.9 * 0.5 * (1.0 + (std::f32::consts::PI * frac).cos()));
            adam.step(&mut latent, &grad, lr);
            latent.iter_mut().for_each(|v| *v = v.clamp(0.0, 255.0));
            progress(step + 1, hits as f64 / tries.max(1) as f64);
        }
        patch.pixels = Array3::from_shape_vec(patch.pixels.dim(), latent)
            .expect("same shape")
            .mapv(|v| v.round().clamp(0.0, 255.0));
        let calls = m.calls() - start.1;
        Ok((
            patch,
            TrainStats {
                seconds: start.0.elapsed().as_secs_f64(),
                forward_calls: calls.forward,
                gradient_calls: calls.gradient,
                penalty_calls,
                train_success: hits as f64 / tries.max(1) as f64,
            },
        ))
    }

    /// Adds the image gradient `g` (H×W×3) to the patch gradient through the paste and the colour
    /// change.
    pub fn scatter_grad(&self, g: &Array3<f32>, t: &Transform, grad: &mut [f32]) {
        let (fp, _) = self.footprint_of(g.view(), t);
        let gs = g.as_slice().expect("standard layout");
        let ps = self.pixels.as_slice().expect("standard layout");
        for (i, j) in fp {
            for c in 0..3 {
                grad[3 * j + c] += gs[3 * i + c] * t.colour_grad(ps[3 * j + c]);
            }
        }
    }

    /// SPSA estimate of d statistic / d patch at one transformed image (block-constant
    /// Rademacher directions, antithetic pairs).
    fn spsa(
        &self,
        p: &mut Penalty<'_>,
        img: ArrayView3<f32>,
        t: &Transform,
        rng: &mut StdRng,
    ) -> Result<Vec<f32>, AttackError> {
        let side = self.side();
        let b = p.block.clamp(1, side);
        let nb = side.div_ceil(b);
        let mut out = vec![0f32; self.pixels.len()];
        for _ in 0..p.samples.max(1) {
            let signs: Vec<f32> = (0..nb * nb * 3)
                .map(|_| if rng.random_bool(0.5) { 1.0 } else { -1.0 })
                .collect();
            let dir = |v: usize, u: usize, c: usize| signs[((v / b) * nb + u / b) * 3 + c];
            let shifted = |sgn: f32| {
                let mut q = self.clone();
                for ((v, u, c), px) in q.pixels.indexed_iter_mut() {
                    *px = (*px + sgn * p.delta * dir(v, u, c))
                        .round()
                        .clamp(0.0, 255.0);
                }
                q
            };
            let (xp, _) = shifted(1.0).apply_transform(img, t);
            let (xm, _) = shifted(-1.0).apply_transform(img, t);
            let d = ((p.stat)(xp.view())? - (p.stat)(xm.view())?) as f32 / (2.0 * p.delta);
            for ((v, u, c), o) in self
                .pixels
                .indexed_iter()
                .map(|(k, _)| k)
                .zip(out.iter_mut())
            {
                *o += d * dir(v, u, c);
            }
        }
        Ok(out)
    }
}

fn rms(v: &[f32]) -> f32 {
    (v.iter().map(|x| x * x).sum::<f32>() / v.len().max(1) as f32).sqrt()
}

/// Pastes `pixels` through a footprint and a colour change (8-bit values).
fn paste(
    pixels: ArrayView3<f32>,
    (fp, bbox): (Vec<(usize, usize)>, [u32; 4]),
    px: ArrayView3<f32>,
    t: &Transform,
) -> (Array3<f32>, [u32; 4]) {
    let mut out = px.to_owned();
    let src = pixels.as_slice().expect("standard layout");
    let dst = out.as_slice_mut().expect("standard layout");
    for (i, j) in fp {
        for c in 0..3 {
            dst[3 * i + c] = t.colour(src[3 * j + c]);
        }
    }
    (out, bbox)
}

/// The logit seed whose gradient the step descends, and whether the image already counts as
/// fooled. Targeted: cross-entropy of the target. Untargeted: −log(1 − p_label), which, unlike
/// ascending the label's cross-entropy, stops pushing on images already fooled.
fn goal_seed(
    logits: &[f32],
    label: usize,
    target: Option<usize>,
) -> Result<(Vec<f32>, bool), AttackError> {
    let mut p = softmax(logits);
    let ok = super::is_adversarial(logits, label, target);
    match target {
        Some(t) => {
            check_class(t, p.len())?;
            p[t] -= 1.0;
            Ok((p, ok))
        }
        None => {
            check_class(label, p.len())?;
            let py = p[label].min(1.0 - 1e-6);
            let k = py / (1.0 - py);
            let s = p
                .iter()
                .enumerate()
                .map(|(i, &pi)| k * (if i == label { 1.0 } else { 0.0 } - pi))
                .collect();
            Ok((s, ok))
        }
    }
}

/// Where trained patches are cached: `$ADVGUARD_CACHE/patches`, else the user cache dir.
pub fn cache_dir() -> PathBuf {
    match std::env::var_os(crate::engine::manifest::CACHE_ENV) {
        Some(p) => PathBuf::from(p).join("patches"),
        None => dirs::cache_dir()
            .unwrap_or_else(std::env::temp_dir)
            .join("advguard")
            .join("patches"),
    }
}

/// What identifies a trained patch: model, area, target, seed, plus everything else that
/// changes the result (the training recipe and which photos trained it).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PatchKey {
    /// Model name.
    pub model: String,
    /// Training configuration (area and target included).
    pub config: PatchConfig,
    /// Training seed.
    pub seed: u64,
    /// Hash of the training photos' names (FNV-1a), so another training set is another patch.
    pub train_set: u64,
    /// Adaptive fine-tuning: (statistic name, weight, steps), if any.
    pub adaptive: Option<(String, f32, u32)>,
}

impl PatchKey {
    /// FNV-1a hash of training photo names, in order.
    pub fn hash_names<'a>(names: impl IntoIterator<Item = &'a str>) -> u64 {
        let mut h = 0xcbf29ce484222325u64;
        for n in names {
            for b in n.bytes().chain([0]) {
                h = (h ^ b as u64).wrapping_mul(0x100000001b3);
            }
        }
        h
    }

    /// File stem in the cache: readable prefix + hash of the whole key.
    pub fn stem(&self) -> String {
        let json = serde_json::to_string(self).unwrap_or_default();
        let h = Self::hash_names([json.as_str()]);
        let goal = match self.config.target {
            Some(t) => format!("t{t}"),
            None => "untargeted".into(),
        };
        let ad = if self.adaptive.is_some() {
            "-adaptive"
        } else {
            ""
        };
        format!(
            "{}-a{}-{goal}-s{}{ad}-{h:016x}",
            self.model.replace(['/', '\\', ' '], "_"),
            self.config.area * 100.0,
            self.seed
        )
    }
}

/// A cache of trained patches: `<stem>.png` (the pixels) + `<stem>.json` (key and stats).
#[derive(Debug, Clone)]
pub struct PatchCache {
    /// Folder.
    pub dir: PathBuf,
}

#[derive(Serialize, Deserialize)]
struct CacheMeta {
    key: PatchKey,
    stats: TrainStats,
}

impl PatchCache {
    /// The cache at [`cache_dir`].
    pub fn default_dir() -> PatchCache {
        PatchCache { dir: cache_dir() }
    }

    /// The cached patch for `key`, if its files exist and its metadata matches the key.
    pub fn get(&self, key: &PatchKey) -> Option<(Patch, TrainStats)> {
        let stem = key.stem();
        let meta: CacheMeta = serde_json::from_str(
            &std::fs::read_to_string(self.dir.join(format!("{stem}.json"))).ok()?,
        )
        .ok()?;
        if &meta.key != key {
            return None;
        }
        let img = image::open(self.dir.join(format!("{stem}.png")))
            .ok()?
            .to_rgb8();
        let pixels = crate::engine::preprocess::Preprocess::pixels(&img);
        Some((
            Patch {
                pixels,
                target: key.config.target,
                config: key.config.clone(),
            },
            meta.stats,
        ))
    }

    /// Stores a patch under `key` (PNG written first, metadata last, so a torn write is a miss).
    pub fn put(
        &self,
        key: &PatchKey,
        patch: &Patch,
        stats: &TrainStats,
    ) -> Result<PathBuf, AttackError> {
        let io = |p: &Path, e: &dyn std::fmt::Display| {
            AttackError::Invalid(format!("patch cache {}: {e}", p.display()))
        };
        std::fs::create_dir_all(&self.dir).map_err(|e| io(&self.dir, &e))?;
        let stem = key.stem();
        let png = self.dir.join(format!("{stem}.png"));
        let (h, w, _) = patch.pixels.dim();
        let img = image::RgbImage::from_fn(w as u32, h as u32, |x, y| {
            let q = |c: usize| {
                patch.pixels[[y as usize, x as usize, c]]
                    .round()
                    .clamp(0.0, 255.0) as u8
            };
            image::Rgb([q(0), q(1), q(2)])
        });
        img.save(&png).map_err(|e| io(&png, &e))?;
        let meta = self.dir.join(format!("{stem}.json"));
        let json = serde_json::to_string_pretty(&CacheMeta {
            key: key.clone(),
            stats: stats.clone(),
        })
        .map_err(|e| io(&meta, &e))?;
        std::fs::write(&meta, json).map_err(|e| io(&meta, &e))?;
        Ok(png)
    }
}

/// Pastes a patch (or sticker) at a random transformation (from the seed). Success: top-1 is
/// the target (targeted) or not the label (untargeted, stickers).
#[derive(Debug, Clone)]
pub struct PatchAttack {
    /// The patch.
    pub patch: Patch,
}

impl Attack for PatchAttack {
    fn name(&self) -> &str {
        "patch"
    }
    fn run(
        &self,
        m: &mut dyn Model,
        px: ArrayView3<f32>,
        label: usize,
        seed: u64,
    ) -> Result<AttackResult, AttackError> {
        let start = (std::time::Instant::now(), m.calls());
        let (h, w, _) = px.dim();
        let mut rng = StdRng::seed_from_u64(seed);
        let t = self.patch.random_transform(w, h, &mut rng);
        let (adv, bbox) = self.patch.apply_transform(px, &t);
        let target = self.patch.target;
        let l = m.logits(adv.view())?;
        let ok = super::is_adversarial(&l, label, target);
        let mut r = finish(m, px, adv, label, target, ok, 1, start)?;
        r.patch_box = Some(bbox);
        Ok(r)
    }
}
