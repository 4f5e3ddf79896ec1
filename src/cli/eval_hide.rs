//! `advguard eval-hide`: trains the person-hiding patch on a detector's training photos (or
//! loads it from the output folder), pastes it and two natural stickers on the persons of the
//! test photos, and reports persons hidden and the guard's detection of the pasted photos.

use super::attack::{load, save_png};
use super::eval::bar;
use super::score::list_images;
use advguard::attack::hide::{self, HideConfig, HideStats, Persons};
use advguard::attack::patch::Patch;
use advguard::engine::compile::{CompileOptions, Mode, Seed};
use advguard::engine::detect;
use advguard::engine::manifest::{Manifest, ModelKind};
use advguard::engine::{BackendKind, Guard, GuardOptions};
use advguard::eval::hide::{self as eh, Pasted, PhotoRecord};
use anyhow::{Context, bail};
use ndarray::{Array3, s};
use rand::{Rng, SeedableRng, rngs::StdRng};
use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};

/// Arguments of `advguard eval-hide`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Detector model (a manifest of kind "detector").
    #[arg(long = "model-name", default_value = "centernet_mobilenetv3_coco")]
    pub model_name: String,
    /// Explicit ONNX file.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Backend.
    #[arg(long, default_value = "auto")]
    pub backend: BackendKind,
    /// Photos the patch is trained on, and whose clean photos set the detection thresholds.
    #[arg(long)]
    pub train: PathBuf,
    /// Held-out photos the patch and the thresholds are judged on.
    #[arg(long)]
    pub test: PathBuf,
    /// Output folder (persons, patch, records, report); a rerun resumes from it.
    #[arg(short, long, default_value = "out/eval-hide")]
    pub out: PathBuf,
    /// Use only the first N photos of each folder (a short run).
    #[arg(long)]
    pub limit: Option<usize>,
    /// Optimiser steps.
    #[arg(long, default_value_t = 300)]
    pub steps: u32,
    /// Transformed photos per step.
    #[arg(long, default_value_t = 4)]
    pub batch: usize,
    /// Initial Adam step, pixel units.
    #[arg(long, default_value_t = 8.0)]
    pub lr: f32,
    /// Pasted patch side as a share of the person box's diagonal.
    #[arg(long, default_value_t = 0.2)]
    pub rel_size: f32,
    /// Persons with a box side under this many model pixels are not pasted on.
    #[arg(long, default_value_t = 48.0)]
    pub min_side: f32,
    /// False-positive rate of the detection thresholds (on the training split's clean photos).
    #[arg(long, default_value_t = 0.01)]
    pub fpr: f64,
    /// Seed of the patch's initialisation, the training draws and the test placements.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Backward mode of the guard that scores the photos.
    #[arg(long, default_value = "guided", value_parser = |s: &str| s.parse::<Mode>().map_err(|e| e.to_string()))]
    pub mode: Mode,
    /// Response seed of the guard that scores the photos (default: the manifest's, the
    /// detected person peaks), e.g. `peaks:tower_0/keypoints[0]@0.05`.
    #[arg(long = "response-seed", value_parser = |s: &str| s.parse::<Seed>().map_err(|e| e.to_string()))]
    pub response_seed: Option<Seed>,
    /// Clips for the video part (repeat the flag): the patch pasted on the persons of random
    /// stretches, H.264-encoded, judged by the vanishing-track signal.
    #[arg(long)]
    pub clip: Vec<PathBuf>,
    /// Attacked stretches per clip and pasted kind.
    #[arg(long, default_value_t = 20)]
    pub stretches: usize,
    /// Vanishing-track signal: consecutive frames without a detection before a loss is judged.
    #[arg(long, default_value_t = 3)]
    pub vanish_frames: u32,
    /// Use only the first N frames of each clip (a short run).
    #[arg(long)]
    pub max_frames: Option<usize>,
    /// Frame rate the clips are decoded at (the detector camera's rate).
    #[arg(long, default_value_t = 10.0)]
    pub video_fps: f64,
}

