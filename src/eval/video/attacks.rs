//! The attacked stretches of the video evaluation: what each kind does to a frame.
//!
//! Digital kinds (FGSM, PGD, universal, ramp) act on the decoded frame, after the camera's
//! encoder, as an attacker on the feed would. The scene patch is pasted into the scene before
//! the encoder, as a printed patch seen by the camera is. All results are 8-bit.

use crate::attack::fgsm::{direction, step};
use crate::attack::pgd::Pgd;
use crate::attack::{Attack, AttackError, Forward, Oracle, argmax};
use ndarray::{Array3, ArrayView3, Zip};
use rand::{Rng, rngs::StdRng};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// The kinds of attacked stretch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StretchKind {
    /// Per-frame FGSM, ε = 2.
    Fgsm2,
    /// Per-frame FGSM, ε = 4.
    Fgsm4,
    /// Targeted PGD, ε = 4, 10 steps of 1.
    Pgd4,
    /// One universal perturbation (ε = 4) held over the stretch.
    Universal4,
    /// A patch entering the scene (motion-following, H.264).
    Patch,
    /// The same patch present from the camera's first frame.
    PatchFirst,
    /// FGSM whose ε ramps from 0 to 4 over 2 s, then holds: the adaptive attacker of onsets.
    Ramp,
}

impl StretchKind {
    /// Every kind, in table order.
    pub const ALL: [StretchKind; 7] = [
        StretchKind::Fgsm2,
        StretchKind::Fgsm4,
        StretchKind::Pgd4,
        StretchKind::Universal4,
        StretchKind::Patch,
        StretchKind::PatchFirst,
        StretchKind::Ramp,
    ];

    /// Name in tables and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            StretchKind::Fgsm2 => "fgsm-2",
            StretchKind::Fgsm4 => "fgsm-4",
            StretchKind::Pgd4 => "pgd-4",
            StretchKind::Universal4 => "universal-4",
            StretchKind::Patch => "patch",
            StretchKind::PatchFirst => "patch-first",
            StretchKind::Ramp => "ramp",
        }
    }

    /// Whether it is pasted into the scene (before the encoder).
    pub fn in_scene(self) -> bool {
        matches!(self, StretchKind::Patch | StretchKind::PatchFirst)
    }

    /// Whether it starts while the camera watches (so onset detection applies).
    pub fn has_onset(self) -> bool {
        self != StretchKind::PatchFirst
    }

    /// The signal meant to catch it.
    pub fn intended_signal(self) -> &'static str {
        if self.in_scene() { "patch" } else { "onset" }
    }
}

impl fmt::Display for StretchKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for StretchKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        StretchKind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| {
                format!(
                    "unknown stretch kind {s:?} (known: {})",
                    StretchKind::ALL.map(|k| k.name()).join(", ")
                )
            })
    }
}

/// H×W×3 f32 pixels of a tight RGB8 frame.
pub fn to_px(rgb: &[u8], size: u32) -> Array3<f32> {
    let n = size as usize;
    Array3::from_shape_fn((n, n, 3), |(y, x, c)| rgb[(y * n + x) * 3 + c] as f32)
}

/// Back to RGB8.
pub fn to_rgb(px: &Array3<f32>) -> Vec<u8> {
    px.iter()
        .map(|v| v.round().clamp(0.0, 255.0) as u8)
        .collect()
}

/// A universal perturbation (Moosavi-Dezfooli et al. 2017, in its signed-gradient form):
/// δ ← clip_ε(δ + α·sign(Σ_batch ∇CE(label))) over training photos, untargeted.
pub fn train_universal(
    m: &mut Oracle,
    photos: &[(Array3<f32>, usize)],
    eps: f32,
    steps: u32,
    batch: usize,
    rng: &mut StdRng,
    mut progress: impl FnMut(u32),
) -> Result<Array3<f32>, AttackError> {
    let Some((first, _)) = photos.first() else {
        return Err(AttackError::Invalid(
            "universal perturbation needs photos".into(),
        ));
    };
    let mut delta = Array3::<f32>::zeros(first.dim());
    for s in 0..steps {
        let mut g = Array3::<f32>::zeros(first.dim());
        for _ in 0..batch.max(1) {
            let (px, label) = &photos[rng.random_range(0..photos.len())];
            let x = perturb(px.view(), delta.view());
            let l = m.logits(x.view())?;
            let d = direction(m, x.view(), &l, *label, None)?;
            g += &d;
        }
        let lr = eps / 4.0 * (1.0 - 0.75 * s as f32 / steps.max(1) as f32);
        Zip::from(&mut delta).and(&g).for_each(|d, &v| {
            *d = (*d + lr * v.signum() * (v != 0.0) as u8 as f32).clamp(-eps, eps)
        });
        progress(s + 1);
    }
    delta.mapv_inplace(f32::round);
    Ok(delta)
}

