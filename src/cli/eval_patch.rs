//! The patch part of `advguard eval`: which patch attacks and sticker controls to run, training
//! (or loading from the patch cache) the universal patches on the training photos only, the
//! per-image attack for each name, and the patch report (`patch_table.md/.csv`, `patches.md`).

use super::attack::{Labelled, load};
use super::eval::{Opener, bar, pool};
use advguard::attack::eot::Jitter;
use advguard::attack::patch::{
    Patch, PatchAttack, PatchCache, PatchConfig, PatchKey, Penalty, TrainStats,
};
use advguard::attack::{Attack, AttackError};
use advguard::engine::compile::{CompileOptions, Mode, Seed};
use advguard::engine::{Guard, GuardOptions};
use advguard::eval::patch as ep;
use advguard::eval::report::Record;
use anyhow::{Context, bail};
use ndarray::Array3;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Patch options of `advguard eval`.
#[derive(clap::Args, Clone, Debug)]
pub struct PatchArgs {
    /// Photos that train the patches (e.g. `dev`, when judging on `val`); default: the first
    /// --patch-train files of --images, which are then never evaluated.
    #[arg(long, requires = "patch_labels")]
    pub patch_images: Option<PathBuf>,
    /// Labels CSV of --patch-images.
    #[arg(long)]
    pub patch_labels: Option<PathBuf>,
    /// Transformed training photos per optimiser step.
    #[arg(long, default_value_t = 8)]
    pub patch_batch: usize,
    /// Initial Adam step, pixel units (cosine-decayed to a tenth).
    #[arg(long, default_value_t = 8.0)]
    pub patch_lr: f32,
    /// Target class of the targeted patches (859 = toaster).
    #[arg(long, default_value_t = 859)]
    pub patch_target: usize,
    /// Area of the untargeted patch (`--attacks patch-untargeted`), percent.
    #[arg(long, default_value_t = 5.0)]
    pub patch_untargeted_area: f32,
    /// Area of the adaptive patch (`--attacks patch-adaptive`), percent: it fine-tunes the
    /// targeted patch of this area with a penalty on the detector statistic.
    #[arg(long, default_value_t = 5.0)]
    pub patch_adaptive_area: f32,
    /// Adaptive patch: weight of the statistic's descent direction against the attack's.
    #[arg(long, default_value_t = 1.0)]
    pub patch_adaptive_weight: f32,
    /// Adaptive patch: fine-tuning steps.
    #[arg(long, default_value_t = 150)]
    pub patch_adaptive_steps: u32,
    /// Adaptive patch: SPSA sample pairs per step.
    #[arg(long, default_value_t = 4)]
    pub patch_adaptive_spsa: usize,
    /// Adaptive patch: the response seed of the concentration statistic it attacks
    /// (last-conv, top1), with the 56-pixel window.
    #[arg(long, default_value = "last-conv", value_parser = |s: &str| s.parse::<Seed>().map_err(|e| e.to_string()))]
    pub patch_adaptive_seed: Seed,
    /// Retrain patches even when the patch cache has them.
    #[arg(long)]
    pub patch_no_cache: bool,
}

/// The attack names an `--attacks` token stands for, or `None` if it is not a patch token.
pub fn names(token: &str, areas: &[f32], pa: &PatchArgs) -> Option<anyhow::Result<Vec<String>>> {
    let check = |v: &[f32]| -> anyhow::Result<()> {
        for &p in v {
            if !(p > 0.0 && p < 100.0) {
                bail!("patch area {p} is not a percentage between 0 and 100");
            }
        }
        Ok(())
    };
    let r = match token {
        "patch" => check(areas).map(|_| areas.iter().map(|&a| ep::targeted(a)).collect()),
        "patch-untargeted" => check(&[pa.patch_untargeted_area])
            .map(|_| vec![ep::untargeted(pa.patch_untargeted_area)]),
        "patch-adaptive" => {
            check(&[pa.patch_adaptive_area]).map(|_| vec![ep::adaptive(pa.patch_adaptive_area)])
        }
        "stickers" => check(areas).map(|_| {
            areas
                .iter()
                .flat_map(|&a| [ep::noise_sticker(a), ep::photo_sticker(a)])
                .collect()
        }),
        _ => return None,
    };
    Some(r)
}