struct Split {
    name: &'static str,
    files: Vec<PathBuf>,
    persons: BTreeMap<String, Persons>,
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let manifest = Manifest::load(&a.model_name)?;
    if manifest.kind != ModelKind::Detector {
        bail!(
            "eval-hide needs a detector; {} is a classifier (kind = \"detector\" in its manifest)",
            manifest.name
        );
    }
    let cfg = HideConfig {
        rel_size: a.rel_size,
        threshold: manifest.detector.as_ref().map_or(0.3, |d| d.threshold),
        steps: a.steps,
        batch: a.batch,
        lr: a.lr,
        ..HideConfig::default()
    };
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let open = |compile: Option<CompileOptions>| -> anyhow::Result<Guard> {
        let opts = GuardOptions {
            model_path: a.model.clone(),
            backend: a.backend,
            compile,
        };
        Guard::open(&manifest, &opts).with_context(|| format!("opening model {}", manifest.name))
    };
    let mut forward = open(None)?;
    let pre = forward.preprocess().clone();
    let size = forward.size() as usize;
    let mut splits = vec![];
    for (name, dir) in [("train", &a.train), ("test", &a.test)] {
        let mut files = list_images(dir)?;
        if let Some(n) = a.limit {
            files.truncate(n);
        }
        let persons = find_persons(&mut forward, &pre, &files, &cfg, &a, name)?;
        splits.push(Split {
            name,
            files,
            persons,
        });
    }
    drop(forward);
    let count = |s: &Split| {
        (
            s.persons.values().filter(|p| !p.boxes.is_empty()).count(),
            s.persons.values().map(|p| p.boxes.len()).sum::<usize>(),
        )
    };
    for s in &splits {
        let (ph, pe) = count(s);
        println!(
            "{}: {} photos, {ph} with persons, {pe} persons (≥ {} px, score ≥ {})",
            s.name,
            s.files.len(),
            a.min_side,
            cfg.threshold
        );
    }

    let (patch, stats) = train_or_load(&a, &manifest, &pre, &splits[0], &cfg, &open)?;
    save_png(&patch.pixels, &a.out.join("patch.png"))?;

    // By default the guard as `watch` runs it on this model: guided, the manifest's seed.
    let seed = a.response_seed.clone().unwrap_or(Seed::LastConv);
    let mut guard = open(Some(CompileOptions {
        mode: a.mode,
        seed,
        ..Default::default()
    }))?;
    let records = judge(&mut guard, &pre, &splits, &patch, &cfg, &a, size)?;
    let report = report(&a, &splits, &stats, &records, &cfg, size);
    let mut report = report;
    if !a.clip.is_empty() {
        drop(guard);
        report.push_str(&video(&a, &open, &patch, &cfg, size as u32)?);
    }
    let md = a.out.join(format!("hide-{}.md", tag(&a)));
    std::fs::write(&md, &report)?;
    print!("{report}");
    println!("wrote {}", md.display());
    Ok(())
}

