//! `advguard explain`: top-5, S̄ and the Figure-3 panel for photos.

use super::ModelArgs;
use advguard::detector::Profile;
use advguard::detector::combiner::{self, Combiner};
use advguard::engine::compile::{CompileOptions, Mode, Seed};
use advguard::engine::detect::{self, Detection};
use advguard::engine::manifest::Manifest;
use advguard::engine::{Guard, GuardOptions};
use advguard::engine::{preprocess::Preprocess, top_k};
use advguard::response::{self, entropy};
use anyhow::Context;
use std::path::{Path, PathBuf};

/// Arguments of `advguard explain`.
#[derive(clap::Args)]
pub struct Args {
    /// Photos to explain.
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
    /// Panel PNG (input | feature response | local entropy). With several images,
    /// `-o DIR/` or a path gets the image's stem appended.
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    /// Profile with a combiner fitted by `advguard fit`: print each statistic's contribution
    /// to the combiner's logit (runs the combiner's extra passes).
    #[arg(long)]
    pub profile: Option<PathBuf>,
    #[command(flatten)]
    pub model: ModelArgs,
}

/// Runs `advguard explain`.
pub fn run(args: Args) -> anyhow::Result<()> {
    let mut guard = args.model.open()?;
    let cfg = args.model.response();
    let many = args.images.len() > 1;
    let mut comb = match &args.profile {
        Some(p) => Some(CombinerExplainer::open(p, &args.model)?),
        None => None,
    };
    for path in &args.images {
        let img = guard.preprocess().load_image(path)?;
        let px = Preprocess::pixels(&img);
        let out = guard
            .run_pixels(px.view())
            .with_context(|| format!("running {}", path.display()))?;
        let mut stats = response::analyze(out.response.view(), &cfg);
        stats.measure_texture(img.as_raw(), img.width(), img.height());
        println!("{}", path.display());
        // A detector's frame result is read as boxes; its heat map is no class distribution.
        let dets = if detect::is_detector(&guard) {
            let (fw, fh) = image::image_dimensions(path)
                .with_context(|| format!("reading the size of {}", path.display()))?;
            let dets = detect::detections(&guard, &out, fw, fh)?;
            print_detections(&dets, fw, fh);
            Some((dets, (fw, fh)))
        } else {
            None
        };
        let probs = if dets.is_none() { out.probs() } else { vec![] };
        if dets.is_none() {
            for (rank, &k) in top_k(&probs, 5).iter().enumerate() {
                println!(
                    "  {}. {:<30} {:.4}  (class {k})",
                    rank + 1,
                    guard.labels()[k],
                    probs[k]
                );
            }
        }
        println!(
            "  mean local entropy S̄ = {:.4} bits ({} bins, {:?} gray); response concentration = {:.3} in box {:?}",
            stats.entropy, cfg.bins, cfg.gray, stats.concentration, stats.bbox
        );
        if let Some(t) = stats.box_texture {
            let floor = advguard::detector::fused::DEFAULT_PATCH_TEXTURE;
            println!(
                "  box texture = {t:.1} gray levels (patch signal's floor {floor:.0}): patch score = {:.3}",
                stats.concentration * response::texture::gate(Some(t), Some(floor))
            );
        }
        if let Some(c) = comb.as_mut() {
            c.explain(px.view())?;
        }
        if let Some(o) = &args.output {
            let dest = panel_path(o, path, many);
            let rgb_resp = guard.preprocess().response_to_rgb(out.response.view());
            let ent = entropy::local_entropy(stats.gray.view(), cfg.bins);
            let file = path
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default();
            let mut shown = img.clone();
            let title = match &dets {
                Some((d, frame)) => {
                    let tile = detect::rescale(d, *frame, shown.dimensions());
                    advguard::viz::detections::draw(&mut shown, &tile, 2);
                    format!(
                        "{file}: {} detection(s){}, mean local entropy {:.3} bits",
                        d.len(),
                        d.first()
                            .map(|t| format!(" (top: {} {:.2})", t.label, t.score))
                            .unwrap_or_default(),
                        stats.entropy
                    )
                }
                None => {
                    let top1 = top_k(&probs, 1)[0];
                    format!(
                        "{file}: {} ({:.2}), mean local entropy {:.3} bits",
                        guard.labels()[top1],
                        probs[top1],
                        stats.entropy
                    )
                }
            };
            let panel = advguard::viz::panel(
                &shown,
                &advguard::viz::response_rgb(rgb_resp.view()),
                ent.view(),
                9f32.log2(),
                &title,
            );
            if let Some(dir) = dest.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
            }
            panel
                .save(&dest)
                .with_context(|| format!("writing {}", dest.display()))?;
            println!("  panel: {}", dest.display());
        }
    }
    Ok(())
}