/// `px + delta`, rounded and clipped.
pub fn perturb(px: ArrayView3<f32>, delta: ArrayView3<f32>) -> Array3<f32> {
    let mut x = px.to_owned();
    Zip::from(&mut x)
        .and(&delta)
        .for_each(|a, &d| *a = (*a + d).round().clamp(0.0, 255.0));
    x
}

/// What a digital stretch needs across its frames.
#[derive(Debug, Clone)]
pub struct DigitalCtx {
    /// PGD's target class (fixed over the stretch).
    pub target: usize,
    /// The universal perturbation.
    pub universal: Option<Array3<f32>>,
}

/// The attacked version of one decoded frame; `t_ms` is the time since the stretch began.
pub fn attack_frame(
    kind: StretchKind,
    m: &mut Oracle,
    rgb: &[u8],
    size: u32,
    t_ms: u64,
    ctx: &DigitalCtx,
    seed: u64,
) -> Result<Vec<u8>, AttackError> {
    let px = to_px(rgb, size);
    let label =
        |m: &mut Oracle| -> Result<usize, AttackError> { Ok(argmax(&m.logits(px.view())?)) };
    let adv = match kind {
        StretchKind::Fgsm2 | StretchKind::Fgsm4 | StretchKind::Ramp => {
            let eps = match kind {
                StretchKind::Fgsm2 => 2.0,
                StretchKind::Fgsm4 => 4.0,
                _ => 4.0 * (t_ms as f32 / 2000.0).min(1.0),
            };
            let l = label(m)?;
            if eps <= 0.0 {
                px
            } else {
                let logits = m.logits(px.view())?;
                let dir = direction(m, px.view(), &logits, l, None)?;
                step(px.view(), dir.view(), eps)
            }
        }
        StretchKind::Pgd4 => {
            let l = label(m)?;
            let target = if ctx.target == l {
                (l + 1) % 1000
            } else {
                ctx.target
            };
            Pgd {
                eps: 4.0,
                step: 1.0,
                iters: 10,
                random_start: true,
                target: Some(target),
            }
            .run(m, px.view(), l, seed)?
            .adversarial
        }
        StretchKind::Universal4 => match &ctx.universal {
            Some(d) => perturb(px.view(), d.view()),
            None => return Err(AttackError::Invalid("no universal perturbation".into())),
        },
        StretchKind::Patch | StretchKind::PatchFirst => px,
    };
    Ok(to_rgb(&adv))
}

/// A patch's path through the scene over one stretch: drift, jitter, scale change, a little
/// rotation and perspective, brightness and blur.
#[derive(Debug, Clone)]
pub struct SceneMotion {
    cx: f32,
    cy: f32,
    vx: f32,
    vy: f32,
    scale: f32,
    scale_rate: f32,
    angle: f32,
    persp: (f32, f32),
    gain: f32,
    blur: bool,
    jitter: f32,
}

impl SceneMotion {
    /// A random motion for a patch of `side` px in a size×size frame.
    pub fn random(side: usize, size: u32, rng: &mut StdRng) -> SceneMotion {
        let s = size as f32;
        let half = side as f32 * 0.7;
        SceneMotion {
            cx: rng.random_range(half..=s - half),
            cy: rng.random_range(half..=s - half),
            vx: rng.random_range(-6.0..=6.0),
            vy: rng.random_range(-3.0..=3.0),
            scale: rng.random_range(0.9..=1.1),
            scale_rate: rng.random_range(-0.05..=0.05),
            angle: rng.random_range(-15f32..=15.0).to_radians(),
            persp: (
                rng.random_range(-0.002..=0.002),
                rng.random_range(-0.002..=0.002),
            ),
            gain: rng.random_range(0.85..=1.15),
            blur: rng.random_bool(0.5),
            jitter: 1.0,
        }
    }
}