/// The persons of every photo of a split, cached in `persons-SPLIT.json`.
fn find_persons(
    forward: &mut Guard,
    pre: &advguard::engine::preprocess::Preprocess,
    files: &[PathBuf],
    cfg: &HideConfig,
    a: &Args,
    split: &str,
) -> anyhow::Result<BTreeMap<String, Persons>> {
    let path = a.out.join(format!("persons-{split}.json"));
    let mut map: BTreeMap<String, Persons> = std::fs::read(&path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let todo: Vec<&PathBuf> = files
        .iter()
        .filter(|f| !map.contains_key(&file_name(f)))
        .collect();
    if !todo.is_empty() {
        let pb = bar(todo.len() as u64, &format!("persons {split}"));
        for f in todo {
            let px = load(pre, f)?;
            let out = forward.run_pixels(px.view())?;
            let (h, w, _) = px.dim();
            let dets = detect::detections(forward, &out, w as u32, h as u32)?;
            map.insert(file_name(f), hide::persons_in(&dets, cfg, a.min_side));
            pb.inc(1);
        }
        pb.finish_and_clear();
        std::fs::write(&path, serde_json::to_vec_pretty(&map)?)?;
    }
    let keep: HashSet<String> = files.iter().map(|f| file_name(f)).collect();
    map.retain(|k, _| keep.contains(k));
    Ok(map)
}

/// Trains the patch on the training split, or loads it when this exact run was done before.
fn train_or_load(
    a: &Args,
    manifest: &Manifest,
    pre: &advguard::engine::preprocess::Preprocess,
    train: &Split,
    cfg: &HideConfig,
    open: &dyn Fn(Option<CompileOptions>) -> anyhow::Result<Guard>,
) -> anyhow::Result<(Patch, HideStats)> {
    let names: Vec<&str> = train.persons.keys().map(|s| s.as_str()).collect();
    let key = format!(
        "{:016x}",
        advguard::attack::patch::PatchKey::hash_names(
            [
                manifest.name.as_str(),
                &serde_json::to_string(cfg)?,
                &a.seed.to_string()
            ]
            .into_iter()
            .chain(names)
        )
    );
    let (png, meta) = (
        a.out.join(format!("hide-{key}.png")),
        a.out.join(format!("hide-{key}.json")),
    );
    if let (Ok(img), Ok(bytes)) = (image::open(&png), std::fs::read(&meta))
        && let Ok(stats) = serde_json::from_slice::<HideStats>(&bytes)
    {
        println!("patch: cached {}", png.display());
        let px = advguard::engine::preprocess::Preprocess::pixels(&img.to_rgb8());
        return Ok((hide::as_patch(px, cfg), stats));
    }
    let mut photos = vec![];
    let mut persons = vec![];
    for f in &train.files {
        if let Some(p) = train.persons.get(&file_name(f))
            && !p.boxes.is_empty()
        {
            photos.push(load(pre, f)?);
            persons.push(p.clone());
        }
    }
    let mut loss_guard = open(hide::loss_options(manifest, cfg).compile)?;
    let pb = bar(u64::from(cfg.steps), "training");
    let (patch, stats) = hide::train(
        &mut loss_guard,
        &photos,
        &persons,
        cfg,
        a.seed,
        |step, loss, hidden| {
            pb.set_position(u64::from(step));
            pb.set_message(format!("loss {loss:.2} hid {hidden:.2}"));
        },
    )?;
    pb.finish_and_clear();
    save_png(&patch.pixels, &png)?;
    std::fs::write(&meta, serde_json::to_vec_pretty(&stats)?)?;
    println!(
        "patch: trained in {:.0} s, {} guard calls, loss {:.3} → {:.3}, training persons hidden (last tenth) {:.3}",
        stats.seconds, stats.calls, stats.loss_first, stats.loss_last, stats.train_hidden
    );
    Ok((patch, stats))
}

/// A natural sticker of the patch's size: uniform noise, or a crop of a test photo.
fn sticker(kind: Pasted, side: usize, photo: &Array3<f32>, seed: u64) -> Array3<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    match kind {
        Pasted::Photo => {
            let (h, w, _) = photo.dim();
            let (y, x) = (
                rng.random_range(0..=h.saturating_sub(side)),
                rng.random_range(0..=w.saturating_sub(side)),
            );
            photo.slice(s![y..y + side, x..x + side, ..]).to_owned()
        }
        _ => Array3::from_shape_fn((side, side, 3), |_| {
            rng.random_range(0.0f32..=255.0).round()
        }),
    }
}

