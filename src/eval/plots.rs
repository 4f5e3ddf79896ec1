//! ROC curves and clean-vs-adversarial score histograms (the paper's Figure 4), PNG and SVG.

use plotters::prelude::*;
use std::path::Path;

/// Errors while drawing.
#[derive(Debug, thiserror::Error)]
#[error("plot {path}: {msg}")]
pub struct PlotError {
    /// Output file.
    pub path: String,
    /// What failed.
    pub msg: String,
}

fn perr(path: &Path, e: impl std::fmt::Display) -> PlotError {
    PlotError {
        path: path.display().to_string(),
        msg: e.to_string(),
    }
}

const COLORS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

/// ROC curves (fpr, tpr), one per named series, with the chance diagonal.
pub fn roc_plot(
    stem: &Path,
    title: &str,
    curves: &[(String, Vec<(f64, f64)>)],
) -> Result<(), PlotError> {
    let text = crate::viz::font_available();
    macro_rules! body {
        ($root:expr) => {{
            let root = $root;
            let f = || -> Result<(), String> {
                let mut b = ChartBuilder::on(root);
                b.margin(12);
                if text {
                    b.caption(title, ("sans-serif", 20))
                        .x_label_area_size(36)
                        .y_label_area_size(44);
                }
                let mut chart = b
                    .build_cartesian_2d(0f64..1f64, 0f64..1f64)
                    .map_err(|e| e.to_string())?;
                if text {
                    chart
                        .configure_mesh()
                        .x_desc("false-positive rate (clean)")
                        .y_desc("detection rate")
                        .draw()
                        .map_err(|e| e.to_string())?;
                }
                chart
                    .draw_series(LineSeries::new(
                        vec![(0.0, 0.0), (1.0, 1.0)],
                        &BLACK.mix(0.3),
                    ))
                    .map_err(|e| e.to_string())?;
                for (i, (name, pts)) in curves.iter().enumerate() {
                    let c = COLORS[i % COLORS.len()];
                    let s = chart
                        .draw_series(LineSeries::new(pts.iter().copied(), c.stroke_width(2)))
                        .map_err(|e| e.to_string())?;
                    if text {
                        s.label(name.as_str()).legend(move |(x, y)| {
                            PathElement::new(vec![(x, y), (x + 16, y)], c.stroke_width(2))
                        });
                    }
                }
                if text {
                    chart
                        .configure_series_labels()
                        .position(SeriesLabelPosition::LowerRight)
                        .background_style(WHITE.mix(0.8))
                        .border_style(BLACK)
                        .draw()
                        .map_err(|e| e.to_string())?;
                }
                Ok(())
            };
            f()
        }};
    }
    let png = stem.with_extension("png");
    {
        // plotters' own PNG encoder is not enabled: draw into a buffer, encode with `image`.
        let mut buf = vec![255u8; 640 * 560 * 3];
        {
            let root = BitMapBackend::with_buffer(&mut buf, (640, 560)).into_drawing_area();
            root.fill(&WHITE).map_err(|e| perr(&png, e))?;
            let r: Result<(), String> = body!(&root);
            r.map_err(|e| perr(&png, e))?;
            root.present().map_err(|e| perr(&png, e))?;
        }
        let img =
            image::RgbImage::from_raw(640, 560, buf).ok_or_else(|| perr(&png, "buffer size"))?;
        img.save(&png).map_err(|e| perr(&png, e))?;
    }
    let svg = stem.with_extension("svg");
    {
        let root = SVGBackend::new(&svg, (640, 560)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| perr(&svg, e))?;
        let r: Result<(), String> = body!(&root);
        r.map_err(|e| perr(&svg, e))?;
        root.present().map_err(|e| perr(&svg, e))?;
    }
    Ok(())
}

/// Overlaid histograms of clean and adversarial scores (densities, shared bins).
pub fn hist_plot(
    stem: &Path,
    title: &str,
    xlabel: &str,
    clean: &[f64],
    adv: &[f64],
) -> Result<(), PlotError> {
    let text = crate::viz::font_available();
    let all = clean.iter().chain(adv).copied().filter(|v| v.is_finite());
    let (lo, hi) = all.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
        (a.min(v), b.max(v))
    });
    let (lo, hi) = if lo.is_finite() && hi > lo {
        (lo, hi)
    } else {
        (0.0, 1.0)
    };
    let nb = 30usize;
    let w = (hi - lo) / nb as f64;
    let dens = |v: &[f64]| {
        let mut h = vec![0f64; nb];
        for &x in v.iter().filter(|x| x.is_finite()) {
            h[(((x - lo) / w) as usize).min(nb - 1)] += 1.0;
        }
        let n = v.len().max(1) as f64;
        h.iter().map(|c| c / n).collect::<Vec<f64>>()
    };
    let (hc, ha) = (dens(clean), dens(adv));
    let ymax = hc.iter().chain(&ha).copied().fold(0.0, f64::max).max(1e-6) * 1.1;
    macro_rules! body {
        ($root:expr) => {{
            let root = $root;
            let f = || -> Result<(), String> {
                let mut b = ChartBuilder::on(root);
                b.margin(12);
                if text {
                    b.caption(title, ("sans-serif", 20))
                        .x_label_area_size(36)
                        .y_label_area_size(50);
                }
                let mut chart = b
                    .build_cartesian_2d(lo..hi, 0f64..ymax)
                    .map_err(|e| e.to_string())?;
                if text {
                    chart
                        .configure_mesh()
                        .x_desc(xlabel)
                        .y_desc("share of images")
                        .draw()
                        .map_err(|e| e.to_string())?;
                }
                for (i, (name, h)) in [("clean", &hc), ("adversarial", &ha)].iter().enumerate() {
                    let c = COLORS[i * 3];
                    let s = chart
                        .draw_series(h.iter().enumerate().map(|(k, &y)| {
                            let x0 = lo + k as f64 * w;
                            Rectangle::new([(x0, 0.0), (x0 + w, y)], c.mix(0.45).filled())
                        }))
                        .map_err(|e| e.to_string())?;
                    if text {
                        s.label(*name).legend(move |(x, y)| {
                            Rectangle::new([(x, y - 5), (x + 12, y + 5)], c.mix(0.45).filled())
                        });
                    }
                }
                if text {
                    chart
                        .configure_series_labels()
                        .position(SeriesLabelPosition::UpperRight)
                        .background_style(WHITE.mix(0.8))
                        .border_style(BLACK)
                        .draw()
                        .map_err(|e| e.to_string())?;
                }
                Ok(())
            };
            f()
        }};
    }
    let png = stem.with_extension("png");
    {
        // plotters' own PNG encoder is not enabled: draw into a buffer, encode with `image`.
        let mut buf = vec![255u8; 640 * 420 * 3];
        {
            let root = BitMapBackend::with_buffer(&mut buf, (640, 420)).into_drawing_area();
            root.fill(&WHITE).map_err(|e| perr(&png, e))?;
            let r: Result<(), String> = body!(&root);
            r.map_err(|e| perr(&png, e))?;
            root.present().map_err(|e| perr(&png, e))?;
        }
        let img =
            image::RgbImage::from_raw(640, 420, buf).ok_or_else(|| perr(&png, "buffer size"))?;
        img.save(&png).map_err(|e| perr(&png, e))?;
    }
    let svg = stem.with_extension("svg");
    {
        let root = SVGBackend::new(&svg, (640, 420)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| perr(&svg, e))?;
        let r: Result<(), String> = body!(&root);
        r.map_err(|e| perr(&svg, e))?;
        root.present().map_err(|e| perr(&svg, e))?;
    }
    Ok(())
}
