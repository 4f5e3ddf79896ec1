//! Pixel work on the streaming thread: squashing a packed RGB-family frame to the model's
//! size × size RGB8, and drawing the overlay (heat map, box, caption band) into a frame.
//! Rows are addressed through the frame's real stride (GStreamer pads RGB rows to 4 bytes).

use image::RgbImage;

/// Byte offsets of R, G, B inside one pixel, and the pixel size, of a packed format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// Offset of red.
    pub r: usize,
    /// Offset of green.
    pub g: usize,
    /// Offset of blue.
    pub b: usize,
    /// Bytes per pixel.
    pub px: usize,
}

impl Layout {
    /// The layout of a supported format; `None` for anything else.
    pub fn of(f: gst_video::VideoFormat) -> Option<Layout> {
        use gst_video::VideoFormat as F;
        let l = |r, g, b, px| Some(Layout { r, g, b, px });
        match f {
            F::Rgb => l(0, 1, 2, 3),
            F::Bgr => l(2, 1, 0, 3),
            F::Rgbx | F::Rgba => l(0, 1, 2, 4),
            F::Bgrx | F::Bgra => l(2, 1, 0, 4),
            F::Xrgb | F::Argb => l(1, 2, 3, 4),
            F::Xbgr | F::Abgr => l(3, 2, 1, 4),
            _ => None,
        }
    }
}

/// The formats the element accepts (packed 8-bit RGB family; the frame is read in place).
pub const FORMATS: [gst_video::VideoFormat; 10] = {
    use gst_video::VideoFormat as F;
    [
        F::Rgb,
        F::Bgr,
        F::Rgbx,
        F::Bgrx,
        F::Xrgb,
        F::Xbgr,
        F::Rgba,
        F::Bgra,
        F::Argb,
        F::Abgr,
    ]
};

/// Linear (triangle) filter weights for resampling `src` samples onto `dst`, pixel centres
/// aligned. When shrinking, the triangle is widened to the scale factor, so every input
/// sample counts (a plain 2-tap filter would skip most of them and alias); weights falling
/// outside the frame are dropped and the rest renormalised.
fn weights(src: usize, dst: usize) -> Vec<(usize, Vec<f32>)> {
    let scale = src as f32 / dst as f32;
    let support = scale.max(1.0);
    (0..dst)
        .map(|o| {
            let c = (o as f32 + 0.5) * scale - 0.5;
            let lo = (c - support).ceil().max(0.0) as usize;
            let hi = ((c + support).floor() as usize).min(src - 1);
            let mut w: Vec<f32> = (lo..=hi)
                .map(|i| (1.0 - (i as f32 - c).abs() / support).max(0.0))
                .collect();
            let sum: f32 = w.iter().sum();
            if sum > 0.0 {
                w.iter_mut().for_each(|v| *v /= sum);
            }
            (lo, w)
        })
        .collect()
}

/// Squashes a w × h frame (rows `stride` bytes apart) to tight size × size RGB8 with a
/// separable linear filter: the whole scene stays visible, as the `watch` sources do it.
pub fn squash(data: &[u8], stride: usize, w: usize, h: usize, l: Layout, size: usize) -> Vec<u8> {
    let xs = weights(w, size);
    let ys = weights(h, size);
    // Horizontal pass over every input row, then vertical.
    let mut rows = vec![0f32; h * size * 3];
    for y in 0..h {
        let row = &data[y * stride..];
        let out = &mut rows[y * size * 3..(y + 1) * size * 3];
        for (ox, (x0, wx)) in xs.iter().enumerate() {
            let mut acc = [0f32; 3];
            for (k, wk) in wx.iter().enumerate() {
                let p = &row[(x0 + k) * l.px..];
                acc[0] += wk * p[l.r] as f32;
                acc[1] += wk * p[l.g] as f32;
                acc[2] += wk * p[l.b] as f32;
            }
            out[ox * 3..ox * 3 + 3].copy_from_slice(&acc);
        }
    }
    let mut out = vec![0u8; size * size * 3];
    for (oy, (y0, wy)) in ys.iter().enumerate() {
        let dst = &mut out[oy * size * 3..(oy + 1) * size * 3];
        for (i, d) in dst.iter_mut().enumerate() {
            let v: f32 = wy
                .iter()
                .enumerate()
                .map(|(k, wk)| wk * rows[(y0 + k) * size * 3 + i])
                .sum();
            *d = v.round().clamp(0.0, 255.0) as u8;
        }
    }
    out
}