/// Clean photos of both splits, and the patch and the stickers pasted on the persons of the
/// training and test splits, each scored by the guard; appended to `records-TAG.jsonl` (a rerun
/// resumes).
fn judge(
    guard: &mut Guard,
    pre: &advguard::engine::preprocess::Preprocess,
    splits: &[Split],
    patch: &Patch,
    cfg: &HideConfig,
    a: &Args,
    size: usize,
) -> anyhow::Result<Vec<PhotoRecord>> {
    let path = a.out.join(format!("records-{}.jsonl", tag(a)));
    let mut records: Vec<PhotoRecord> = std::fs::read_to_string(&path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let done: HashSet<(String, String, Pasted)> = records
        .iter()
        .map(|r| (r.file.clone(), r.split.clone(), r.pasted))
        .collect();
    let mut jobs = vec![];
    for s in splits {
        for f in &s.files {
            let n = file_name(f);
            let kinds: &[Pasted] = match s.persons.get(&n) {
                // Pasted train photos let a choice between statistics be made without the test.
                Some(p) if !p.boxes.is_empty() => &Pasted::ALL,
                _ => &Pasted::ALL[..1],
            };
            for &k in kinds {
                if !done.contains(&(n.clone(), s.name.to_string(), k)) {
                    jobs.push((s, f, k));
                }
            }
        }
    }
    let mut sink = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    let pb = bar(jobs.len() as u64, "judging");
    let mut examples = 0;
    for (s, f, k) in jobs {
        let n = file_name(f);
        let px = load(pre, f)?;
        let empty = Persons {
            boxes: vec![],
            scores: vec![],
        };
        let persons = s.persons.get(&n).unwrap_or(&empty);
        let seed = super::attack::job_seed(a.seed, &n, k.name());
        let (out, boxes, outcomes) = if k == Pasted::Clean {
            (guard.run_pixels(px.view())?, vec![], None)
        } else {
            let pixels = if k == Pasted::Patch {
                patch.pixels.clone()
            } else {
                // A crop of another test photo (the next one by name), as a printed picture.
                let other = &s.files
                    [(s.files.iter().position(|g| g == f).unwrap_or(0) + 1) % s.files.len()];
                sticker(k, patch.side(), &load(pre, other)?, seed)
            };
            let p = hide::as_patch(pixels, cfg);
            let j = hide::judge_photo(guard, &p, px.view(), persons, cfg, seed)?;
            if s.name == "test" && examples < 4 && k == Pasted::Patch {
                save_png(&j.pasted, &a.out.join(format!("example-{examples}.png")))?;
                examples += 1;
            }
            (j.output, j.boxes, Some(j.outcomes))
        };
        let hidden = outcomes
            .as_ref()
            .map_or(0, |o| o.iter().filter(|o| o.hidden).count());
        let r = PhotoRecord {
            file: n,
            split: s.name.to_string(),
            pasted: k,
            persons: if k == Pasted::Clean {
                persons.boxes.len()
            } else {
                outcomes.as_ref().map_or(0, |o| o.len())
            },
            boxes,
            hidden,
            stats: eh::stats(out.response.view(), size),
        };
        writeln!(sink, "{}", serde_json::to_string(&r)?)?;
        records.push(r);
        pb.inc(1);
    }
    pb.finish_and_clear();
    Ok(records)
}

/// Names the scoring guard in file names, so variants share the persons and the patch.
fn tag(a: &Args) -> String {
    format!(
        "{:?}-{}",
        a.mode,
        a.response_seed
            .as_ref()
            .map_or("default".into(), |s| s.to_string())
    )
    .to_lowercase()
    .replace(
        |c: char| !c.is_ascii_alphanumeric() && c != '.' && c != '-',
        "_",
    )
}

fn report(
    a: &Args,
    splits: &[Split],
    stats: &HideStats,
    records: &[PhotoRecord],
    cfg: &HideConfig,
    size: usize,
) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# Person-hiding patch on {}\n", a.model_name);
    for s in splits {
        let ph = s.persons.values().filter(|p| !p.boxes.is_empty()).count();
        let pe: usize = s.persons.values().map(|p| p.boxes.len()).sum();
        let _ = writeln!(
            md,
            "- {} (`{}`): {} photos, {ph} with persons, {pe} persons",
            s.name,
            if s.name == "train" {
                a.train.display()
            } else {
                a.test.display()
            },
            s.files.len()
        );
    }
    let _ = writeln!(
        md,
        "- patch: {0}×{0} px, pasted at {1} × the person box's diagonal (scale jitter {2:?}), ±{3}° rotation, brightness ±{4}, contrast ±{5}; {6} steps × {7} photos, Adam lr {8}; trained in {9:.0} s, {10} guard calls; loss {11:.3} → {12:.3}; persons hidden in the last tenth's training batches {13:.3}",
        cfg.side,
        cfg.rel_size,
        cfg.jitter.scale,
        cfg.jitter.rotation_deg,
        cfg.jitter.brightness,
        cfg.jitter.contrast,
        cfg.steps,
        cfg.batch,
        cfg.lr,
        stats.seconds,
        stats.calls,
        stats.loss_first,
        stats.loss_last,
        stats.train_hidden
    );
    let _ = writeln!(
        md,
        "- a person is hidden when no person detection ≥ {} matches its clean box (IoU ≥ {})\n",
        cfg.threshold,
        hide::MATCH_IOU
    );
    let _ = writeln!(
        md,
        "| pasted on the test persons | persons hidden | photos with every person hidden |\n|---|---|---|"
    );
    for (k, h, n, all) in eh::hidden(records) {
        let photos = records
            .iter()
            .filter(|r| r.split == "test" && r.pasted == k)
            .count();
        let _ = writeln!(
            md,
            "| {} | {h} / {n} ({:.3}) | {all} / {photos} |",
            k.name(),
            h as f64 / n.max(1) as f64
        );
    }
    let (win, scan) = eh::windows(size);
    let _ = writeln!(
        md,
        "\nDetection by the guard ({:?}, seed {}; concentration window {win} px, scan windows {scan:?}); thresholds at {:.1} % FPR on the **train** split's clean photos, judged on the test split (train AUC: the same statistic on the pasted training photos, for choosing between variants without the test):\n",
        a.mode,
        a.response_seed
            .as_ref()
            .map_or("the manifest's".into(), |s| format!("`{s}`")),
        100.0 * a.fpr
    );
    let _ = writeln!(
        md,
        "| statistic | threshold | test clean FPR | kind | train AUC | AUC | detected | median box IoU | n |\n|---|---|---|---|---|---|---|---|---|"
    );
    let f3 = |v: Option<f64>| v.map_or("—".into(), |v| format!("{v:.3}"));
    for row in eh::table(records, a.fpr) {
        for c in &row.kinds {
            let _ = writeln!(
                md,
                "| {} | {:.4} | {:.3} | {} | {} | {} | {:.3} | {} | {} |",
                row.statistic.name(),
                row.threshold,
                row.test_fpr,
                c.kind.name(),
                f3(eh::auc_on(records, "train", c.kind, row.statistic)),
                f3(c.auc),
                c.detected,
                c.iou.map_or("—".into(), |v| format!("{v:.2}")),
                c.n
            );
        }
    }
    md
}

