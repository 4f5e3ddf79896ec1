//! `advguard watch` wiring: sources → bounded channels → engine workers (one per core, each
//! camera pinned to one worker so its frames stay in order) → per-camera detector → events
//! (stdout JSON lines + the alert hub) and per-frame records (`--frames-out`).
//!
//! ```text
//! source(cam A) ─┐ bounded          ┌─ worker 0: Guard, detectors of A, C ─┐
//! source(cam C) ─┴─▶ chan 0 ───────▶│                                       ├─▶ output thread ─▶ stdout events
//! source(cam B) ───▶ chan 1 ───────▶└─ worker 1: Guard, detector of B ─────┘      │              frames-out JSONL
//!                                                                                  └─▶ AlertHub (spool → sinks)
//! ```
//!
//! Live sources never block on their channel (newest frame wins, drops counted by the
//! source); file sources block (back-pressure). One camera's failure ends only that camera.

pub mod config;
pub mod inject;
pub mod metrics;
pub mod overlay;
pub mod overlay_rtsp;
pub mod server;
mod worker;

pub use worker::FrameRecord;

use crate::alert::AlertHub;
use crate::alert::config::{AlertsConfig, SinkConfig, SpoolConfig};
use crate::detector::DetectorConfig;
use crate::detector::calibrate::CleanFrame;
use crate::detector::event::Event;
use crate::engine::GuardOptions;
use crate::response::ResponseConfig;
use crate::source::{self, SourceHandle, SourceSpec};
use anyhow::Context;
use crossbeam_channel::RecvTimeoutError;
use inject::InjectSpec;
use metrics::{WatchMetrics, cam};
use prometheus_client::registry::Registry;
use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
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
    /// Detector settings (threshold from a profile or the defaults).
    pub detector: DetectorConfig,
    /// `--overlay` output: a video file or a served RTSP mount.
    pub overlay: Option<OverlayTarget>,
    /// `--inject` attack stretch.
    pub inject: Option<InjectSpec>,
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
    /// `/metrics` + `/healthz` bind address; `None`: no server.
    pub metrics_addr: Option<String>,
    /// Stop each camera after this many scored frames.
    pub max_frames: Option<u64>,
    /// Keep every scored frame's class distribution and statistics (for calibration).
    pub collect: bool,
}

