//! The explain view (`--overlay`): heat map, response box and caption over each frame, to a
//! video file or a served RTSP mount (rendered only while someone watches).

use super::{FrameOutput, OutputError, ScoredFrame};
use crate::watch::CameraSummary;
use crate::watch::overlay::{self, OverlayWriter};
use crate::watch::overlay_rtsp::RtspOverlay;
use std::path::PathBuf;

/// Where a camera's explain view goes.
pub enum OverlaySink {
    /// A video file being written.
    File(OverlayWriter, PathBuf),
    /// A served RTSP mount.
    Rtsp(RtspOverlay),
}

/// A camera's explain view.
pub struct OverlayOutput {
    camera: String,
    /// Driving score's name and start threshold, for the caption.
    headline: (String, f64),
    sink: Option<OverlaySink>,
}

impl OverlayOutput {
    /// The view of `camera`, captioned with its detector's `headline`.
    pub fn new(camera: &str, headline: (String, f64), sink: OverlaySink) -> Self {
        OverlayOutput {
            camera: camera.to_string(),
            headline,
            sink: Some(sink),
        }
    }

    fn render(&self, f: &ScoredFrame<'_>) -> image::RgbImage {
        render(f, &self.camera, &self.headline)
    }
}

/// The explain picture of a scored frame at the camera's size, captioned with the driving
/// score (`headline`: its name and threshold), the top-1 class and ALERT while an event is open.
pub fn render(f: &ScoredFrame<'_>, camera: &str, headline: &(String, f64)) -> image::RgbImage {
    let (kind, thr) = (&headline.0, headline.1);
    let alert = f.obs.in_event;
    let caption = format!(
        "{camera}  {kind} {:.2} / {thr:.2}  {} ({:.2}){}",
        f.obs.score,
        f.top1.label.split(',').next().unwrap_or(""),
        f.top1.prob,
        if alert { "  ALERT" } else { "" }
    );
    overlay::explain(&overlay::Explain {
        frame: f.image,
        magnitude: f.magnitude,
        bbox: Some(f.stats.bbox),
        size: f.native,
        caption: &caption,
        alert,
        history: Some(f.history),
        detections: f.detections,
    })
}

impl FrameOutput for OverlayOutput {
    fn name(&self) -> &'static str {
        "overlay"
    }

    fn frame(&mut self, f: &ScoredFrame<'_>) -> Result<(), OutputError> {
        match &self.sink {
            Some(OverlaySink::File(..)) => {
                let img = self.render(f);
                if let Some(OverlaySink::File(w, _)) = self.sink.as_mut() {
                    w.push(img, f.pts_ms)
                        .map_err(|e| OutputError::new("overlay", format!("{e:#}")))?;
                }
            }
            // Rendering and encoding cost only while someone watches.
            Some(OverlaySink::Rtsp(o)) if o.watched() => o.push(self.render(f)),
            _ => {}
        }
        Ok(())
    }

    fn finish(&mut self, _summary: &mut CameraSummary) -> Result<(), OutputError> {
        if let Some(OverlaySink::File(w, path)) = self.sink.take() {
            w.finish()
                .map_err(|e| OutputError::new("overlay", format!("{e:#}")))?;
            tracing::info!(camera = %self.camera, "overlay written to {}", path.display());
        }
        Ok(())
    }
}
