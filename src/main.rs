//! The `advguard` command line.

mod cli;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// advguard: catch adversarial attacks on CNNs in live video from their feature-response maps.
#[derive(Parser)]
#[command(name = "advguard", version, about, long_about = None)]
struct Cli {
    /// Log filter (tracing EnvFilter syntax); overrides RUST_LOG.
    #[arg(long, global = true)]
    log: Option<String>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Compile a classifier ONNX into a guard graph (forward + backward as forward ops).
    Compile(cli::compile::Args),
    /// Classify images, print top-5 and S̄, and draw the feature-response / entropy panel.
    Explain(cli::explain::Args),
    /// Score a folder of images into a CSV (top-1, correctness, S̄).
    Score(cli::score::Args),
    /// Watch cameras, streams or files and raise alerts on adversarial frames.
    Watch(cli::watch::Args),
    /// Calibrate thresholds on clean footage into a profile.
    Calibrate(cli::calibrate::Args),
    /// Measure guard-frame throughput.
    Bench(cli::bench::Args),
    /// Run an adversarial attack on a folder of images.
    Attack(cli::attack::Args),
    /// Evaluate detectors against attacks (the paper's Table 1 and 2).
    Eval(cli::eval::Args),
    /// Judge the video guard on clips: false alarms per camera-hour, detection of attacked stretches.
    EvalVideo(cli::eval_video::Args),
    /// Train a person-hiding patch on a detector and judge it: persons hidden, and the guard's detection.
    EvalHide(cli::eval_hide::Args),
    /// Fit the learned combiner on a dev evaluation report and store it in a profile.
    Fit(cli::fit::Args),
    /// Find or download a demo clip (URL + sha256, like the models); prints its path.
    FetchClip(cli::fetch_clip::Args),
    /// Soak test: live RTSP cameras for an hour, the server killed every 5 minutes; RSS, age, drops.
    Soak(cli::soak::Args),
    /// Alert tools: send a test event through the sinks, drain the spool, show its state.
    Alert(cli::alert::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    cli::init_tracing(cli.log.as_deref());
    let res = match cli.cmd {
        Cmd::Compile(a) => cli::compile::run(a),
        Cmd::Explain(a) => cli::explain::run(a),
        Cmd::Score(a) => cli::score::run(a),
        Cmd::Watch(a) => cli::watch::run(a),
        Cmd::Calibrate(a) => cli::calibrate::run(a),
        Cmd::Bench(a) => cli::bench::run(a),
        Cmd::Attack(a) => cli::attack::run(a),
        Cmd::Eval(a) => cli::eval::run(a),
        Cmd::EvalVideo(a) => cli::eval_video::run(a),
        Cmd::EvalHide(a) => cli::eval_hide::run(a),
        Cmd::Fit(a) => cli::fit::run(a),
        Cmd::Alert(a) => cli::alert::run(a),
        Cmd::FetchClip(a) => cli::fetch_clip::run(a),
        Cmd::Soak(a) => cli::soak::run(a),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line a user can act on: the outermost context, then its causes.
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
