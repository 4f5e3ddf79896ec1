//! Scene cuts: how much the pixels of a frame changed, on a small gray thumbnail.
//!
//! An imperceptible attack changes each pixel by a few gray levels at most; a patch entering
//! the scene changes its own area. A cut, a camera moved or a light switched on changes most
//! of the frame. Comparing 32×32 box-averaged gray thumbnails keeps noise and compression
//! artefacts out and costs a few microseconds.

/// Side of the thumbnail, pixels.
pub const THUMB: usize = 32;

/// A frame's 32×32 box-averaged gray thumbnail (0–255).
#[derive(Debug, Clone, PartialEq)]
pub struct GrayThumb(Vec<f32>);

impl GrayThumb {
    /// The thumbnail of a tight RGB8 frame of `w`×`h` pixels (any size ≥ 1×1).
    pub fn new(rgb: &[u8], w: u32, h: u32) -> GrayThumb {
        let (w, h) = (w as usize, h as usize);
        let mut sum = vec![0f32; THUMB * THUMB];
        let mut count = vec![0u32; THUMB * THUMB];
        if w == 0 || h == 0 || rgb.len() < w * h * 3 {
            return GrayThumb(sum);
        }
        for y in 0..h {
            let ty = y * THUMB / h;
            for x in 0..w {
                let tx = x * THUMB / w;
                let i = (y * w + x) * 3;
                let g =
                    0.299 * rgb[i] as f32 + 0.587 * rgb[i + 1] as f32 + 0.114 * rgb[i + 2] as f32;
                sum[ty * THUMB + tx] += g;
                count[ty * THUMB + tx] += 1;
            }
        }
        for (s, c) in sum.iter_mut().zip(&count) {
            *s /= (*c).max(1) as f32;
        }
        GrayThumb(sum)
    }

    /// Mean absolute difference to another thumbnail, gray levels.
    pub fn change(&self, other: &GrayThumb) -> f64 {
        let n = self.0.len().max(1) as f64;
        self.0
            .iter()
            .zip(&other.0)
            .map(|(a, b)| (a - b).abs() as f64)
            .sum::<f64>()
            / n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_perturbations_are_small_and_cuts_are_large() {
        let (w, h) = (64u32, 48u32);
        let a: Vec<u8> = (0..w * h * 3).map(|i| (i % 200) as u8 + 20).collect();
        // ±4 gray levels of "FGSM" noise.
        let b: Vec<u8> = a
            .iter()
            .enumerate()
            .map(|(i, v)| if i % 2 == 0 { v + 4 } else { v - 4 })
            .collect();
        let c: Vec<u8> = a.iter().map(|v| 255 - v).collect();
        let (ta, tb, tc) = (
            GrayThumb::new(&a, w, h),
            GrayThumb::new(&b, w, h),
            GrayThumb::new(&c, w, h),
        );
        assert!(ta.change(&tb) <= 4.0);
        assert!(ta.change(&tc) > 30.0);
        assert_eq!(ta.change(&ta), 0.0);
    }
}
