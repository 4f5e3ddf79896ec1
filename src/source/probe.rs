//! What a video file is, asked of GStreamer before it is played (the bench re-times clips).

use super::SourceError;
use gstreamer as gst;
use gstreamer::prelude::*;
use std::path::Path;

/// The frame rate of a video file's first video stream, frames/s.
pub fn file_framerate(path: &Path) -> Result<f64, SourceError> {
    let err = |message: String| SourceError::File {
        camera: "probe".into(),
        path: path.to_path_buf(),
        message,
    };
    gst::init().map_err(|e| err(format!("GStreamer is not available: {e}")))?;
    let p = gst::parse::launch(&format!(
        "filesrc location=\"{}\" ! decodebin ! fakesink name=sink",
        path.to_string_lossy()
            .replace('\\', "\\\\")
            .replace('"', "\\\"")
    ))
    .map_err(|e| err(e.to_string()))?;
    let p = p
        .downcast::<gst::Pipeline>()
        .map_err(|_| err("not a pipeline".into()))?;
    let _ = p.set_state(gst::State::Paused);
    let (res, _, _) = p.state(gst::ClockTime::from_seconds(10));
    let caps = p
        .by_name("sink")
        .and_then(|s| s.static_pad("sink"))
        .and_then(|pad| pad.current_caps());
    let _ = p.set_state(gst::State::Null);
    res.map_err(|_| err("could not be opened (not a video file?)".into()))?;
    let fr = caps
        .as_ref()
        .and_then(|c| c.structure(0))
        .and_then(|s| s.get::<gst::Fraction>("framerate").ok())
        .filter(|f| f.numer() > 0 && f.denom() > 0)
        .ok_or_else(|| err("no video stream with a frame rate".into()))?;
    Ok(fr.numer() as f64 / fr.denom() as f64)
}
