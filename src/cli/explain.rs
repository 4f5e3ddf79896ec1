//! `advguard explain`: top-5, S̄ and the Figure-3 panel for photos.

use super::ModelArgs;
use advguard::engine::{preprocess::Preprocess, top_k};
use advguard::response::{self, entropy};
use anyhow::Context;
use std::path::PathBuf;

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
    #[command(flatten)]
    pub model: ModelArgs,
}

/// Runs `advguard explain`.
pub fn run(args: Args) -> anyhow::Result<()> {
    let mut guard = args.model.open()?;
    let cfg = args.model.response();
    let many = args.images.len() > 1;
    for path in &args.images {
        let img = guard.preprocess().load_image(path)?;
        let px = Preprocess::pixels(&img);
        let out = guard
            .run_pixels(px.view())
            .with_context(|| format!("running {}", path.display()))?;
        let probs = out.probs();
        let stats = response::analyze(out.response.view(), &cfg);
        println!("{}", path.display());
        for (rank, &k) in top_k(&probs, 5).iter().enumerate() {
            println!(
                "  {}. {:<30} {:.4}  (class {k})",
                rank + 1,
                guard.labels()[k],
                probs[k]
            );
        }
        println!(
            "  mean local entropy S̄ = {:.4} bits ({} bins, {:?} gray); response concentration = {:.3} in box {:?}",
            stats.entropy, cfg.bins, cfg.gray, stats.concentration, stats.bbox
        );
        if let Some(o) = &args.output {
            let dest = panel_path(o, path, many);
            let rgb_resp = guard.preprocess().response_to_rgb(out.response.view());
            let ent = entropy::local_entropy(stats.gray.view(), cfg.bins);
            let top1 = top_k(&probs, 1)[0];
            let title = format!(
                "{}: {} ({:.2}), mean local entropy {:.3} bits",
                path.file_name()
                    .map(|f| f.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                guard.labels()[top1],
                probs[top1],
                stats.entropy
            );
            let panel = advguard::viz::panel(
                &img,
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
