//! `advguard eval`: attacks × detectors on a folder of labelled photos → the paper's Table 1
//! and 2 (Markdown + CSV), ROC curves and score histograms.
//!
//! Resumable: every finished image (clean or attacked) is appended to REPORT/records.jsonl and
//! skipped on the next run; trained patches are kept as REPORT/patch-N.png. Parallel: one
//! worker thread per core, each with its own guards.

use super::ModelArgs;
use super::attack::{Labelled, job_seed, labelled_images, load};
use advguard::attack::adaptive::AdaptivePgd;
use advguard::attack::{self, Attack, AttackOptions, Oracle};
use advguard::engine::manifest::Manifest;
use advguard::engine::{BackendKind, preprocess::Preprocess};
use advguard::eval::combiner as combiner_eval;
use advguard::eval::detectors::Scorer;
use advguard::eval::report::{self, CLEAN, Record};
use anyhow::{Context, bail};
use std::collections::HashSet;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

/// Arguments of `advguard eval`.
#[derive(clap::Args)]
pub struct Args {
    /// Folder of photos.
    #[arg(long)]
    pub images: PathBuf,
    /// Labels CSV with columns `file` and `class_index`; every image needs a row.
    #[arg(long)]
    pub labels: PathBuf,
    /// Attacks, comma-separated: fgsm, fgsm-fixed, gradient, pgd, deepfool, onepixel, boundary, patch.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "fgsm,gradient,onepixel,deepfool,boundary,patch"
    )]
    pub attacks: Vec<String>,
    /// Report folder (tables, plots, the records cache).
    #[arg(short, long)]
    pub output: PathBuf,
    /// Evaluate only the first N images (after the patch-training files).
    #[arg(long)]
    pub limit: Option<usize>,
    /// Show only detector variants whose name contains one of these (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub detectors: Vec<String>,
    /// Patch areas, percent of the image.
    #[arg(long, value_delimiter = ',', default_value = "2,5,10")]
    pub patch_areas: Vec<f32>,
    /// The first N files (sorted) train the patch and are never evaluated.
    #[arg(long, default_value_t = 100)]
    pub patch_train: usize,
    /// Patch training steps (each: --patch-batch × (one forward + one gradient call)).
    #[arg(long, default_value_t = 500)]
    pub patch_steps: u32,
    #[command(flatten)]
    pub patch: super::eval_patch::PatchArgs,
    /// Worker threads (default: all cores).
    #[arg(long)]
    pub jobs: Option<usize>,
    /// Random seed of the attacks (each image's seed is derived from it and the file name).
    #[arg(long = "rng-seed", default_value_t = 0)]
    pub rng_seed: u64,
    /// Clean false-positive rate that fixes Table 2's threshold.
    #[arg(long, default_value_t = 0.05)]
    pub fpr: f64,
    /// Also score the learned combiner's features (a median guard pass and a bit-depth forward
    /// pass per image). Use a fresh report folder: cached images are not rescored.
    #[arg(long)]
    pub combiner_features: bool,
    /// Profile with a combiner fitted by `advguard fit` (implies --combiner-features): adds its
    /// row to the tables, refuses photos it was fitted on, and enables `--attacks adaptive-pgd`.
    #[arg(long)]
    pub combiner: Option<PathBuf>,
    /// Adaptive PGD: weight of the combiner's gradient against the cross-entropy's.
    #[arg(long, default_value_t = 1.0)]
    pub adaptive_lambda: f32,
    /// Adaptive PGD: SPSA probe pairs per step for the response statistics (0 = unattacked).
    #[arg(long, default_value_t = 2)]
    pub adaptive_spsa: u32,
    /// Adaptive PGD: iterations.
    #[arg(long, default_value_t = 20)]
    pub adaptive_iters: u32,
    #[command(flatten)]
    pub model: ModelArgs,
}

/// A progress bar with the project's style.
pub fn bar(n: u64, msg: &str) -> indicatif::ProgressBar {
    let b = indicatif::ProgressBar::new(n);
    b.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg:>14} [{bar:30}] {pos}/{len} {elapsed_precise} (eta {eta})",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    b.set_message(msg.to_string());
    b
}

/// One worker's engines.
pub(super) struct Worker {
    pub(super) oracle: Oracle,
    scorer: Scorer,
    pre: Preprocess,
}