/// Whether any of the names needs the patch-training photos.
pub fn wants_training(names: &[String]) -> bool {
    names.iter().any(|n| ep::is_pasted(n))
}

/// Trained patches by attack name, their training cost, and the photos stickers are cut from.
pub struct Patches {
    map: HashMap<String, Arc<Patch>>,
    stats: Vec<(String, TrainStats, PathBuf)>,
    photos: Arc<Vec<Array3<f32>>>,
    base: PatchConfig,
}

/// One patch to train.
struct Job {
    name: String,
    key: PatchKey,
    init: Option<Arc<Patch>>,
}

fn area_of(name: &str) -> Option<f32> {
    name.rsplit('-').next()?.trim_end_matches('%').parse().ok()
}

/// Trains (or loads from the patch cache) every patch the names need, on `train` only.
#[allow(clippy::too_many_arguments)]
pub(super) fn prepare(
    names: &[String],
    pa: &PatchArgs,
    steps: u32,
    train: &[Labelled],
    opener: &Opener,
    jobs: usize,
    seed: u64,
) -> anyhow::Result<Patches> {
    let base = PatchConfig {
        steps,
        batch: pa.patch_batch,
        lr: pa.patch_lr,
        jitter: Jitter::default(),
        ..PatchConfig::default()
    };
    let mut p = Patches {
        map: HashMap::new(),
        stats: vec![],
        photos: Arc::new(vec![]),
        base: base.clone(),
    };
    if !wants_training(names) {
        return Ok(p);
    }
    if train.is_empty() {
        bail!("patch attacks need training photos (--patch-train N or --patch-images DIR)");
    }
    let pre = &opener.manifest.preprocess;
    let px: Vec<Array3<f32>> = train
        .iter()
        .map(|l| load(pre, &l.path))
        .collect::<anyhow::Result<_>>()?;
    let labels: Vec<usize> = train.iter().map(|l| l.label).collect();
    p.photos = Arc::new(px);
    let train_set = PatchKey::hash_names(train.iter().map(|l| l.name.as_str()));
    let key = |cfg: PatchConfig, adaptive| PatchKey {
        model: opener.manifest.name.clone(),
        config: cfg,
        seed,
        train_set,
        adaptive,
    };
    let cache = PatchCache::default_dir();
    let targeted = |area: f32| PatchConfig {
        area: area / 100.0,
        target: Some(pa.patch_target),
        ..base.clone()
    };
    let mut first: Vec<Job> = vec![];
    let mut second: Vec<(String, f32)> = vec![];
    for n in names {
        let Some(area) = area_of(n) else { continue };
        if *n == ep::targeted(area) {
            first.push(Job {
                name: n.clone(),
                key: key(targeted(area), None),
                init: None,
            });
        } else if *n == ep::untargeted(area) {
            let cfg = PatchConfig {
                area: area / 100.0,
                target: None,
                ..base.clone()
            };
            first.push(Job {
                name: n.clone(),
                key: key(cfg, None),
                init: None,
            });
        } else if *n == ep::adaptive(area) {
            second.push((n.clone(), area));
            // The adaptive patch starts from the targeted one of the same area.
            if !names.contains(&ep::targeted(area)) {
                first.push(Job {
                    name: ep::targeted(area),
                    key: key(targeted(area), None),
                    init: None,
                });
            }
        }
    }
    run_jobs(&mut p, first, pa, &cache, &labels, opener, jobs)?;
    let stat = format!(
        "concentration × texture gate guided {}",
        seed_name(&pa.patch_adaptive_seed)
    );
    let adaptive: Vec<Job> = second
        .into_iter()
        .map(|(name, area)| {
            let init = p.map.get(&ep::targeted(area)).cloned();
            let mut cfg = targeted(area);
            cfg.steps = pa.patch_adaptive_steps;
            Job {
                name,
                key: key(
                    cfg,
                    Some((
                        stat.clone(),
                        pa.patch_adaptive_weight,
                        pa.patch_adaptive_steps,
                    )),
                ),
                init,
            }
        })
        .collect();
    run_jobs(&mut p, adaptive, pa, &cache, &labels, opener, jobs)?;
    Ok(p)
}

