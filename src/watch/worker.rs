//! Engine workers: each owns its guard(s) and the cameras pinned to it, so one camera's
//! frames are scored in order by one thread and its detector state needs no lock.
//!
//! A worker's end is always reported: every camera it holds gets exactly one
//! [`Ctl::Ended`], also when the worker panics (the panic is caught, the cameras are ended
//! with an error naming the camera and frame, and `fatal` tells the run to stop).

use super::output::overlay::{OverlayOutput, OverlaySink};
use super::output::{self, Shared};
use super::overlay::OverlayWriter;
use super::overlay_rtsp::RtspOverlay;
use super::pipeline::CameraPipeline;
use super::{CameraPlan, CameraSummary, Ctl, OverlayTarget};
use crate::detector::state::{self, CameraState, ScoresOnly};
use crate::engine::compile::{CompileOptions, Mode, Seed};
use crate::engine::manifest::Manifest;
use crate::engine::{Guard, GuardOptions};
use crate::response::ResponseConfig;
use crate::source::SourceMsg;
use crossbeam_channel::{Receiver, Sender};
use std::collections::{HashMap, VecDeque};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

/// **Test hook only**: `CAMERA:N` makes the worker panic when camera CAMERA's N-th frame
/// (1-based) arrives, to test that a worker panic ends the run with a clear error. Unset in
/// normal use; it has no other effect.
pub const TEST_PANIC_ENV: &str = "ADVGUARD_TEST_PANIC_AT";

/// Everything a worker needs.
pub(super) struct WorkerCtx {
    pub index: usize,
    pub cameras: Vec<CameraPlan>,
    pub guard: GuardOptions,
    pub default_model: String,
    pub response: ResponseConfig,
    pub max_frames: Option<u64>,
    /// Calibration run: scores only, no detector.
    pub collect: bool,
    pub rx: Receiver<SourceMsg>,
    pub ctl: Sender<Ctl>,
    pub shared: Shared,
    /// Served `--overlay rtsp://…` mounts of this worker's cameras.
    pub rtsp_overlays: HashMap<String, RtspOverlay>,
}

/// Starts a worker thread.
pub(super) fn spawn(ctx: WorkerCtx) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("engine-{}", ctx.index))
        .spawn(move || contained(ctx))
}

/// The frame being scored, so that a panic can name it.
struct Current {
    camera: String,
    seq: u64,
    pts_ms: u64,
}

struct Worker {
    ctx: WorkerCtx,
    ready_sent: bool,
    cams: HashMap<Arc<str>, CameraPipeline>,
    current: Option<Current>,
    panic_at: Option<(String, u64)>,
}

/// Runs the worker and reports its end whatever happens.
fn contained(ctx: WorkerCtx) {
    let panic_at = std::env::var(TEST_PANIC_ENV).ok().and_then(|v| {
        let (c, n) = v.rsplit_once(':')?;
        Some((c.to_string(), n.parse().ok()?))
    });
    let mut w = Worker {
        ctx,
        ready_sent: false,
        cams: HashMap::new(),
        current: None,
        panic_at,
    };
    if let Err(payload) = catch_unwind(AssertUnwindSafe(|| w.run())) {
        w.after_panic(&panic_message(payload.as_ref()));
    }
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".to_string()
    }
}

fn open_guard(
    model: &str,
    default_model: &str,
    base: &GuardOptions,
    plain: bool,
) -> anyhow::Result<Guard> {
    let manifest = Manifest::load(model)?;
    let mut opts = base.clone();
    if model != default_model {
        opts.model_path = None;
    }
    if plain {
        opts.compile = Some(CompileOptions {
            mode: Mode::Plain,
            seed: Seed::Input,
            input_shape: None,
            ..Default::default()
        });
    }
    Guard::open(&manifest, &opts).map_err(|e| anyhow::anyhow!("opening model {model}: {e}"))
}

type Guards = HashMap<String, Guard>;

