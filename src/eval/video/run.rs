//! The eval-video run: decode, plan, score (parallel, resumable), judge, write the report.

use super::attacks::{self, StretchKind};
use super::footage::{Clip, rng_for};
use super::judge;
use super::score::{Scorer, SessionRec};
use super::{Part, VideoEvalConfig, plan_sessions};
use crate::attack::Oracle;
use crate::detector::FusedConfig;
use crate::detector::cascade::GuardEvery;
use crate::engine::manifest::Manifest;
use crate::engine::{Guard, GuardOptions};
use crate::response::ResponseConfig;
use anyhow::Context;
use ndarray::Array3;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Engines and inputs of a run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Model manifest.
    pub manifest: Manifest,
    /// Guard options (backend, guided compile) as `watch` uses them.
    pub guard: GuardOptions,
    /// Response statistics.
    pub response: ResponseConfig,
    /// Scoring threads (each with its own engines).
    pub workers: usize,
    /// Output folder (sessions are stored under it; rerunning resumes).
    pub out: PathBuf,
    /// Patch PNG for the scene-patch kinds.
    pub patch: Option<PathBuf>,
    /// Photos to train the universal perturbation on (never the test footage).
    pub photos: Option<PathBuf>,
    /// Signed-gradient steps of the universal perturbation.
    pub universal_steps: u32,
    /// The fused detector's base configuration (signals, reference).
    pub detector: FusedConfig,
    /// Show progress bars.
    pub progress: bool,
    /// Cascade k values to replay the test sessions at (the detection cost table).
    pub cascade: Vec<u32>,
}

/// What a run produced.
#[derive(Debug, Clone)]
pub struct RunSummary {
    /// The judgement.
    pub judgement: judge::Judgement,
    /// The Markdown report (also written to `out/report.md`).
    pub markdown: String,
}

fn load_patch(p: &Path) -> anyhow::Result<Array3<f32>> {
    let img = image::open(p)
        .with_context(|| format!("--patch {}", p.display()))?
        .to_rgb8();
    let (w, h) = img.dimensions();
    Ok(Array3::from_shape_fn(
        (h as usize, w as usize, 3),
        |(y, x, c)| img.get_pixel(x as u32, y as u32)[c] as f32,
    ))
}

/// The universal perturbation of this model, trained once on `photos` and cached in `out`.
fn universal(
    opts: &RunOptions,
    oracle: &mut Oracle,
    size: u32,
    seed: u64,
) -> anyhow::Result<Array3<f32>> {
    let cache = opts
        .out
        .join(format!("universal-{}.i8", opts.manifest.name));
    let n = size as usize;
    if let Ok(b) = std::fs::read(&cache)
        && b.len() == n * n * 3
    {
        return Ok(Array3::from_shape_fn((n, n, 3), |(y, x, c)| {
            b[(y * n + x) * 3 + c] as i8 as f32
        }));
    }
    let dir = opts
        .photos
        .as_ref()
        .context("the universal-4 kind needs --photos DIR (training photos, e.g. dev/)")?;
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("--photos {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension().is_some_and(|x| {
                x.eq_ignore_ascii_case("jpeg")
                    || x.eq_ignore_ascii_case("jpg")
                    || x.eq_ignore_ascii_case("png")
            })
        })
        .collect();
    files.sort();
    files.truncate(64);
    let mut photos = Vec::new();
    for f in &files {
        // Squashed like a camera frame, as the guard sees footage.
        let img = image::open(f)
            .with_context(|| f.display().to_string())?
            .to_rgb8();
        let img = image::imageops::resize(&img, size, size, image::imageops::FilterType::Triangle);
        let px = attacks::to_px(img.as_raw(), size);
        let label = crate::attack::argmax(&crate::attack::Forward::logits(oracle, px.view())?);
        photos.push((px, label));
    }
    let bar = bar(
        opts.progress,
        opts.universal_steps as u64,
        "universal perturbation",
    );
    let mut rng = rng_for(seed, 0, 9);
    let d = attacks::train_universal(
        oracle,
        &photos,
        4.0,
        opts.universal_steps,
        8,
        &mut rng,
        |_| bar.inc(1),
    )?;
    bar.finish_and_clear();
    let bytes: Vec<u8> = d.iter().map(|v| *v as i8 as u8).collect();
    std::fs::write(&cache, bytes)?;
    Ok(d)
}

/// A progress bar (hidden when `show` is false).
pub fn bar(show: bool, n: u64, msg: &str) -> indicatif::ProgressBar {
    if !show {
        return indicatif::ProgressBar::hidden();
    }
    let b = indicatif::ProgressBar::new(n);
    b.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg:24} [{bar:40}] {pos}/{len} {elapsed_precise} eta {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    b.set_message(msg.to_string());
    b
}

