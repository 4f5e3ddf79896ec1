//! The explain view: each frame at the camera's own size with the response heat blended in
//! where it concentrates, the response box, a caption, a strip of every signal against its
//! threshold over the last seconds, and a red frame while an alert is open ([`explain`]).
//! The same picture is the event's heat-map attachment and the live page's camera image.
//!
//! `--overlay OUT.mp4|.mkv` writes it as a video ([`OverlayWriter`], template
//! `pipelines/overlay-file.txt`: appsrc → x264enc → mp4mux/matroskamux);
//! `--overlay rtsp://…` serves it live instead (`overlay_rtsp`).

use crate::detector::score::FrameScores;
use crate::viz::strip::{self, Strip, Trace};
use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use image::{RgbImage, imageops};
use ndarray::ArrayView2;
use std::collections::VecDeque;
use std::path::{Path, PathBuf};

const TEMPLATE: &str = include_str!("../../pipelines/overlay-file.txt");

/// Upscale factor of the model-size frame where the camera's size is unknown (224 → 448).
pub(crate) const SCALE: u32 = 2;

/// Largest side drawn: a bogus caps size must not allocate gigabytes.
const MAX_SIDE: u32 = 4096;

/// Seconds of scores the strip shows.
pub const STRIP_SECS: u64 = 10;

/// One overlay file being written; its encoder starts at the first frame, whose size
/// (the camera's) fixes the video's.
pub struct OverlayWriter {
    path: PathBuf,
    running: Option<Running>,
}

/// The started encoder pipeline.
struct Running {
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
    /// Checks `path` (extension, quoting) now; the file is started by the first frame.
    pub fn create(path: &Path) -> anyhow::Result<OverlayWriter> {
        gst::init()?;
        describe(path, 2, 2)?;
        Ok(OverlayWriter {
            path: path.to_path_buf(),
            running: None,
        })
    }

    /// Builds and starts the encoder for frames of `width`×`height`.
    fn start(path: &Path, width: u32, height: u32) -> anyhow::Result<Running> {
        // x264 wants even sides in I420.
        let (width, height) = (width & !1, height & !1);
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
        Ok(Running {
            pipeline,
            src,
            width,
            height,
        })
    }

    /// Adds one frame at stream time `pts_ms` (frames of another size are resized to the first's).
    pub fn push(&mut self, img: RgbImage, pts_ms: u64) -> anyhow::Result<()> {
        if self.running.is_none() {
            self.running = Some(Self::start(&self.path, img.width(), img.height())?);
        }
        let Some(r) = self.running.as_ref() else {
            return Ok(());
        };
        let img = if img.width() != r.width || img.height() != r.height {
            imageops::resize(&img, r.width, r.height, imageops::FilterType::Triangle)
        } else {
            img
        };
        let mut buf = gst::Buffer::from_mut_slice(img.into_raw());
        if let Some(b) = buf.get_mut() {
            b.set_pts(gst::ClockTime::from_mseconds(pts_ms));
        }
        r.src
            .push_buffer(buf)
            .map_err(|e| anyhow::anyhow!("--overlay {}: {e:?}", self.path.display()))?;
        Ok(())
    }

    /// Ends the file (EOS, waits for the muxer to finish, up to 20 s); no frame, no file.
    pub fn finish(self) -> anyhow::Result<()> {
        let Some(r) = self.running else {
            tracing::warn!(
                "--overlay {}: no frame was scored, no file written",
                self.path.display()
            );
            return Ok(());
        };
        let _ = r.src.end_of_stream();
        let bus = r
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
        let _ = r.pipeline.set_state(gst::State::Null);
        result
    }
}

/// One signal of a camera's detector, as the strip plots it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Signal {
    /// Score name ("onset", "patch", "concentration", "entropy", "kl").
    pub name: String,
    /// Start threshold in force (a score strictly above it is over).
    pub threshold: f64,
}

/// The value of the score called `name` in a frame's scores (0 for an unknown name).
pub fn score_of(scores: &FrameScores, name: &str) -> f64 {
    match name {
        "onset" => scores.onset,
        "entropy" => scores.entropy,
        "concentration" | "patch" => scores.concentration,
        "kl" => scores.kl,
        "vanish" => scores.vanish,
        _ => 0.0,
    }
}

