//! Response → gray map in [0, 1].
//!
//! The paper does not state its gray conversion, so the variants measured in
//! `FINDINGS.md` are all available. The default is `signed`: each channel is divided by the
//! response's max |r| and mapped to [0, 1] with zero at mid-gray, then the channels are
//! averaged. It keeps the sign (guided backprop is mostly positive, adversarial noise is not)
//! and was the best-separating reading on training photos.

// `!(x > 0.0)` is deliberate below: it is also true for NaN, so an all-NaN or all-zero
// response yields a flat map instead of dividing by NaN.
#![allow(clippy::neg_cmp_op_on_partial_ord)]

use ndarray::{Array2, ArrayView3, Axis};
use serde::{Deserialize, Serialize};
use std::str::FromStr;

/// Gray-map conversion of a C×H×W response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GrayMode {
    /// Σ_c |r|, min-max normalised.
    Abs,
    /// Σ_c |r| divided by its 99th percentile, clipped to 1.
    AbsP99,
    /// r / max|r| mapped to [0, 1] with zero at 0.5, channel mean.
    #[default]
    Signed,
    /// As `signed`, with the 99th percentile of |r| instead of the max, clipped.
    SignedP99,
}

impl FromStr for GrayMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "abs" => Self::Abs,
            "abs-p99" => Self::AbsP99,
            "signed" => Self::Signed,
            "signed-p99" => Self::SignedP99,
            _ => {
                return Err(format!(
                    "unknown gray mode {s:?} (abs, abs-p99, signed, signed-p99)"
                ));
            }
        })
    }
}

/// Σ_c |r|: the response magnitude per pixel.
pub fn magnitude(r: ArrayView3<f32>) -> Array2<f32> {
    r.map(|v| v.abs()).sum_axis(Axis(0))
}

/// The q-quantile of the values (0 ≤ q ≤ 1), by selection.
fn quantile(values: impl Iterator<Item = f32>, q: f64) -> f32 {
    let mut v: Vec<f32> = values.collect();
    if v.is_empty() {
        return 0.0;
    }
    let k = ((v.len() - 1) as f64 * q).round() as usize;
    *v.select_nth_unstable_by(k, |a, b| a.total_cmp(b)).1
}

/// Converts a response to a gray map in [0, 1].
pub fn gray_map(r: ArrayView3<f32>, mode: GrayMode) -> Array2<f32> {
    let c = r.len_of(Axis(0)).max(1) as f32;
    match mode {
        GrayMode::Abs => {
            let m = magnitude(r);
            let (lo, hi) = m
                .iter()
                .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| {
                    (a.min(v), b.max(v))
                });
            let span = hi - lo;
            if !(span > 0.0) {
                return Array2::zeros(m.dim());
            }
            m.map(|v| (v - lo) / span)
        }
        GrayMode::AbsP99 => {
            let m = magnitude(r);
            let p = quantile(m.iter().copied(), 0.99);
            if !(p > 0.0) {
                return Array2::zeros(m.dim());
            }
            m.map(|v| (v / p).min(1.0))
        }
        GrayMode::Signed | GrayMode::SignedP99 => {
            let scale = if mode == GrayMode::Signed {
                r.iter().fold(0f32, |a, v| a.max(v.abs()))
            } else {
                quantile(r.iter().map(|v| v.abs()), 0.99)
            };
            let dim = (r.len_of(Axis(1)), r.len_of(Axis(2)));
            if !(scale > 0.0) {
                return Array2::from_elem(dim, 0.5);
            }
            let s = r.sum_axis(Axis(0));
            s.map(|v| ((v / (scale * c)).clamp(-1.0, 1.0) + 1.0) * 0.5)
        }
    }
}