#[derive(Clone)]
pub(super) struct Opener {
    pub(super) manifest: Manifest,
    pub(super) model: Option<PathBuf>,
    pub(super) backend: BackendKind,
    combiner_features: bool,
}

impl Opener {
    fn open(&self) -> anyhow::Result<Worker> {
        let oracle = Oracle::open(&self.manifest, self.model.as_deref(), self.backend)?;
        let pre = oracle.guard().preprocess().clone();
        let mut scorer = Scorer::open(&self.manifest, self.model.as_deref(), self.backend)?;
        if self.combiner_features {
            scorer = scorer.with_combiner_features(
                &self.manifest,
                self.model.as_deref(),
                self.backend,
            )?;
        }
        Ok(Worker {
            oracle,
            scorer,
            pre,
        })
    }
}

/// Runs `jobs` on `n` threads, each with its own `Worker`; results arrive in `done` on this thread.
pub(super) fn pool<J: Send, R: Send>(
    jobs: Vec<J>,
    n: usize,
    opener: &Opener,
    work: impl Fn(&mut Worker, J) -> anyhow::Result<R> + Sync,
    mut done: impl FnMut(R) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    if jobs.is_empty() {
        return Ok(());
    }
    let n = n.clamp(1, jobs.len());
    let (jtx, jrx) = crossbeam_channel::unbounded();
    for j in jobs {
        let _ = jtx.send(j);
    }
    drop(jtx);
    let (rtx, rrx) = crossbeam_channel::unbounded::<anyhow::Result<R>>();
    std::thread::scope(|s| {
        for _ in 0..n {
            let (jrx, rtx, work) = (jrx.clone(), rtx.clone(), &work);
            s.spawn(move || {
                let mut w = match opener.open() {
                    Ok(w) => w,
                    Err(e) => {
                        let _ = rtx.send(Err(e));
                        return;
                    }
                };
                while let Ok(j) = jrx.recv() {
                    let r = work(&mut w, j);
                    let failed = r.is_err();
                    if rtx.send(r).is_err() || failed {
                        return;
                    }
                }
            });
        }
        drop(rtx);
        let mut first_err = None;
        for r in rrx.iter() {
            match r.and_then(&mut done) {
                Ok(()) => {}
                Err(e) => {
                    // Stop handing out work; the workers finish their current image.
                    while jrx.try_recv().is_ok() {}
                    first_err.get_or_insert(e);
                }
            }
        }
        first_err.map_or(Ok(()), Err)
    })
}