/// The signals a camera's detector thresholds: every fused signal, or the single score.
pub fn signals_of(plan: &super::CameraPlan) -> Vec<Signal> {
    match &plan.fused {
        Some(f) => f
            .signals
            .iter()
            .map(|(k, c)| Signal {
                name: k.name().to_string(),
                threshold: c.threshold,
            })
            .collect(),
        None => vec![Signal {
            name: plan.detector.kind.name().to_string(),
            threshold: plan.detector.rule.threshold,
        }],
    }
}

/// One scored frame in the history.
#[derive(Debug, Clone)]
struct Point {
    pts_ms: u64,
    values: Vec<f64>,
    alert: bool,
}

/// A camera's scores over the last [`STRIP_SECS`] of stream time, for the strip.
#[derive(Debug, Clone)]
pub struct ScoreHistory {
    signals: Vec<Signal>,
    window_ms: u64,
    points: VecDeque<Point>,
}

impl ScoreHistory {
    /// An empty history of `signals`, keeping the last [`STRIP_SECS`] seconds.
    pub fn new(signals: Vec<Signal>) -> Self {
        ScoreHistory {
            signals,
            window_ms: STRIP_SECS * 1000,
            points: VecDeque::new(),
        }
    }

    /// The signals plotted.
    pub fn signals(&self) -> &[Signal] {
        &self.signals
    }

    /// Adds a frame's scores; `alert`: an event is open after it.
    pub fn push(&mut self, pts_ms: u64, scores: &FrameScores, alert: bool) {
        let values = self
            .signals
            .iter()
            .map(|s| score_of(scores, &s.name))
            .collect();
        // A stream that jumps back (a restarted file) starts a new history.
        if self.points.back().is_some_and(|p| p.pts_ms > pts_ms) {
            self.points.clear();
        }
        self.points.push_back(Point {
            pts_ms,
            values,
            alert,
        });
        while self
            .points
            .front()
            .is_some_and(|p| p.pts_ms + self.window_ms < pts_ms)
        {
            self.points.pop_front();
        }
    }

    /// The latest frame's value of each signal, in [`Self::signals`] order.
    pub fn latest(&self) -> Option<&[f64]> {
        self.points.back().map(|p| p.values.as_slice())
    }

    /// Draws the strip over rows `y0..y0 + height` of `img`.
    pub fn draw(&self, img: &mut RgbImage, y0: u32, height: u32) {
        let end = self.points.back().map_or(0, |p| p.pts_ms);
        let start = end.saturating_sub(self.window_ms);
        let t_of = |pts: u64| (pts.saturating_sub(start)) as f32 / self.window_ms as f32;
        let latest = self.latest();
        let traces: Vec<Trace> = self
            .signals
            .iter()
            .enumerate()
            .map(|(i, s)| {
                // A signal without a usable threshold has no alarm line to be drawn against.
                let usable = s.threshold.is_finite() && s.threshold > 0.0;
                let points = if usable {
                    self.points
                        .iter()
                        .map(|p| (t_of(p.pts_ms), (p.values[i] / s.threshold) as f32))
                        .collect()
                } else {
                    Vec::new()
                };
                let v = latest.map_or(f64::NAN, |l| l[i]);
                Trace {
                    label: format!("{} {v:.2} / {:.2}", s.name, s.threshold),
                    colour: strip::PALETTE[i % strip::PALETTE.len()],
                    points,
                }
            })
            .collect();
        let mut alerts = Vec::new();
        let mut open: Option<f32> = None;
        for p in &self.points {
            match (p.alert, open) {
                (true, None) => open = Some(t_of(p.pts_ms)),
                (false, Some(a)) => {
                    alerts.push((a, t_of(p.pts_ms)));
                    open = None;
                }
                _ => {}
            }
        }
        if let Some(a) = open {
            alerts.push((a, 1.0));
        }
        let note = format!("last {STRIP_SECS} s");
        strip::draw(
            img,
            y0,
            height,
            &Strip {
                traces: &traces,
                alerts: &alerts,
                note: &note,
            },
        );
    }
}

