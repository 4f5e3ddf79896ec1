//! `advguard attack`: run one attack over a folder of labelled photos; write the 8-bit
//! adversarial PNGs and a manifest.csv.

use super::ModelArgs;
use advguard::attack::patch::{Patch, PatchAttack, PatchCache, PatchConfig, PatchKey};
use advguard::attack::{self, Attack, AttackOptions, Forward, Oracle, argmax};
use advguard::engine::manifest::Manifest;
use advguard::engine::preprocess::Preprocess;
use anyhow::{Context, bail};
use std::path::{Path, PathBuf};

/// Arguments of `advguard attack`.
#[derive(clap::Args)]
pub struct Args {
    /// Attack: fgsm (minimal ε), fgsm-fixed, gradient, pgd, deepfool, onepixel, boundary, patch.
    #[arg(long)]
    pub attack: String,
    /// Folder of photos.
    #[arg(long)]
    pub images: PathBuf,
    /// Labels CSV with columns `file` and `class_index`; every image needs a row.
    #[arg(long)]
    pub labels: PathBuf,
    /// Output folder for the PNGs and manifest.csv.
    #[arg(short, long)]
    pub output: PathBuf,
    /// ε in pixel units (fixed ε for fgsm-fixed/pgd, largest ε for the minimal-ε searches).
    #[arg(long)]
    pub eps: Option<f32>,
    /// Pixels changed by onepixel (k).
    #[arg(long)]
    pub pixels: Option<usize>,
    /// Iteration / query budget override (pgd iterations, deepfool steps, onepixel
    /// generations, boundary queries, patch training steps).
    #[arg(long)]
    pub budget: Option<u32>,
    /// Attack only the first N images (sorted by name; for patch, after the training files).
    #[arg(long)]
    pub limit: Option<usize>,
    /// Random seed of the attacks (each image's seed is derived from it and the file name).
    #[arg(long = "rng-seed", default_value_t = 0)]
    pub rng_seed: u64,
    /// Patch area, percent of the image.
    #[arg(long, default_value_t = 5.0)]
    pub patch_area: f32,
    /// Patch: the first N images train the patch; the rest are attacked.
    #[arg(long, default_value_t = 100)]
    pub patch_train: usize,
    /// Patch target class; `untargeted` lowers the true class instead.
    #[arg(long, default_value = "859")]
    pub patch_target: String,
    /// Patch: transformed training images per optimiser step.
    #[arg(long, default_value_t = 8)]
    pub patch_batch: usize,
    /// Patch: retrain even when the patch cache ($ADVGUARD_CACHE/patches) has this patch.
    #[arg(long)]
    pub no_cache: bool,
    #[command(flatten)]
    pub model: ModelArgs,
}

/// A photo and its label.
pub struct Labelled {
    /// Path of the photo.
    pub path: PathBuf,
    /// File name (the labels CSV key).
    pub name: String,
    /// Ground-truth class.
    pub label: usize,
}

/// Photos of `dir` with their labels; every photo must have a row in the CSV.
pub fn labelled_images(dir: &Path, labels: &Path) -> anyhow::Result<Vec<Labelled>> {
    let map = super::score::read_labels(labels)?;
    let files = super::score::list_images(dir)?;
    let mut out = vec![];
    let mut missing = vec![];
    for p in files {
        let name = p
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        match map.get(&name) {
            Some(&label) => out.push(Labelled {
                path: p,
                name,
                label,
            }),
            None => missing.push(name),
        }
    }
    if !missing.is_empty() {
        bail!(
            "labels {} do not match the images in {}: {} of {} images have no row (first: {})",
            labels.display(),
            dir.display(),
            missing.len(),
            missing.len() + out.len(),
            missing[0]
        );
    }
    Ok(out)
}

/// Stable per-(file, attack) seed, so reruns and resumed runs attack identically.
pub fn job_seed(base: u64, file: &str, attack: &str) -> u64 {
    let mut h = 0xcbf29ce484222325u64 ^ base;
    for b in file.bytes().chain([0]).chain(attack.bytes()) {
        h = (h ^ b as u64).wrapping_mul(0x100000001b3);
    }
    h
}

/// Loads a photo as model-sized pixels.
pub fn load(pre: &Preprocess, p: &Path) -> anyhow::Result<ndarray::Array3<f32>> {
    Ok(Preprocess::pixels(&pre.load_image(p)?))
}

/// Writes 8-bit pixels as PNG.
pub fn save_png(px: &ndarray::Array3<f32>, p: &Path) -> anyhow::Result<()> {
    let (h, w, _) = px.dim();
    let img = image::RgbImage::from_fn(w as u32, h as u32, |x, y| {
        let q = |c: usize| px[[y as usize, x as usize, c]].round().clamp(0.0, 255.0) as u8;
        image::Rgb([q(0), q(1), q(2)])
    });
    img.save(p)
        .with_context(|| format!("writing {}", p.display()))
}

const HEADER: [&str; 13] = [
    "file",
    "label",
    "success",
    "gt_conf",
    "target_class",
    "target_conf",
    "l2",
    "linf",
    "iterations",
    "seconds",
    "survives_quantisation",
    "forward_calls",
    "gradient_calls",
];

/// One manifest row, in `HEADER` order.
#[derive(serde::Serialize)]
struct Row<'a> {
    file: &'a str,
    label: usize,
    success: bool,
    gt_conf: f32,
    target_class: usize,
    target_conf: f32,
    l2: f32,
    linf: f32,
    iterations: u32,
    seconds: f64,
    survives_quantisation: bool,
    forward_calls: u64,
    gradient_calls: u64,
}