/// One line per detection: class, score, box in frame pixels.
fn print_detections(dets: &[Detection], fw: u32, fh: u32) {
    println!(
        "  {} detection(s) (boxes x0, y0, x1, y1 in the {fw}×{fh} frame):",
        dets.len()
    );
    for (rank, d) in dets.iter().enumerate() {
        println!("  {}. {d}  (class {})", rank + 1, d.class);
    }
}

fn panel_path(o: &std::path::Path, image: &std::path::Path, many: bool) -> PathBuf {
    let stem = image
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "panel".into());
    if o.is_dir() || o.to_string_lossy().ends_with('/') {
        o.join(format!("{stem}.png"))
    } else if many {
        let base = o.with_extension("");
        PathBuf::from(format!("{}-{stem}.png", base.display()))
    } else {
        o.to_path_buf()
    }
}

/// The combiner and the two guards its passes need (guided last-conv and forward-only).
struct CombinerExplainer {
    combiner: Combiner,
    guided: Guard,
    forward: Guard,
}

impl CombinerExplainer {
    fn open(profile: &Path, m: &ModelArgs) -> anyhow::Result<Self> {
        let prof = Profile::load(profile)?;
        let combiner = prof.combiner(&m.model_name).cloned().with_context(|| {
            format!(
                "{} has no combiner for model {} (run `advguard fit` first)",
                profile.display(),
                m.model_name
            )
        })?;
        let manifest = Manifest::load(&m.model_name)?;
        let mut opts = GuardOptions {
            model_path: m.model.clone(),
            backend: m.backend,
            compile: Some(CompileOptions {
                mode: Mode::Guided,
                seed: Seed::LastConv,
                input_shape: None,
                ..Default::default()
            }),
        };
        let guided = Guard::open(&manifest, &opts)?;
        opts.compile = None;
        let forward = Guard::open(&manifest, &opts)?;
        Ok(CombinerExplainer {
            combiner,
            guided,
            forward,
        })
    }

    /// Prints each statistic, its contribution to the logit, and the sum.
    fn explain(&mut self, px: ndarray::ArrayView3<f32>) -> anyhow::Result<()> {
        let c = &self.combiner;
        let (f, ms) =
            combiner::frame_features(px, &mut self.guided, &mut self.forward, &c.passes())?;
        let (logit, terms) = c.score(&f)?;
        let verdict = if logit > c.fit.threshold_fpr1 {
            "ADVERSARIAL"
        } else {
            "clean"
        };
        println!(
            "  combiner logit = {logit:.4} ({verdict} at the fit's 1 % FPR threshold {:.4}); contributions:",
            c.fit.threshold_fpr1
        );
        for (name, v) in &terms {
            let raw = f
                .values
                .get(name)
                .map_or(String::new(), |x| format!("  (value {x:.4})"));
            println!("    {v:>+9.4}  {name}{raw}");
        }
        let sum: f64 = terms.iter().map(|t| t.1).sum();
        println!("    {sum:>+9.4}  = sum (the logit)");
        let passes: Vec<String> = ms.iter().map(|(k, v)| format!("{k} {v:.1} ms")).collect();
        println!("  passes: {}", passes.join(", "));
        Ok(())
    }
}