fn seed_name(s: &Seed) -> String {
    match s {
        Seed::LastConv => "last-conv".into(),
        Seed::Top1 => "top1".into(),
        other => format!("{other:?}"),
    }
}

#[allow(clippy::too_many_arguments)]
fn run_jobs(
    p: &mut Patches,
    jobs_in: Vec<Job>,
    pa: &PatchArgs,
    cache: &PatchCache,
    labels: &[usize],
    opener: &Opener,
    jobs: usize,
) -> anyhow::Result<()> {
    let mut todo = vec![];
    for j in jobs_in {
        match cache.get(&j.key).filter(|_| !pa.patch_no_cache) {
            Some((patch, stats)) => {
                tracing::info!(patch = %j.name, "from the patch cache");
                let png = cache.dir.join(format!("{}.png", j.key.stem()));
                p.stats.push((j.name.clone(), stats, png));
                p.map.insert(j.name, Arc::new(patch));
            }
            None => todo.push(j),
        }
    }
    if todo.is_empty() {
        return Ok(());
    }
    let total: u64 = todo.iter().map(|j| j.key.config.steps as u64).sum();
    let pb = bar(total, "train patches");
    let photos = p.photos.clone();
    let manifest = &opener.manifest;
    pool(
        todo,
        jobs,
        opener,
        |w, j| {
            let tick = |_: u32, _: f64| pb.inc(1);
            let (patch, stats) = match (&j.init, &j.key.adaptive) {
                (Some(init), Some(_)) => {
                    let mut guard = Guard::open(
                        manifest,
                        &GuardOptions {
                            model_path: opener.model.clone(),
                            backend: opener.backend,
                            compile: Some(CompileOptions {
                                mode: Mode::Guided,
                                seed: pa.patch_adaptive_seed.clone(),
                                input_shape: None,
                                ..Default::default()
                            }),
                        },
                    )?;
                    let window = advguard::response::ResponseConfig::default().window;
                    let mut stat = |x: ndarray::ArrayView3<f32>| {
                        ep::patch_score(&mut guard, x, window).map_err(AttackError::from)
                    };
                    let mut start = (**init).clone();
                    start.config = j.key.config.clone();
                    let pen = Penalty {
                        stat: &mut stat,
                        weight: pa.patch_adaptive_weight,
                        samples: pa.patch_adaptive_spsa,
                        delta: 8.0,
                        block: 4,
                    };
                    start.train_adaptive(&mut w.oracle, &photos, labels, pen, j.key.seed, tick)?
                }
                _ => Patch::train(
                    &mut w.oracle,
                    &photos,
                    labels,
                    &j.key.config,
                    j.key.seed,
                    tick,
                )?,
            };
            let png = cache.put(&j.key, &patch, &stats)?;
            Ok((j.name, patch, stats, png))
        },
        |(name, patch, stats, png)| {
            tracing::info!(patch = %name, seconds = stats.seconds, train_success = stats.train_success, "trained");
            p.stats.push((name.clone(), stats, png));
            p.map.insert(name, Arc::new(patch));
            Ok(())
        },
    )?;
    pb.finish_and_clear();
    Ok(())
}

impl Patches {
    /// Training wall time of a patch attack (0 for other names).
    pub fn train_seconds(&self, name: &str) -> f64 {
        self.stats
            .iter()
            .filter(|s| s.0 == name)
            .map(|s| s.1.seconds)
            .sum()
    }

    /// Whether `name` skips photos of this label (a targeted patch on its own target class).
    pub fn skips(&self, name: &str, label: usize) -> bool {
        self.map.get(name).is_some_and(|p| p.target == Some(label))
    }

