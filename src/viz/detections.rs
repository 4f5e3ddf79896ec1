//! Object detections drawn over a frame: each box outlined in its class colour, with a label
//! tag (name and score) on its top edge. Used by `explain`; meant for `watch` too.

use crate::engine::detect::Detection;
use image::{Rgb, RgbImage};

/// Box colours, cycled by class index; bright enough to read on photos and on the inferno maps.
pub const PALETTE: [[u8; 3]; 8] = [
    [255, 64, 64],
    [64, 200, 255],
    [255, 200, 0],
    [120, 255, 80],
    [255, 100, 220],
    [255, 140, 40],
    [170, 120, 255],
    [0, 230, 180],
];

/// The colour of a class.
pub fn colour(class: usize) -> [u8; 3] {
    PALETTE[class % PALETTE.len()]
}

/// Label text of a detection, e.g. `person 0.71`.
pub fn label(d: &Detection) -> String {
    format!("{} {:.2}", d.label, d.score)
}

/// Draws `dets` in place; their boxes must be in `img`'s pixels (see
/// [`crate::engine::detect::rescale`]). `thickness` is the outline width in pixels (at least
/// 1). Without a font (see [`super::font_available`]) only the boxes are drawn.
pub fn draw(img: &mut RgbImage, dets: &[Detection], thickness: u32) {
    let (w, h) = img.dimensions();
    if w == 0 || h == 0 {
        return;
    }
    let t = thickness.max(1);
    // Lowest score first, so the strongest detection's outline and tag end up on top.
    let mut order: Vec<&Detection> = dets.iter().collect();
    order.sort_by(|a, b| a.score.total_cmp(&b.score));
    let px = |v: f32, max: u32| (v.max(0.0).round() as u32).min(max - 1);
    let mut tags = Vec::with_capacity(order.len());
    for d in &order {
        let c = Rgb(colour(d.class));
        let (x0, y0, x1, y1) = (
            px(d.bbox[0], w),
            px(d.bbox[1], h),
            px(d.bbox[2], w),
            px(d.bbox[3], h),
        );
        for k in 0..t {
            let (a0, b0) = ((x0 + k).min(x1), (y0 + k).min(y1));
            let (a1, b1) = (x1.saturating_sub(k).max(a0), y1.saturating_sub(k).max(b0));
            for x in a0..=a1 {
                img.put_pixel(x, b0, c);
                img.put_pixel(x, b1, c);
            }
            for y in b0..=b1 {
                img.put_pixel(a0, y, c);
                img.put_pixel(a1, y, c);
            }
        }
        tags.push((x0, y0, colour(d.class), label(d)));
    }
    if tags.is_empty() || !super::font_available() {
        return;
    }
    use plotters::prelude::*;
    // Tag height follows the frame so labels stay legible on 512-px tiles and HD frames alike.
    let size = (h / 32).clamp(11, 28);
    let font = ("sans-serif", size as f64).into_font();
    let placed: Vec<(u32, u32, u32, u32, [u8; 3], String)> = tags
        .into_iter()
        .map(|(x0, y0, c, text)| {
            let (tw, th) = font
                .box_size(&text)
                .unwrap_or((size * text.len() as u32 / 2, size));
            let (tw, th) = ((tw + 6).min(w), (th + 4).min(h));
            let ty = if y0 >= th { y0 - th } else { y0 };
            (x0.min(w - tw), ty, tw, th, c, text)
        })
        .collect();
    for (tx, ty, tw, th, c, _) in &placed {
        super::strip::shade(img, (*tx, tx + tw), (*ty, ty + th), *c, 0.85);
    }
    let buf: &mut [u8] = img;
    let root = BitMapBackend::with_buffer(buf, (w, h)).into_drawing_area();
    let style = font.color(&BLACK);
    for (tx, ty, _, _, _, text) in &placed {
        let _ = root.draw_text(text, &style, (*tx as i32 + 3, *ty as i32 + 1));
    }
    let _ = root.present();
}
