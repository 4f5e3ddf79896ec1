//! `advguard watch`: score cameras, streams and files live; events as JSON lines on stdout.

use super::ModelArgs;
use advguard::detector::cascade::GuardEvery;
use advguard::detector::{DetectorChoice, DetectorConfig, DetectorKind, FusedConfig, Profile};
use advguard::engine::GuardOptions;
use advguard::engine::compile::CompileOptions;
use advguard::source::SourceSpec;
use advguard::watch::config::{CameraConfig, WatchFile};
use advguard::watch::inject::InjectSpec;
use advguard::watch::{AlertPlan, CameraPlan, OverlayTarget, WatchPlan};
use anyhow::Context;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Default `/metrics` + `/healthz` address: loopback only.
pub const DEFAULT_METRICS_ADDR: &str = "127.0.0.1:9464";

/// Source and sampling options shared by `watch`, `calibrate` and `bench`.
#[derive(clap::Args, Clone, Debug)]
pub struct SourceArgs {
    /// Sources: rtsp://…, a video file, /dev/videoN, http(s)://… MJPEG, test:[PATTERN];
    /// `NAME=SOURCE` names the camera (default: the file stem, or cam0, cam1, …).
    pub sources: Vec<String>,
    /// Cameras TOML: [[camera]], [[sink]], [spool], [alerts], [metrics] (docs/STREAMING.md).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Keep every k-th decoded frame (cameras without their own `every_nth`).
    #[arg(long)]
    pub every_nth: Option<u32>,
    /// At most this many frames per second per camera.
    #[arg(long)]
    pub max_fps: Option<f64>,
    /// Stop each camera after this many scored frames.
    #[arg(long)]
    pub max_frames: Option<u64>,
    /// Files: play at the stream's own rate and drop frames like a live camera.
    #[arg(long)]
    pub realtime: bool,
    /// Engine worker threads (default: one per core, at most one per camera).
    #[arg(long)]
    pub workers: Option<usize>,
    /// Live sources: restart after this many seconds without a frame.
    #[arg(long, default_value_t = 5.0)]
    pub watchdog_secs: f64,
    /// The cascade: the guard pass (response, heat map) on every k-th frame and at once when
    /// the class distribution moves, the forward pass on the rest; `auto` picks k ≤ 3 from the
    /// compute budget (k = 1 when the guard keeps up), 1 turns the cascade off.
    #[arg(long, default_value = "auto")]
    pub guard_every: GuardEvery,
}

/// Arguments of `advguard watch`.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub src: SourceArgs,
    /// Calibration profile from `advguard calibrate` (cameras without their own `profile`).
    #[arg(long)]
    pub profile: Option<PathBuf>,
    /// Detector: fused (every signal, one event per attack: the default, unless the camera's
    /// profile was calibrated for one score or a fixed `--threshold` is given, which run that
    /// score, onset by default), onset, entropy, concentration.
    #[arg(long)]
    pub detector: Option<DetectorChoice>,
    /// Fixed start threshold (overrides the profile and the default).
    #[arg(long)]
    pub threshold: Option<f64>,
    /// Write one JSON line per scored frame here.
    #[arg(long)]
    pub frames_out: Option<PathBuf>,
    /// The explain view (heat map + score): a video file OUT.mp4 / OUT.mkv, or served live at
    /// rtsp://HOST:PORT/PATH (with several cameras, OUT-<camera>.mp4 / PATH-<camera>).
    #[arg(long)]
    pub overlay: Option<PathBuf>,
    /// `/metrics` and `/healthz` address, also serving the live page `/` (`off` to disable)
    /// [default: 127.0.0.1:9464].
    #[arg(long)]
    pub metrics_addr: Option<String>,
    /// Token the live page requires (`Authorization: Bearer TOKEN` or `?token=TOKEN`); without
    /// one the page is served only on a loopback address.
    #[arg(long, env = "ADVGUARD_PAGE_TOKEN", hide_env_values = true)]
    pub page_token: Option<String>,
    /// Simulate a digital attacker on the feed: fgsm:eps=4:from=SEC:to=SEC[:target=CLASS].
    /// 8-bit FGSM (ε ≤ 8) on a plain-gradient guard, untargeted vs the clean top-1.
    #[arg(long)]
    pub inject: Option<InjectSpec>,
    /// Seconds between `update` messages of an open event (stream time).
    #[arg(long, default_value_t = 5.0)]
    pub update_secs: f64,
    #[command(flatten)]
    pub model: ModelArgs,
}