    /// The per-photo attack of a patch or sticker name; `None` for other attacks.
    pub fn attack(&self, name: &str, seed: u64) -> Option<Box<dyn Attack>> {
        if let Some(p) = self.map.get(name) {
            return Some(Box::new(PatchAttack {
                patch: (**p).clone(),
            }));
        }
        let area = area_of(name)?;
        let cfg = PatchConfig {
            area: area / 100.0,
            target: None,
            ..self.base.clone()
        };
        let size = self.photos.first().map_or(224, |p| p.dim().0);
        let patch = if *name == ep::noise_sticker(area) {
            Patch::noise_sticker(&cfg, size, seed)
        } else if *name == ep::photo_sticker(area) && !self.photos.is_empty() {
            // A crop of another real photo (a training photo, never the evaluated one).
            let i = (seed % self.photos.len() as u64) as usize;
            Patch::photo_sticker(&cfg, self.photos[i].view(), seed)
        } else {
            return None;
        };
        Some(Box::new(PatchAttack { patch }))
    }

    /// Writes `patches.md` (training cost and success), `patch_table.md/.csv`, copies of the
    /// patch PNGs, and returns the Markdown.
    pub fn report(
        &self,
        out: &Path,
        records: &[Record],
        names: &[String],
        detectors: &[String],
    ) -> anyhow::Result<String> {
        let mut md = String::new();
        let _ = writeln!(
            md,
            "# Patches\n\n| patch | train steps × batch | train time (s) | forward / gradient / detector calls | train success (last 10 %) | held-out success (n) |\n|---|---|---|---|---|---|"
        );
        let succ = ep::success(records, names);
        for (name, st, png) in &self.stats {
            let cfg = &self.map[name].config;
            let (n, k) = succ
                .iter()
                .find(|s| &s.0 == name)
                .map_or((0, 0), |s| (s.1, s.2));
            let _ = writeln!(
                md,
                "| {name} | {} × {} | {:.0} | {} / {} / {} | {:.3} | {:.3} ({n}) |",
                cfg.steps,
                cfg.batch,
                st.seconds,
                st.forward_calls,
                st.gradient_calls,
                st.penalty_calls,
                st.train_success,
                k as f64 / n.max(1) as f64
            );
            let copy = out.join(format!("{}.png", name.trim_end_matches('%')));
            if let Err(e) = std::fs::copy(png, &copy) {
                tracing::warn!(error = %e, file = %copy.display(), "could not copy the patch PNG");
            }
        }
        for (name, n, k) in succ.iter().filter(|s| ep::is_sticker(&s.0)) {
            let _ = writeln!(
                md,
                "| {name} (control; success = top-1 changed) | – | – | – | – | {:.3} ({n}) |",
                *k as f64 / (*n).max(1) as f64
            );
        }
        let t = ep::table(records, names, detectors);
        let _ = writeln!(
            md,
            "\n# Patch detection: AUC / detection at 1 % / 5 % FPR / localisation IoU (n)\n\n\
             Thresholds from the clean photos only. Patch columns judge the successful patched \
             photos; sticker columns judge every stickered photo (their \"detection\" is the \
             alarm rate).\n\n{}",
            t.to_markdown()
        );
        std::fs::write(out.join("patch_table.md"), &md)
            .with_context(|| format!("writing {}", out.join("patch_table.md").display()))?;
        std::fs::write(
            out.join("patch_table.csv"),
            ep::table_csv(records, names, detectors).to_csv(),
        )
        .with_context(|| format!("writing {}", out.join("patch_table.csv").display()))?;
        Ok(md)
    }
}

/// Detectors of the patch table: those matching `filter` (substrings), else the region
/// statistics, the paper's S̄ and the margin.
pub fn detectors(records: &[Record], filter: &[String]) -> Vec<String> {
    let mut d: Vec<String> = records
        .iter()
        .filter_map(|r| r.scores.as_ref())
        .flat_map(|s| s.values.keys().cloned())
        .collect();
    d.sort();
    d.dedup();
    if filter.is_empty() {
        d.retain(|n| {
            n.contains("concentration")
                || n.starts_with("block-max")
                || n == advguard::eval::detectors::PAPER
                || n.starts_with("margin")
        });
    } else {
        d.retain(|n| filter.iter().any(|f| n.contains(f.as_str())));
    }
    d
}
