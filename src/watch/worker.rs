//! Engine workers: each owns its guard(s) and the cameras assigned to it, so one camera's
//! frames are scored in order by one thread and its detector state needs no lock.

use super::OverlayTarget;
use super::inject::InjectSpec;
use super::metrics::{EventLabel, WatchMetrics, cam};
use super::overlay::{self, OverlayWriter};
use super::overlay_rtsp::RtspOverlay;
use super::{CameraPlan, Ctl, Out};
use crate::detector::calibrate::CleanFrame;
use crate::detector::event::{ClassGuess, Event, Phase};
use crate::detector::{CameraDetector, FrameInput};
use crate::engine::compile::{CompileOptions, Mode, Seed};
use crate::engine::manifest::Manifest;
use crate::engine::{Guard, GuardOptions, top_k};
use crate::response::{self, ResponseConfig};
use crate::source::{Frame, SourceMsg};
use crossbeam_channel::{Receiver, Sender};
use image::RgbImage;
use serde::Serialize;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

/// One line of `--frames-out`.
#[derive(Debug, Clone, Serialize)]
pub struct FrameRecord {
    /// Camera name.
    pub camera: String,
    /// Frames delivered by the source before this one.
    pub seq: u64,
    /// Stream time, ms.
    pub pts_ms: u64,
    /// The driving score.
    pub score: f64,
    /// Over the start threshold.
    pub over_threshold: bool,
    /// An event is open after this frame.
    pub in_event: bool,
    /// Top-1 class.
    pub top1: ClassGuess,
    /// The paper's S̄, bits.
    pub entropy: f64,
    /// Response concentration.
    pub concentration: f64,
    /// KL(p_t ‖ p_{t−1}), nats.
    pub kl: f64,
    /// Onset score KL(p_t ‖ reference), nats.
    pub onset: f64,
    /// Capture → scored, ms (the lag).
    pub age_ms: f64,
    /// Guard + detector time, ms.
    pub proc_ms: f64,
    /// The frame was replaced by `--inject`.
    pub injected: bool,
    /// Wall-clock time the frame was scored, ms since the Unix epoch (throughput from the records).
    pub unix_ms: u64,
}

/// Everything a worker needs.
pub(super) struct WorkerCtx {
    pub index: usize,
    pub cameras: Vec<CameraPlan>,
    pub guard: GuardOptions,
    pub default_model: String,
    pub response: ResponseConfig,
    pub max_frames: Option<u64>,
    pub collect: bool,
    pub rx: Receiver<SourceMsg>,
    pub out: Sender<Out>,
    pub ctl: Sender<Ctl>,
    pub metrics: WatchMetrics,
    /// Served `--overlay rtsp://…` mounts of this worker's cameras.
    pub rtsp_overlays: HashMap<String, RtspOverlay>,
}

/// A camera's explain-view output.
enum OverlayOut {
    File(OverlayWriter),
    Rtsp(RtspOverlay),
}