/// Blends a frame-size RGB heat image into the frame with weight `alpha`.
pub fn blend(data: &mut [u8], stride: usize, l: Layout, heat: &RgbImage, alpha: f32) {
    let a = (alpha.clamp(0.0, 1.0) * 256.0) as u32;
    let (w, h) = heat.dimensions();
    for y in 0..h as usize {
        let row = &mut data[y * stride..];
        for x in 0..w as usize {
            let hp = heat.get_pixel(x as u32, y as u32).0;
            for (k, off) in [l.r, l.g, l.b].into_iter().enumerate() {
                let o = &mut row[x * l.px + off];
                *o = ((*o as u32 * (256 - a) + hp[k] as u32 * a) >> 8) as u8;
            }
        }
    }
}

/// Draws a 2-pixel box outline (x, y, w, h in frame pixels), clipped to the frame.
pub fn draw_box(
    data: &mut [u8],
    stride: usize,
    (w, h): (usize, usize),
    l: Layout,
    b: [u32; 4],
    color: [u8; 3],
) {
    if w == 0 || h == 0 || b[2] == 0 || b[3] == 0 {
        return;
    }
    let x0 = (b[0] as usize).min(w - 1);
    let y0 = (b[1] as usize).min(h - 1);
    let x1 = (b[0] as usize + b[2] as usize).min(w) - 1;
    let y1 = (b[1] as usize + b[3] as usize).min(h) - 1;
    let mut put = |x: usize, y: usize| {
        let p = &mut data[y * stride + x * l.px..];
        p[l.r] = color[0];
        p[l.g] = color[1];
        p[l.b] = color[2];
    };
    for t in 0..2 {
        for x in x0..=x1 {
            put(x, (y0 + t).min(y1));
            put(x, y1.saturating_sub(t).max(y0));
        }
        for y in y0..=y1 {
            put((x0 + t).min(x1), y);
            put(x1.saturating_sub(t).max(x0), y);
        }
    }
}

/// Copies an RGB band (caption) over the top rows of the frame.
pub fn paste_band(data: &mut [u8], stride: usize, l: Layout, band: &RgbImage) {
    for (x, y, p) in band.enumerate_pixels() {
        let o = &mut data[y as usize * stride + x as usize * l.px..];
        o[l.r] = p[0];
        o[l.g] = p[1];
        o[l.b] = p[2];
    }
}