/// Runs the evaluation of one model.
pub fn run(cfg: &VideoEvalConfig, opts: &RunOptions) -> anyhow::Result<RunSummary> {
    if cfg.clips.is_empty() {
        anyhow::bail!("no clips to evaluate");
    }
    let size = opts.manifest.preprocess.size;
    let dir = opts.out.join(&opts.manifest.name);
    std::fs::create_dir_all(&dir).with_context(|| dir.display().to_string())?;
    let mut clips = Vec::new();
    for c in &cfg.clips {
        let clip = Clip::decode(c, size, Some(cfg.max_fps))?;
        tracing::info!(clip = %clip.name, frames = clip.frames.len(), frame_ms = clip.frame_ms(), "decoded");
        clips.push(clip);
    }
    let plans = plan_sessions(cfg, &clips);
    let needs_patch = cfg.kinds.iter().any(|k| k.in_scene());
    let patch = match (&opts.patch, needs_patch) {
        (Some(p), _) => Some(load_patch(p)?),
        (None, true) => anyhow::bail!(
            "stretch kinds patch and patch-first need --patch PNG (a trained patch, e.g. from \
             `advguard attack --attack patch … -o DIR`: DIR/patch.png), or leave them out with --kinds"
        ),
        (None, false) => None,
    };
    let open = || -> anyhow::Result<(Guard, Oracle)> {
        let g = Guard::open(&opts.manifest, &opts.guard)
            .with_context(|| format!("opening model {}", opts.manifest.name))?;
        let o = Oracle::open(
            &opts.manifest,
            opts.guard.model_path.as_deref(),
            opts.guard.backend,
        )?;
        Ok((g, o))
    };
    let (g0, mut o0) = open()?;
    let uni = if cfg.kinds.contains(&StretchKind::Universal4) {
        Some(universal(opts, &mut o0, size, cfg.seed)?)
    } else {
        None
    };
    let todo: Vec<&super::SessionPlan> = plans
        .iter()
        .filter(|p| SessionRec::load(&dir, p).is_none())
        .collect();
    tracing::info!(
        sessions = plans.len(),
        stored = plans.len() - todo.len(),
        to_score = todo.len(),
        "eval-video plan"
    );
    let frames: u64 = todo.iter().map(|p| (p.frames.1 - p.frames.0) as u64).sum();
    let pb = bar(
        opts.progress,
        frames,
        &format!("{} frames", opts.manifest.name),
    );
    let queue = Mutex::new(todo.into_iter());
    let first = Mutex::new(Some((g0, o0)));
    let errors: Mutex<Vec<String>> = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..opts.workers.max(1) {
            s.spawn(|| {
                let engines = first
                    .lock()
                    .ok()
                    .and_then(|mut f| f.take())
                    .map(Ok)
                    .unwrap_or_else(open);
                let (guard, oracle) = match engines {
                    Ok(e) => e,
                    Err(e) => {
                        if let Ok(mut v) = errors.lock() {
                            v.push(format!("{e:#}"));
                        }
                        return;
                    }
                };
                let mut sc = Scorer {
                    guard,
                    oracle,
                    response: opts.response.clone(),
                    universal: uni.clone(),
                    patch: patch.clone(),
                    seed: cfg.seed,
                };
                loop {
                    let next = queue.lock().ok().and_then(|mut q| q.next());
                    let Some(p) = next else { break };
                    let r = sc
                        .score(p, &clips[p.clip])
                        .and_then(|rec| rec.save(&dir).map(|_| rec));
                    pb.inc((p.frames.1 - p.frames.0) as u64);
                    if let Err(e) = r
                        && let Ok(mut v) = errors.lock()
                    {
                        v.push(format!("session {}: {e:#}", p.id));
                    }
                }
            });
        }
    });
    pb.finish_and_clear();
    if let Some(e) = errors.into_inner().unwrap_or_default().first() {
        anyhow::bail!("{e}");
    }
    let sessions: Vec<SessionRec> = plans
        .iter()
        .map(|p| SessionRec::load(&dir, p).with_context(|| format!("session {} missing", p.id)))
        .collect::<anyhow::Result<_>>()?;
    let cfgs = judge::calibrate(&sessions, &opts.detector, cfg.budget);
    let j = judge::judge(&sessions, &cfgs, GuardEvery::Every(1));
    let curve = judge::tradeoff(
        &sessions,
        &cfgs,
        &[0.5, 0.7, 0.85, 1.0, 1.25, 1.5, 2.0, 3.0],
    );
    if let Err(e) = judge::plots(&dir, &opts.manifest.name, &sessions, &cfgs, &curve) {
        tracing::warn!("plots: {e:#}");
    }
    let mut markdown = report(cfg, opts, &sessions, &j, &curve);
    // The onset margin of both references, measured on the same sessions.
    let _ = writeln!(
        markdown,
        "\nOnset margin: median over stretches of (largest onset score in the stretch's first 5 frames) / \
         (largest onset score on the clean test footage of the clip):\n\n| kind | reference = mean of 3 | reference = previous frame |\n|---|---|---|"
    );
    let mut prev = opts.detector.clone();
    prev.reference = crate::detector::fused::OnsetReference::Previous;
    let mut mean = opts.detector.clone();
    mean.reference = crate::detector::fused::OnsetReference::Mean;
    let (m1, m2) = (
        judge::onset_margins(&sessions, &mean, &cfgs),
        judge::onset_margins(&sessions, &prev, &cfgs),
    );
    for (k, v) in &m1 {
        let _ = writeln!(
            markdown,
            "| {k} | {v:.2} | {:.2} |",
            m2.get(k).copied().unwrap_or(0.0)
        );
    }
    if !opts.cascade.is_empty() {
        let _ = writeln!(
            markdown,
            "\nThe cascade (guard pass every k-th frame, at once when the onset jump passes half \
             its threshold or a class outside the previous top 3 becomes top-1, every frame while \
             an event is open; the rest forward only, response statistics held from the last \
             guard frame), replayed on the same test sessions with the same thresholds:\n"
        );
        markdown.push_str(&judge::cascade_table(&sessions, &cfgs, &opts.cascade).to_markdown());
    }
    std::fs::write(dir.join("report.md"), &markdown)?;
    Ok(RunSummary {
        judgement: j,
        markdown,
    })
}

