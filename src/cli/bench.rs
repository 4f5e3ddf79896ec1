//! `advguard bench`: the forward and guard passes interleaved, then the watch pipeline on live
//! 30-fps streams with and without the cascade (`advguard::watch::bench`).

use super::ModelArgs;
use super::watch::guard_options;
use advguard::detector::cascade::GuardEvery;
use advguard::watch::bench::{self, BenchOptions};
use std::path::PathBuf;

/// Arguments of `advguard bench`.
#[derive(clap::Args)]
pub struct Args {
    /// Video file the streams play (default: car-detection.mp4 in the data folder), re-timed
    /// to `--fps`.
    #[arg(long)]
    pub video: Option<PathBuf>,
    /// Forward/guard pairs timed alternately (after 3 warm-up pairs).
    #[arg(long, default_value_t = 40)]
    pub pairs: usize,
    /// Stream counts of the end-to-end runs.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4")]
    pub streams: Vec<usize>,
    /// Frame rate of each live stream.
    #[arg(long, default_value_t = 30.0)]
    pub fps: f64,
    /// Seconds of each end-to-end run.
    #[arg(long, default_value_t = 20.0)]
    pub seconds: f64,
    /// The cascade setting measured against guarding every frame (`1`: only that).
    #[arg(long, default_value = "auto")]
    pub guard_every: GuardEvery,
    /// Engine workers at most (default: one per core).
    #[arg(long)]
    pub workers: Option<usize>,
    /// Batch sizes probed against one frame at a time: does batching across cameras pay on
    /// this backend? (empty to skip)
    #[arg(long, value_delimiter = ',', default_value = "2,4")]
    pub batch: Vec<usize>,
    #[command(flatten)]
    pub model: ModelArgs,
}

/// Runs `advguard bench`.
pub fn run(args: Args) -> anyhow::Result<()> {
    let o = BenchOptions {
        model: args.model.model_name.clone(),
        guard: guard_options(&args.model),
        response: args.model.response(),
        video: args
            .video
            .clone()
            .unwrap_or_else(|| advguard::data_dir().join("videos/car-detection.mp4")),
        pairs: args.pairs.max(1),
        streams: args.streams.clone(),
        fps: args.fps,
        seconds: args.seconds,
        guard_every: args.guard_every,
        cores: args.workers.unwrap_or_else(super::watch::default_workers),
        batches: args.batch.clone(),
    };
    let report = bench::run(&o)?;
    print!("{}", report.to_markdown());
    Ok(())
}
