//! `advguard eval-video`: false alarms per camera-hour and detection of attacked stretches.

use super::ModelArgs;
use advguard::detector::FusedConfig;
use advguard::detector::fused::OnsetReference;
use advguard::engine::GuardOptions;
use advguard::engine::compile::CompileOptions;
use advguard::engine::manifest::Manifest;
use advguard::eval::video::run::{RunOptions, run as run_eval};
use advguard::eval::video::{StretchKind, VideoEvalConfig};
use std::path::PathBuf;

/// Arguments of `advguard eval-video`.
#[derive(clap::Args)]
pub struct Args {
    /// Clips (default: the three clips in $ADVGUARD_DATA/videos).
    pub clips: Vec<PathBuf>,
    /// Clean test footage to reach, stream hours, all clips together.
    #[arg(long, default_value_t = 1.0)]
    pub clean_hours: f64,
    /// Calibration footage per clip, stream minutes (replays of the clip's first part).
    #[arg(long, default_value_t = 10.0)]
    pub cal_minutes: f64,
    /// Share of each clip kept for calibration only.
    #[arg(long, default_value_t = 0.4)]
    pub cal_fraction: f64,
    /// Attacked stretches per kind.
    #[arg(long, default_value_t = 30)]
    pub per_kind: usize,
    /// Stretch kinds (comma-separated): fgsm-2, fgsm-4, pgd-4, universal-4, patch, patch-first, ramp.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "fgsm-2,fgsm-4,pgd-4,universal-4,patch,patch-first,ramp"
    )]
    pub kinds: Vec<StretchKind>,
    /// False-alarm budget per camera-hour, shared by the signals.
    #[arg(long, default_value_t = 0.1)]
    pub budget: f64,
    /// Onset reference: previous (frame) or mean (of the last 3 frames).
    #[arg(long, default_value = "previous", value_parser = parse_reference)]
    pub reference: OnsetReference,
    /// Do not discount onset jumps that the pixel change explains (the motion scale).
    #[arg(long)]
    pub no_motion_discount: bool,
    /// Judge the patch signal on the concentration alone, without its texture gate (sessions
    /// scored before the gate have no texture and are always judged so).
    #[arg(long)]
    pub no_texture_gate: bool,
    /// Patch PNG for the patch kinds (e.g. DIR/patch.png from `advguard attack --attack patch -o DIR`).
    #[arg(long)]
    pub patch: Option<PathBuf>,
    /// Photos the universal perturbation is trained on (default $ADVGUARD_DATA/images/dev).
    #[arg(long)]
    pub photos: Option<PathBuf>,
    /// Signed-gradient steps of the universal perturbation (8 photos each).
    #[arg(long, default_value_t = 100)]
    pub universal_steps: u32,
    /// Frames faster than this are thinned, frames/s.
    #[arg(long, default_value_t = 12.5)]
    pub max_fps: f64,
    /// Scoring threads.
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// Cascade k values: the test sessions are replayed as a camera guarding every k-th frame
    /// would see them (the detection cost table of the report; empty to skip).
    #[arg(long, default_value = "1,2,3", value_parser = parse_ks)]
    pub cascade: Ks,
    /// Seed of every random choice.
    #[arg(long, default_value_t = 1)]
    pub rng_seed: u64,
    /// Output folder (per-session records; rerunning resumes).
    #[arg(short, long, default_value = "out/eval-video")]
    pub output: PathBuf,
    #[command(flatten)]
    pub model: ModelArgs,
}

fn parse_reference(s: &str) -> Result<OnsetReference, String> {
    match s {
        "mean" => Ok(OnsetReference::Mean),
        "previous" | "prev" => Ok(OnsetReference::Previous),
        _ => Err(format!("unknown onset reference {s:?} (mean, previous)")),
    }
}

/// Runs `advguard eval-video`.
pub fn run(args: Args) -> anyhow::Result<()> {
    let clips = if args.clips.is_empty() {
        let v = advguard::data_dir().join("videos");
        [
            "car-detection.mp4",
            "one-by-one-person-detection.mp4",
            "bottle-detection.mp4",
        ]
        .iter()
        .map(|c| v.join(c))
        .collect()
    } else {
        args.clips.clone()
    };
    for c in &clips {
        if !c.is_file() {
            anyhow::bail!("clip {} not found", c.display());
        }
    }
    if !(args.cal_fraction > 0.0 && args.cal_fraction < 1.0) {
        anyhow::bail!(
            "--cal-fraction must be between 0 and 1, got {}",
            args.cal_fraction
        );
    }
    if args.budget.is_nan() || args.budget <= 0.0 {
        anyhow::bail!(
            "--budget must be > 0 false alarms per camera-hour, got {}",
            args.budget
        );
    }
    let cfg = VideoEvalConfig {
        clips,
        clean_hours: args.clean_hours,
        cal_minutes: args.cal_minutes,
        per_kind: args.per_kind,
        kinds: args.kinds.clone(),
        cal_fraction: args.cal_fraction,
        max_fps: args.max_fps,
        budget: args.budget,
        seed: args.rng_seed,
        ..VideoEvalConfig::default()
    };
    let manifest = Manifest::load(&args.model.model_name)?;
    let mut detector = FusedConfig {
        reference: args.reference,
        ..FusedConfig::default()
    };
    if args.no_motion_discount {
        detector.motion_scale = None;
    }
    if args.no_texture_gate {
        detector.patch_texture = None;
    }
    let opts = RunOptions {
        manifest,
        guard: GuardOptions {
            model_path: args.model.model.clone(),
            backend: args.model.backend,
            compile: Some(CompileOptions {
                mode: args.model.mode,
                seed: args.model.seed.clone(),
                input_shape: None,
                ..Default::default()
            }),
        },
        response: args.model.response(),
        workers: args.workers,
        out: args.output.clone(),
        patch: args.patch.clone(),
        photos: args
            .photos
            .clone()
            .or_else(|| Some(advguard::data_dir().join("images/dev"))),
        universal_steps: args.universal_steps,
        detector,
        cascade: args.cascade.0.clone(),
        progress: true,
    };
    let summary = run_eval(&cfg, &opts)?;
    println!("{}", summary.markdown);
    println!(
        "report and plots in {}",
        args.output.join(&opts.manifest.name).display()
    );
    Ok(())
}

/// Cascade k values, parsed from one comma-separated argument so that `--cascade ""` can
/// say "none".
#[derive(Debug, Clone)]
pub struct Ks(pub Vec<u32>);

fn parse_ks(s: &str) -> Result<Ks, String> {
    s.split(',')
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .map(|k| match k.parse::<u32>() {
            Ok(v) if v >= 1 => Ok(v),
            _ => Err(format!(
                "{k:?} is not a whole number ≥ 1 (guard every k-th frame)"
            )),
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Ks)
}