/// The video part: clean footage calibrates and counts false alarms, attacked stretches are
/// judged; returns the report's section.
fn video(
    a: &Args,
    open: &dyn Fn(Option<CompileOptions>) -> anyhow::Result<Guard>,
    patch: &Patch,
    cfg: &HideConfig,
    size: u32,
) -> anyhow::Result<String> {
    use advguard::detector::vanish::VanishConfig;
    use advguard::eval::hide_video as hv;
    use advguard::eval::video::footage::{Clip, h264_round_trip};
    let mut fwd = open(None)?;
    let mut vcfg = VanishConfig {
        class: cfg.class,
        threshold: cfg.threshold,
        lost_frames: a.vanish_frames.max(1),
        ..VanishConfig::default()
    };
    struct Clean {
        clip: Clip,
        dets: Vec<Vec<detect::Detection>>,
        half: usize,
        calib: Vec<advguard::detector::vanish::Loss>,
        test: Vec<advguard::detector::vanish::Loss>,
    }
    let mut clean = vec![];
    for path in &a.clip {
        let mut clip = Clip::decode(path, size, Some(a.video_fps))?;
        if let Some(n) = a.max_frames {
            clip.frames.truncate(n.max(2));
            clip.pts_ms.truncate(n.max(2));
        }
        let encoded = h264_round_trip(&clip.frames, size, clip.frame_ms())?;
        let pb = bar(encoded.len() as u64, &format!("clean {}", clip.name));
        let mut dets = vec![];
        for f in &encoded {
            dets.push(hv::detect_all(&mut fwd, std::slice::from_ref(f), size)?.remove(0));
            pb.inc(1);
        }
        pb.finish_and_clear();
        let half = encoded.len() / 2;
        let changes = |r: std::ops::Range<usize>| -> Vec<advguard::detector::vanish::Loss> {
            hv::losses(&encoded[r.clone()], &dets[r], size, &vcfg)
                .into_iter()
                .map(|(_, l)| l)
                .collect()
        };
        let (calib, test) = (changes(0..half), changes(half..encoded.len()));
        clean.push(Clean {
            clip,
            dets,
            half,
            calib,
            test,
        });
    }
    let all_calib: Vec<advguard::detector::vanish::Loss> =
        clean.iter().flat_map(|c| c.calib.iter().cloned()).collect();
    (vcfg.max_change, vcfg.min_confidence) = hv::calibrate(
        &all_calib,
        advguard::detector::vanish::DEFAULT_MAX_CHANGE,
        cfg.threshold,
    );
    let mut md = String::new();
    let _ = writeln!(
        md,
        "\n## Video: the vanishing-track signal\n\nClips decoded at {} fps, squashed to {size}, through x264 (quantizer 23) → avdec_h264. A loss is a person track (≥ {} frames old, IoU ≥ {} matching) unmatched for {} frames and not leaving (within {} of the side of a frame edge it moves towards); it fires when the median |Δ gray| over its box's 16×16 thumbnail (where the box should be now: carried on at the track's velocity, best of a ±10 % search) since its last match is ≤ {:.0}, and the track's mean last score is ≥ **{:.3}**: above every natural loss of an unchanged scene in the first half of every clip (the calibration). False alarms are counted on the second halves only.\n",
        a.video_fps,
        vcfg.min_age,
        vcfg.match_iou,
        vcfg.lost_frames,
        vcfg.edge,
        vcfg.max_change,
        vcfg.min_confidence
    );
    let _ = writeln!(
        md,
        "| clip | frames (calibration / test) | natural losses, calibration (least change) | natural losses, test | false alarms, test | per camera-hour |\n|---|---|---|---|---|---|"
    );
    for c in &clean {
        let test_frames = c.dets.len() - c.half;
        let fa = c
            .test
            .iter()
            .filter(|l| l.change <= vcfg.max_change && l.confidence >= vcfg.min_confidence)
            .count();
        let hours = test_frames as f64 * c.clip.frame_ms() as f64 / 3.6e6;
        let min = c.calib.iter().map(|l| l.change).reduce(f64::min);
        let _ = writeln!(
            md,
            "| {} | {} / {test_frames} | {} ({}) | {} | {fa} | {:.1} (in {:.2} h) |",
            c.clip.name,
            c.half,
            c.calib.len(),
            min.map_or("—".into(), |v| format!("{v:.1}")),
            c.test.len(),
            fa as f64 / hours.max(1e-9),
            hours
        );
    }
    let noise = {
        let mut rng = StdRng::seed_from_u64(a.seed ^ 0x5eed);
        hide::as_patch(
            Array3::from_shape_fn(patch.pixels.dim(), |_| {
                rng.random_range(0.0f32..=255.0).round()
            }),
            cfg,
        )
    };
    let plan = hv::StretchPlan {
        stretches: a.stretches,
        ..hv::StretchPlan::default()
    };
    let mut results = vec![];
    for c in &clean {
        for (k, p) in [(Pasted::Patch, patch), (Pasted::Noise, &noise)] {
            let pb = bar(
                plan.stretches as u64,
                &format!("{} {}", c.clip.name, k.name()),
            );
            let seed = super::attack::job_seed(a.seed, &c.clip.name, k.name());
            let r = hv::stretches(&mut fwd, &c.clip, &c.dets, p, k, cfg, &vcfg, &plan, seed)?;
            pb.finish_and_clear();
            results.extend(r);
        }
    }
    std::fs::write(
        a.out
            .join(format!("video-stretches-{}.json", vcfg.lost_frames)),
        serde_json::to_vec_pretty(&results)?,
    )?;
    let _ = writeln!(
        md,
        "\nStretches of {} frames ({} clean frames before), at random onsets with a person in view:\n\n| clip | pasted | stretches | person-frames hidden | detected | within 5 frames | median frames to alert | fired in the clean frames before |\n|---|---|---|---|---|---|---|---|",
        plan.frames, plan.before
    );
    for c in &clean {
        for k in [Pasted::Patch, Pasted::Noise] {
            let rs: Vec<&hv::StretchResult> = results
                .iter()
                .filter(|r| r.clip == c.clip.name && r.pasted == k)
                .collect();
            if rs.is_empty() {
                let _ = writeln!(
                    md,
                    "| {} | {} | 0 (no person in view) | | | | | |",
                    c.clip.name,
                    k.name()
                );
                continue;
            }
            let (pf, hf): (usize, usize) = rs.iter().fold((0, 0), |s, r| {
                (s.0 + r.person_frames, s.1 + r.hidden_frames)
            });
            let mut lat: Vec<f64> = rs
                .iter()
                .filter_map(|r| r.first_fire.map(|v| v as f64))
                .collect();
            lat.sort_by(f64::total_cmp);
            let within = lat.iter().filter(|&&v| v <= 5.0).count();
            let _ = writeln!(
                md,
                "| {} | {} | {} | {hf} / {pf} ({:.2}) | {} / {} | {within} / {} | {} | {} |",
                c.clip.name,
                k.name(),
                rs.len(),
                hf as f64 / pf.max(1) as f64,
                lat.len(),
                rs.len(),
                rs.len(),
                lat.get(lat.len() / 2)
                    .map_or("—".into(), |v| format!("{v:.0}")),
                rs.iter().map(|r| r.fires_before).sum::<usize>()
            );
        }
    }
    Ok(md)
}