/// What one explain picture is drawn from.
pub struct Explain<'a> {
    /// The frame as the guard saw it (model-input size, squashed).
    pub frame: &'a RgbImage,
    /// |response| at the frame's size.
    pub magnitude: ArrayView2<'a, f32>,
    /// Response box (x, y, w, h) in `frame` pixels.
    pub bbox: Option<[u32; 4]>,
    /// The picture's size: the camera's (width, height).
    pub size: (u32, u32),
    /// Caption text (top band).
    pub caption: &'a str,
    /// An alert is open: red caption band and red border.
    pub alert: bool,
    /// The score strip (bottom band), when there is a history.
    pub history: Option<&'a ScoreHistory>,
    /// Object detections (detector models), boxes in `frame` pixels.
    pub detections: &'a [crate::engine::detect::Detection],
}

/// The explain picture: the frame stretched back to the camera's geometry, heat blended where
/// it concentrates, response box, caption, score strip and, on alert frames, a red border.
pub fn explain(e: &Explain<'_>) -> RgbImage {
    let (fw, fh) = e.frame.dimensions();
    let (w, h) = match e.size {
        (w, h) if w >= 16 && h >= 16 => (w.min(MAX_SIDE), h.min(MAX_SIDE)),
        _ => (fw.max(1), fh.max(1)),
    };
    let mut out = if (w, h) == (fw, fh) {
        e.frame.clone()
    } else {
        imageops::resize(e.frame, w, h, imageops::FilterType::CatmullRom)
    };
    crate::viz::heat::blend_into(&mut out, e.magnitude);
    let red = [235, 30, 30];
    if let Some(b) = e.bbox
        && fw > 0
        && fh > 0
    {
        let (sx, sy) = (w as f32 / fw as f32, h as f32 / fh as f32);
        let scaled = [
            (b[0] as f32 * sx) as u32,
            (b[1] as f32 * sy) as u32,
            ((b[2] as f32 * sx) as u32).max(2),
            ((b[3] as f32 * sy) as u32).max(2),
        ];
        let colour = if e.alert { red } else { [80, 230, 80] };
        // Two pixels wide: one is lost in the encoder at camera resolutions.
        crate::viz::draw_box(&mut out, scaled, colour);
        let inner = [
            scaled[0] + 1,
            scaled[1] + 1,
            scaled[2].saturating_sub(2).max(1),
            scaled[3].saturating_sub(2).max(1),
        ];
        crate::viz::draw_box(&mut out, inner, colour);
    }
    if !e.detections.is_empty() {
        let dets = crate::engine::detect::rescale(e.detections, (fw, fh), (w, h));
        crate::viz::detections::draw(&mut out, &dets, 2);
    }
    let band = (h / 16).clamp(18, 40).min(h);
    if e.alert {
        strip::shade(&mut out, (0, w), (0, band), [170, 0, 0], 0.85);
    } else {
        strip::shade(&mut out, (0, w), (0, band), [0, 0, 0], 0.55);
    }
    if let Some(hist) = e.history {
        let sh = (h / 6).clamp(40, 120).min(h.saturating_sub(band));
        hist.draw(&mut out, h - sh, sh);
    }
    if e.alert {
        let t = (w.min(h) / 120).clamp(3, 8);
        strip::shade(&mut out, (0, w), (0, t), red, 1.0);
        strip::shade(&mut out, (0, w), (h - t, h), red, 1.0);
        strip::shade(&mut out, (0, t), (0, h), red, 1.0);
        strip::shade(&mut out, (w - t, w), (0, h), red, 1.0);
    }
    if crate::viz::font_available() {
        use plotters::prelude::*;
        let buf: &mut [u8] = &mut out;
        let root = BitMapBackend::with_buffer(buf, (w, h)).into_drawing_area();
        let size = band as f64 * 0.72;
        let _ = root.draw_text(
            e.caption,
            &("sans-serif", size).into_font().color(&WHITE),
            (8, (band as f64 * 0.12) as i32),
        );
        let _ = root.present();
    }
    out
}

/// The explain picture at the model frame's own geometry (×[`SCALE`]), without a strip: for
/// callers that do not know the camera's size (the GStreamer element's attachments).
pub fn render(
    frame: &RgbImage,
    magnitude: ArrayView2<f32>,
    bbox: Option<[u32; 4]>,
    caption: &str,
    alert: bool,
) -> RgbImage {
    explain(&Explain {
        frame,
        magnitude,
        bbox,
        size: (frame.width() * SCALE, frame.height() * SCALE),
        caption,
        alert,
        history: None,
        detections: &[],
    })
}