/// A camera before the detector is resolved.
pub struct CamDraft {
    /// The `[[camera]]` table (or one built from a SOURCE argument).
    pub cfg: CameraConfig,
    /// Profile file to use.
    pub profile: Option<PathBuf>,
}

fn name_of(source: &str, i: usize, taken: &[String]) -> (String, String) {
    if let Some((n, uri)) = source.split_once('=')
        && !n.is_empty()
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
        && !uri.is_empty()
    {
        return (n.to_string(), uri.to_string());
    }
    let p = Path::new(source);
    let base = if !source.contains("://")
        && !source.starts_with("test:")
        && !source.starts_with("/dev/")
    {
        p.file_stem().map(|s| s.to_string_lossy().into_owned())
    } else {
        None
    }
    .unwrap_or_else(|| format!("cam{i}"));
    let mut name = base.clone();
    let mut k = 2;
    while taken.contains(&name) {
        name = format!("{base}-{k}");
        k += 1;
    }
    (name, source.to_string())
}

/// Cameras from SOURCE arguments and `--config`, plus the parsed config file.
pub fn cameras(src: &SourceArgs) -> anyhow::Result<(Vec<CamDraft>, Option<WatchFile>)> {
    let file = src.config.as_deref().map(WatchFile::load).transpose()?;
    let mut out: Vec<CamDraft> = Vec::new();
    if let (Some(f), Some(path)) = (&file, &src.config) {
        for c in &f.camera {
            out.push(CamDraft {
                profile: c
                    .profile
                    .as_deref()
                    .map(|p| WatchFile::profile_path(path, p)),
                cfg: c.clone(),
            });
        }
    }
    for (i, s) in src.sources.iter().enumerate() {
        let taken: Vec<String> = out.iter().map(|c| c.cfg.name.clone()).collect();
        let (name, uri) = name_of(s, i, &taken);
        if taken.contains(&name) {
            anyhow::bail!("camera name {name:?} is used twice");
        }
        out.push(CamDraft {
            cfg: CameraConfig {
                name,
                source: uri,
                model: None,
                profile: None,
                every_nth: None,
                max_fps: None,
                detector: None,
                threshold: None,
                realtime: None,
                guard_every: None,
            },
            profile: None,
        });
    }
    if out.is_empty() {
        anyhow::bail!(
            "no camera: give SOURCE arguments (a file, rtsp://…, /dev/videoN, test:) or --config"
        );
    }
    Ok((out, file))
}

/// The source spec of a camera with the command line's sampling defaults.
pub fn spec(c: &CameraConfig, src: &SourceArgs, size: u32) -> anyhow::Result<SourceSpec> {
    let mut s = SourceSpec::new(c.name.clone(), c.source.clone());
    s.size = size;
    s.every_nth = c.every_nth.or(src.every_nth).unwrap_or(1);
    s.max_fps = c.max_fps.or(src.max_fps);
    s.realtime = c.realtime.unwrap_or(src.realtime);
    if !(src.watchdog_secs.is_finite() && src.watchdog_secs > 0.0) {
        anyhow::bail!("--watchdog-secs must be > 0");
    }
    s.watchdog = Duration::from_secs_f64(src.watchdog_secs);
    Ok(s)
}

