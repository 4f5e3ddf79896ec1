//! Footage for the video evaluation: clips decoded once at model size, camera sessions replayed
//! from them with a per-session look, and the camera's H.264 encoder.

use crate::source::{self, SourceMsg, SourceSpec};
use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use gstreamer_video::prelude::*;
use rand::{Rng, SeedableRng, rngs::StdRng};
use std::path::{Path, PathBuf};

/// A decoded clip: every frame, squashed to the model's size×size, RGB8.
#[derive(Debug, Clone)]
pub struct Clip {
    /// File stem, the clip's name in tables.
    pub name: String,
    /// Path.
    pub path: PathBuf,
    /// Frame side.
    pub size: u32,
    /// Frames.
    pub frames: Vec<Vec<u8>>,
    /// Their stream times, ms.
    pub pts_ms: Vec<u64>,
}

impl Clip {
    /// Decodes a clip file through the same GStreamer source `watch` uses.
    /// Frames faster than `max_fps` are thinned by the source, as `watch --max-fps` does.
    pub fn decode(path: &Path, size: u32, max_fps: Option<f64>) -> anyhow::Result<Clip> {
        let name = path
            .file_stem()
            .map_or("clip".into(), |s| s.to_string_lossy().into_owned());
        let mut spec = SourceSpec::new(name.clone(), path.display().to_string());
        spec.size = size;
        spec.max_fps = max_fps;
        let (tx, rx) = crossbeam_channel::bounded(64);
        let handle =
            source::spawn(spec, tx).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let (mut frames, mut pts_ms) = (Vec::new(), Vec::new());
        for m in rx {
            match m {
                SourceMsg::Frame(f) => {
                    pts_ms.push(f.pts_ms);
                    frames.push(f.rgb);
                }
                SourceMsg::Eos { .. } => break,
                SourceMsg::Error { error, .. } => {
                    anyhow::bail!("{}: {error}", path.display())
                }
            }
        }
        handle.stop();
        if frames.len() < 10 {
            anyhow::bail!("{}: only {} frames decoded", path.display(), frames.len());
        }
        Ok(Clip {
            name,
            path: path.to_path_buf(),
            size,
            frames,
            pts_ms,
        })
    }

    /// Median frame interval, ms.
    pub fn frame_ms(&self) -> u64 {
        let mut d: Vec<u64> = self.pts_ms.windows(2).map(|w| w[1] - w[0]).collect();
        d.sort_unstable();
        d.get(d.len() / 2).copied().unwrap_or(40).max(1)
    }
}

/// How one replay of a clip looks: a different camera session of the same kind of scene.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Look {
    /// Mirror left-right.
    pub flip: bool,
    /// Crop side as a share of the frame (zoom), 0.85–1.
    pub zoom: f32,
    /// Crop centre offset, share of the free margin (−1 … 1).
    pub dx: f32,
    /// Crop centre offset.
    pub dy: f32,
    /// Brightness gain.
    pub gain: f32,
}

impl Look {
    /// The identity look.
    pub const PLAIN: Look = Look {
        flip: false,
        zoom: 1.0,
        dx: 0.0,
        dy: 0.0,
        gain: 1.0,
    };

    /// A random look.
    pub fn random(rng: &mut StdRng) -> Look {
        Look {
            flip: rng.random_bool(0.5),
            zoom: rng.random_range(0.85..=1.0),
            dx: rng.random_range(-1.0..=1.0),
            dy: rng.random_range(-1.0..=1.0),
            gain: rng.random_range(0.85..=1.15),
        }
    }

    /// Applies the look to a size×size RGB8 frame (bilinear resample of the crop).
    pub fn apply(&self, rgb: &[u8], size: u32) -> Vec<u8> {
        if *self == Look::PLAIN {
            return rgb.to_vec();
        }
        let s = size as f32;
        let side = s * self.zoom;
        let margin = (s - side) / 2.0;
        let (x0, y0) = (margin * (1.0 + self.dx), margin * (1.0 + self.dy));
        let n = size as usize;
        let mut out = vec![0u8; n * n * 3];
        let px = |x: usize, y: usize, c: usize| rgb[(y * n + x) * 3 + c] as f32;
        for y in 0..n {
            let sy = (y0 + (y as f32 + 0.5) * self.zoom - 0.5).clamp(0.0, s - 1.0);
            let (iy, fy) = (sy.floor() as usize, sy.fract());
            let iy1 = (iy + 1).min(n - 1);
            for x in 0..n {
                let xo = if self.flip { n - 1 - x } else { x };
                let sx = (x0 + (xo as f32 + 0.5) * self.zoom - 0.5).clamp(0.0, s - 1.0);
                let (ix, fx) = (sx.floor() as usize, sx.fract());
                let ix1 = (ix + 1).min(n - 1);
                for c in 0..3 {
                    let v = px(ix, iy, c) * (1.0 - fx) * (1.0 - fy)
                        + px(ix1, iy, c) * fx * (1.0 - fy)
                        + px(ix, iy1, c) * (1.0 - fx) * fy
                        + px(ix1, iy1, c) * fx * fy;
                    out[(y * n + x) * 3 + c] = (v * self.gain).round().clamp(0.0, 255.0) as u8;
                }
            }
        }
        out
    }
}