fn read_records(p: &Path) -> anyhow::Result<Vec<Record>> {
    let Ok(f) = std::fs::File::open(p) else {
        return Ok(vec![]);
    };
    let mut out = vec![];
    for (i, line) in std::io::BufReader::new(f).lines().enumerate() {
        let line = line.with_context(|| format!("reading {}", p.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Record>(&line) {
            Ok(r) => out.push(r),
            // A run killed mid-write leaves a torn last line: redo that image.
            Err(e) => tracing::warn!(line = i + 1, error = %e, "skipping a broken cache line"),
        }
    }
    Ok(out)
}

fn attack_record(l: &Labelled, name: &str, r: &attack::AttackResult) -> Record {
    Record {
        file: l.name.clone(),
        attack: name.to_string(),
        label: l.label,
        correct: true,
        success: r.success,
        float_success: r.float_success,
        survives_quantisation: r.survives_quantisation,
        gt_conf: r.gt_conf,
        target_class: r.target_class,
        target_conf: r.target_conf,
        l2: r.l2,
        linf: r.linf,
        iterations: r.iterations,
        seconds: r.seconds,
        forward_calls: r.calls.forward,
        gradient_calls: r.calls.gradient,
        patch_box: r.patch_box,
        scores: None,
    }
}

/// The adaptive attacker's name in `--attacks`.
const ADAPTIVE: &str = "adaptive-pgd";

/// Runs `advguard eval`.
pub fn run(args: Args) -> anyhow::Result<()> {
    let opts = AttackOptions::default();
    let mut names: Vec<String> = vec![];
    for a in &args.attacks {
        let a = a.trim();
        if let Some(v) = super::eval_patch::names(a, &args.patch_areas, &args.patch) {
            names.extend(v?);
        } else if a == ADAPTIVE {
            if args.combiner.is_none() {
                bail!("--attacks {ADAPTIVE} attacks a fitted combiner: pass --combiner PROFILE");
            }
            names.push(a.to_string());
        } else {
            attack::by_name(a, &opts)?;
            names.push(a.to_string());
        }
    }
    let comb = match &args.combiner {
        Some(p) => {
            let prof = advguard::detector::Profile::load(p)?;
            let c = prof
                .combiner(&args.model.model_name)
                .cloned()
                .with_context(|| {
                    format!(
                        "{} has no combiner for model {} (run `advguard fit` first)",
                        p.display(),
                        args.model.model_name
                    )
                })?;
            Some(c)
        }
        None => None,
    };
    if names.is_empty() {
        bail!("--attacks is empty");
    }
    let images = labelled_images(&args.images, &args.labels)?;
    // Patches train on --patch-images, or else on the first --patch-train files here.
    let wants_patch = super::eval_patch::wants_training(&names);
    let n_train = if wants_patch && args.patch.patch_images.is_none() {
        args.patch_train.min(images.len().saturating_sub(1))
    } else {
        0
    };
    let (train, eval) = images.split_at(n_train);
    let other_train = match (&args.patch.patch_images, &args.patch.patch_labels) {
        (Some(d), Some(l)) if wants_patch => {
            let mut v = labelled_images(d, l)?;
            v.truncate(args.patch_train);
            v
        }
        _ => vec![],
    };
    let train: &[Labelled] = if other_train.is_empty() {
        train
    } else {
        &other_train
    };
    let eval = &eval[..args.limit.unwrap_or(eval.len()).min(eval.len())];
    if let Some(c) = &comb {
        let n = combiner_eval::check_disjoint(c, eval.iter().map(|l| l.path.as_path()))?;
        tracing::info!(
            photos = n,
            "none of the evaluated photos was used to fit the combiner"
        );
    }
    std::fs::create_dir_all(&args.output)
        .with_context(|| format!("creating {}", args.output.display()))?;
    let cache = args.output.join("records.jsonl");
    let mut records = read_records(&cache)?;
    let mut out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&cache)
        .with_context(|| format!("opening {}", cache.display()))?;
    let manifest = Manifest::load(&args.model.model_name)?;
    let opener = Opener {
        manifest,
        model: args.model.model.clone(),
        backend: args.model.backend,
        combiner_features: args.combiner_features || comb.is_some(),
    };
    let jobs = args
        .jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    tracing::info!(
        images = eval.len(),
        patch_train = train.len(),
        cached = records.len(),
        jobs,
        "eval"
    );
    let mut append = |r: Record, records: &mut Vec<Record>| -> anyhow::Result<()> {
        let line = serde_json::to_string(&r)?;
        writeln!(out, "{line}").and_then(|_| out.flush())?;
        records.push(r);
        Ok(())
    };

    // 1. Clean images: correctness and detector scores.
    let done: HashSet<(String, String)> = records
        .iter()
        .map(|r| (r.file.clone(), r.attack.clone()))
        .collect();
    let todo: Vec<&Labelled> = eval
        .iter()
        .filter(|l| !done.contains(&(l.name.clone(), CLEAN.to_string())))
        .collect();
    let pb = bar(todo.len() as u64, "clean");
    pool(
        todo,
        jobs,
        &opener,
        |w, l| {
            let px = load(&w.pre, &l.path)?;
            let t = std::time::Instant::now();
            let s = w.scorer.score(px.view())?;
            Ok(Record {
                file: l.name.clone(),
                attack: CLEAN.into(),
                label: l.label,
                correct: s.top1 == l.label,
                success: false,
                float_success: false,
                survives_quantisation: false,
                gt_conf: 0.0,
                target_class: s.top1,
                target_conf: s.top1_prob,
                l2: 0.0,
                linf: 0.0,
                iterations: 0,
                seconds: t.elapsed().as_secs_f64(),
                forward_calls: 0,
                gradient_calls: 0,
                patch_box: None,
                scores: Some(s),
            })
        },
        |r| {
            pb.inc(1);
            append(r, &mut records)
        },
    )?;
    pb.finish_and_clear();
    let eval_names: HashSet<&str> = eval.iter().map(|l| l.name.as_str()).collect();
    let correct: HashSet<String> = records
        .iter()
        .filter(|r| r.attack == CLEAN && r.correct && eval_names.contains(r.file.as_str()))
        .map(|r| r.file.clone())
        .collect();
    tracing::info!(
        correct = correct.len(),
        of = eval.len(),
        "clean images classified"
    );

    // 2. Patches: trained on the training photos only, kept in the patch cache.
    let patches = super::eval_patch::prepare(
        &names,
        &args.patch,
        args.patch_steps,
        train,
        &opener,
        jobs,
        args.rng_seed,
    )?;

    // 3. Attacks on the correctly classified images; detector scores of the successful ones.
    let done: HashSet<(String, String)> = records
        .iter()
        .map(|r| (r.file.clone(), r.attack.clone()))
        .collect();
    let mut todo: Vec<(&Labelled, String)> = vec![];
    for l in eval.iter().filter(|l| correct.contains(&l.name)) {
        for a in &names {
            let is_target = patches.skips(a, l.label);
            if !done.contains(&(l.name.clone(), a.clone())) && !is_target {
                todo.push((l, a.clone()));
            }
        }
    }
    let pb = bar(todo.len() as u64, "attacks");
    let patches = &patches;
    let adaptive = AdaptivePgd {
        lambda: args.adaptive_lambda,
        spsa: args.adaptive_spsa,
        iters: args.adaptive_iters,
        ..AdaptivePgd::default()
    };
    let adaptive = &adaptive;
    let comb = &comb;
    pool(
        todo,
        jobs,
        &opener,
        |w, (l, a)| {
            let px = load(&w.pre, &l.path)?;
            let seed = job_seed(args.rng_seed, &l.name, &a);
            if a == ADAPTIVE
                && let (Some(c), Some((guided, forward))) = (&comb, w.scorer.combiner_guards())
            {
                let r = adaptive
                    .run(&mut w.oracle, c, guided, forward, px.view(), l.label, seed)
                    .with_context(|| format!("{a} on {}", l.name))?;
                let mut rec = attack_record(l, &a, &r);
                if r.success {
                    rec.scores = Some(w.scorer.score(r.adversarial.view())?);
                }
                return Ok(rec);
            }
            let atk: Box<dyn Attack> = match patches.attack(&a, seed) {
                Some(p) => p,
                None => attack::by_name(&a, &opts)?,
            };
            let r = atk
                .run(&mut w.oracle, px.view(), l.label, seed)
                .with_context(|| format!("{a} on {}", l.name))?;
            let mut rec = attack_record(l, &a, &r);
            // A sticker is a control: every stickered photo is scored, fooled or not.
            if r.success || advguard::eval::patch::is_sticker(&a) {
                rec.scores = Some(w.scorer.score(r.adversarial.view())?);
            }
            Ok(rec)
        },
        |r| {
            pb.inc(1);
            append(r, &mut records)
        },
    )?;
    pb.finish_and_clear();

    // 4. Tables and plots from everything cached for this image set.
    let mut keep: Vec<Record> = records
        .into_iter()
        .filter(|r| eval_names.contains(r.file.as_str()))
        .collect();
    if let Some(c) = comb {
        let n = combiner_eval::add_scores(&mut keep, c);
        tracing::info!(records = n, "combiner scored");
    }
    let extra = |a: &str| patches.train_seconds(a);
    let rep = report::build(&keep, &names, &args.detectors, args.fpr, &extra);
    let w = |f: &str, s: &str| {
        std::fs::write(args.output.join(f), s)
            .with_context(|| format!("writing {}", args.output.join(f).display()))
    };
    w("table1.md", &rep.table1_md)?;
    w("table1.csv", &rep.table1_csv)?;
    w("table2.md", &rep.table2_md)?;
    w("table2.csv", &rep.table2_csv)?;
    if args.combiner_features || comb.is_some() {
        let md = combiner_eval::report_md(&keep, &names);
        w("combiner.md", &md)?;
        println!("{md}");
    }
    if wants_patch {
        let dets = super::eval_patch::detectors(&keep, &args.detectors);
        println!("{}", patches.report(&args.output, &keep, &names, &dets)?);
    }
    report::plots(&args.output, &keep, &names)?;
    println!("{}", rep.table1_md);
    println!("{}", rep.table2_md);
    println!("report written to {}", args.output.display());
    Ok(())
}
