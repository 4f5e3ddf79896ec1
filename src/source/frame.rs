//! Decoded frames and the copy out of GStreamer's (possibly padded) buffers.

use gstreamer as gst;
use gstreamer_video as gst_video;
use gstreamer_video::prelude::*;
use std::sync::Arc;
use std::time::Instant;

/// One decoded frame, already scaled+converted by GStreamer to the model input (size×size, tight RGB8).
#[derive(Debug, Clone)]
pub struct Frame {
    /// Camera name.
    pub camera: Arc<str>,
    /// Frames delivered by this source so far (0-based).
    pub seq: u64,
    /// Stream timestamp (buffer PTS) in ms; strictly increasing over the source's life
    /// (after a reconnect it continues from the last value plus the wall-clock gap;
    /// MJPEG over HTTP uses decode time, its PTS are per network read).
    pub pts_ms: u64,
    /// Width in pixels (= spec.size).
    pub width: u32,
    /// Height in pixels (= spec.size).
    pub height: u32,
    /// width*height*3 bytes, RGB, no row padding.
    pub rgb: Vec<u8>,
    /// The camera's own frame size before scaling (width, height), when the decoder's caps
    /// tell it: the explain view is drawn back at this geometry.
    pub native: Option<(u32, u32)>,
    /// When the appsink handed it over (frame age = captured.elapsed()).
    pub captured: Instant,
    /// The first frame of a new run of the source (after a reconnect, a restarted pipeline
    /// or a file started again): it does not follow the frame before it, so frame-to-frame
    /// references (the onset jump, tracks, the pixel change) restart here.
    pub resumed: bool,
}

/// Pixels and timestamp copied out of one RGB sample.
pub(crate) struct Pixels {
    pub rgb: Vec<u8>,
    pub width: u32,
    pub height: u32,
    pub pts_ns: Option<u64>,
}

/// Copies an RGB sample into a tight buffer; rows of the GStreamer buffer can be padded.
pub(crate) fn copy_rgb(sample: &gst::Sample) -> Result<Pixels, String> {
    let buffer = sample.buffer().ok_or("sample without buffer")?;
    let caps = sample.caps().ok_or("sample without caps")?;
    let info = gst_video::VideoInfo::from_caps(caps).map_err(|e| e.to_string())?;
    if info.format() != gst_video::VideoFormat::Rgb {
        return Err(format!("expected RGB frames, got {:?}", info.format()));
    }
    let frame = gst_video::VideoFrameRef::from_buffer_ref_readable(buffer, &info)
        .map_err(|e| e.to_string())?;
    let (w, h) = (frame.width() as usize, frame.height() as usize);
    let stride = frame.plane_stride()[0] as usize;
    let data = frame.plane_data(0).map_err(|e| e.to_string())?;
    let row = w * 3;
    if stride < row || data.len() < stride * (h.saturating_sub(1)) + row {
        return Err(format!(
            "short RGB plane: {} bytes, stride {stride}, {w}x{h}",
            data.len()
        ));
    }
    let mut rgb = Vec::with_capacity(row * h);
    for y in 0..h {
        rgb.extend_from_slice(&data[y * stride..y * stride + row]);
    }
    Ok(Pixels {
        rgb,
        width: w as u32,
        height: h as u32,
        pts_ns: buffer.pts().or(buffer.dts()).map(|t| t.nseconds()),
    })
}