/// How one camera ended.
#[derive(Debug, Clone, Default)]
pub struct CameraSummary {
    /// Frames scored.
    pub processed: u64,
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

pub(crate) enum Ctl {
    Ready(usize, Result<(), String>),
    Ended {
        camera: String,
        processed: u64,
        error: Option<String>,
    },
}

pub(crate) enum Out {
    Frame(Box<FrameRecord>),
    Event(Box<Event>),
    Clean(String, CleanFrame),
}

/// Runs until every camera has ended (file EOS, errors, `max_frames`) or `stop` is set
/// (SIGINT/SIGTERM), then ends open events and flushes alerts.
pub fn run(plan: WatchPlan, stop: Arc<AtomicBool>) -> anyhow::Result<Summary> {
    if plan.cameras.is_empty() {
        anyhow::bail!("no camera to watch: give SOURCE arguments or [[camera]] tables in --config");
    }
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
    let health: server::Health = Arc::new(Mutex::new(
        plan.cameras
            .iter()
            .map(|c| (c.name.clone(), "starting".to_string()))
            .collect(),
    ));
    for c in &plan.cameras {
        metrics.up.get_or_create(&cam(&c.name)).set(0);
    }

    // RTSP overlay servers (one per address) and a mount per camera, before the workers
    // that feed them.
    let mut overlay_servers: HashMap<(String, u16), overlay_rtsp::RtspServer> = HashMap::new();
    let mut rtsp_overlays: HashMap<String, overlay_rtsp::RtspOverlay> = HashMap::new();
    for c in &plan.cameras {
        if let Some(OverlayTarget::Rtsp(t)) = &c.overlay {
            let server = match overlay_servers.entry((t.host.clone(), t.port)) {
                Entry::Occupied(o) => o.into_mut(),
                Entry::Vacant(v) => {
                    v.insert(overlay_rtsp::RtspServer::start(&t.host, t.port).context("--overlay")?)
                }
            };
            let mount = server.mount(&t.path, c.spec.size);
            tracing::info!(camera = %c.name, "explain view served at {}", t.url());
            rtsp_overlays.insert(c.name.clone(), mount);
        }
    }

    // Workers: camera i → worker i mod n.
    let n = plan.workers.clamp(1, plan.cameras.len());
    let (ctl_tx, ctl_rx) = crossbeam_channel::unbounded::<Ctl>();
    let (out_tx, out_rx) = crossbeam_channel::bounded::<Out>(4096);
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
        let cams_rtsp: HashMap<String, overlay_rtsp::RtspOverlay> = cams
            .iter()
            .filter_map(|c| rtsp_overlays.remove(&c.name).map(|o| (c.name.clone(), o)))
            .collect();
        // Two slots per camera: a live source's frame never waits behind more than one other.
        let (tx, rx) = crossbeam_channel::bounded(2 * cams.len().max(1));
        senders.push(tx);
        let ctx = worker::WorkerCtx {
            index: w,
            cameras: cams,
            guard: plan.guard.clone(),
            default_model: plan.default_model.clone(),
            response: plan.response.clone(),
            max_frames: plan.max_frames,
            collect: plan.collect,
            rx,
            out: out_tx.clone(),
            ctl: ctl_tx.clone(),
            metrics: metrics.clone(),
            rtsp_overlays: cams_rtsp,
        };
        workers.push(
            std::thread::Builder::new()
                .name(format!("engine-{w}"))
                .spawn(move || worker::run(ctx))?,
        );
    }
    drop(out_tx);
    let mut ready = 0;
    let mut open_error = None;
    while ready < n {
        match ctl_rx.recv() {
            Ok(Ctl::Ready(_, Ok(()))) => ready += 1,
            Ok(Ctl::Ready(w, Err(e))) => {
                tracing::debug!(worker = w, "engine worker failed to start");
                open_error.get_or_insert(e);
                ready += 1;
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    if let Some(e) = open_error {
        drop(senders);
        for w in workers {
            let _ = w.join();
        }
        if let Some(h) = hub {
            h.shutdown(Duration::from_secs(2));
        }
        anyhow::bail!(e);
    }

    // Output: stdout events, frames-out, alerts, calibration frames.
    let frames_out = match &plan.frames_out {
        Some(p) => Some(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("--frames-out {}", p.display()))?,
        )),
        None => None,
    };
    let alert_handle = hub.as_ref().map(|h| h.handle());
    let events_stdout = plan.events_stdout;
    let collect = plan.collect;
    let output = std::thread::Builder::new()
        .name("output".into())
        .spawn(move || output_loop(out_rx, frames_out, events_stdout, alert_handle, collect))?;

    let server = match &plan.metrics_addr {
        Some(addr) => {
            let s = server::MetricsServer::start(addr, registry, metrics.clone(), health.clone())?;
            tracing::info!("metrics on http://{}/metrics and /healthz", s.addr());
            Some(s)
        }
        None => None,
    };

    // Sources.
    let started = Instant::now();
    let mut handles: HashMap<String, SourceHandle> = HashMap::new();
    let mut summary = Summary::default();
    let mut ended = 0usize;
    let set_health = |name: &str, state: &str| {
        if let Ok(mut h) = health.lock() {
            h.insert(name.to_string(), state.to_string());
        }
    };
    for (i, c) in plan.cameras.iter().enumerate() {
        let mut spec = c.spec.clone();
        spec.name = c.name.clone();
        match source::spawn(spec, senders[i % n].clone()) {
            Ok(h) => {
                metrics.track_source(&c.name, h.stats());
                metrics.up.get_or_create(&cam(&c.name)).set(1);
                set_health(&c.name, "running");
                tracing::info!(camera = %c.name, source = %source::redact(&c.spec.uri), model = %c.model,
                    detector = %c.detector.kind, threshold = c.detector.rule.threshold,
                    threshold_from = c.detector.source, "watching");
                handles.insert(c.name.clone(), h);
            }
            Err(e) => {
                tracing::error!(camera = %c.name, "{e}");
                metrics.errors.get_or_create(&cam(&c.name)).inc();
                set_health(&c.name, "failed");
                summary.cameras.entry(c.name.clone()).or_default().error = Some(e.to_string());
                ended += 1;
            }
        }
    }
    drop(senders);

    let total = plan.cameras.len();
    let mut was_stopped = false;
    while ended < total {
        if stop.load(Ordering::SeqCst) {
            was_stopped = true;
            tracing::info!("shutting down: ending open events");
            break;
        }
        match ctl_rx.recv_timeout(Duration::from_millis(200)) {
            Ok(Ctl::Ended {
                camera,
                processed,
                error,
            }) => {
                ended += 1;
                metrics.up.get_or_create(&cam(&camera)).set(0);
                let s = summary.cameras.entry(camera.clone()).or_default();
                s.processed = processed;
                match &error {
                    Some(e) => {
                        tracing::error!(camera = %camera, "{e}");
                        metrics.errors.get_or_create(&cam(&camera)).inc();
                        set_health(&camera, "failed");
                        s.error = Some(e.clone());
                    }
                    None => {
                        tracing::info!(camera = %camera, processed, "camera ended");
                        set_health(&camera, "ended");
                    }
                }
                if let Some(h) = handles.get(&camera) {
                    h.stop();
                }
            }
            Ok(Ctl::Ready(..)) => {}
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    // Stop and join every source; their channel senders go with them, so the workers drain,
    // end any open event and exit.
    for h in handles.values() {
        h.stop();
    }
    for (_, h) in handles {
        h.join();
    }
    for w in workers {
        let _ = w.join();
    }
    while let Ok(m) = ctl_rx.try_recv() {
        if let Ctl::Ended {
            camera, processed, ..
        } = m
        {
            summary.cameras.entry(camera).or_default().processed = processed;
        }
    }
    let collected = output.join().unwrap_or_default();
    for (name, (events, frames)) in collected {
        let s = summary.cameras.entry(name).or_default();
        s.events = events;
        s.frames = frames;
    }
    summary.processed = summary.cameras.values().map(|c| c.processed).sum();
    summary.wall_s = started.elapsed().as_secs_f64();
    if let Some(h) = hub {
        h.shutdown(Duration::from_secs(if was_stopped { 3 } else { 10 }));
    }
    if let Some(s) = server {
        s.stop();
    }
    Ok(summary)
}

type Collected = HashMap<String, (u64, Vec<CleanFrame>)>;

fn output_loop(
    rx: crossbeam_channel::Receiver<Out>,
    mut frames_out: Option<std::io::BufWriter<std::fs::File>>,
    events_stdout: bool,
    alerts: Option<crate::alert::AlertHandle>,
    collect: bool,
) -> Collected {
    let mut acc: Collected = HashMap::new();
    let stdout = std::io::stdout();
    let mut last_flush = Instant::now();
    for m in rx {
        match m {
            Out::Frame(r) => {
                if let Some(w) = frames_out.as_mut() {
                    if let Ok(line) = serde_json::to_string(&r) {
                        let _ = writeln!(w, "{line}");
                    }
                    if last_flush.elapsed() > Duration::from_secs(1) {
                        let _ = w.flush();
                        last_flush = Instant::now();
                    }
                }
            }
            Out::Event(ev) => {
                if ev.phase == crate::detector::event::Phase::Start {
                    acc.entry(ev.camera.clone()).or_default().0 += 1;
                }
                if events_stdout && let Ok(line) = serde_json::to_string(&ev) {
                    let mut o = stdout.lock();
                    let _ = writeln!(o, "{line}");
                    let _ = o.flush();
                }
                if let Some(a) = &alerts {
                    a.submit(*ev);
                }
            }
            Out::Clean(camera, f) => {
                if collect {
                    acc.entry(camera).or_default().1.push(f);
                }
            }
        }
    }
    if let Some(w) = frames_out.as_mut() {
        let _ = w.flush();
    }
    acc
}