/// A seeded RNG for one named purpose of one session (stable across runs and resumes).
pub fn rng_for(seed: u64, session: usize, purpose: u64) -> StdRng {
    StdRng::seed_from_u64(
        seed ^ (session as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
            ^ purpose.wrapping_mul(0xD1B5_4A32_D192_ED03),
    )
}

/// Encodes frames with x264 (constant quality 23, x264's default quality, `zerolatency` as a
/// live camera runs it) and decodes them with avdec_h264: the camera's encoder.
pub fn h264_round_trip(
    frames: &[Vec<u8>],
    size: u32,
    frame_ms: u64,
) -> anyhow::Result<Vec<Vec<u8>>> {
    gst::init()?;
    let fps = (1000.0 / frame_ms.max(1) as f64).round().max(1.0) as i32;
    let desc = format!(
        "appsrc name=src format=time caps=video/x-raw,format=RGB,width={size},height={size},framerate={fps}/1 \
         ! videoconvert ! video/x-raw,format=I420 \
         ! x264enc pass=qual quantizer=23 speed-preset=veryfast tune=zerolatency key-int-max=50 \
         ! h264parse ! avdec_h264 ! videoconvert ! video/x-raw,format=RGB \
         ! appsink name=sink sync=false"
    );
    let pipeline = gst::parse::launch(&desc)
        .map_err(|e| anyhow::anyhow!("H.264 round trip (needs x264enc and avdec_h264): {e}"))?
        .downcast::<gst::Pipeline>()
        .map_err(|_| anyhow::anyhow!("H.264 round trip: not a pipeline"))?;
    let src = pipeline
        .by_name("src")
        .and_then(|e| e.downcast::<gst_app::AppSrc>().ok())
        .ok_or_else(|| anyhow::anyhow!("H.264 round trip: no appsrc"))?;
    let sink = pipeline
        .by_name("sink")
        .and_then(|e| e.downcast::<gst_app::AppSink>().ok())
        .ok_or_else(|| anyhow::anyhow!("H.264 round trip: no appsink"))?;
    pipeline.set_state(gst::State::Playing)?;
    let frames_in: Vec<Vec<u8>> = frames.to_vec();
    let pusher = std::thread::spawn(move || {
        for (i, f) in frames_in.into_iter().enumerate() {
            let mut b = gst::Buffer::from_mut_slice(f);
            if let Some(b) = b.get_mut() {
                b.set_pts(gst::ClockTime::from_mseconds(i as u64 * frame_ms));
                b.set_duration(gst::ClockTime::from_mseconds(frame_ms));
            }
            if src.push_buffer(b).is_err() {
                break;
            }
        }
        let _ = src.end_of_stream();
    });
    let mut out = Vec::with_capacity(frames.len());
    while let Ok(sample) = sink.pull_sample() {
        let buf = sample
            .buffer()
            .ok_or_else(|| anyhow::anyhow!("H.264 round trip: sample without buffer"))?;
        let caps = sample
            .caps()
            .ok_or_else(|| anyhow::anyhow!("H.264 round trip: sample without caps"))?;
        let info = gstreamer_video::VideoInfo::from_caps(caps)?;
        let frame = gstreamer_video::VideoFrameRef::from_buffer_ref_readable(buf, &info)
            .map_err(|_| anyhow::anyhow!("H.264 round trip: unreadable frame"))?;
        let stride = frame.plane_stride()[0] as usize;
        let data = frame.plane_data(0)?;
        let row = size as usize * 3;
        let mut rgb = Vec::with_capacity(row * size as usize);
        for y in 0..size as usize {
            rgb.extend_from_slice(&data[y * stride..y * stride + row]);
        }
        out.push(rgb);
    }
    let _ = pusher.join();
    pipeline.set_state(gst::State::Null)?;
    if out.len() != frames.len() {
        anyhow::bail!(
            "H.264 round trip: {} frames in, {} out",
            frames.len(),
            out.len()
        );
    }
    Ok(out)
}