/// `--patch-target`: a class index, or `untargeted`.
pub fn parse_target(s: &str) -> anyhow::Result<Option<usize>> {
    match s.trim() {
        "untargeted" | "none" => Ok(None),
        t => Ok(Some(t.parse().with_context(|| {
            format!("--patch-target {t:?} is neither a class index nor `untargeted`")
        })?)),
    }
}

/// Runs `advguard attack`.
pub fn run(args: Args) -> anyhow::Result<()> {
    let opts = AttackOptions {
        eps: args.eps,
        pixels: args.pixels,
        budget: args.budget,
    };
    let is_patch = args.attack == "patch";
    if !is_patch {
        attack::by_name(&args.attack, &opts)?;
    }
    let images = labelled_images(&args.images, &args.labels)?;
    let manifest = Manifest::load(&args.model.model_name)?;
    let mut oracle = Oracle::open(&manifest, args.model.model.as_deref(), args.model.backend)
        .with_context(|| format!("opening model {}", manifest.name))?;
    let pre = oracle.guard().preprocess().clone();
    std::fs::create_dir_all(&args.output)
        .with_context(|| format!("creating {}", args.output.display()))?;
    let (atk, todo): (Box<dyn Attack>, &[Labelled]) = if is_patch {
        let n = args.patch_train.min(images.len().saturating_sub(1));
        if n == 0 {
            bail!("patch needs at least 2 images (training files, then attacked files)");
        }
        let train: Vec<_> = images[..n]
            .iter()
            .map(|l| load(&pre, &l.path))
            .collect::<anyhow::Result<_>>()?;
        let labels: Vec<usize> = images[..n].iter().map(|l| l.label).collect();
        let mut cfg = PatchConfig {
            area: args.patch_area / 100.0,
            target: parse_target(&args.patch_target)?,
            batch: args.patch_batch,
            ..PatchConfig::default()
        };
        if let Some(b) = args.budget {
            cfg.steps = b;
        }
        let key = PatchKey {
            model: manifest.name.clone(),
            config: cfg.clone(),
            seed: args.rng_seed,
            train_set: PatchKey::hash_names(images[..n].iter().map(|l| l.name.as_str())),
            adaptive: None,
        };
        let cache = PatchCache::default_dir();
        let (patch, stats) = match cache.get(&key).filter(|_| !args.no_cache) {
            Some(hit) => {
                tracing::info!(dir = %cache.dir.display(), "patch from the cache");
                hit
            }
            None => {
                let bar = super::eval::bar(cfg.steps as u64, "training patch");
                let r = Patch::train(
                    &mut oracle,
                    &train,
                    &labels,
                    &cfg,
                    args.rng_seed,
                    |s, ok| {
                        bar.set_position(s as u64);
                        bar.set_message(format!("train ok {ok:.2}"));
                    },
                )?;
                bar.finish_and_clear();
                cache.put(&key, &r.0, &r.1)?;
                r
            }
        };
        tracing::info!(
            seconds = stats.seconds,
            forward_calls = stats.forward_calls,
            gradient_calls = stats.gradient_calls,
            train_success = stats.train_success,
            "patch trained"
        );
        save_png(&patch.pixels, &args.output.join("patch.png"))?;
        (Box::new(PatchAttack { patch }), &images[n..])
    } else {
        (attack::by_name(&args.attack, &opts)?, &images[..])
    };
    let todo = &todo[..args.limit.unwrap_or(todo.len()).min(todo.len())];
    let mpath = args.output.join("manifest.csv");
    // The header is written by hand so that a run that attacks nothing still leaves one.
    let mut w = csv::WriterBuilder::new()
        .has_headers(false)
        .from_path(&mpath)
        .with_context(|| format!("writing {}", mpath.display()))?;
    w.write_record(HEADER)?;
    w.flush()?;
    let bar = super::eval::bar(todo.len() as u64, &args.attack);
    let (mut n_ok, mut n_att) = (0, 0);
    for l in todo {
        bar.inc(1);
        let px = load(&pre, &l.path)?;
        // Only correctly classified photos are attacked, as in the paper.
        if argmax(&oracle.logits(px.view())?) != l.label {
            continue;
        }
        let seed = job_seed(args.rng_seed, &l.name, &args.attack);
        let r = atk
            .run(&mut oracle, px.view(), l.label, seed)
            .with_context(|| format!("attacking {}", l.name))?;
        let stem = Path::new(&l.name).with_extension("png");
        save_png(&r.adversarial, &args.output.join(&stem))?;
        n_att += 1;
        n_ok += r.success as usize;
        w.serialize(Row {
            file: &stem.to_string_lossy(),
            label: l.label,
            success: r.success,
            gt_conf: r.gt_conf,
            target_class: r.target_class,
            target_conf: r.target_conf,
            l2: r.l2,
            linf: r.linf,
            iterations: r.iterations,
            seconds: r.seconds,
            survives_quantisation: r.survives_quantisation,
            forward_calls: r.calls.forward,
            gradient_calls: r.calls.gradient,
        })?;
        w.flush()?;
    }
    bar.finish_and_clear();
    tracing::info!(
        attacked = n_att,
        succeeded = n_ok,
        skipped_misclassified = todo.len() - n_att,
        out = %args.output.display(),
        "attack done"
    );
    println!(
        "{}: {n_ok}/{n_att} correctly classified images fooled; manifest {}",
        args.attack,
        args.output.join("manifest.csv").display()
    );
    Ok(())
}
