//! Drawing: colour maps, heat maps, the explain panel (the paper's Figure 3) and fonts.

use image::{Rgb, RgbImage, imageops};
use ndarray::{ArrayView2, ArrayView3};
use std::sync::OnceLock;

pub mod detections;
pub mod heat;
pub mod strip;

/// Fonts looked for to label plots; without one, plots are drawn without text.
const FONT_PATHS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
];

/// Registers a system sans-serif font with plotters once; false when none is installed
/// (Debian: `fonts-dejavu-core`), in which case callers skip text.
pub fn font_available() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| {
        for p in FONT_PATHS {
            if let Ok(bytes) = std::fs::read(p) {
                // plotters keeps a 'static reference; one font for the process lifetime.
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font(
                    "sans-serif",
                    plotters::style::FontStyle::Normal,
                    bytes,
                )
                .is_ok()
                {
                    return true;
                }
            }
        }
        tracing::debug!("no TTF font found; plots will have no text");
        false
    })
}

/// Inferno colour of v in [0, 1].
pub fn inferno(v: f32) -> [u8; 3] {
    let c = colorous::INFERNO.eval_continuous(v.clamp(0.0, 1.0) as f64);
    [c.r, c.g, c.b]
}

/// A scalar map as an inferno heat map, scaled from [lo, hi].
pub fn heat_rgb(m: ArrayView2<f32>, lo: f32, hi: f32) -> RgbImage {
    let (h, w) = m.dim();
    let span = if hi > lo { hi - lo } else { 1.0 };
    RgbImage::from_fn(w as u32, h as u32, |x, y| {
        Rgb(inferno((m[[y as usize, x as usize]] - lo) / span))
    })
}

/// A C×H×W response in RGB order shown as an image, the usual guided-backprop picture:
/// each channel divided by the largest |r| and centred on mid-gray.
pub fn response_rgb(r: ArrayView3<f32>) -> RgbImage {
    let (c, h, w) = r.dim();
    let m = r.iter().fold(0f32, |a, v| a.max(v.abs()));
    let m = if m > 0.0 { m } else { 1.0 };
    RgbImage::from_fn(w as u32, h as u32, |x, y| {
        let px = |k: usize| {
            let v = r[[k.min(c.saturating_sub(1)), y as usize, x as usize]];
            ((v / m * 0.5 + 0.5).clamp(0.0, 1.0) * 255.0) as u8
        };
        Rgb([px(0), px(1), px(2)])
    })
}

/// Blends a [0, 1] map as a heat map over a frame (maps are resized to the frame).
pub fn blend(frame: &RgbImage, map: ArrayView2<f32>, alpha: f32) -> RgbImage {
    let heat = heat_rgb(map, 0.0, 1.0);
    let heat = imageops::resize(
        &heat,
        frame.width(),
        frame.height(),
        imageops::FilterType::Triangle,
    );
    let mut out = frame.clone();
    for (o, h) in out.pixels_mut().zip(heat.pixels()) {
        for k in 0..3 {
            o[k] = (o[k] as f32 * (1.0 - alpha) + h[k] as f32 * alpha) as u8;
        }
    }
    out
}

/// Draws a box outline (x, y, w, h) in place.
pub fn draw_box(img: &mut RgbImage, b: [u32; 4], color: [u8; 3]) {
    let (w, h) = img.dimensions();
    let (x0, y0) = (b[0].min(w - 1), b[1].min(h - 1));
    let (x1, y1) = ((b[0] + b[2]).min(w) - 1, (b[1] + b[3]).min(h) - 1);
    for x in x0..=x1 {
        img.put_pixel(x, y0, Rgb(color));
        img.put_pixel(x, y1, Rgb(color));
    }
    for y in y0..=y1 {
        img.put_pixel(x0, y, Rgb(color));
        img.put_pixel(x1, y, Rgb(color));
    }
}

/// PNG bytes of an image.
pub fn png_bytes(img: &RgbImage) -> Vec<u8> {
    let mut buf = std::io::Cursor::new(Vec::new());
    // Encoding an in-memory RGB8 buffer cannot fail short of allocation failure.
    let _ = img.write_to(&mut buf, image::ImageFormat::Png);
    buf.into_inner()
}

/// JPEG bytes of an image (quality 85).
pub fn jpeg_bytes(img: &RgbImage) -> Vec<u8> {
    let mut buf = Vec::new();
    let _ = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut buf, 85).encode_image(img);
    buf
}

/// The explain panel (the paper's Figure 3): input image, feature response, and local-entropy
/// map with a colour bar in bits; `entropy_max` is the colour-bar top (log2 9 for 3×3 patches).
pub fn panel(
    image: &RgbImage,
    response: &RgbImage,
    entropy: ArrayView2<f32>,
    entropy_max: f32,
    title: &str,
) -> RgbImage {
    use plotters::prelude::*;
    let scale = 2u32;
    let (tw, th) = (image.width() * scale, image.height() * scale);
    let (gap, top, bottom, bar_w, bar_lab) = (16u32, 56u32, 16u32, 20u32, 56u32);
    let width = gap * 4 + tw * 3 + bar_w + bar_lab;
    let height = top + th + bottom;
    let mut canvas = RgbImage::from_pixel(width, height, Rgb([255, 255, 255]));
    let up = |img: &RgbImage| imageops::resize(img, tw, th, imageops::FilterType::Nearest);
    let ent = heat_rgb(entropy, 0.0, entropy_max);
    let tiles = [up(image), up(response), up(&ent)];
    for (i, t) in tiles.iter().enumerate() {
        imageops::overlay(
            &mut canvas,
            t,
            (gap + i as u32 * (tw + gap)) as i64,
            top as i64,
        );
    }
    let bar_x = gap * 4 + tw * 3 - gap + gap;
    for y in 0..th {
        let c = inferno(1.0 - y as f32 / (th - 1) as f32);
        for x in 0..bar_w {
            canvas.put_pixel(bar_x + x, top + y, Rgb(c));
        }
    }
    if font_available() {
        let (w, h) = canvas.dimensions();
        let buf: &mut [u8] = &mut canvas;
        let root = BitMapBackend::with_buffer(buf, (w, h)).into_drawing_area();
        let f = ("sans-serif", 18).into_font();
        let heads = [
            "input",
            "feature response (guided backprop)",
            "local entropy, 3×3 (bits)",
        ];
        for (i, head) in heads.iter().enumerate() {
            let _ = root.draw_text(
                head,
                &f.color(&BLACK),
                ((gap + i as u32 * (tw + gap)) as i32, (top - 24) as i32),
            );
        }
        let _ = root.draw_text(
            title,
            &("sans-serif", 20).into_font().color(&BLACK),
            (gap as i32, 6),
        );
        let ticks = 4;
        for k in 0..=ticks {
            let v = entropy_max * k as f32 / ticks as f32;
            let y = top as i32 + (th as f32 * (1.0 - k as f32 / ticks as f32)) as i32 - 8;
            let _ = root.draw_text(
                &format!("{v:.2}"),
                &("sans-serif", 14).into_font().color(&BLACK),
                ((bar_x + bar_w + 4) as i32, y),
            );
        }
        let _ = root.present();
    }
    canvas
}
