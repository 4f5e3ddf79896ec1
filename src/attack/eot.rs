//! Expectation over transformation (Athalye et al. 2018) for physical patches, and the Adam
//! optimiser the patch trainer uses.
//!
//! One [`Transform`] is what a printed sticker goes through between the attacker and the
//! camera: a position, a scale, an in-plane rotation and a brightness/contrast change. The
//! pasted pixels are always 8-bit (rounded, clipped), as a camera delivers them; training
//! passes gradients straight through the rounding (BPDA) and blocks them where clipping bites.

use super::patch::Placement;
use rand::{Rng, rngs::StdRng};
use serde::{Deserialize, Serialize};

/// Ranges of the random transformation, sampled uniformly.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Jitter {
    /// Scale range of the patch side.
    pub scale: (f32, f32),
    /// Rotation range, ± degrees.
    pub rotation_deg: f32,
    /// Additive brightness range, ± pixel units.
    pub brightness: f32,
    /// Contrast range around mid-gray, ± fraction (0.1 = ×0.9 to ×1.1).
    pub contrast: f32,
}

impl Default for Jitter {
    fn default() -> Self {
        Jitter {
            scale: (0.8, 1.2),
            rotation_deg: 20.0,
            brightness: 16.0,
            contrast: 0.1,
        }
    }
}

impl Jitter {
    /// No transformation beyond a random position (unit scale, no rotation, no colour change).
    pub fn position_only() -> Jitter {
        Jitter {
            scale: (1.0, 1.0),
            rotation_deg: 0.0,
            brightness: 0.0,
            contrast: 0.0,
        }
    }

    /// A random transformation of a `side`² patch that keeps it inside a w×h image.
    pub fn sample(&self, side: usize, w: usize, h: usize, rng: &mut StdRng) -> Transform {
        let uniform = |lo: f32, hi: f32, rng: &mut StdRng| {
            if hi > lo {
                rng.random_range(lo..=hi)
            } else {
                lo
            }
        };
        let scale = uniform(self.scale.0, self.scale.1, rng);
        let r = self.rotation_deg.abs().to_radians();
        let angle = uniform(-r, r, rng);
        let half = side as f32 * scale * (angle.cos().abs() + angle.sin().abs()) / 2.0;
        let pick = |n: usize, rng: &mut StdRng| {
            let (lo, hi) = (half, n as f32 - half);
            if hi > lo {
                rng.random_range(lo..=hi)
            } else {
                n as f32 / 2.0
            }
        };
        let placement = Placement {
            cx: pick(w, rng),
            cy: pick(h, rng),
            scale,
            angle,
        };
        let b = self.brightness.abs();
        let c = self.contrast.abs();
        Transform {
            placement,
            brightness: uniform(-b, b, rng),
            contrast: uniform(1.0 - c, 1.0 + c, rng),
        }
    }
}

/// One sampled transformation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Transform {
    /// Position, scale and rotation.
    pub placement: Placement,
    /// Added to every channel, pixel units.
    pub brightness: f32,
    /// Multiplies the distance from mid-gray.
    pub contrast: f32,
}

impl Transform {
    /// The identity colour change at a placement.
    pub fn at(placement: Placement) -> Transform {
        Transform {
            placement,
            brightness: 0.0,
            contrast: 1.0,
        }
    }

    /// The 8-bit value a patch pixel `p` shows after the colour change.
    pub fn colour(&self, p: f32) -> f32 {
        self.colour_float(p).round().clamp(0.0, 255.0)
    }

    fn colour_float(&self, p: f32) -> f32 {
        self.contrast * (p - 127.5) + 127.5 + self.brightness
    }

    /// d colour / d p: the contrast where the value is not clipped, else 0 (straight through
    /// the rounding).
    pub fn colour_grad(&self, p: f32) -> f32 {
        let v = self.colour_float(p);
        if (0.0..=255.0).contains(&v) {
            self.contrast
        } else {
            0.0
        }
    }
}

/// Adam (Kingma & Ba 2015) on a flat parameter vector.
#[derive(Debug, Clone)]
pub struct Adam {
    m: Vec<f32>,
    v: Vec<f32>,
    t: i32,
    /// First-moment decay.
    pub beta1: f32,
    /// Second-moment decay.
    pub beta2: f32,
    /// Denominator guard.
    pub eps: f32,
}

impl Adam {
    /// Optimiser state for `n` parameters with the usual constants.
    pub fn new(n: usize) -> Adam {
        Adam {
            m: vec![0.0; n],
            v: vec![0.0; n],
            t: 0,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
        }
    }

    /// One descent step of size `lr` along `grad` (bias-corrected moments).
    pub fn step(&mut self, params: &mut [f32], grad: &[f32], lr: f32) {
        assert_eq!(params.len(), self.m.len(), "Adam: parameter count changed");
        assert_eq!(grad.len(), self.m.len(), "Adam: gradient length");
        self.t += 1;
        let c1 = 1.0 - self.beta1.powi(self.t);
        let c2 = 1.0 - self.beta2.powi(self.t);
        for i in 0..params.len() {
            let g = grad[i];
            self.m[i] = self.beta1 * self.m[i] + (1.0 - self.beta1) * g;
            self.v[i] = self.beta2 * self.v[i] + (1.0 - self.beta2) * g * g;
            let mh = self.m[i] / c1;
            let vh = self.v[i] / c2;
            params[i] -= lr * mh / (vh.sqrt() + self.eps);
        }
    }
}
