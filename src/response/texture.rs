//! The pixels' texture inside the response's box: the patch signal's check that what drew the
//! network looks like a printed patch.
//!
//! An adversarial patch is a high-contrast, high-frequency print: the three trained 5 % patches
//! have a mean absolute neighbour difference of 39–53 gray levels, 13–17 after a 3×3 blur, and
//! an H.264 round trip at quality 23 keeps that. A plain object on a plain background (one
//! bottle on a table) also concentrates the response, but its box measures 2–4. The patch
//! signal multiplies the concentration by [`gate`], so a smooth box cannot fire it.

/// Mean absolute difference between horizontally and vertically adjacent pixels of the gray
/// frame (mean of R, G, B) inside `bbox`, gray levels (0–255): the anisotropic total variation
/// per pixel pair. `bbox` is x, y, w, h in a `map` (w, h) grid laid over the frame, so a box
/// found on a response map of another size is scaled onto the frame. `None` when the box holds
/// fewer than 2×2 pixels or the frame is not w×h×3.
pub fn box_texture(rgb: &[u8], w: u32, h: u32, bbox: [u32; 4], map: (u32, u32)) -> Option<f64> {
    let (w, h) = (w as usize, h as usize);
    if rgb.len() != w * h * 3 || map.0 == 0 || map.1 == 0 {
        return None;
    }
    let sx = w as f64 / map.0 as f64;
    let sy = h as f64 / map.1 as f64;
    let x0 = ((bbox[0] as f64 * sx).floor() as usize).min(w);
    let y0 = ((bbox[1] as f64 * sy).floor() as usize).min(h);
    let x1 = (((bbox[0] + bbox[2]) as f64 * sx).ceil() as usize).min(w);
    let y1 = (((bbox[1] + bbox[3]) as f64 * sy).ceil() as usize).min(h);
    if x1 < x0 + 2 || y1 < y0 + 2 {
        return None;
    }
    let gray = |x: usize, y: usize| -> f64 {
        let i = (y * w + x) * 3;
        (rgb[i] as f64 + rgb[i + 1] as f64 + rgb[i + 2] as f64) / 3.0
    };
    let (mut sum, mut n) = (0.0, 0u64);
    for y in y0..y1 {
        for x in x0..x1 {
            let g = gray(x, y);
            if x + 1 < x1 {
                sum += (gray(x + 1, y) - g).abs();
                n += 1;
            }
            if y + 1 < y1 {
                sum += (gray(x, y + 1) - g).abs();
                n += 1;
            }
        }
    }
    Some(sum / n as f64)
}

/// The patch signal's texture gate: 1 at or above `floor` gray levels, 0 below it (a box that
/// smooth is not a print, so it cannot fire the patch signal). Without a measured texture, or
/// with the gate off (`floor` `None` or ≤ 0), 1. A soft form (texture / floor) was measured
/// first and left the smooth bottle scene's false alarms in (docs/EVAL.md).
pub fn gate(texture: Option<f64>, floor: Option<f64>) -> f64 {
    match (texture, floor) {
        (Some(t), Some(f)) if f > 0.0 && t < f => 0.0,
        _ => 1.0,
    }
}

/// The patch score of a concentration on an H×W×3 float image (0–255, as the eval harness
/// holds photos): the concentration times the gate of its box's texture at `floor`.
pub fn gated_score(
    concentration: f64,
    px: ndarray::ArrayView3<f32>,
    bbox: [u32; 4],
    map: (u32, u32),
    floor: Option<f64>,
) -> f64 {
    let (h, w, _) = px.dim();
    let rgb: Vec<u8> = px
        .iter()
        .map(|v| v.round().clamp(0.0, 255.0) as u8)
        .collect();
    concentration * gate(box_texture(&rgb, w as u32, h as u32, bbox, map), floor)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(w: usize, h: usize, f: impl Fn(usize, usize) -> u8) -> Vec<u8> {
        let mut v = Vec::with_capacity(w * h * 3);
        for y in 0..h {
            for x in 0..w {
                let g = f(x, y);
                v.extend([g, g, g]);
            }
        }
        v
    }

    #[test]
    fn flat_checkerboard_and_ramp() {
        let flat = frame(8, 8, |_, _| 90);
        assert_eq!(box_texture(&flat, 8, 8, [0, 0, 8, 8], (8, 8)), Some(0.0));
        // Every neighbour pair differs by 255.
        let check = frame(8, 8, |x, y| if (x + y) % 2 == 0 { 0 } else { 255 });
        assert_eq!(box_texture(&check, 8, 8, [0, 0, 8, 8], (8, 8)), Some(255.0));
        // A horizontal ramp of 10 per pixel: 7×8 horizontal pairs of 10, 8×7 vertical of 0.
        let ramp = frame(8, 8, |x, _| (x * 10) as u8);
        assert_eq!(box_texture(&ramp, 8, 8, [0, 0, 8, 8], (8, 8)), Some(5.0));
    }

    #[test]
    fn the_box_is_scaled_from_the_map_and_only_its_pixels_count() {
        // Checkerboard in the left half only; a box over the right half of a 4×4 map sees none.
        let f = frame(
            16,
            16,
            |x, y| if x < 8 && (x + y) % 2 == 0 { 255 } else { 0 },
        );
        assert_eq!(box_texture(&f, 16, 16, [2, 0, 2, 4], (4, 4)), Some(0.0));
        assert!(box_texture(&f, 16, 16, [0, 0, 2, 4], (4, 4)).unwrap() > 200.0);
        assert_eq!(box_texture(&f, 16, 16, [0, 0, 0, 4], (4, 4)), None);
        assert_eq!(box_texture(&f[..10], 16, 16, [0, 0, 2, 4], (4, 4)), None);
    }

    #[test]
    fn gate_vetoes_only_below_the_floor() {
        assert_eq!(gate(Some(20.0), Some(10.0)), 1.0);
        assert_eq!(gate(Some(2.5), Some(10.0)), 0.0);
        assert_eq!(gate(Some(10.0), Some(10.0)), 1.0);
        assert_eq!(gate(None, Some(10.0)), 1.0);
        assert_eq!(gate(Some(2.5), None), 1.0);
        assert_eq!(gate(Some(2.5), Some(0.0)), 1.0);
    }
}
