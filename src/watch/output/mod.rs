//! Where scored frames go: each camera has a list of [`FrameOutput`]s (Vector's sinks),
//! built once by [`for_camera`] from the plan. The worker scores a frame once and hands the
//! same [`ScoredFrame`] to every output, then each event message it produced.
//!
//! | output | what it does | in |
//! |---|---|---|
//! | `metrics` | per-frame counters and histograms, events by phase | every run |
//! | `events` | event JSON lines on stdout, events to the alert hub; counts starts | every run |
//! | `frames` | one `--frames-out` JSON line per frame | `--frames-out` |
//! | `collect` | keeps every frame's scores for calibration | `calibrate` |
//! | `overlay` | the explain view, to a file or a served RTSP mount | `--overlay` |
//! | `page` | latest frame, scores and events for the live page (`/`) | the server runs |
//!
//! An output that fails is logged once and dropped; the others and the camera go on.

pub mod collect;
pub mod events;
pub mod frames;
pub mod metrics;
pub mod overlay;
pub mod page;

use super::CameraSummary;
use super::metrics::WatchMetrics;
use crate::alert::AlertHandle;
use crate::detector::Observation;
use crate::detector::event::{ClassGuess, Event};
use crate::response::FrameStats;
use image::RgbImage;
use ndarray::ArrayView2;
use std::sync::{Arc, Mutex};

/// One frame after the guard and the detector: everything an output may need, computed once.
pub struct ScoredFrame<'a> {
    /// Camera name.
    pub camera: &'a str,
    /// Frames delivered by the source before this one.
    pub seq: u64,
    /// Stream time, ms.
    pub pts_ms: u64,
    /// The frame as the guard saw it (after `--inject`), model-input size.
    pub image: &'a RgbImage,
    /// Softmax class distribution.
    pub probs: &'a [f32],
    /// Response statistics (the last guard frame's when `guarded` is false).
    pub stats: &'a FrameStats,
    /// The frame got the guard pass; false: the cascade's forward pass only.
    pub guarded: bool,
    /// Object detections of this frame (detector models), boxes in `image` pixels.
    pub detections: &'a [crate::engine::detect::Detection],
    /// |response| summed over channels, model-input size (the heat map).
    pub magnitude: ArrayView2<'a, f32>,
    /// Top-1 class.
    pub top1: &'a ClassGuess,
    /// The detector's verdict.
    pub obs: &'a Observation,
    /// The frame was replaced by `--inject`.
    pub injected: bool,
    /// Pixel change from the camera's previous frame, gray levels (None on its first frame).
    pub pixel_change: Option<f64>,
    /// A detector camera's track lost on this frame with its pixels unchanged.
    pub vanish: Option<crate::detector::vanish::Vanished>,
    /// Guard + detector time, s.
    pub proc_s: f64,
    /// Capture → scored, s (the lag).
    pub age_s: f64,
    /// The camera's frame size (width, height): the explain view is drawn at it.
    pub native: (u32, u32),
    /// The camera's scores over the last seconds, this frame's included (the score strip).
    pub history: &'a crate::watch::overlay::ScoreHistory,
}

/// A failed output: it is dropped, the camera goes on.
#[derive(Debug, thiserror::Error)]
#[error("{output} output: {message}")]
pub struct OutputError {
    /// Which output.
    pub output: &'static str,
    /// What went wrong.
    pub message: String,
}

impl OutputError {
    /// An error of output `output`.
    pub fn new(output: &'static str, message: impl std::fmt::Display) -> Self {
        OutputError {
            output,
            message: message.to_string(),
        }
    }
}

/// One place a camera's scored frames and events go.
pub trait FrameOutput: Send {
    /// Short name for logs.
    fn name(&self) -> &'static str;
    /// Takes one scored frame.
    fn frame(&mut self, f: &ScoredFrame<'_>) -> Result<(), OutputError>;
    /// Takes one event message (from a frame, or the end message at the camera's end).
    fn event(&mut self, _ev: &Event) -> Result<(), OutputError> {
        Ok(())
    }
    /// The camera ended: flush, close, and add what this output kept to its summary.
    fn finish(&mut self, _summary: &mut CameraSummary) -> Result<(), OutputError> {
        Ok(())
    }
}

/// What outputs of different cameras share.
#[derive(Clone)]
pub struct Shared {
    /// The run's metrics.
    pub metrics: WatchMetrics,
    /// Print events on stdout.
    pub events_stdout: bool,
    /// Submit events to the alert hub.
    pub alerts: Option<AlertHandle>,
    /// The `--frames-out` file.
    pub frames_out: Option<Arc<Mutex<frames::FramesFile>>>,
    /// Calibration run: keep every frame's scores.
    pub collect: bool,
    /// The live page's board, when the server shows the page.
    pub page: Option<crate::watch::page::PageBoard>,
}

/// A camera's outputs, in order.
pub struct Outputs {
    camera: String,
    list: Vec<Box<dyn FrameOutput>>,
}

/// The outputs of one camera: metrics and events always, then frames-out,
/// the calibration collector, the overlay and the live page where the plan asks for them.
pub fn for_camera(
    camera: &str,
    shared: &Shared,
    overlay: Option<overlay::OverlayOutput>,
    page: Option<page::PageOutput>,
) -> Outputs {
    let mut list: Vec<Box<dyn FrameOutput>> = vec![Box::new(metrics::MetricsOutput::new(
        camera,
        shared.metrics.clone(),
    ))];
    list.push(Box::new(events::EventsOutput::new(
        shared.events_stdout,
        shared.alerts.clone(),
    )));
    if let Some(f) = &shared.frames_out {
        list.push(Box::new(frames::FramesOutput::new(f.clone())));
    }
    if shared.collect {
        list.push(Box::new(collect::CollectOutput::default()));
    }
    if let Some(o) = overlay {
        list.push(Box::new(o));
    }
    if let Some(p) = page {
        list.push(Box::new(p));
    }
    Outputs {
        camera: camera.to_string(),
        list,
    }
}

impl Outputs {
    /// Names of the outputs in force, for logs.
    pub fn names(&self) -> Vec<&'static str> {
        self.list.iter().map(|o| o.name()).collect()
    }

    /// Hands a frame, then its events, to every output.
    pub fn frame(&mut self, f: &ScoredFrame<'_>) {
        self.each(|o| o.frame(f));
        for ev in &f.obs.events {
            self.event(ev);
        }
    }

    /// Hands one event message to every output.
    pub fn event(&mut self, ev: &Event) {
        self.each(|o| o.event(ev));
    }

    /// Ends every output, adding what they kept to `summary`.
    pub fn finish(&mut self, summary: &mut CameraSummary) {
        let camera = self.camera.clone();
        for mut o in self.list.drain(..) {
            if let Err(e) = o.finish(summary) {
                tracing::error!(camera = %camera, "{e}");
            }
        }
    }

    fn each(&mut self, mut f: impl FnMut(&mut dyn FrameOutput) -> Result<(), OutputError>) {
        let camera = &self.camera;
        self.list.retain_mut(|o| match f(o.as_mut()) {
            Ok(()) => true,
            Err(e) => {
                tracing::error!(camera = %camera, "{e}; {} output stopped", o.name());
                false
            }
        });
    }
}
