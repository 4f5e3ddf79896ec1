//! Squeezers and self-comparison measures for the learned combiner (Xu et al. 2018, feature
//! squeezing; FINDINGS.md: the response of a frame against that of its median-filtered copy).
//!
//! A squeezer maps an 8-bit frame to a nearby frame that an imperceptible perturbation does not
//! survive; a clean frame's class distribution and response barely move under it, an
//! adversarial one's do. Frames are H×W×3 floats in 0–255, as everywhere in the crate.

use ndarray::{Array3, ArrayView3};

/// 3×3 median filter per channel. Border pixels use edge replication, which for a 3×3 window
/// equals scipy.ndimage's default `reflect` mode (the mirror of the border pixel is itself).
pub fn median3(px: ArrayView3<f32>) -> Array3<f32> {
    let (h, w, c) = px.dim();
    let mut out = Array3::<f32>::zeros((h, w, c));
    if h == 0 || w == 0 {
        return out;
    }
    let mut win = [0f32; 9];
    for y in 0..h {
        for x in 0..w {
            for ch in 0..c {
                let mut k = 0;
                for dy in [-1i64, 0, 1] {
                    let yy = (y as i64 + dy).clamp(0, h as i64 - 1) as usize;
                    for dx in [-1i64, 0, 1] {
                        let xx = (x as i64 + dx).clamp(0, w as i64 - 1) as usize;
                        win[k] = px[[yy, xx, ch]];
                        k += 1;
                    }
                }
                // Nine samples: a partial selection is cheaper than sorting them.
                let (_, m, _) = win.select_nth_unstable_by(4, |a, b| a.total_cmp(b));
                out[[y, x, ch]] = *m;
            }
        }
    }
    out
}

/// Bit-depth reduction to `bits` bits per channel (1–8), as in feature squeezing:
/// v ↦ round(v/255 · (2^bits − 1)) / (2^bits − 1) · 255.
pub fn bit_depth(px: ArrayView3<f32>, bits: u32) -> Array3<f32> {
    let levels = ((1u32 << bits.clamp(1, 8)) - 1) as f32;
    px.mapv(|v| (v.clamp(0.0, 255.0) / 255.0 * levels).round() / levels * 255.0)
}

/// L1 distance between two class distributions.
pub fn l1(p: &[f32], q: &[f32]) -> f64 {
    p.iter().zip(q).map(|(a, b)| (a - b).abs() as f64).sum()
}

/// Probability floor inside [`kl`]: keeps a class the squeezed copy gives zero mass finite.
pub const KL_FLOOR: f64 = 1e-12;

/// KL(p ‖ q) in nats, probabilities floored at [`KL_FLOOR`].
pub fn kl(p: &[f32], q: &[f32]) -> f64 {
    p.iter()
        .zip(q)
        .map(|(&a, &b)| {
            let a = (a as f64).max(KL_FLOOR);
            let b = (b as f64).max(KL_FLOOR);
            a * (a / b).ln()
        })
        .sum::<f64>()
        .max(0.0)
}

/// Cosine distance 1 − cos(a, b) between two responses (any equal shapes); 1 when either is 0.
pub fn cosine_distance(a: ArrayView3<f32>, b: ArrayView3<f32>) -> f64 {
    let (mut ab, mut aa, mut bb) = (0f64, 0f64, 0f64);
    for (&x, &y) in a.iter().zip(b.iter()) {
        let (x, y) = (x as f64, y as f64);
        ab += x * y;
        aa += x * x;
        bb += y * y;
    }
    if aa <= 0.0 || bb <= 0.0 {
        return 1.0;
    }
    1.0 - ab / (aa.sqrt() * bb.sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_removes_an_isolated_spike_and_keeps_flat_regions() {
        let mut px = Array3::<f32>::from_elem((5, 5, 3), 10.0);
        px[[2, 2, 1]] = 200.0;
        let m = median3(px.view());
        assert!(m.iter().all(|&v| v == 10.0));
    }

    #[test]
    fn bit_depth_maps_to_the_grid() {
        let px = Array3::from_shape_vec((1, 1, 3), vec![0.0, 130.0, 255.0]).unwrap();
        let q = bit_depth(px.view(), 1);
        assert_eq!(q.as_slice().unwrap(), &[0.0, 255.0, 255.0]);
        assert_eq!(bit_depth(px.view(), 8), px);
    }

    #[test]
    fn kl_and_l1_of_equal_distributions_are_zero() {
        let p = [0.5f32, 0.3, 0.2];
        assert!(kl(&p, &p).abs() < 1e-12);
        assert_eq!(l1(&p, &p), 0.0);
        assert!((l1(&p, &[0.2, 0.3, 0.5]) - 0.6).abs() < 1e-6);
    }
}
