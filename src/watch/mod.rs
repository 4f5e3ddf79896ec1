//! `advguard watch`, made of explicit stages (as Vector has sources → transforms → sinks):
//!
//! ```text
//! source(cam A) ─┐ bounded          ┌─ worker 0: Guard; A, C: CameraState → [FrameOutput] ─┐
//! source(cam C) ─┴─▶ chan 0 ───────▶│                                                       ├─▶ Ctl: ready, ended
//! source(cam B) ───▶ chan 1 ───────▶└─ worker 1: Guard; B:    CameraState → [FrameOutput] ─┘   (also on panic)
//!     │                                                        outputs: metrics, events (stdout,
//!     └─ SourceStats ─▶ HealthBoard ─▶ /healthz, metrics, logs          AlertHub), frames-out, collect, overlay
//! ```
//!
//! - **Sources** (`crate::source`): one GStreamer pipeline and supervisor per camera. Live
//!   sources never block on their channel (newest frame wins, drops counted by the source); file
//!   sources block (back-pressure).
//! - **Workers** (`worker`): one per core, each camera pinned to one worker so its frames stay in
//!   order. A camera's [`pipeline`] scores each frame once (guard, response statistics and
//!   magnitude) and drives its detector, a `Box<dyn CameraState>` from
//!   [`crate::detector::state::for_camera`].
//! - **Outputs** ([`output`]): a list of [`output::FrameOutput`]s per camera.
//! - **Health** ([`health`]): one typed state per camera, the same for `/healthz`, the metrics
//!   and the logs.
//!
//! One camera's failure ends only that camera. A worker that panics ends the run with an error
//! naming the camera (its open events are closed first); it never hangs it.

pub mod bench;
pub mod config;
pub mod health;
pub mod inject;
pub mod metrics;
pub mod output;
pub mod overlay;
pub mod overlay_rtsp;
pub mod page;
mod pipeline;
pub mod server;
pub mod soak;
mod worker;

/// Caps glibc's malloc arenas for a long-running watch (`ADVGUARD_MALLOC_ARENAS`, default 2;
/// 0 leaves glibc's default of 8 per core).
///
/// Every RTSP reconnect builds a pipeline whose GStreamer threads are new, and glibc hands
/// new threads new arenas; the decoded-frame buffers freed in them stay resident. Measured
/// with `advguard soak` (2 cameras, server killed every 15 s): RSS rose 202 → 316 MiB in
/// 6 minutes with glibc's default, and stayed at 187–208 MiB with 2 arenas
/// (docs/RELIABILITY.md). Must run before the first threads start.
pub fn limit_malloc_arenas() {
    let n = std::env::var("ADVGUARD_MALLOC_ARENAS")
        .ok()
        .and_then(|v| v.trim().parse::<i32>().ok())
        .unwrap_or(2);
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if n > 0 {
        // SAFETY: mallopt only sets an allocator parameter; M_ARENA_MAX is valid on glibc.
        let ok = unsafe { libc::mallopt(libc::M_ARENA_MAX, n) } == 1;
        tracing::debug!(arenas = n, ok, "malloc arenas capped");
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let _ = n;
}

pub use output::frames::FrameRecord;
pub use worker::TEST_PANIC_ENV;

use crate::alert::AlertHub;
use crate::alert::config::{AlertsConfig, SinkConfig, SpoolConfig};
use crate::detector::DetectorConfig;
use crate::detector::calibrate::CleanFrame;
use crate::engine::GuardOptions;
use crate::response::ResponseConfig;
use crate::source::{self, SourceHandle, SourceMsg, SourceSpec};
use anyhow::Context;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use health::{CameraHealth, HealthBoard};
use inject::InjectSpec;
use metrics::{WatchMetrics, cam};
use prometheus_client::registry::Registry;
use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// One camera to watch.
#[derive(Debug, Clone)]
pub struct CameraPlan {
    /// Camera name.
    pub name: String,
    /// How to open its source (`spec.name` must equal `name`).
    pub spec: SourceSpec,
    /// Model manifest name.
    pub model: String,
    /// Detector settings (threshold from a profile or the defaults); unused in a calibration
    /// run ([`WatchPlan::collect`]), which builds no detector.
    pub detector: DetectorConfig,
    /// The fused detector's configuration; when set, the camera runs the fused detector
    /// instead of the single score of `detector`.
    pub fused: Option<crate::detector::FusedConfig>,
    /// `--overlay` output: a video file or a served RTSP mount.
    pub overlay: Option<OverlayTarget>,
    /// `--inject` attack stretch.
    pub inject: Option<InjectSpec>,
    /// Which frames get the guard pass (the rest the forward pass only).
    pub guard_every: crate::detector::cascade::GuardEvery,
}

/// Where a camera's explain view (`--overlay`) goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OverlayTarget {
    /// An .mp4/.mkv file, finished at the end of the run.
    File(PathBuf),
    /// A live mount on a gst-rtsp-server that `run` starts.
    Rtsp(overlay_rtsp::RtspTarget),
}

