//! Universal adversarial patch (Brown et al. 2017), trained with expectation over
//! transformation: random position, scale and rotation on each training image.
//!
//! The patch is a square of `side`² pixels covering `area` of the image; placed with
//! nearest-neighbour sampling, so its gradient is a scatter-add of the image gradient.
//! Training is signed-gradient descent on the cross-entropy of the target class, one random
//! training image and placement per step (one forward + one gradient call per step).

use super::{Attack, AttackError, AttackResult, Model, ce_gradient, check_class, finish};
use ndarray::{Array3, ArrayView3};
use rand::{Rng, SeedableRng, rngs::StdRng};

/// Patch training parameters.
#[derive(Debug, Clone)]
pub struct PatchConfig {
    /// Share of the image the (unscaled) patch covers, 0–1.
    pub area: f32,
    /// Target class (859 = "toaster", as Brown et al.).
    pub target: usize,
    /// Training steps.
    pub steps: u32,
    /// Initial step, pixel units; decays linearly to 1/8 of it.
    pub lr: f32,
    /// Scale range.
    pub scale: (f32, f32),
    /// Rotation range, ± degrees.
    pub rotation_deg: f32,
}

impl Default for PatchConfig {
    fn default() -> Self {
        PatchConfig {
            area: 0.05,
            target: 859,
            steps: 300,
            lr: 16.0,
            scale: (0.8, 1.2),
            rotation_deg: 20.0,
        }
    }
}

/// Where and how a patch is placed.
#[derive(Debug, Clone, Copy)]
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

/// A trained patch.
#[derive(Debug, Clone)]
pub struct Patch {
    /// side × side × 3 pixels, 0–255 integers once trained.
    pub pixels: Array3<f32>,
    /// Target class.
    pub target: usize,
    /// Transformation ranges used in training (and when judging).
    pub config: PatchConfig,
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
        let c = &self.config;
        let scale = if c.scale.1 > c.scale.0 {
            rng.random_range(c.scale.0..=c.scale.1)
        } else {
            c.scale.0
        };
        let r = c.rotation_deg.abs().to_radians();
        let angle = if r > 0.0 {
            rng.random_range(-r..=r)
        } else {
            0.0
        };
        let half = self.side() as f32 * scale * (angle.cos().abs() + angle.sin().abs()) / 2.0;
        let pick = |n: usize, rng: &mut StdRng| {
            let (lo, hi) = (half, n as f32 - half);
            if hi > lo {
                rng.random_range(lo..=hi)
            } else {
                n as f32 / 2.0
            }
        };
        Placement {
            cx: pick(w, rng),
            cy: pick(h, rng),
            scale,
            angle,
        }
    }

    /// (image index y·w + x, patch index v·side + u) for every image pixel the patch covers,
    /// and the covered box [x, y, w, h].
    fn footprint(&self, w: usize, h: usize, p: &Placement) -> (Vec<(usize, usize)>, [u32; 4]) {
        let s = self.side() as f32;
        let half = s * p.scale * (p.angle.cos().abs() + p.angle.sin().abs()) / 2.0;
        let x0 = (p.cx - half).floor().max(0.0) as usize;
        let y0 = (p.cy - half).floor().max(0.0) as usize;
        let x1 = ((p.cx + half).ceil() as usize).min(w);
        let y1 = ((p.cy + half).ceil() as usize).min(h);
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

    /// Pastes the patch; returns the image and the patch's box [x, y, w, h].
    pub fn apply(&self, px: ArrayView3<f32>, p: &Placement) -> (Array3<f32>, [u32; 4]) {
        let (h, w, _) = px.dim();
        let (fp, bbox) = self.footprint(w, h, p);
        let mut out = px.to_owned();
        let src = self.pixels.as_slice().expect("standard layout");
        let dst = out.as_slice_mut().expect("standard layout");
        for (i, j) in fp {
            dst[3 * i..3 * i + 3].copy_from_slice(&src[3 * j..3 * j + 3]);
        }
        (out, bbox)
    }

    /// Trains a patch on `images` (H×W×3, 0–255), EOT over random placements.
    pub fn train(
        m: &mut dyn Model,
        images: &[Array3<f32>],
        config: &PatchConfig,
        seed: u64,
        mut progress: impl FnMut(u32),
    ) -> Result<Patch, AttackError> {
        let Some(first) = images.first() else {
            return Err(AttackError::Invalid(
                "patch training needs at least one image".into(),
            ));
        };
        let (h, w, _) = first.dim();
        let side = Self::side_for(config.area, h.min(w));
        let mut rng = StdRng::seed_from_u64(seed);
        let mut patch = Patch {
            pixels: Array3::from_shape_fn((side, side, 3), |_| {
                rng.random_range(0.0f32..=255.0).round()
            }),
            target: config.target,
            config: config.clone(),
        };
        for step in 0..config.steps {
            let img = &images[rng.random_range(0..images.len())];
            let pl = patch.random_placement(w, h, &mut rng);
            let (x, _) = patch.apply(img.view(), &pl);
            let l = m.logits(x.view())?;
            check_class(config.target, l.len())?;
            let g = ce_gradient(m, x.view(), &l, config.target)?;
            let (fp, _) = patch.footprint(w, h, &pl);
            let mut gp = Array3::<f32>::zeros(patch.pixels.dim());
            let gs = g.as_slice().expect("standard layout");
            let gps = gp.as_slice_mut().expect("standard layout");
            for (i, j) in fp {
                for c in 0..3 {
                    gps[3 * j + c] += gs[3 * i + c];
                }
            }
            let frac = step as f32 / config.steps.max(1) as f32;
            let lr = config.lr * (1.0 - frac * 7.0 / 8.0);
            // Descend the target's cross-entropy.
            patch.pixels.zip_mut_with(&gp, |p, &d| {
                let s = if d > 0.0 {
                    1.0
                } else if d < 0.0 {
                    -1.0
                } else {
                    0.0
                };
                *p = (*p - lr * s).clamp(0.0, 255.0);
            });
            progress(step + 1);
        }
        patch.pixels.mapv_inplace(|v| v.round().clamp(0.0, 255.0));
        Ok(patch)
    }
}

/// Pastes a trained patch at a random placement (from the seed); success = top-1 is the target.
#[derive(Debug, Clone)]
pub struct PatchAttack {
    /// The trained patch.
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
        let pl = self.patch.random_placement(w, h, &mut rng);
        let (adv, bbox) = self.patch.apply(px, &pl);
        let target = Some(self.patch.target);
        let l = m.logits(adv.view())?;
        let ok = super::is_adversarial(&l, label, target);
        let mut r = finish(m, px, adv, label, target, ok, 1, start)?;
        r.patch_box = Some(bbox);
        Ok(r)
    }
}