struct Cam {
    plan: CameraPlan,
    detector: CameraDetector,
    overlay: Option<OverlayOut>,
    processed: u64,
    done: bool,
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

/// Worker thread body: opens the guards (reporting readiness), then scores until every
/// source feeding it has gone.
pub(super) fn run(mut ctx: WorkerCtx) {
    let mut guards: HashMap<String, Guard> = HashMap::new();
    let mut plain: HashMap<String, Guard> = HashMap::new();
    let mut ready = Ok(());
    for c in &ctx.cameras {
        if !guards.contains_key(&c.model) {
            match open_guard(&c.model, &ctx.default_model, &ctx.guard, false) {
                Ok(g) => {
                    guards.insert(c.model.clone(), g);
                }
                Err(e) => {
                    ready = Err(format!("{e:#}"));
                    break;
                }
            }
        }
        if c.inject.is_some() && !plain.contains_key(&c.model) {
            match open_guard(&c.model, &ctx.default_model, &ctx.guard, true) {
                Ok(g) => {
                    plain.insert(c.model.clone(), g);
                }
                Err(e) => {
                    ready = Err(format!("--inject needs a plain-gradient guard: {e:#}"));
                    break;
                }
            }
        }
    }
    let failed = ready.is_err();
    let _ = ctx.ctl.send(Ctl::Ready(ctx.index, ready));
    if failed {
        return;
    }
    let mut cams: HashMap<Arc<str>, Cam> = HashMap::new();
    for c in &ctx.cameras {
        let size = guards[&c.model].size();
        let overlay = match &c.overlay {
            Some(OverlayTarget::File(p)) => match OverlayWriter::create(p, size) {
                Ok(w) => Some(OverlayOut::File(w)),
                Err(e) => {
                    tracing::error!(camera = %c.name, "{e:#}");
                    None
                }
            },
            Some(OverlayTarget::Rtsp(_)) => ctx.rtsp_overlays.remove(&c.name).map(OverlayOut::Rtsp),
            None => None,
        };
        cams.insert(
            Arc::from(c.name.as_str()),
            Cam {
                detector: CameraDetector::new(&c.name, &c.model, c.detector.clone()),
                plan: c.clone(),
                overlay,
                processed: 0,
                done: false,
            },
        );
    }
    while let Ok(msg) = ctx.rx.recv() {
        match msg {
            SourceMsg::Frame(f) => {
                let Some(c) = cams.get_mut(&f.camera) else {
                    continue;
                };
                if c.done {
                    continue;
                }
                let Some(g) = guards.get_mut(&c.plan.model) else {
                    continue;
                };
                let p = plain.get_mut(&c.plan.model);
                if let Err(e) = process(&ctx, c, g, p, f) {
                    tracing::warn!(camera = %c.plan.name, "frame skipped: {e:#}");
                }
                if let Some(m) = ctx.max_frames
                    && c.processed >= m
                    && !c.done
                {
                    end_camera(&ctx, c, None);
                }
            }
            SourceMsg::Eos { camera } => {
                if let Some(c) = cams.get_mut(&camera)
                    && !c.done
                {
                    end_camera(&ctx, c, None);
                }
            }
            SourceMsg::Error { camera, error } => {
                if let Some(c) = cams.get_mut(&camera)
                    && !c.done
                {
                    end_camera(&ctx, c, Some(error));
                }
            }
        }
    }
    // Every source is gone (end of streams or shutdown): close what is still open.
    for c in cams.values_mut() {
        if !c.done {
            end_camera(&ctx, c, None);
        }
    }
}

fn emit(ctx: &WorkerCtx, ev: Event) {
    let phase = match ev.phase {
        Phase::Start => "start",
        Phase::Update => "update",
        Phase::End => "end",
    };
    ctx.metrics
        .events
        .get_or_create(&EventLabel {
            camera: ev.camera.clone(),
            phase: phase.into(),
        })
        .inc();
    let _ = ctx.out.send(Out::Event(Box::new(ev)));
}

fn end_camera(ctx: &WorkerCtx, c: &mut Cam, error: Option<String>) {
    c.done = true;
    if let Some(ev) = c.detector.finish() {
        emit(ctx, ev);
    }
    if let Some(OverlayOut::File(w)) = c.overlay.take() {
        let path = match &c.plan.overlay {
            Some(OverlayTarget::File(p)) => p.display().to_string(),
            _ => String::new(),
        };
        match w.finish() {
            Ok(()) => tracing::info!(camera = %c.plan.name, "overlay written to {path}"),
            Err(e) => tracing::error!(camera = %c.plan.name, "{e:#}"),
        }
    }
    let _ = ctx.ctl.send(Ctl::Ended {
        camera: c.plan.name.clone(),
        processed: c.processed,
        error,
    });
}

fn process(
    ctx: &WorkerCtx,
    c: &mut Cam,
    guard: &mut Guard,
    plain: Option<&mut Guard>,
    f: Frame,
) -> anyhow::Result<()> {
    let t0 = Instant::now();
    let (w, h) = (f.width, f.height);
    let mut rgb = f.rgb;
    let mut injected = false;
    if let (Some(spec), Some(pg)) = (c.plan.inject.as_ref(), plain)
        && spec.covers(f.pts_ms)
    {
        rgb = InjectSpec::apply(spec, pg, &rgb, w, h)?;
        injected = true;
    }
    let out = guard.run_rgb8(&rgb, w, h)?;
    let probs = out.probs();
    let k = top_k(&probs, 1).first().copied().unwrap_or(0);
    let stats = response::analyze(out.response.view(), &ctx.response);
    let top1 = ClassGuess {
        index: k,
        label: guard.labels().get(k).cloned().unwrap_or_default(),
        prob: probs.get(k).copied().unwrap_or(0.0),
    };
    // The response is at model-input resolution, which is the frame's (source scales in GStreamer).
    let bbox = Some(stats.bbox);
    let frame_img = RgbImage::from_raw(w, h, rgb).unwrap_or_else(|| RgbImage::new(w, h));
    let mag = response::gray::magnitude(out.response.view());
    let (name, kind, thr) = (
        c.plan.name.clone(),
        c.detector.config().kind,
        c.detector.config().rule.threshold,
    );
    let caption = |score: f64, alert: bool| {
        format!(
            "{name} {kind} {score:.2} / {thr:.2}  {} ({:.2}){}",
            top1.label.split(',').next().unwrap_or(""),
            top1.prob,
            if alert { "  ALERT" } else { "" }
        )
    };
    let input = FrameInput {
        pts_ms: f.pts_ms,
        probs: &probs,
        stats: &stats,
        top1: top1.clone(),
        bbox,
    };
    let peak_caption = format!(
        "{name} {kind} peak  {} ({:.2})",
        top1.label.split(',').next().unwrap_or(""),
        top1.prob
    );
    let mut media = || {
        let heat = overlay::render(&frame_img, mag.view(), bbox, &peak_caption, true);
        (
            Some(crate::viz::jpeg_bytes(&frame_img)),
            Some(crate::viz::png_bytes(&heat)),
        )
    };
    let obs = c.detector.observe(&input, &mut media);
    c.processed += 1;
    let proc_s = t0.elapsed().as_secs_f64();
    let age_s = f.captured.elapsed().as_secs_f64();
    let l = cam(&c.plan.name);
    ctx.metrics.processed.get_or_create(&l).inc();
    ctx.metrics.processing.get_or_create(&l).observe(proc_s);
    ctx.metrics.age.get_or_create(&l).observe(age_s);
    ctx.metrics.score.get_or_create(&l).observe(obs.score);
    let render = || {
        overlay::render(
            &frame_img,
            mag.view(),
            bbox,
            &caption(obs.score, obs.in_event),
            obs.in_event,
        )
    };
    match c.overlay.as_mut() {
        Some(OverlayOut::File(wr)) => {
            if let Err(e) = wr.push(&render(), f.pts_ms) {
                tracing::error!(camera = %c.plan.name, "{e:#}; overlay stopped");
                c.overlay = None;
            }
        }
        // Rendering and encoding cost only while someone watches.
        Some(OverlayOut::Rtsp(o)) if o.watched() => o.push(render()),
        _ => {}
    }
    for ev in obs.events {
        emit(ctx, ev);
    }
    if ctx.collect {
        let _ = ctx.out.send(Out::Clean(
            c.plan.name.clone(),
            CleanFrame {
                probs: probs.clone(),
                entropy: stats.entropy,
                concentration: stats.concentration,
            },
        ));
    }
    let rec = FrameRecord {
        camera: c.plan.name.clone(),
        seq: f.seq,
        pts_ms: f.pts_ms,
        score: obs.score,
        over_threshold: obs.over,
        in_event: obs.in_event,
        top1,
        entropy: obs.scores.entropy,
        concentration: obs.scores.concentration,
        kl: obs.scores.kl,
        onset: obs.scores.onset,
        age_ms: age_s * 1e3,
        unix_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
        proc_ms: proc_s * 1e3,
        injected,
    };
    let _ = ctx.out.send(Out::Frame(Box::new(rec)));
    Ok(())
}