/// The caption band (w × 22 pixels, at most `max_h`; red during an event), text drawn when a
/// font exists.
pub fn caption_band(w: u32, max_h: u32, caption: &str, alert: bool) -> RgbImage {
    let bg = if alert { [150, 0, 0] } else { [0, 0, 0] };
    let mut band = RgbImage::from_pixel(w.max(1), 22.min(max_h).max(1), image::Rgb(bg));
    if advguard::viz::font_available() {
        use plotters::prelude::*;
        let (bw, bh) = band.dimensions();
        let buf: &mut [u8] = &mut band;
        let root = BitMapBackend::with_buffer(buf, (bw, bh)).into_drawing_area();
        let _ = root.draw_text(
            caption,
            &("sans-serif", 15).into_font().color(&WHITE),
            (4, 3),
        );
        let _ = root.present();
    }
    band
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A w × h frame in layout `l` with padded rows, from an RGB function.
    fn frame(
        w: usize,
        h: usize,
        l: Layout,
        f: impl Fn(usize, usize) -> [u8; 3],
    ) -> (Vec<u8>, usize) {
        let stride = (w * l.px).div_ceil(4) * 4 + 4;
        let mut d = vec![7u8; stride * h];
        for y in 0..h {
            for x in 0..w {
                let p = f(x, y);
                d[y * stride + x * l.px + l.r] = p[0];
                d[y * stride + x * l.px + l.g] = p[1];
                d[y * stride + x * l.px + l.b] = p[2];
            }
        }
        (d, stride)
    }

    #[test]
    fn squash_is_identity_at_size_and_reads_every_layout_alike() {
        let f = |x: usize, y: usize| [(x * 9) as u8, (y * 13) as u8, ((x + y) * 5) as u8];
        let rgb = Layout::of(gst_video::VideoFormat::Rgb).unwrap();
        let (d, s) = frame(19, 19, rgb, f);
        let out = squash(&d, s, 19, 19, rgb, 19);
        for y in 0..19 {
            for x in 0..19 {
                assert_eq!(&out[(y * 19 + x) * 3..][..3], &f(x, y));
            }
        }
        let (d, s) = frame(37, 23, rgb, f);
        let want = squash(&d, s, 37, 23, rgb, 16);
        for fmt in FORMATS {
            let l = Layout::of(fmt).unwrap();
            let (d, s) = frame(37, 23, l, f);
            assert_eq!(squash(&d, s, 37, 23, l, 16), want, "{fmt:?}");
        }
    }

    #[test]
    fn squash_keeps_constants_and_ramps_and_averages_when_shrinking() {
        let l = Layout::of(gst_video::VideoFormat::Rgb).unwrap();
        // A constant frame stays constant everywhere, edges included.
        let (d, s) = frame(50, 30, l, |_, _| [9, 99, 199]);
        assert!(
            squash(&d, s, 50, 30, l, 7)
                .chunks(3)
                .all(|p| p == [9, 99, 199])
        );
        // A linear ramp keeps its value at each interior output centre (symmetric weights).
        let (d, s) = frame(32, 32, l, |x, y| [(x * 8) as u8, (y * 4) as u8, 100]);
        let out = squash(&d, s, 32, 32, l, 8);
        for oy in 1..7 {
            for ox in 1..7 {
                let p = &out[(oy * 8 + ox) * 3..][..3];
                let c = |o: usize, k: f32| ((o as f32 + 0.5) * 4.0 - 0.5) * k;
                assert_eq!(
                    p,
                    &[c(ox, 8.0).round() as u8, c(oy, 4.0).round() as u8, 100]
                );
            }
        }
        // Shrinking 4:1 averages: a one-pixel checkerboard becomes flat gray, which a 2-tap
        // filter (picking two of every four columns) would not give.
        let (d, s) = frame(
            32,
            32,
            l,
            |x, y| if (x + y) % 2 == 0 { [0; 3] } else { [200; 3] },
        );
        let out = squash(&d, s, 32, 32, l, 8);
        for oy in 1..7 {
            for ox in 1..7 {
                let v = out[(oy * 8 + ox) * 3];
                assert!((95..=105).contains(&v), "{v}");
            }
        }
    }

    #[test]
    fn blend_box_and_band_write_only_colour_bytes() {
        let l = Layout::of(gst_video::VideoFormat::Bgrx).unwrap();
        let (mut d, s) = frame(10, 30, l, |_, _| [200, 100, 0]);
        let heat = RgbImage::from_pixel(10, 30, image::Rgb([0, 0, 255]));
        blend(&mut d, s, l, &heat, 0.5);
        assert_eq!(&d[..4], &[127, 50, 100, 7]); // B G R x: x untouched
        draw_box(&mut d, s, (10, 30), l, [2, 25, 20, 20], [255, 0, 0]);
        assert_eq!(&d[25 * s + 2 * 4..][..4], &[0, 0, 255, 7]);
        assert_eq!(&d[29 * s + 9 * 4..][..4], &[0, 0, 255, 7]);
        let band = caption_band(10, 30, "", true);
        paste_band(&mut d, s, l, &band);
        assert_eq!(&d[21 * s..][..4], &[0, 0, 150, 7]);
        // Padding past the last pixel of each row is never written.
        assert_eq!(d[s - 1], 7);
    }
}