fn report(
    cfg: &VideoEvalConfig,
    opts: &RunOptions,
    sessions: &[SessionRec],
    j: &judge::Judgement,
    curve: &[(f64, f64, f64)],
) -> String {
    let mut s = String::new();
    let cal: f64 = sessions
        .iter()
        .filter(|x| x.plan.part == Part::Calibration)
        .map(|x| x.frames.last().map_or(0.0, |f| f.pts_ms as f64 / 3.6e6))
        .sum();
    let calls: u64 = sessions.iter().map(|x| x.attack_calls).sum();
    let _ = writeln!(s, "## {} · eval-video\n", opts.manifest.name);
    let _ = writeln!(
        s,
        "Clips: {}. Calibration: the first {:.0} % of each clip, {:.2} h of replays in all; test: the rest, \
         {:.2} h of clean stream time (outside stretches and 1 s after them) in {} sessions. Budget {}/camera-hour, \
         shared by the signals. Seed {}. Attack engine calls: {calls}.\n",
        cfg.clips
            .iter()
            .map(|c| c
                .file_name()
                .map_or(String::new(), |n| n.to_string_lossy().into_owned()))
            .collect::<Vec<_>>()
            .join(", "),
        cfg.cal_fraction * 100.0,
        cal,
        j.clean_hours,
        sessions
            .iter()
            .filter(|x| x.plan.part == Part::Test)
            .count(),
        cfg.budget,
        cfg.seed,
    );
    let _ = writeln!(
        s,
        "**False alarms: {} in {:.2} clean camera-hours = {:.2} per camera-hour.**\n",
        j.false_alarms,
        j.clean_hours,
        j.false_alarms_per_hour()
    );
    let _ = writeln!(
        s,
        "False alarms per clip, by the signal that opened them:\n"
    );
    s.push_str(&j.clean_table().to_markdown());
    let _ = writeln!(s, "\nAttacked stretches:\n");
    s.push_str(&judge::table(j).to_markdown());
    let _ = writeln!(s, "\nThresholds per clip (calibrated):\n");
    for (clip, t) in &j.thresholds {
        let _ = writeln!(s, "- {clip}: {t}");
        for n in j.notes.get(clip).into_iter().flatten() {
            let _ = writeln!(s, "  - {n}");
        }
    }
    let _ = writeln!(
        s,
        "\nTrade-off (every threshold × factor):\n\n| factor | false alarms / h | detected ≤ 5 frames |\n|---|---|---|"
    );
    for (a, fa, d) in curve {
        let _ = writeln!(s, "| {a:.2} | {fa:.2} | {d:.2} |");
    }
    s
}