impl Worker {
    /// Opens the guards (reporting readiness), then scores until every source feeding this
    /// worker has gone.
    fn run(&mut self) {
        let ready = self.open_guards();
        self.ready_sent = true;
        let (mut guards, mut plain) = match ready {
            Ok(g) => {
                let _ = self.ctx.ctl.send(Ctl::Ready(self.ctx.index, Ok(())));
                g
            }
            Err(e) => {
                let _ = self.ctx.ctl.send(Ctl::Ready(self.ctx.index, Err(e)));
                return;
            }
        };
        tracing::debug!(
            worker = self.ctx.index,
            guards = guards.len(),
            "engine worker ready"
        );
        self.build_cameras();
        let mut pending: VecDeque<SourceMsg> = VecDeque::new();
        let cap = 2 * self.cams.len().max(1);
        loop {
            if pending.is_empty() {
                match self.ctx.rx.recv() {
                    Ok(m) => self.enqueue(&mut pending, m),
                    Err(_) => break,
                }
            }
            // What is waiting, and of a live camera's frames only the newest: a frame never
            // waits behind an older one of its own camera (the decision age stays one frame).
            // At most a channel's worth is held here, so a file's back-pressure still reaches
            // its decoder.
            while pending.len() < cap
                && let Ok(m) = self.ctx.rx.try_recv()
            {
                self.enqueue(&mut pending, m);
            }
            let Some(msg) = pending.pop_front() else {
                continue;
            };
            match msg {
                SourceMsg::Frame(f) => {
                    let Some(c) = self.cams.get_mut(&f.camera) else {
                        continue;
                    };
                    let Some(g) = guards.get_mut(&c.plan.model) else {
                        continue;
                    };
                    if c.done {
                        continue;
                    }
                    self.current = Some(Current {
                        camera: c.plan.name.clone(),
                        seq: f.seq,
                        pts_ms: f.pts_ms,
                    });
                    if let Some((cam, n)) = &self.panic_at
                        && *cam == c.plan.name
                        && c.processed + 1 == *n
                    {
                        panic!(
                            "{TEST_PANIC_ENV} test hook: panicking on frame {n} of camera {cam}"
                        );
                    }
                    let p = plain.get_mut(&c.plan.model);
                    if let Err(e) = c.score(g, p, &self.ctx.response, f) {
                        tracing::warn!(camera = %c.plan.name, "frame skipped: {e:#}");
                    }
                    self.current = None;
                    if self.ctx.max_frames.is_some_and(|m| c.processed >= m) {
                        let s = c.end(None);
                        report(&self.ctx.ctl, &c.plan.name, s, false);
                    }
                }
                SourceMsg::Eos { camera } => self.end(&camera, None),
                SourceMsg::Error { camera, error } => self.end(&camera, Some(error)),
            }
        }
        // Every source is gone (end of streams or shutdown): close what is still open.
        for c in self.cams.values_mut().filter(|c| !c.done) {
            let s = c.end(None);
            report(&self.ctx.ctl, &c.plan.name, s, false);
        }
    }

    /// Queues `m`. A live camera's (or realtime file's) frame replaces that camera's frame
    /// already waiting, which is counted as dropped, so at most one waits per live camera;
    /// files with back-pressure keep every frame.
    fn enqueue(&mut self, pending: &mut VecDeque<SourceMsg>, m: SourceMsg) {
        if let SourceMsg::Frame(f) = &m
            && let Some(c) = self.cams.get_mut(&f.camera)
            && c.live
            && let Some(i) = pending
                .iter()
                .position(|p| matches!(p, SourceMsg::Frame(g) if g.camera == f.camera))
        {
            pending.remove(i);
            c.superseded += 1;
            self.ctx.shared.metrics.superseded(&f.camera, 1);
        }
        pending.push_back(m);
    }

    fn end(&mut self, camera: &str, error: Option<String>) {
        if let Some(c) = self.cams.get_mut(camera)
            && !c.done
        {
            let s = c.end(error);
            report(&self.ctx.ctl, &c.plan.name, s, false);
        }
    }

    /// The detection guard of every model, and a plain-gradient one where `--inject` needs it.
    fn open_guards(&self) -> Result<(Guards, Guards), String> {
        let (mut guards, mut plain) = (Guards::new(), Guards::new());
        for c in &self.ctx.cameras {
            let (model, dm, base) = (&c.model, &self.ctx.default_model, &self.ctx.guard);
            if !guards.contains_key(model) {
                let mut g = open_guard(model, dm, base, false).map_err(|e| format!("{e:#}"))?;
                // The cascade's forward pass, planned now so that it fails here, not mid-stream
                // (a calibration run guards every frame and never needs it).
                if !self.ctx.collect {
                    g.prepare_forward()
                        .map_err(|e| format!("opening the forward pass of {model}: {e}"))?;
                }
                guards.insert(model.clone(), g);
            }
            if c.inject.is_some() && !plain.contains_key(model) {
                let g = open_guard(model, dm, base, true)
                    .map_err(|e| format!("--inject needs a plain-gradient guard: {e:#}"))?;
                plain.insert(model.clone(), g);
            }
        }
        Ok((guards, plain))
    }