/// Pastes `patch` (side×side×3, 0–255) into a frame at time `t_s` of its motion; returns the
/// patch's box [x, y, w, h] in frame pixels.
pub fn paste_in_scene(
    rgb: &mut [u8],
    size: u32,
    patch: &Array3<f32>,
    m: &SceneMotion,
    t_s: f32,
    rng: &mut StdRng,
) -> [u32; 4] {
    let n = size as usize;
    let side = patch.dim().0 as f32;
    let jx = rng.random_range(-m.jitter..=m.jitter);
    let jy = rng.random_range(-m.jitter..=m.jitter);
    let half_max = side * 0.8;
    let cx = (m.cx + m.vx * t_s + jx).clamp(half_max, n as f32 - half_max);
    let cy = (m.cy + m.vy * t_s + jy).clamp(half_max, n as f32 - half_max);
    let scale = (m.scale * (1.0 + m.scale_rate * t_s)).clamp(0.8, 1.2);
    let (c, s) = (m.angle.cos(), m.angle.sin());
    let r = side * scale * 0.75;
    let (x0, x1) = (
        (cx - r).floor().max(0.0) as usize,
        ((cx + r).ceil() as usize).min(n),
    );
    let (y0, y1) = (
        (cy - r).floor().max(0.0) as usize,
        ((cy + r).ceil() as usize).min(n),
    );
    let (mut bx0, mut by0, mut bx1, mut by1) = (usize::MAX, usize::MAX, 0, 0);
    let sample = |u: f32, v: f32, ch: usize| -> f32 {
        let iu = (u as usize).min(patch.dim().1 - 1);
        let iv = (v as usize).min(patch.dim().0 - 1);
        if !m.blur {
            return patch[[iv, iu, ch]];
        }
        let mut acc = 0.0;
        let mut k = 0.0;
        for dv in -1i32..=1 {
            for du in -1i32..=1 {
                let (a, b) = (iu as i32 + du, iv as i32 + dv);
                if a >= 0 && b >= 0 && (a as usize) < patch.dim().1 && (b as usize) < patch.dim().0
                {
                    acc += patch[[b as usize, a as usize, ch]];
                    k += 1.0;
                }
            }
        }
        acc / k
    };
    for y in y0..y1 {
        for x in x0..x1 {
            let (dx, dy) = (x as f32 + 0.5 - cx, y as f32 + 0.5 - cy);
            // Inverse of rotation·scale with a mild projective term.
            let w = 1.0 + m.persp.0 * dx + m.persp.1 * dy;
            let (dx, dy) = (dx / w, dy / w);
            let u = (c * dx + s * dy) / scale + side / 2.0;
            let v = (-s * dx + c * dy) / scale + side / 2.0;
            if u >= 0.0 && v >= 0.0 && u < side && v < side {
                for ch in 0..3 {
                    let val = sample(u, v, ch) * m.gain;
                    rgb[(y * n + x) * 3 + ch] = val.round().clamp(0.0, 255.0) as u8;
                }
                bx0 = bx0.min(x);
                by0 = by0.min(y);
                bx1 = bx1.max(x + 1);
                by1 = by1.max(y + 1);
            }
        }
    }
    if bx1 == 0 {
        return [0; 4];
    }
    [
        bx0 as u32,
        by0 as u32,
        (bx1 - bx0) as u32,
        (by1 - by0) as u32,
    ]
}

/// Intersection over union of two [x, y, w, h] boxes (the response statistics' own).
pub use crate::response::region::iou;

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn scene_patch_stays_in_frame_and_its_box_covers_it() {
        let patch = Array3::from_elem((40, 40, 3), 255.0f32);
        let mut rng = StdRng::seed_from_u64(3);
        for t in 0..20 {
            let m = SceneMotion::random(40, 224, &mut rng);
            let mut rgb = vec![0u8; 224 * 224 * 3];
            let b = paste_in_scene(&mut rgb, 224, &patch, &m, t as f32 * 0.25, &mut rng);
            assert!(b[0] + b[2] <= 224 && b[1] + b[3] <= 224);
            let lit = rgb.chunks(3).filter(|p| p[0] > 0).count() as f64;
            // Gain 0.85–1.15 and rotation: the patch area is 40² × scale² (0.8–1.2).
            assert!(lit > 0.6 * 1600.0 && lit < 1.5 * 1600.0, "{lit}");
            assert!(lit <= (b[2] * b[3]) as f64);
        }
    }

    #[test]
    fn iou_of_boxes() {
        assert_eq!(iou([0, 0, 10, 10], [0, 0, 10, 10]), 1.0);
        assert!((iou([0, 0, 10, 10], [5, 0, 10, 10]) - 50.0 / 150.0).abs() < 1e-12);
        assert_eq!(iou([0, 0, 10, 10], [20, 20, 5, 5]), 0.0);
    }

    #[test]
    fn kinds_round_trip_their_names() {
        for k in StretchKind::ALL {
            assert_eq!(k.name().parse::<StretchKind>().unwrap(), k);
        }
        assert!("fgsm".parse::<StretchKind>().is_err());
    }
}