impl OverlayTarget {
    /// `rtsp://…` is served, anything else is a file.
    pub fn parse(s: &std::path::Path) -> anyhow::Result<OverlayTarget> {
        match s.to_str() {
            Some(u) if u.starts_with("rtsp://") => {
                Ok(OverlayTarget::Rtsp(overlay_rtsp::RtspTarget::parse(u)?))
            }
            _ => Ok(OverlayTarget::File(s.to_path_buf())),
        }
    }
}

/// The alert tables.
#[derive(Debug, Clone, Default)]
pub struct AlertPlan {
    /// `[[sink]]`.
    pub sinks: Vec<SinkConfig>,
    /// `[spool]`.
    pub spool: SpoolConfig,
    /// `[alerts]`.
    pub alerts: AlertsConfig,
}

/// Everything `run` needs.
#[derive(Debug, Clone)]
pub struct WatchPlan {
    /// Cameras.
    pub cameras: Vec<CameraPlan>,
    /// Guard options for `default_model` (backend, compile options, explicit model file).
    pub guard: GuardOptions,
    /// The command line's model; other models are looked up by manifest.
    pub default_model: String,
    /// Response statistics configuration.
    pub response: ResponseConfig,
    /// Engine worker threads (capped at the number of cameras).
    pub workers: usize,
    /// `--frames-out` JSONL.
    pub frames_out: Option<PathBuf>,
    /// Print events as JSON lines on stdout.
    pub events_stdout: bool,
    /// Alert sinks; `None`: no alert hub.
    pub alerts: Option<AlertPlan>,
    /// `/metrics` + `/healthz` (and the live page `/`) bind address; `None`: no server.
    pub metrics_addr: Option<String>,
    /// Token the live page requires (`--page-token`); `None`: none, and then the page is
    /// served only on a loopback address (docs/STREAMING.md).
    pub page_token: Option<String>,
    /// Stop each camera after this many scored frames.
    pub max_frames: Option<u64>,
    /// Calibration run: every camera scores only (no detector, no thresholds, no events) and
    /// keeps each frame's class distribution and statistics in [`CameraSummary::frames`].
    pub collect: bool,
}

/// How one camera ended.
#[derive(Debug, Clone, Default)]
pub struct CameraSummary {
    /// Frames scored.
    pub processed: u64,
    /// Of them, frames that got the guard pass (the rest: the cascade's forward pass only).
    pub guarded: u64,
    /// Guard frames a forward pass escalated (top-1 change, onset jump).
    pub escalated: u64,
    /// The cascade's k at the end (a guard frame at least every k frames).
    pub guard_every: u32,
    /// Age of each scored frame at its decision (capture → detector done), seconds.
    pub decision_age_s: Vec<f32>,
    /// Frames the source decoded, and of them dropped (counted) so that lag stays bounded.
    pub received: u64,
    /// See `received`.
    pub dropped: u64,
    /// Of `dropped`, delivered frames the engine worker dropped for a newer frame of the same
    /// camera (live sources).
    pub superseded: u64,
    /// Events started.
    pub events: u64,
    /// Why it failed, if it did.
    pub error: Option<String>,
    /// Clean frames kept for calibration (`collect`).
    pub frames: Vec<CleanFrame>,
}

/// Result of a watch run.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// Per camera.
    pub cameras: BTreeMap<String, CameraSummary>,
    /// Wall time from the first frame to the end, seconds.
    pub wall_s: f64,
    /// Frames scored in total.
    pub processed: u64,
}

/// Why a run ended with an error after it started.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// An engine worker panicked (a bug): the run stops instead of hanging.
    #[error("camera {camera}: {message}")]
    WorkerPanicked {
        /// The camera being scored when it happened (or the first of the worker's cameras).
        camera: String,
        /// What the worker reported, with the panic message.
        message: String,
    },
}