    fn build_cameras(&mut self) {
        for c in &self.ctx.cameras {
            let sink = match &c.overlay {
                Some(OverlayTarget::File(p)) => match OverlayWriter::create(p) {
                    Ok(w) => Some(OverlaySink::File(w, p.clone())),
                    Err(e) => {
                        tracing::error!(camera = %c.name, "{e:#}");
                        None
                    }
                },
                Some(OverlayTarget::Rtsp(_)) => self
                    .ctx
                    .rtsp_overlays
                    .remove(&c.name)
                    .map(OverlaySink::Rtsp),
                None => None,
            };
            // A calibration run has no detector: nothing to threshold, no events.
            let st: Box<dyn CameraState> = if self.ctx.collect {
                Box::new(ScoresOnly::new())
            } else {
                state::for_camera(c)
            };
            let overlay = sink.map(|s| OverlayOutput::new(&c.name, st.headline(), s));
            let page = (self.ctx.shared.page.clone())
                .map(|b| output::page::PageOutput::new(&c.name, st.headline(), b));
            let outputs = output::for_camera(&c.name, &self.ctx.shared, overlay, page);
            let mut p = CameraPipeline::new(c.clone(), st, outputs, self.ctx.cameras.len());
            p.live = c.spec.realtime || c.spec.kind().is_ok_and(|k| k.is_live());
            tracing::info!(camera = %c.name, model = %c.model, worker = self.ctx.index,
                detector = %p.describe(), outputs = ?p.output_names(), "camera pipeline ready");
            self.cams.insert(Arc::from(c.name.as_str()), p);
        }
    }

    /// Reports every camera not yet ended, after the worker panicked with `msg`.
    fn after_panic(&mut self, msg: &str) {
        let w = self.ctx.index;
        if !self.ready_sent {
            let names: Vec<&str> = self.ctx.cameras.iter().map(|c| c.name.as_str()).collect();
            let e = format!(
                "engine worker {w} panicked while opening the models of camera(s) {}: {msg}",
                names.join(", ")
            );
            let _ = self.ctx.ctl.send(Ctl::Ready(w, Err(e)));
            return;
        }
        let culprit = self.current.take();
        let ctl = self.ctx.ctl.clone();
        for c in self.cams.values_mut().filter(|c| !c.done) {
            let error = match &culprit {
                Some(cur) if cur.camera == c.plan.name => format!(
                    "engine worker {w} panicked while scoring frame {} (pts {} ms): {msg}",
                    cur.seq, cur.pts_ms
                ),
                Some(cur) => format!(
                    "engine worker {w} panicked while scoring camera {}: {msg}",
                    cur.camera
                ),
                None => format!("engine worker {w} panicked: {msg}"),
            };
            // Close the open event and the outputs if the state still allows it.
            let e2 = error.clone();
            let s = catch_unwind(AssertUnwindSafe(|| c.end(Some(e2)))).unwrap_or_else(|_| {
                c.done = true;
                CameraSummary {
                    processed: c.processed,
                    error: Some(error),
                    ..Default::default()
                }
            });
            report(&ctl, &c.plan.name, s, true);
        }
        // A panic while the pipelines were being built leaves cameras without one.
        for c in &self.ctx.cameras {
            if !self.cams.contains_key(c.name.as_str()) {
                let summary = CameraSummary {
                    error: Some(format!("engine worker {w} panicked while starting: {msg}")),
                    ..Default::default()
                };
                report(&ctl, &c.name, summary, true);
            }
        }
    }
}

fn report(ctl: &Sender<Ctl>, camera: &str, summary: CameraSummary, fatal: bool) {
    let _ = ctl.send(Ctl::Ended {
        camera: camera.to_string(),
        summary,
        fatal,
    });
}
