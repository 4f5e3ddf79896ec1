//! The explain view's heat layer: a response map blended over a frame with an opacity that
//! follows the heat, so the scene stays visible where the network does not look.

use image::{ImageBuffer, Luma, RgbImage, imageops};
use ndarray::ArrayView2;

/// Normalised heat below this is not drawn at all (the frame shows through unchanged).
pub const HEAT_FLOOR: f32 = 0.2;
/// Normalised heat at and above this gets the full opacity [`HEAT_MAX_ALPHA`].
pub const HEAT_FULL: f32 = 0.7;
/// Largest opacity of the heat colour: even the peak leaves the scene faintly visible.
pub const HEAT_MAX_ALPHA: f32 = 0.75;
/// Blur of the response before normalising, in map pixels: guided-backprop maps are speckled
/// pixel to pixel, and a peak of one pixel would make the rest of the map vanish.
const SMOOTH_SIGMA: f32 = 2.5;
/// The heat scale's top is this quantile of the smoothed map, not its maximum: the few
/// hottest pixels saturate instead of pushing everything else under [`HEAT_FLOOR`].
const TOP_QUANTILE: f64 = 0.995;

/// The level that maps to heat 1: the [`TOP_QUANTILE`] of `v`, or its maximum when that
/// quantile is 0 (a map that is zero almost everywhere).
fn top_level(v: &[f32]) -> f32 {
    let mut s: Vec<f32> = v.to_vec();
    let k = ((s.len() as f64 - 1.0) * TOP_QUANTILE).round() as usize;
    if s.is_empty() {
        return 0.0;
    }
    let (_, q, _) = s.select_nth_unstable_by(k.min(v.len() - 1), f32::total_cmp);
    if *q > 0.0 {
        *q
    } else {
        v.iter().fold(0f32, |a, &x| a.max(x))
    }
}

/// Colour of normalised heat v in [0, 1]: the upper part of inferno (red → yellow), so no
/// dark purple ever covers the scene.
pub fn colour(v: f32) -> [u8; 3] {
    super::inferno(0.45 + 0.55 * v.clamp(0.0, 1.0))
}

/// Opacity of normalised heat v: 0 up to [`HEAT_FLOOR`], a smoothstep up to [`HEAT_FULL`].
pub fn alpha(v: f32) -> f32 {
    let t = ((v - HEAT_FLOOR) / (HEAT_FULL - HEAT_FLOOR)).clamp(0.0, 1.0);
    HEAT_MAX_ALPHA * t * t * (3.0 - 2.0 * t)
}

/// A response map's magnitude smoothed and scaled to [0, 1] (1 from its top quantile up; all 0
/// when flat zero), resized to `width`×`height` (bilinear).
pub fn normalised(
    map: ArrayView2<f32>,
    width: u32,
    height: u32,
) -> ImageBuffer<Luma<f32>, Vec<f32>> {
    let (h, w) = map.dim();
    let at = |x: u32, y: u32| {
        let v = map.get([y as usize, x as usize]).copied().unwrap_or(0.0);
        if v.is_finite() { v.abs() } else { 0.0 }
    };
    // `image` clamps f32 pixels to [0, 1] in its filters: scale into that range first.
    let peak = map
        .iter()
        .fold(0f32, |a, &v| if v.is_finite() { a.max(v.abs()) } else { a });
    let pre = if peak > 0.0 { 1.0 / peak } else { 0.0 };
    let raw: ImageBuffer<Luma<f32>, Vec<f32>> =
        ImageBuffer::from_fn(w.max(1) as u32, h.max(1) as u32, |x, y| {
            Luma([at(x, y) * pre])
        });
    let smooth = imageops::blur(&raw, SMOOTH_SIGMA);
    let max = top_level(smooth.as_raw());
    let mut out = imageops::resize(&smooth, width, height, imageops::FilterType::Triangle);
    for p in out.pixels_mut() {
        p[0] = if max > 0.0 {
            (p[0] / max).clamp(0.0, 1.0)
        } else {
            0.0
        };
    }
    out
}

/// Blends `map` (any size; resized to the frame) over `frame` in place, each pixel with the
/// opacity [`alpha`] of its normalised heat: where the response is low the frame is untouched.
pub fn blend_into(frame: &mut RgbImage, map: ArrayView2<f32>) {
    let heat = normalised(map, frame.width(), frame.height());
    for (o, h) in frame.pixels_mut().zip(heat.pixels()) {
        let v = h[0];
        let a = alpha(v);
        if a <= 0.0 {
            continue;
        }
        let c = colour(v);
        for k in 0..3 {
            o[k] = (o[k] as f32 * (1.0 - a) + c[k] as f32 * a).round() as u8;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgb;
    use ndarray::Array2;

    #[test]
    fn opacity_is_zero_where_heat_is_low_and_full_at_the_peak() {
        assert_eq!(alpha(0.0), 0.0);
        assert_eq!(alpha(HEAT_FLOOR), 0.0);
        assert!((alpha(1.0) - HEAT_MAX_ALPHA).abs() < 1e-6);
        assert!(alpha(0.5) > 0.0 && alpha(0.5) < HEAT_MAX_ALPHA);
    }

    #[test]
    fn large_responses_are_not_clipped_by_the_filters() {
        // Real guided-backprop magnitudes run into the thousands.
        let mut m = Array2::<f32>::from_elem((40, 40), 1.0);
        m[[20, 20]] = 5000.0;
        let n = normalised(m.view(), 40, 40);
        assert!(n.get_pixel(20, 20)[0] > 0.99);
        assert!(n.get_pixel(2, 2)[0] < 0.05, "{}", n.get_pixel(2, 2)[0]);
    }

    #[test]
    fn the_colour_map_has_no_dark_end() {
        // inferno(0) is near black: the low end of the heat must be well lit.
        let [r, g, b] = colour(0.0);
        assert!(r as u32 + g as u32 + b as u32 > 150, "{r} {g} {b}");
    }

    #[test]
    fn blending_leaves_cold_pixels_alone_and_colours_the_peak() {
        let mut m = Array2::<f32>::zeros((56, 56));
        m[[10, 40]] = 5.0;
        m[[11, 40]] = 5.0;
        let before = RgbImage::from_pixel(320, 180, Rgb([40, 90, 140]));
        let mut out = before.clone();
        blend_into(&mut out, m.view());
        assert_eq!(out.dimensions(), before.dimensions());
        // Peak at map (x 40, y 10.5) → frame (40.5/56*320, 11/56*180).
        let (px, py) = ((40.5 / 56.0 * 320.0) as u32, (11.0 / 56.0 * 180.0) as u32);
        assert_ne!(out.get_pixel(px, py), before.get_pixel(px, py));
        // Far away from it: untouched.
        assert_eq!(out.get_pixel(20, 160), before.get_pixel(20, 160));
        let changed = out
            .pixels()
            .zip(before.pixels())
            .filter(|(a, b)| a != b)
            .count();
        assert!(changed < (320 * 180) / 10, "{changed} pixels changed");
    }
}
