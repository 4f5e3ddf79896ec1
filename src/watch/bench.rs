//! `advguard bench`: the forward pass against the guard pass of one model, interleaved in one
//! process, then the whole watch pipeline on 1, 2, 4 … live streams at 30 fps, with the
//! cascade and without it: frames scored, guard frames, drops and the age of a frame at its
//! decision.
//!
//! Streams are the real clip played in real time and re-timed to the target rate (a 12.5-fps
//! clip at 2.4× is a 30-fps camera with the clip's own frames), so the cascade meets real
//! frame-to-frame change. Ratios within one run are the numbers to read: the machines this
//! runs on are shared.

use super::{CameraPlan, WatchPlan};
use crate::detector::cascade::GuardEvery;
use crate::detector::{DetectorConfig, DetectorKind};
use crate::engine::guard::{BackendKind, Guard, GuardOptions};
use crate::engine::manifest::Manifest;
use crate::response::ResponseConfig;
use crate::source::SourceSpec;
use anyhow::Context;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Model manifest name.
    pub model: String,
    /// Guard options (backend, compile options).
    pub guard: GuardOptions,
    /// Response statistics.
    pub response: ResponseConfig,
    /// The clip the streams play.
    pub video: PathBuf,
    /// Forward/guard pairs timed alternately (after 3 warm-up pairs).
    pub pairs: usize,
    /// Stream counts of the end-to-end runs.
    pub streams: Vec<usize>,
    /// Frame rate of each stream.
    pub fps: f64,
    /// Stream time of each end-to-end run.
    pub seconds: f64,
    /// The cascade setting measured against `Every(1)`.
    pub guard_every: GuardEvery,
    /// Engine workers: at most this many (and one per stream).
    pub cores: usize,
    /// Batch sizes probed against one image at a time (empty: no probe).
    pub batches: Vec<usize>,
}

/// One batch size of one pass, against the same pass one image at a time.
#[derive(Debug, Clone)]
pub struct BatchRow {
    /// "forward" or "guard".
    pub pass: &'static str,
    /// Batch size.
    pub n: usize,
    /// Median per-frame ms of the batched call and of n single calls, interleaved; or why the
    /// graph does not batch.
    pub result: Result<(f64, f64), String>,
}

/// Medians of the interleaved passes, milliseconds.
#[derive(Debug, Clone, Default)]
pub struct PassTimes {
    /// The backend that ran them.
    pub backend: String,
    /// Forward pass (class scores only).
    pub forward_ms: f64,
    /// Guard pass (class scores + guided response) plus the response statistics.
    pub guard_ms: f64,
    /// Median over pairs of guard / forward.
    pub ratio: f64,
    /// ONNX Runtime CPU's forward pass of the same model in the same loop (the reference),
    /// when its library loads.
    pub ort_forward_ms: Option<f64>,
}

/// One end-to-end run.
#[derive(Debug, Clone, Default)]
pub struct StreamRow {
    /// Streams.
    pub streams: usize,
    /// Engine workers.
    pub workers: usize,
    /// The cascade setting.
    pub every: Option<GuardEvery>,
    /// Wall time of the run, s.
    pub wall_s: f64,
    /// Frames decoded by the sources, all streams.
    pub received: u64,
    /// Frames scored (forward pass at least).
    pub scored: u64,
    /// Of them, with the guard pass.
    pub guarded: u64,
    /// Guard frames escalated by a forward pass.
    pub escalated: u64,
    /// Frames dropped by the sources (counted) to keep lag bounded.
    pub dropped: u64,
    /// The largest k any camera ended with.
    pub k_max: u32,
    /// Median and 99th percentile of the age of a frame at its decision, ms.
    pub age_ms: (f64, f64),
}

/// The bench's results.
#[derive(Debug, Clone, Default)]
pub struct BenchReport {
    /// Model.
    pub model: String,
    /// Cores the workers were given.
    pub cores: usize,
    /// 1-minute load average while measuring (other tenants).
    pub load: String,
    /// Interleaved pass times.
    pub passes: PassTimes,
    /// End-to-end runs.
    pub rows: Vec<StreamRow>,
    /// Stream frame rate.
    pub fps: f64,
    /// The batching probe.
    pub batches: Vec<BatchRow>,
}

fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn quantile(v: &mut [f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[((v.len() as f64 - 1.0) * q).round() as usize]
}

/// Times forward and guard passes alternately, on a fixed frame.
fn passes(o: &BenchOptions) -> anyhow::Result<PassTimes> {
    let manifest = Manifest::load(&o.model)?;
    let mut guard = Guard::open(&manifest, &o.guard).context("opening the guard")?;
    guard.prepare_forward()?;
    let backend = o.guard.backend.resolve();
    let mut reference = match backend {
        BackendKind::Tract => {
            let opts = GuardOptions {
                backend: BackendKind::OrtCpu,
                compile: None,
                ..o.guard.clone()
            };
            match Guard::open(&manifest, &opts) {
                Ok(g) => Some(g),
                Err(e) => {
                    tracing::warn!("no ONNX Runtime reference: {e}");
                    None
                }
            }
        }
        _ => None,
    };
    let s = guard.size();
    let frame: Vec<u8> = (0..(s * s * 3) as usize)
        .map(|i| ((i * 7919) % 251) as u8)
        .collect();
    let (mut fwd, mut grd, mut ratio, mut ort) = (vec![], vec![], vec![], vec![]);
    let bar = indicatif::ProgressBar::new(o.pairs as u64 + 3).with_message("forward/guard pairs");
    for i in 0..o.pairs + 3 {
        let t = Instant::now();
        guard.forward_rgb8(&frame, s, s)?;
        let f = t.elapsed().as_secs_f64() * 1e3;
        let t = Instant::now();
        let out = guard.run_rgb8(&frame, s, s)?;
        let _ = crate::response::analyze(out.response.view(), &o.response);
        let g = t.elapsed().as_secs_f64() * 1e3;
        let r = match reference.as_mut() {
            Some(r) => {
                let t = Instant::now();
                r.run_rgb8(&frame, s, s)?;
                Some(t.elapsed().as_secs_f64() * 1e3)
            }
            None => None,
        };
        if i >= 3 {
            fwd.push(f);
            grd.push(g);
            ratio.push(g / f.max(1e-9));
            ort.extend(r);
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    let forward_ms = median(&mut fwd);
    Ok(PassTimes {
        backend: guard.backend().to_string(),
        forward_ms,
        guard_ms: median(&mut grd),
        ratio: median(&mut ratio),
        ort_forward_ms: match backend {
            BackendKind::OrtCpu => Some(forward_ms),
            _ => (!ort.is_empty()).then(|| median(&mut ort)),
        },
    })
}

/// Does batching across cameras pay on this backend? Each pass (the forward graph and the
/// guard graph) is rewritten for batch n ([`crate::engine::batch`]), checked against single
/// runs, then timed alternately with n single calls.
fn batching(o: &BenchOptions) -> anyhow::Result<Vec<BatchRow>> {
    use crate::engine::batch::{check_batch, stack, with_batch};
    use crate::engine::guard::{graphs, open_engine};
    if o.batches.is_empty() {
        return Ok(Vec::new());
    }
    let manifest = Manifest::load(&o.model)?;
    let g = graphs(&manifest, &o.guard)?;
    let backend = o.guard.backend.resolve();
    let s = manifest.preprocess.size;
    let frame: Vec<u8> = (0..(s * s * 3) as usize)
        .map(|i| ((i * 7919) % 251) as u8)
        .collect();
    let one = manifest.preprocess.tensor_from_rgb8(&frame, s, s)?;
    let mut passes = vec![("forward", &g.model)];
    if o.guard.compile.is_some() {
        passes.push(("guard", &g.guard));
    }
    let mut rows = Vec::new();
    for (pass, graph) in passes {
        let mut single = open_engine(graph, &manifest.input, g.shape, backend)?;
        for &n in o.batches.iter().filter(|&&n| n >= 2) {
            let mut shape = g.shape;
            shape[0] = n;
            let batched = with_batch(graph, &manifest.input, n)
                .map_err(|e| e.to_string())
                .and_then(|(m, _)| {
                    open_engine(&m, &manifest.input, shape, backend).map_err(|e| e.to_string())
                })
                .and_then(|mut b| {
                    check_batch(single.as_mut(), b.as_mut(), &one, n)
                        .map(|()| b)
                        .map_err(|e| e.to_string())
                });
            let result = match batched {
                Err(e) => Err(e),
                Ok(mut b) => {
                    let x = stack(&one, n);
                    let (mut bt, mut st) = (Vec::new(), Vec::new());
                    for i in 0..o.pairs.div_ceil(n) + 2 {
                        let t = Instant::now();
                        b.run(x.view(), None)?;
                        let tb = t.elapsed().as_secs_f64() * 1e3 / n as f64;
                        let t = Instant::now();
                        for _ in 0..n {
                            single.run(one.view(), None)?;
                        }
                        let ts = t.elapsed().as_secs_f64() * 1e3 / n as f64;
                        if i >= 2 {
                            bt.push(tb);
                            st.push(ts);
                        }
                    }
                    Ok((median(&mut bt), median(&mut st)))
                }
            };
            if let Err(e) = &result {
                tracing::warn!(pass, n, "batch probe: {e}");
            }
            rows.push(BatchRow { pass, n, result });
        }
    }
    Ok(rows)
}

fn plan(o: &BenchOptions, streams: usize, every: GuardEvery, speed: f64) -> WatchPlan {
    let size = Manifest::load(&o.model).map_or(224, |m| m.preprocess.size);
    let cameras = (0..streams)
        .map(|i| {
            let mut spec = SourceSpec::new(format!("s{i}"), o.video.to_string_lossy());
            spec.size = size;
            spec.realtime = true;
            spec.retime = Some(crate::source::Retime {
                speed,
                fps: o.fps.round() as u32,
            });
            CameraPlan {
                name: format!("s{i}"),
                spec,
                model: o.model.clone(),
                detector: DetectorConfig::default_for(DetectorKind::Onset),
                overlay: None,
                fused: None,
                inject: None,
                guard_every: every,
            }
        })
        .collect();
    WatchPlan {
        cameras,
        guard: o.guard.clone(),
        default_model: o.model.clone(),
        response: o.response.clone(),
        workers: streams.min(o.cores).max(1),
        frames_out: None,
        events_stdout: false,
        alerts: None,
        metrics_addr: None,
        page_token: None,
        max_frames: None,
        collect: false,
    }
}

/// One end-to-end run of `streams` live streams for `o.seconds`, the clip played `speed`×.
fn streams_run(
    o: &BenchOptions,
    streams: usize,
    every: GuardEvery,
    speed: f64,
) -> anyhow::Result<StreamRow> {
    let p = plan(o, streams, every, speed);
    let workers = p.workers;
    let stop = Arc::new(AtomicBool::new(false));
    let timer = {
        let stop = stop.clone();
        let secs = o.seconds;
        std::thread::spawn(move || {
            let end = Instant::now() + Duration::from_secs_f64(secs);
            while Instant::now() < end && !stop.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(50));
            }
            stop.store(true, Ordering::SeqCst);
        })
    };
    let s = super::run(p, stop.clone());
    stop.store(true, Ordering::SeqCst);
    let _ = timer.join();
    let s = s.with_context(|| format!("{streams}-stream run"))?;
    let mut ages: Vec<f64> = Vec::new();
    let mut row = StreamRow {
        streams,
        workers,
        every: Some(every),
        wall_s: s.wall_s,
        ..Default::default()
    };
    for c in s.cameras.values() {
        if let Some(e) = &c.error {
            anyhow::bail!("{streams}-stream run: {e}");
        }
        row.received += c.received;
        row.scored += c.processed;
        row.guarded += c.guarded;
        row.escalated += c.escalated;
        row.dropped += c.dropped;
        row.k_max = row.k_max.max(c.guard_every);
        ages.extend(c.decision_age_s.iter().map(|&a| a as f64 * 1e3));
    }
    row.age_ms = (quantile(&mut ages, 0.5), quantile(&mut ages, 0.99));
    Ok(row)
}

/// Runs the bench.
pub fn run(o: &BenchOptions) -> anyhow::Result<BenchReport> {
    if !o.video.is_file() {
        anyhow::bail!("bench video {} not found (use --video)", o.video.display());
    }
    if !(o.fps >= 1.0 && o.fps <= 1000.0 && o.seconds > 0.0) {
        anyhow::bail!("--fps must be 1–1000 and --seconds positive");
    }
    let speed = o.fps / crate::source::file_framerate(&o.video)?;
    let passes = passes(o)?;
    let batches = batching(o)?;
    let mut rows = Vec::new();
    for &n in &o.streams {
        for every in [o.guard_every, GuardEvery::Every(1)] {
            tracing::info!(streams = n, guard_every = %every, "end-to-end run");
            rows.push(streams_run(o, n.max(1), every, speed)?);
            if o.guard_every == GuardEvery::Every(1) {
                break;
            }
        }
    }
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into());
    Ok(BenchReport {
        model: o.model.clone(),
        cores: o.cores,
        load,
        passes,
        rows,
        fps: o.fps,
        batches,
    })
}

