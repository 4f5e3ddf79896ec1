//! The explain view's score strip: each signal's score over the last seconds, drawn as a
//! fraction of its own threshold so every signal meets the same alarm line.

use image::RgbImage;

/// Top of the strip's vertical axis, in multiples of the threshold (higher values are clipped).
pub const RATIO_MAX: f32 = 2.0;

/// Colours of the traces, in signal order (cycled).
pub const PALETTE: [[u8; 3]; 4] = [
    [80, 200, 255],
    [255, 170, 40],
    [150, 255, 120],
    [255, 110, 220],
];

/// One signal's trace.
pub struct Trace {
    /// Legend text (name, latest value and threshold).
    pub label: String,
    /// Line colour.
    pub colour: [u8; 3],
    /// (time in [0, 1] across the strip, score / threshold).
    pub points: Vec<(f32, f32)>,
}

/// Where on the strip time runs: spans in [0, 1] that an alert covered are shaded red.
pub struct Strip<'a> {
    /// The traces.
    pub traces: &'a [Trace],
    /// Alert spans, [0, 1] across the strip.
    pub alerts: &'a [(f32, f32)],
    /// Text at the strip's right end (e.g. "last 10 s").
    pub note: &'a str,
}

/// Blends `colour` at opacity `a` into the pixels of rows `y0..y1`, columns `x0..x1`.
pub fn shade(
    img: &mut RgbImage,
    (x0, x1): (u32, u32),
    (y0, y1): (u32, u32),
    colour: [u8; 3],
    a: f32,
) {
    let (w, h) = img.dimensions();
    for y in y0.min(h)..y1.min(h) {
        for x in x0.min(w)..x1.min(w) {
            let p = img.get_pixel_mut(x, y);
            for k in 0..3 {
                p[k] = (p[k] as f32 * (1.0 - a) + colour[k] as f32 * a).round() as u8;
            }
        }
    }
}

/// Draws the strip over rows `y0..y0 + height` of `img` (full width, translucent background).
pub fn draw(img: &mut RgbImage, y0: u32, height: u32, strip: &Strip<'_>) {
    use plotters::prelude::*;
    let (w, h) = img.dimensions();
    if height < 8 || y0 >= h || w < 16 {
        return;
    }
    let height = height.min(h - y0);
    shade(img, (0, w), (y0, y0 + height), [0, 0, 0], 0.5);
    for &(a, b) in strip.alerts {
        let (xa, xb) = (
            (a.clamp(0.0, 1.0) * w as f32) as u32,
            (b.clamp(0.0, 1.0) * w as f32).ceil() as u32,
        );
        shade(
            img,
            (xa, xb.max(xa + 1)),
            (y0, y0 + height),
            [200, 0, 0],
            0.45,
        );
    }
    let pad = 3.0;
    let (top, bottom) = (y0 as f32 + pad, (y0 + height) as f32 - pad);
    let y_of = |r: f32| bottom - (r.clamp(0.0, RATIO_MAX) / RATIO_MAX) * (bottom - top);
    let x_of = |t: f32| t.clamp(0.0, 1.0) * (w - 1) as f32;
    let font = super::font_available();
    let buf: &mut [u8] = img;
    let root = BitMapBackend::with_buffer(buf, (w, h)).into_drawing_area();
    // The alarm line: a score over its threshold crosses it.
    let ty = y_of(1.0) as i32;
    let mut x = 0;
    while x < w as i32 {
        let _ = root.draw(&PathElement::new(
            vec![(x, ty), ((x + 6).min(w as i32 - 1), ty)],
            ShapeStyle::from(&RGBColor(235, 235, 235)).stroke_width(1),
        ));
        x += 10;
    }
    for t in strip.traces {
        let pts: Vec<(i32, i32)> = t
            .points
            .iter()
            .filter(|(_, r)| r.is_finite())
            .map(|&(tt, r)| (x_of(tt) as i32, y_of(r) as i32))
            .collect();
        let c = RGBColor(t.colour[0], t.colour[1], t.colour[2]);
        if pts.len() >= 2 {
            let _ = root.draw(&PathElement::new(pts, ShapeStyle::from(&c).stroke_width(2)));
        } else if let Some(&p) = pts.first() {
            let _ = root.draw(&Circle::new(p, 2, ShapeStyle::from(&c).filled()));
        }
    }
    if font {
        let size = (height as f64 / 6.0).clamp(11.0, 16.0);
        let mut lx = 6;
        for t in strip.traces {
            let c = RGBColor(t.colour[0], t.colour[1], t.colour[2]);
            let style = ("sans-serif", size).into_font().color(&c);
            let _ = root.draw_text(&t.label, &style, (lx, (top as i32) + 1));
            let tw = root
                .estimate_text_size(&t.label, &style)
                .map_or(120, |(a, _)| a as i32);
            lx += tw + 14;
        }
        let style = ("sans-serif", size)
            .into_font()
            .color(&RGBColor(235, 235, 235));
        let _ = root.draw_text("threshold", &style, (6, ty - size as i32 - 1));
        let nw = root
            .estimate_text_size(strip.note, &style)
            .map_or(60, |(a, _)| a as i32);
        let _ = root.draw_text(strip.note, &style, (w as i32 - nw - 6, (top as i32) + 1));
    }
    let _ = root.present();
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgb;

    #[test]
    fn a_trace_over_its_threshold_is_drawn_above_the_alarm_line() {
        let mut img = RgbImage::from_pixel(200, 100, Rgb([0, 0, 0]));
        let traces = [Trace {
            label: String::new(),
            colour: [0, 255, 0],
            points: vec![(0.0, 1.8), (1.0, 1.8)],
        }];
        draw(
            &mut img,
            20,
            80,
            &Strip {
                traces: &traces,
                alerts: &[],
                note: "",
            },
        );
        let (top, bottom) = (23.0f32, 97.0f32);
        let y = (bottom - 1.8 / RATIO_MAX * (bottom - top)) as u32;
        let alarm = (bottom - 1.0 / RATIO_MAX * (bottom - top)) as u32;
        assert!(y < alarm);
        let green = (0..200).filter(|&x| img.get_pixel(x, y)[1] > 200).count();
        assert!(green > 150, "{green} green pixels on row {y}");
        // Above the strip nothing was drawn.
        assert!(img.rows().take(20).flatten().all(|p| p.0 == [0, 0, 0]));
    }
}
