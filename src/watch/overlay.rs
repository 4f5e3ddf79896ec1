//! `--overlay OUT.mp4|.mkv`: writes the video with the response heat map blended in, the
//! response box, and the score drawn, so an operator sees where the network looks.
//! Pipeline template: `pipelines/overlay-file.txt` (appsrc → x264enc → mp4mux/matroskamux).
//! `--overlay rtsp://…` serves the same pictures live instead (`overlay_rtsp`).

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use image::{Rgb, RgbImage, imageops};
use ndarray::ArrayView2;
use std::path::{Path, PathBuf};

const TEMPLATE: &str = include_str!("../../pipelines/overlay-file.txt");

/// Upscale factor of the model-size frame in the overlay (224 → 448).
pub(crate) const SCALE: u32 = 2;

/// One overlay file being written.
pub struct OverlayWriter {
    path: PathBuf,
    pipeline: gst::Pipeline,
    src: gst_app::AppSrc,
    width: u32,
    height: u32,
}

/// The pipeline description for an output file (the muxer follows the extension).
pub fn describe(path: &Path, width: u32, height: u32) -> anyhow::Result<String> {
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    let mux = match ext.as_str() {
        "mp4" | "m4v" | "mov" => "mp4mux",
        "mkv" => "matroskamux",
        _ => anyhow::bail!("--overlay {}: use a .mp4 or .mkv file name", path.display()),
    };
    let p = path.to_string_lossy();
    if p.contains('"') {
        anyhow::bail!(
            "--overlay {}: the path must not contain '\"'",
            path.display()
        );
    }
    Ok(crate::source::template_body(TEMPLATE)
        .replace("{width}", &width.to_string())
        .replace("{height}", &height.to_string())
        .replace("{mux}", mux)
        .replace("{path}", &p))
}

impl OverlayWriter {
    /// Starts writing `path` for frames of `size`×`size` model pixels.
    pub fn create(path: &Path, size: u32) -> anyhow::Result<OverlayWriter> {
        gst::init()?;
        let (width, height) = (size * SCALE, size * SCALE);
        let desc = describe(path, width, height)?;
        let pipeline = gst::parse::launch(&desc)
            .map_err(|e| anyhow::anyhow!("--overlay {}: {e}", path.display()))?
            .downcast::<gst::Pipeline>()
            .map_err(|_| anyhow::anyhow!("--overlay: not a pipeline"))?;
        let src = pipeline
            .by_name("src")
            .and_then(|e| e.downcast::<gst_app::AppSrc>().ok())
            .ok_or_else(|| anyhow::anyhow!("--overlay: template has no appsrc named src"))?;
        pipeline
            .set_state(gst::State::Playing)
            .map_err(|e| anyhow::anyhow!("--overlay {}: cannot start: {e}", path.display()))?;
        Ok(OverlayWriter {
            path: path.to_path_buf(),
            pipeline,
            src,
            width,
            height,
        })
    }

    /// Adds one frame at stream time `pts_ms`.
    pub fn push(&mut self, img: &RgbImage, pts_ms: u64) -> anyhow::Result<()> {
        let img = if img.width() != self.width || img.height() != self.height {
            imageops::resize(img, self.width, self.height, imageops::FilterType::Triangle)
        } else {
            img.clone()
        };
        let mut buf = gst::Buffer::from_mut_slice(img.into_raw());
        if let Some(b) = buf.get_mut() {
            b.set_pts(gst::ClockTime::from_mseconds(pts_ms));
        }
        self.src
            .push_buffer(buf)
            .map_err(|e| anyhow::anyhow!("--overlay {}: {e:?}", self.path.display()))?;
        Ok(())
    }

    /// Ends the file (EOS, waits for the muxer to finish, up to 20 s).
    pub fn finish(self) -> anyhow::Result<()> {
        let _ = self.src.end_of_stream();
        let bus = self
            .pipeline
            .bus()
            .ok_or_else(|| anyhow::anyhow!("--overlay: pipeline has no bus"))?;
        let mut result = Ok(());
        for msg in bus.iter_timed(gst::ClockTime::from_seconds(20)) {
            match msg.view() {
                gst::MessageView::Eos(_) => break,
                gst::MessageView::Error(e) => {
                    result = Err(anyhow::anyhow!(
                        "--overlay {}: {}",
                        self.path.display(),
                        e.error()
                    ));
                    break;
                }
                _ => {}
            }
        }
        let _ = self.pipeline.set_state(gst::State::Null);
        result
    }
}

/// The overlay picture of one frame: heat map of |response| blended over the frame,
/// the response box, and a caption with the score (drawn when a system font exists).
pub fn render(
    frame: &RgbImage,
    magnitude: ArrayView2<f32>,
    bbox: Option<[u32; 4]>,
    caption: &str,
    alert: bool,
) -> RgbImage {
    let big = imageops::resize(
        frame,
        frame.width() * SCALE,
        frame.height() * SCALE,
        imageops::FilterType::Triangle,
    );
    let max = magnitude.iter().fold(0f32, |a, &v| a.max(v));
    let norm = magnitude.mapv(|v| if max > 0.0 { (v / max).sqrt() } else { 0.0 });
    let mut out = crate::viz::blend(&big, norm.view(), 0.45);
    if let Some(b) = bbox {
        let color = if alert { [255, 40, 40] } else { [80, 220, 80] };
        crate::viz::draw_box(&mut out, b.map(|v| v * SCALE), color);
    }
    // Caption band.
    let band = 22u32.min(out.height());
    let bg = if alert {
        Rgb([150, 0, 0])
    } else {
        Rgb([0, 0, 0])
    };
    for y in 0..band {
        for x in 0..out.width() {
            out.put_pixel(x, y, bg);
        }
    }
    if crate::viz::font_available() {
        use plotters::prelude::*;
        let (w, h) = out.dimensions();
        let buf: &mut [u8] = &mut out;
        let root = BitMapBackend::with_buffer(buf, (w, h)).into_drawing_area();
        let _ = root.draw_text(
            caption,
            &("sans-serif", 15).into_font().color(&WHITE),
            (4, 3),
        );
        let _ = root.present();
    }
    out
}