/// What workers tell the run.
pub(crate) enum Ctl {
    /// A worker opened its models (or failed to).
    Ready(usize, Result<(), String>),
    /// A camera ended; exactly one per camera. `fatal`: its worker panicked.
    Ended {
        camera: String,
        summary: CameraSummary,
        fatal: bool,
    },
}

/// How often the run looks at sources (health), the stop flag and worker reports.
const TICK: Duration = Duration::from_millis(200);

/// Runs until every camera has ended (file EOS, errors, `max_frames`) or `stop` is set
/// (SIGINT/SIGTERM), then ends open events and flushes alerts.
pub fn run(plan: WatchPlan, stop: Arc<AtomicBool>) -> anyhow::Result<Summary> {
    if plan.cameras.is_empty() {
        anyhow::bail!("no camera to watch: give SOURCE arguments or [[camera]] tables in --config");
    }
    let mut t = Topology::start(&plan)?;
    let started = Instant::now();
    let sources = t.start_sources(&plan);
    let fatal = t.supervise(&stop, &sources);
    t.shutdown(sources, fatal, started, stop.load(Ordering::SeqCst))
}

/// A camera's running source and whether it reconnects (live) or ends (file).
struct Running {
    handle: SourceHandle,
    live: bool,
}

/// The wired stages of one run.
struct Topology {
    metrics: WatchMetrics,
    health: HealthBoard,
    hub: Option<AlertHub>,
    server: Option<server::MetricsServer>,
    workers: Vec<JoinHandle<()>>,
    senders: Vec<Sender<SourceMsg>>,
    ctl: Receiver<Ctl>,
    /// Kept alive while the workers push into their mounts.
    _overlay_servers: Vec<overlay_rtsp::RtspServer>,
    summary: Summary,
    ended: usize,
}

impl Topology {
    /// Metrics, health, alert hub, overlay servers, workers (ready) and the metrics server.
    fn start(plan: &WatchPlan) -> anyhow::Result<Topology> {
        let metrics = WatchMetrics::default();
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        let hub = match &plan.alerts {
            Some(a) => {
                let h = AlertHub::start(&a.sinks, &a.spool, &a.alerts)?;
                h.register_metrics(&mut registry);
                Some(h)
            }
            None => None,
        };
        let health = HealthBoard::new(
            plan.cameras.iter().map(|c| c.name.as_str()),
            metrics.clone(),
        );
        let (overlay_servers, mut mounts) = serve_overlays(plan)?;
        let frames_out = match &plan.frames_out {
            Some(p) => Some(
                output::frames::FramesFile::create(p)
                    .with_context(|| format!("--frames-out {}", p.display()))?,
            ),
            None => None,
        };
        let shared = output::Shared {
            metrics: metrics.clone(),
            events_stdout: plan.events_stdout,
            alerts: hub.as_ref().map(|h| h.handle()),
            frames_out,
            collect: plan.collect,
            // A calibration run shows no page (it has no server either).
            page: (plan.metrics_addr.is_some() && !plan.collect)
                .then(|| page::PageBoard::new(plan.cameras.iter().map(|c| c.name.as_str()))),
        };
        let page_board = shared.page.clone();
        // Workers: camera i → worker i mod n. Only workers hold `ctl` senders, so the channel
        // disconnects once every worker is gone, however it went.
        let n = plan.workers.clamp(1, plan.cameras.len());
        let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
        let threads = (cores / n).max(1);
        crate::engine::ort_backend::set_intra_threads(threads);
        tracing::info!(
            workers = n,
            threads_per_worker = threads,
            cores,
            "engine workers"
        );
        let (ctl_tx, ctl) = crossbeam_channel::unbounded::<Ctl>();
        let mut senders = Vec::new();
        let mut workers = Vec::new();
        for w in 0..n {
            let cams: Vec<CameraPlan> = plan
                .cameras
                .iter()
                .enumerate()
                .filter(|(i, _)| i % n == w)
                .map(|(_, c)| c.clone())
                .collect();
            let rtsp_overlays = cams
                .iter()
                .filter_map(|c| mounts.remove(&c.name).map(|o| (c.name.clone(), o)))
                .collect();
            // Two slots per camera: a live source's frame never waits behind more than one other.
            let (tx, rx) = crossbeam_channel::bounded(2 * cams.len().max(1));
            senders.push(tx);
            workers.push(worker::spawn(worker::WorkerCtx {
                index: w,
                cameras: cams,
                guard: plan.guard.clone(),
                default_model: plan.default_model.clone(),
                response: plan.response.clone(),
                max_frames: plan.max_frames,
                collect: plan.collect,
                rx,
                ctl: ctl_tx.clone(),
                shared: shared.clone(),
                rtsp_overlays,
            })?);
        }
        drop(ctl_tx);
        drop(shared);
        if let Err(e) = wait_ready(&ctl, n) {
            drop(senders);
            for w in workers {
                let _ = w.join();
            }
            if let Some(h) = hub {
                h.shutdown(Duration::from_secs(2));
            }
            anyhow::bail!(e);
        }
        let server = match &plan.metrics_addr {
            Some(addr) => {
                let page = page_board.map(|board| server::PageOptions {
                    board,
                    token: plan.page_token.clone(),
                });
                let s = server::MetricsServer::start(
                    addr,
                    registry,
                    metrics.clone(),
                    health.clone(),
                    page,
                )?;
                tracing::info!("metrics on http://{}/metrics and /healthz", s.addr());
                Some(s)
            }
            None => None,
        };
        Ok(Topology {
            metrics,
            health,
            hub,
            server,
            workers,
            senders,
            ctl,
            _overlay_servers: overlay_servers,
            summary: Summary::default(),
            ended: 0,
        })
    }

