//! `advguard bench`: guard-frame latency, end-to-end fps of one stream, and how many
//! 30-fps streams this machine sustains.

use super::ModelArgs;
use super::watch::{guard_options, model_size};
use advguard::detector::{DetectorConfig, DetectorKind};
use advguard::source::SourceSpec;
use advguard::watch::{CameraPlan, WatchPlan};
use anyhow::Context;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

/// Arguments of `advguard bench`.
#[derive(clap::Args)]
pub struct Args {
    /// Video file to stream (default: car-detection.mp4 in the data folder).
    #[arg(long)]
    pub video: Option<PathBuf>,
    /// Guard frames timed for the latency (after 3 warm-up frames).
    #[arg(long, default_value_t = 30)]
    pub frames: usize,
    /// Frames scored per stream in the end-to-end runs.
    #[arg(long, default_value_t = 120)]
    pub stream_frames: u64,
    /// Streams in the parallel run (default: one per core).
    #[arg(long)]
    pub streams: Option<usize>,
    /// Engine workers in the parallel run (default: one per core).
    #[arg(long)]
    pub workers: Option<usize>,
    #[command(flatten)]
    pub model: ModelArgs,
}

fn plan(
    args: &Args,
    video: &std::path::Path,
    streams: usize,
    workers: usize,
) -> anyhow::Result<WatchPlan> {
    let size = model_size(&args.model.model_name)?;
    let cameras = (0..streams)
        .map(|i| CameraPlan {
            name: format!("s{i}"),
            spec: SourceSpec::new(format!("s{i}"), video.to_string_lossy()).with_size(size),
            model: args.model.model_name.clone(),
            detector: DetectorConfig::default_for(DetectorKind::Onset),
            overlay: None,
            fused: None,
            inject: None,
        })
        .collect();
    Ok(WatchPlan {
        cameras,
        guard: guard_options(&args.model),
        default_model: args.model.model_name.clone(),
        response: args.model.response(),
        workers,
        frames_out: None,
        events_stdout: false,
        alerts: None,
        metrics_addr: None,
        page_token: None,
        max_frames: Some(args.stream_frames),
        collect: false,
    })
}

trait WithSize {
    fn with_size(self, s: u32) -> Self;
}
impl WithSize for SourceSpec {
    fn with_size(mut self, s: u32) -> Self {
        self.size = s;
        self
    }
}

/// Runs `advguard bench`.
pub fn run(args: Args) -> anyhow::Result<()> {
    let video = args
        .video
        .clone()
        .unwrap_or_else(|| advguard::data_dir().join("videos/car-detection.mp4"));
    if !video.is_file() {
        anyhow::bail!("bench video {} not found (use --video)", video.display());
    }
    let cores = super::watch::default_workers();
    // 1. Guard-frame latency on one core.
    let mut guard = args.model.open()?;
    let s = guard.size();
    let frame: Vec<u8> = (0..(s * s * 3) as usize)
        .map(|i| ((i * 7919) % 251) as u8)
        .collect();
    for _ in 0..3 {
        guard.run_rgb8(&frame, s, s)?;
    }
    let bar = indicatif::ProgressBar::new(args.frames as u64);
    let mut ms = Vec::with_capacity(args.frames);
    let mut stats_ms = Vec::with_capacity(args.frames);
    for _ in 0..args.frames.max(1) {
        let t = Instant::now();
        let out = guard.run_rgb8(&frame, s, s)?;
        let t2 = Instant::now();
        let _ = advguard::response::analyze(out.response.view(), &args.model.response());
        stats_ms.push(t2.elapsed().as_secs_f64() * 1e3);
        ms.push(t.elapsed().as_secs_f64() * 1e3);
        bar.inc(1);
    }
    stats_ms.sort_by(f64::total_cmp);
    let stats_median = stats_ms[stats_ms.len() / 2];
    bar.finish_and_clear();
    drop(guard);
    ms.sort_by(f64::total_cmp);
    let median = ms[ms.len() / 2];
    let p90 = ms[(ms.len() * 9 / 10).min(ms.len() - 1)];

    // 2. One stream, one worker, file back-pressure: the end-to-end rate.
    let stop = Arc::new(AtomicBool::new(false));
    let one = advguard::watch::run(plan(&args, &video, 1, 1)?, stop.clone())
        .context("single-stream run")?;
    let fps1 = one.processed as f64 / one.wall_s.max(1e-9);

    // 3. Several streams over all cores.
    let streams = args.streams.unwrap_or(cores).max(1);
    let workers = args.workers.unwrap_or(cores).max(1);
    let many = advguard::watch::run(plan(&args, &video, streams, workers)?, stop)
        .context("multi-stream run")?;
    let fps_n = many.processed as f64 / many.wall_s.max(1e-9);
    let sustained = (fps_n / 30.0).floor() as u64;

    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into());
    println!(
        "advguard bench: model {} on {}, {} cores (load average {load} while measuring: other work shares them), video {}",
        args.model.model_name,
        format!("{:?}", args.model.backend.resolve()).to_lowercase(),
        cores,
        video.display()
    );
    println!("| measurement | value |");
    println!("|---|---|");
    println!(
        "| guard frame (forward + guided backward + statistics), median | {median:.1} ms ({:.1} frames/s on one core) |",
        1e3 / median
    );
    println!("| guard frame, p90 | {p90:.1} ms |");
    println!("| of which response statistics (S̄, concentration), median | {stats_median:.1} ms |");
    println!(
        "| end to end, 1 stream, 1 worker (decode → guard → detector) | {fps1:.1} frames/s ({} frames in {:.1} s) |",
        one.processed, one.wall_s
    );
    println!(
        "| end to end, {streams} streams, {workers} workers, total | {fps_n:.1} frames/s ({} frames in {:.1} s) |",
        many.processed, many.wall_s
    );
    println!("| 30-fps streams sustained at full rate | {sustained} |");
    println!(
        "| 30-fps streams sustained with every_nth = 3 (10 fps scored) | {} |",
        (fps_n / 10.0).floor() as u64
    );
    Ok(())
}
