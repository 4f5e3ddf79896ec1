//! Camera sources: GStreamer pipelines that decode, scale and convert video to the
//! model input (size×size tight RGB8) and hand frames to the engine over a channel.
//!
//! Each camera runs its own pipeline and supervisor thread, so one camera's errors,
//! reconnects or stalls never touch another. Pipelines are text templates in
//! `pipelines/*.txt`; see docs/STREAMING.md ("Sources") for the drop policy,
//! reconnect/backoff and watchdog.

mod error;
mod frame;
mod pipeline;
mod probe;
mod run;
mod spec;
mod stats;
mod uri;

pub use error::SourceError;
pub use frame::Frame;
pub use pipeline::{describe, template_body};
pub use probe::file_framerate;
pub use spec::{Retime, SourceKind, SourceSpec};
pub use stats::SourceStats;
pub use uri::redact;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

/// What a source reports to the consumer.
///
/// `Eos` and `Error` are terminal: the source sends nothing after them. Live sources
/// (RTSP, HTTP, V4L2, test) never end on their own: they reconnect and report
/// transient trouble through logs and [`SourceStats`] instead.
#[derive(Debug)]
pub enum SourceMsg {
    /// A decoded, scaled frame.
    Frame(Frame),
    /// A file source reached its end cleanly.
    Eos {
        /// Camera name.
        camera: Arc<str>,
    },
    /// The source failed for good (corrupt or truncated file, unusable pipeline).
    Error {
        /// Camera name.
        camera: Arc<str>,
        /// One line naming the input and the problem (credentials redacted).
        error: String,
    },
}

/// A running source: owns its GStreamer pipeline thread. Dropping or `stop()` ends it.
pub struct SourceHandle {
    name: Arc<str>,
    stats: Arc<SourceStats>,
    stop: Arc<AtomicBool>,
    wake: crossbeam_channel::Sender<()>,
    thread: Option<JoinHandle<()>>,
}

impl SourceHandle {
    /// Camera name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The source's shared counters.
    pub fn stats(&self) -> Arc<SourceStats> {
        self.stats.clone()
    }

    /// Asks the source to stop; returns at once (the pipeline goes to Null within ~100 ms).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.wake.try_send(());
    }

    /// True once the source thread has ended (after Eos, Error or stop()).
    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(|t| t.is_finished())
    }

    /// Waits for the source thread to end (call `stop()` first for live sources).
    pub fn join(mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for SourceHandle {
    fn drop(&mut self) {
        self.stop();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Starts the camera; frames/messages go to `tx`.
///
/// Live sources never block on `tx`: a frame that finds the channel full is dropped
/// and counted (use a small bounded channel so a waiting frame is never stale).
/// File sources block (back-pressure, no drops) unless `spec.realtime`.
/// Errors here are configuration problems (bad URI, missing file, missing GStreamer
/// element); problems found while playing arrive as [`SourceMsg::Error`].
pub fn spawn(
    spec: SourceSpec,
    tx: crossbeam_channel::Sender<SourceMsg>,
) -> Result<SourceHandle, SourceError> {
    let kind = spec.validate()?;
    gstreamer::init().map_err(|e| SourceError::Init {
        camera: spec.name.clone(),
        message: e.to_string(),
    })?;
    let desc = describe(&spec, &kind);
    // Build once here so that a broken template or a missing plugin is a spawn error.
    let first = pipeline::build(&spec, &kind, &desc)?;
    let name: Arc<str> = Arc::from(spec.name.as_str());
    let stats = Arc::new(SourceStats::new());
    let stop = Arc::new(AtomicBool::new(false));
    let (wake, wake_rx) = crossbeam_channel::bounded(1);
    let ctx = run::Ctx {
        camera: name.clone(),
        shown: kind.shown(&spec.uri),
        spec,
        kind,
        desc,
        tx,
        stats: stats.clone(),
        stop: stop.clone(),
        wake: wake_rx,
    };
    let thread = std::thread::Builder::new()
        .name(format!("source-{name}"))
        .spawn(move || run::supervise(ctx, first))
        .map_err(|e| SourceError::Thread {
            camera: name.to_string(),
            message: e.to_string(),
        })?;
    Ok(SourceHandle {
        name,
        stats,
        stop,
        wake,
        thread: Some(thread),
    })
}