    /// Spawns every camera's source; a camera whose source cannot start has failed.
    fn start_sources(&mut self, plan: &WatchPlan) -> HashMap<String, Running> {
        let n = self.senders.len();
        let mut running = HashMap::new();
        for (i, c) in plan.cameras.iter().enumerate() {
            let mut spec = c.spec.clone();
            spec.name = c.name.clone();
            let live = spec.validate().is_ok_and(|k| k.is_live());
            match source::spawn(spec, self.senders[i % n].clone()) {
                Ok(h) => {
                    self.metrics.track_source(&c.name, h.stats());
                    tracing::info!(camera = %c.name, source = %source::redact(&c.spec.uri),
                        model = %c.model, "watching");
                    running.insert(c.name.clone(), Running { handle: h, live });
                }
                Err(e) => {
                    let summary = CameraSummary {
                        error: Some(e.to_string()),
                        ..Default::default()
                    };
                    self.record(&c.name, summary);
                }
            }
        }
        // The sources hold the only senders now: when they are gone, the workers drain and end.
        self.senders.clear();
        running
    }

    /// Books a camera's end: summary, health, error metric and log.
    fn record(&mut self, camera: &str, summary: CameraSummary) {
        match &summary.error {
            Some(e) => {
                tracing::error!(camera = %camera, "{e}");
                self.metrics.errors.get_or_create(&cam(camera)).inc();
                self.health.set(camera, CameraHealth::Failed);
            }
            None => {
                tracing::info!(camera = %camera, processed = summary.processed, "camera ended");
                self.health.set(camera, CameraHealth::Ended);
            }
        }
        self.summary.cameras.insert(camera.to_string(), summary);
        self.ended += 1;
    }