/// Guard options from the model arguments (what `ModelArgs::open` would use).
pub fn guard_options(m: &ModelArgs) -> GuardOptions {
    GuardOptions {
        model_path: m.model.clone(),
        backend: m.backend,
        compile: Some(CompileOptions {
            mode: m.mode,
            seed: m.seed.clone(),
            input_shape: None,
            ..Default::default()
        }),
    }
}

/// Model input side of a manifest.
pub fn model_size(model: &str) -> anyhow::Result<u32> {
    Ok(advguard::engine::manifest::Manifest::load(model)?
        .preprocess
        .size)
}

/// What the model is (classifier or object detector): which signals its cameras run.
pub fn model_kind(model: &str) -> anyhow::Result<advguard::engine::manifest::ModelKind> {
    Ok(advguard::engine::manifest::Manifest::load(model)?.kind)
}

/// Default worker count: one per core.
pub fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// SIGINT/SIGTERM set the returned flag (graceful stop); a second signal exits at once.
pub fn stop_flag() -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let _ = ctrlc::set_handler(move || {
        if s.swap(true, Ordering::SeqCst) {
            eprintln!("second signal: exiting now");
            std::process::exit(130);
        }
    });
    stop
}

/// Runs `advguard watch`.
pub fn run(args: Args) -> anyhow::Result<()> {
    advguard::watch::limit_malloc_arenas();
    let (drafts, file) = cameras(&args.src)?;
    let mut profiles: HashMap<PathBuf, Profile> = HashMap::new();
    let mut load_profile = |p: &Path| -> anyhow::Result<Profile> {
        if let Some(x) = profiles.get(p) {
            return Ok(x.clone());
        }
        let x = Profile::load(p)?;
        profiles.insert(p.to_path_buf(), x.clone());
        Ok(x)
    };
    if !(args.update_secs.is_finite() && args.update_secs >= 0.0) {
        anyhow::bail!("--update-secs must be ≥ 0");
    }
    let many = drafts.len() > 1;
    let overlay_target = args
        .overlay
        .as_deref()
        .map(OverlayTarget::parse)
        .transpose()?;
    let mut cams = Vec::new();
    for d in &drafts {
        let c = &d.cfg;
        let model = c
            .model
            .clone()
            .unwrap_or_else(|| args.model.model_name.clone());
        let size = model_size(&model).with_context(|| format!("camera {:?}", c.name))?;
        let profile_path = d.profile.clone().or_else(|| args.profile.clone());
        let prof = match &profile_path {
            Some(p) => {
                let pr = load_profile(p)?;
                let e = pr.lookup(&c.name, &model).cloned();
                if e.is_none() {
                    tracing::warn!(camera = %c.name, model = %model,
                        "profile {} has no calibration for this camera and model: default threshold", p.display());
                }
                e
            }
            None => None,
        };
        let threshold = c.threshold.or(args.threshold);
        // A profile runs what it was calibrated for; a fixed threshold is one score's (the
        // onset's unless `--detector` names another); otherwise every signal runs.
        let choice = c
            .detector
            .or(args.detector)
            .or(prof.as_ref().map(|p| {
                if p.fused.is_some() {
                    DetectorChoice::Fused
                } else {
                    DetectorChoice::Single(p.detector)
                }
            }))
            .unwrap_or(if threshold.is_some() {
                DetectorChoice::Single(DetectorKind::default())
            } else {
                DetectorChoice::Fused
            });
        let fused = match choice {
            DetectorChoice::Fused => {
                if c.threshold.or(args.threshold).is_some() {
                    anyhow::bail!(
                        "camera {:?}: --threshold sets one score's threshold; the fused detector takes \
                         its thresholds from `advguard calibrate --budget` (or its defaults)",
                        c.name
                    );
                }
                let base = FusedConfig::for_model(model_kind(&model)?);
                let mut f = match &prof {
                    Some(p) => FusedConfig::from_profile_over(base, p),
                    None => base,
                };
                f.update_interval_ms = (args.update_secs * 1000.0) as u64;
                Some(f)
            }
            _ => None,
        };
        let kind = match choice {
            DetectorChoice::Single(k) => k,
            DetectorChoice::Fused => DetectorKind::default(),
        };
        let mut det = match &prof {
            Some(p) => DetectorConfig::from_profile(kind, p),
            None => DetectorConfig::default_for(kind),
        };
        if let Some(t) = c.threshold.or(args.threshold) {
            if !t.is_finite() {
                anyhow::bail!("camera {:?}: threshold must be a number", c.name);
            }
            det.rule.threshold = t;
            det.rule.end_threshold = t;
            det.source = "command line";
        }
        det.update_interval_ms = (args.update_secs * 1000.0) as u64;
        let overlay = overlay_target.as_ref().map(|o| match o {
            _ if !many => o.clone(),
            OverlayTarget::Rtsp(t) => OverlayTarget::Rtsp(t.with_suffix(&c.name)),
            OverlayTarget::File(p) => {
                let ext = p
                    .extension()
                    .map(|e| e.to_string_lossy().into_owned())
                    .unwrap_or_default();
                OverlayTarget::File(p.with_file_name(format!(
                    "{}-{}.{ext}",
                    p.file_stem()
                        .map(|s| s.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                    c.name
                )))
            }
        });
        cams.push(CameraPlan {
            name: c.name.clone(),
            spec: spec(c, &args.src, size)?,
            model,
            detector: det,
            overlay,
            fused,
            inject: args.inject.clone(),
            guard_every: c.guard_every.unwrap_or(args.src.guard_every),
        });
    }
    let metrics_addr = match args.metrics_addr.clone().or_else(|| {
        file.as_ref()
            .and_then(|f| f.metrics.as_ref().map(|m| m.bind.clone()))
    }) {
        Some(a) if a == "off" || a.is_empty() => None,
        Some(a) => Some(a),
        None => Some(DEFAULT_METRICS_ADDR.to_string()),
    };
    let explicit_metrics =
        args.metrics_addr.is_some() || file.as_ref().is_some_and(|f| f.metrics.is_some());
    let page_token = args.page_token.clone().or_else(|| {
        file.as_ref()
            .and_then(|f| f.metrics.as_ref().and_then(|m| m.page_token.clone()))
    });
    let alerts = file.map(|f| AlertPlan {
        sinks: f.sink,
        spool: f.spool,
        alerts: f.alerts,
    });
    let mut plan = WatchPlan {
        cameras: cams,
        guard: guard_options(&args.model),
        default_model: args.model.model_name.clone(),
        response: args.model.response(),
        workers: args.src.workers.unwrap_or_else(default_workers),
        frames_out: args.frames_out.clone(),
        events_stdout: true,
        alerts,
        metrics_addr: metrics_addr.clone(),
        page_token,
        max_frames: args.src.max_frames,
        collect: false,
    };
    // The default address may be taken (another watch): then run without metrics.
    if !explicit_metrics
        && let Some(a) = &metrics_addr
        && std::net::TcpListener::bind(a).is_err()
    {
        tracing::warn!("{a} is in use: /metrics disabled (use --metrics-addr)");
        plan.metrics_addr = None;
    }
    let stop = stop_flag();
    let s = advguard::watch::run(plan, stop)?;
    let failed: Vec<String> = s
        .cameras
        .iter()
        .filter_map(|(n, c)| c.error.as_ref().map(|e| format!("{n}: {e}")))
        .collect();
    tracing::info!(
        frames = s.processed,
        seconds = format!("{:.1}", s.wall_s),
        "watch ended"
    );
    if !failed.is_empty() && failed.len() == s.cameras.len() {
        anyhow::bail!("every camera failed: {}", failed.join("; "));
    }
    Ok(())
}
