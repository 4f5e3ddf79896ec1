//! `advguard calibrate`: clean footage → per-camera thresholds at a target false-positive rate.

use super::ModelArgs;
use super::watch::{
    SourceArgs, cameras, default_workers, guard_options, model_kind, model_size, spec, stop_flag,
};
use advguard::detector::calibrate::{CalibrationParams, calibrate_camera};
use advguard::detector::cascade::GuardEvery;
use advguard::detector::{DetectorConfig, DetectorKind, Profile};
use advguard::watch::{CameraPlan, WatchPlan};
use anyhow::Context;
use std::path::PathBuf;

/// Arguments of `advguard calibrate`.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub src: SourceArgs,
    /// Target per-frame false-positive rate on clean footage.
    #[arg(long, default_value_t = 0.01)]
    pub fpr: f64,
    /// Output profile TOML (cameras already in it are kept unless re-calibrated).
    #[arg(short, long, default_value = "profile.toml")]
    pub output: PathBuf,
    /// Also calibrate the fused detector for this many false alarms per camera-hour (all its
    /// signals together); such cameras then run the fused detector by default.
    #[arg(long)]
    pub budget: Option<f64>,
    /// Default detector stored for these cameras: onset, entropy, concentration.
    #[arg(long, default_value = "onset")]
    pub detector: DetectorKind,
    #[command(flatten)]
    pub model: ModelArgs,
}

/// Runs `advguard calibrate`.
pub fn run(args: Args) -> anyhow::Result<()> {
    if let Some(b) = args.budget
        && !(b > 0.0 && b.is_finite())
    {
        anyhow::bail!("--budget must be a number of false alarms per camera-hour > 0, got {b}");
    }
    if !(args.fpr > 0.0 && args.fpr < 1.0) {
        anyhow::bail!(
            "--fpr must be between 0 and 1 (exclusive), got {}",
            args.fpr
        );
    }
    let (drafts, _) = cameras(&args.src)?;
    let mut cams = Vec::new();
    for d in &drafts {
        let c = &d.cfg;
        let model = c
            .model
            .clone()
            .unwrap_or_else(|| args.model.model_name.clone());
        let size = model_size(&model).with_context(|| format!("camera {:?}", c.name))?;
        cams.push(CameraPlan {
            name: c.name.clone(),
            spec: spec(c, &args.src, size)?,
            model,
            // Not used: a calibration run (`collect`) scores frames and builds no detector.
            detector: DetectorConfig::default_for(args.detector),
            overlay: None,
            fused: None,
            inject: None,
            // A calibration run guards every frame whatever this says (`collect`).
            guard_every: GuardEvery::Every(1),
        });
    }
    let every: Vec<u32> = cams.iter().map(|c| c.spec.every_nth).collect();
    let plan = WatchPlan {
        cameras: cams,
        guard: guard_options(&args.model),
        default_model: args.model.model_name.clone(),
        response: args.model.response(),
        workers: args.src.workers.unwrap_or_else(default_workers),
        frames_out: None,
        events_stdout: false,
        alerts: None,
        metrics_addr: None,
        page_token: None,
        max_frames: args.src.max_frames,
        collect: true,
    };
    let models: Vec<String> = plan.cameras.iter().map(|c| c.model.clone()).collect();
    let names: Vec<String> = plan.cameras.iter().map(|c| c.name.clone()).collect();
    let summary = advguard::watch::run(plan, stop_flag())?;
    let mut profile = if args.output.exists() {
        Profile::load(&args.output)?
    } else {
        Profile::default()
    };
    let params = CalibrationParams {
        fpr: args.fpr,
        ..CalibrationParams::default()
    };
    println!(
        "{:<20} {:>7} {:>8} {:>10} {:>10} {:>10} {:>9}",
        "camera", "frames", "flicker", "onset_thr", "end_thr", "entropy", "concentr"
    );
    let mut done = 0;
    for ((name, model), every_nth) in names.iter().zip(&models).zip(every) {
        let Some(s) = summary.cameras.get(name) else {
            continue;
        };
        if let Some(e) = &s.error {
            eprintln!("error: camera {name}: {e}");
            continue;
        }
        let Some(mut p) = calibrate_camera(&s.frames, model, args.detector, every_nth, &params)
        else {
            eprintln!(
                "error: camera {name}: too few frames to calibrate ({})",
                s.frames.len()
            );
            continue;
        };
        if (s.frames.len() as f64) < 10.0 / args.fpr {
            tracing::warn!(camera = %name, frames = s.frames.len(),
                "fewer than 10/fpr clean frames: the threshold is a rough estimate; calibrate on more footage");
        }
        let f = |x: Option<&advguard::detector::profile::ScoreProfile>| {
            x.map_or("-".to_string(), |s| format!("{:.4}", s.threshold))
        };
        println!(
            "{:<20} {:>7} {:>8} {:>10} {:>10} {:>10} {:>9}",
            name,
            p.frames,
            p.top1_change_rate
                .map_or("-".into(), |r| format!("{:.1}%", r * 100.0)),
            f(p.onset.as_ref()),
            p.onset
                .as_ref()
                .map_or("-".into(), |s| format!("{:.4}", s.end_threshold)),
            f(p.entropy.as_ref()),
            f(p.concentration.as_ref()),
        );
        if let Some(b) = args.budget {
            let samples: Vec<advguard::detector::budget::Sample> = s
                .frames
                .iter()
                .map(|f| advguard::detector::budget::Sample {
                    pts_ms: f.pts_ms,
                    probs: f.probs.clone(),
                    entropy: f.entropy,
                    concentration: f.concentration,
                    box_texture: f.box_texture,
                    pixel_change: f.pixel_change,
                    vanish: f.vanish,
                })
                .collect();
            let base = advguard::detector::FusedConfig::for_model(model_kind(model)?);
            let c = advguard::detector::budget::calibrate(&[samples], &base, b);
            for n in &c.notes {
                if n.starts_with("warning") {
                    tracing::warn!(camera = %name, "{n}");
                } else {
                    println!("  {name} fused {n}");
                }
            }
            p.fused = Some(c.profile);
        }
        profile.cameras.insert(name.clone(), p);
        done += 1;
    }
    if done == 0 {
        anyhow::bail!("no camera could be calibrated");
    }
    profile.save(&args.output)?;
    println!("profile written to {}", args.output.display());
    Ok(())
}