    /// Follows the run until every camera has ended, `stop` is set, or a worker panicked (the
    /// error returned); meanwhile keeps each camera's health in step with its source.
    fn supervise(
        &mut self,
        stop: &AtomicBool,
        sources: &HashMap<String, Running>,
    ) -> Option<WatchError> {
        let total = self.health.snapshot().len();
        while self.ended < total {
            if stop.load(Ordering::SeqCst) {
                tracing::info!("shutting down: ending open events");
                return None;
            }
            match self.ctl.recv_timeout(TICK) {
                Ok(Ctl::Ended {
                    camera,
                    summary,
                    fatal,
                }) => {
                    if let Some(r) = sources.get(&camera) {
                        r.handle.stop();
                    }
                    let message = summary.error.clone().unwrap_or_default();
                    self.record(&camera, summary);
                    if fatal {
                        tracing::error!(camera = %camera, "stopping every camera: an engine worker panicked");
                        return Some(WatchError::WorkerPanicked { camera, message });
                    }
                }
                Ok(Ctl::Ready(..)) | Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    tracing::error!("every engine worker is gone before its cameras ended");
                    return None;
                }
            }
            for (name, r) in sources {
                if !self.health.get(name).is_some_and(CameraHealth::is_terminal) {
                    let state = CameraHealth::of_source(&r.handle.stats(), r.live);
                    self.health.set(name, state);
                }
            }
        }
        None
    }

    /// Stops and joins the sources, lets the workers drain and end their cameras, then
    /// flushes the alerts and stops the metrics server.
    fn shutdown(
        mut self,
        sources: HashMap<String, Running>,
        mut fatal: Option<WatchError>,
        started: Instant,
        was_stopped: bool,
    ) -> anyhow::Result<Summary> {
        for r in sources.values() {
            r.handle.stop();
        }
        let mut stats = HashMap::new();
        for (name, r) in sources {
            stats.insert(name, r.handle.stats());
            r.handle.join();
        }
        for (i, w) in std::mem::take(&mut self.workers).into_iter().enumerate() {
            if w.join().is_err() {
                // Only a panic inside the worker's own panic report gets here.
                tracing::error!(worker = i, "engine worker died without reporting");
                fatal.get_or_insert(WatchError::WorkerPanicked {
                    camera: "?".into(),
                    message: format!("engine worker {i} died without reporting its cameras"),
                });
            }
        }
        while let Ok(m) = self.ctl.try_recv() {
            if let Ctl::Ended {
                camera,
                summary,
                fatal: f,
            } = m
            {
                if f && fatal.is_none() {
                    let message = summary.error.clone().unwrap_or_default();
                    fatal = Some(WatchError::WorkerPanicked {
                        camera: camera.clone(),
                        message,
                    });
                }
                self.record(&camera, summary);
            }
        }
        let mut summary = std::mem::take(&mut self.summary);
        // Read after the workers are gone: they count the frames they supersede.
        for (name, c) in summary.cameras.iter_mut() {
            if let Some(st) = stats.get(name) {
                c.received = st.received.load(Ordering::Relaxed);
                c.dropped = st.dropped.load(Ordering::Relaxed);
            }
        }
        summary.processed = summary.cameras.values().map(|c| c.processed).sum();
        summary.wall_s = started.elapsed().as_secs_f64();
        if let Some(h) = self.hub.take() {
            h.shutdown(Duration::from_secs(if was_stopped { 3 } else { 10 }));
        }
        if let Some(s) = self.server.take() {
            s.stop();
        }
        match fatal {
            Some(e) => Err(e.into()),
            None => Ok(summary),
        }
    }
}

/// Waits until every worker opened its models; the first failure is the error.
fn wait_ready(ctl: &Receiver<Ctl>, workers: usize) -> Result<(), String> {
    let mut error = None;
    for _ in 0..workers {
        match ctl.recv() {
            Ok(Ctl::Ready(_, Ok(()))) => {}
            Ok(Ctl::Ready(w, Err(e))) => {
                tracing::debug!(worker = w, "engine worker failed to start");
                error.get_or_insert(e);
            }
            Ok(Ctl::Ended { .. }) => {}
            Err(_) => {
                error.get_or_insert("engine workers ended before they were ready".to_string());
                break;
            }
        }
    }
    error.map_or(Ok(()), Err)
}

type OverlayServers = (
    Vec<overlay_rtsp::RtspServer>,
    HashMap<String, overlay_rtsp::RtspOverlay>,
);

/// RTSP overlay servers (one per address) and a mount per camera, before the workers that
/// feed them.
fn serve_overlays(plan: &WatchPlan) -> anyhow::Result<OverlayServers> {
    let mut servers: HashMap<(String, u16), overlay_rtsp::RtspServer> = HashMap::new();
    let mut mounts = HashMap::new();
    for c in &plan.cameras {
        if let Some(OverlayTarget::Rtsp(t)) = &c.overlay {
            let server = match servers.entry((t.host.clone(), t.port)) {
                Entry::Occupied(o) => o.into_mut(),
                Entry::Vacant(v) => {
                    v.insert(overlay_rtsp::RtspServer::start(&t.host, t.port).context("--overlay")?)
                }
            };
            mounts.insert(c.name.clone(), server.mount(&t.path, c.spec.size));
            tracing::info!(camera = %c.name, "explain view served at {}", t.url());
        }
    }
    Ok((servers.into_values().collect(), mounts))
}