impl BenchReport {
    /// The report as Markdown tables.
    pub fn to_markdown(&self) -> String {
        let p = &self.passes;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "advguard bench: {} on {}, {} cores (load average {} at the end: other work shares them)\n",
            self.model, p.backend, self.cores, self.load
        );
        let _ = writeln!(
            s,
            "| pass (interleaved, median) | ms | frames/s on one core |"
        );
        let _ = writeln!(s, "|---|---|---|");
        let _ = writeln!(
            s,
            "| forward (class scores) | {:.1} | {:.0} |",
            p.forward_ms,
            1e3 / p.forward_ms
        );
        let _ = writeln!(
            s,
            "| guard (scores + response + statistics) | {:.1} | {:.0} |",
            p.guard_ms,
            1e3 / p.guard_ms
        );
        let _ = writeln!(s, "| guard / forward | {:.2}× | |", p.ratio);
        if let Some(r) = p.ort_forward_ms {
            let _ = writeln!(
                s,
                "| reference: ONNX Runtime CPU forward | {r:.1} | {:.0} |",
                1e3 / r
            );
        }
        if !self.batches.is_empty() {
            let _ = writeln!(
                s,
                "\n| batching (checked against single runs; interleaved, median) | ms per frame, batched | ms per frame, one at a time | batched / single |\n|---|---|---|---|"
            );
            for b in &self.batches {
                let _ = match &b.result {
                    Ok((bt, st)) => writeln!(
                        s,
                        "| {} × {} | {bt:.2} | {st:.2} | {:.2}× |",
                        b.pass,
                        b.n,
                        bt / st.max(1e-9)
                    ),
                    Err(e) => writeln!(s, "| {} × {} | does not batch: {e} | | |", b.pass, b.n),
                };
            }
        }
        let _ = writeln!(
            s,
            "\n| streams × {:.0} fps | guard every | workers | scored frames/s (all streams) | guard frames | escalated | dropped | decision age median / p99 | goals (≥ 4 × 30 fps scored, guard ≤ every 3rd, p99 ≤ 100 ms) |",
            self.fps
        );
        let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|");
        for r in &self.rows {
            let wall = r.wall_s.max(1e-9);
            let every = match r.every {
                Some(GuardEvery::Auto) => format!("auto (k ≤ {})", r.k_max),
                Some(e) => e.to_string(),
                None => "?".into(),
            };
            let full = r.scored as f64 / wall >= 0.95 * self.fps * r.streams as f64;
            let goals = format!(
                "{} · {} · {}",
                if full { "all scored" } else { "not all scored" },
                if r.k_max <= 3 { "k ≤ 3" } else { "k > 3" },
                if r.age_ms.1 <= 100.0 {
                    "p99 met"
                } else {
                    "p99 not met"
                }
            );
            let _ = writeln!(
                s,
                "| {} | {every} | {} | {:.1} of {:.1} received | {:.0} % | {:.0} % of guard | {} ({:.0} %) | {:.0} / {:.0} ms | {goals} |",
                r.streams,
                r.workers,
                r.scored as f64 / wall,
                r.received as f64 / wall,
                100.0 * r.guarded as f64 / r.scored.max(1) as f64,
                100.0 * r.escalated as f64 / r.guarded.max(1) as f64,
                r.dropped,
                100.0 * r.dropped as f64 / r.received.max(1) as f64,
                r.age_ms.0,
                r.age_ms.1,
            );
        }
        s
    }
}
