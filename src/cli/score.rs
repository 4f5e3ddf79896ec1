//! `advguard score`: a folder of photos → one CSV row each (top-1, correctness, S̄).

use super::ModelArgs;
use advguard::engine::detect::{self, Detection};
use advguard::engine::{preprocess::Preprocess, top_k};
use advguard::response;
use anyhow::{Context, bail};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Arguments of `advguard score`.
#[derive(clap::Args)]
pub struct Args {
    /// Folder of photos (JPEG/PNG).
    pub dir: PathBuf,
    /// Labels CSV with columns `file` and `class_index` (extra columns are ignored).
    #[arg(long)]
    pub labels: Option<PathBuf>,
    /// Output CSV: file,class_index,top1,top1_prob,correct,entropy. For a detector:
    /// file,detections,top_class,top_label,top_score,entropy, and every detection in
    /// `<output stem>-detections.csv` (file,rank,class,label,score,x0,y0,x1,y1 in frame pixels).
    #[arg(short, long, default_value = "scores.csv")]
    pub output: PathBuf,
    /// Score only the first N files (sorted by name).
    #[arg(long)]
    pub limit: Option<usize>,
    #[command(flatten)]
    pub model: ModelArgs,
}

/// Reads `file → class_index` from a labels CSV.
pub fn read_labels(path: &Path) -> anyhow::Result<HashMap<String, usize>> {
    let mut rd = csv::Reader::from_path(path)
        .with_context(|| format!("reading labels {}", path.display()))?;
    let headers = rd
        .headers()
        .with_context(|| format!("reading labels {}", path.display()))?
        .clone();
    let col = |name: &str| headers.iter().position(|h| h.trim() == name);
    let (Some(fi), Some(ci)) = (col("file"), col("class_index")) else {
        bail!(
            "labels {}: needs columns `file` and `class_index`, found {:?}",
            path.display(),
            headers.iter().collect::<Vec<_>>()
        );
    };
    let mut out = HashMap::new();
    for (line, rec) in rd.records().enumerate() {
        let rec = rec.with_context(|| format!("labels {} row {}", path.display(), line + 2))?;
        let idx: usize = rec.get(ci).unwrap_or("").trim().parse().with_context(|| {
            format!(
                "labels {} row {}: class_index is not a number",
                path.display(),
                line + 2
            )
        })?;
        out.insert(rec.get(fi).unwrap_or("").trim().to_string(), idx);
    }
    Ok(out)
}

/// Image files in a folder, sorted by name.
pub fn list_images(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let rd = std::fs::read_dir(dir).with_context(|| format!("reading folder {}", dir.display()))?;
    let mut files: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension()
                .map(|e| {
                    matches!(
                        e.to_string_lossy().to_lowercase().as_str(),
                        "jpg" | "jpeg" | "png" | "bmp" | "webp"
                    )
                })
                .unwrap_or(false)
        })
        .collect();
    files.sort();
    if files.is_empty() {
        bail!("{}: no images (jpg, jpeg, png, bmp, webp)", dir.display());
    }
    Ok(files)
}

/// Runs `advguard score`.
pub fn run(args: Args) -> anyhow::Result<()> {
    let labels = args.labels.as_deref().map(read_labels).transpose()?;
    let mut files = list_images(&args.dir)?;
    if let Some(n) = args.limit {
        files.truncate(n);
    }
    if let Some(l) = &labels {
        let missing: Vec<_> = files
            .iter()
            .filter(|p| !l.contains_key(&*p.file_name().unwrap_or_default().to_string_lossy()))
            .take(3)
            .map(|p| p.display().to_string())
            .collect();
        if !missing.is_empty() {
            bail!(
                "labels CSV does not match the folder: no label for {}",
                missing.join(", ")
            );
        }
    }
    let mut guard = args.model.open()?;
    let cfg = args.model.response();
    let detector = detect::is_detector(&guard);
    if detector && labels.is_some() {
        bail!(
            "--labels holds classifier class indices; {} is a detector (its detections are written instead)",
            guard.manifest().name
        );
    }
    let mut w = csv::Writer::from_path(&args.output)
        .with_context(|| format!("writing {}", args.output.display()))?;
    let mut det_csv = if detector {
        let p = detections_path(&args.output);
        let mut d =
            csv::Writer::from_path(&p).with_context(|| format!("writing {}", p.display()))?;
        d.write_record([
            "file", "rank", "class", "label", "score", "x0", "y0", "x1", "y1", "frame_w", "frame_h",
        ])?;
        w.write_record([
            "file",
            "detections",
            "top_class",
            "top_label",
            "top_score",
            "entropy",
        ])?;
        Some((d, p))
    } else {
        w.write_record([
            "file",
            "class_index",
            "top1",
            "top1_prob",
            "correct",
            "entropy",
        ])?;
        None
    };
    let mut n_dets = 0usize;
    let bar = indicatif::ProgressBar::new(files.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} [{elapsed} < {eta}] {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let (mut correct, mut labelled, mut skipped) = (0usize, 0usize, 0usize);
    let mut entropies = Vec::with_capacity(files.len());
    for path in &files {
        let name = path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        bar.inc(1);
        // A bad photo in a big folder is reported and skipped; the rest of the run goes on.
        let img = match guard.preprocess().load_image(path) {
            Ok(i) => i,
            Err(e) => {
                bar.suspend(|| tracing::warn!("{e}; skipped"));
                skipped += 1;
                continue;
            }
        };
        let out = guard.run_pixels(Preprocess::pixels(&img).view())?;
        if let Some((d, _)) = det_csv.as_mut() {
            let (fw, fh) = image::image_dimensions(path)
                .with_context(|| format!("reading the size of {}", path.display()))?;
            let dets = detect::detections(&guard, &out, fw, fh)?;
            let stats = response::analyze(out.response.view(), &cfg);
            entropies.push(stats.entropy);
            n_dets += dets.len();
            bar.suspend(|| tracing::info!("{name}: {}", shown(&dets)));
            write_detections(d, &name, &dets, fw, fh)?;
            let top = dets.first();
            w.write_record([
                name,
                dets.len().to_string(),
                top.map(|t| t.class.to_string()).unwrap_or_default(),
                top.map(|t| t.label.clone()).unwrap_or_default(),
                top.map(|t| format!("{:.6}", t.score)).unwrap_or_default(),
                format!("{:.6}", stats.entropy),
            ])?;
            continue;
        }
        let probs = out.probs();
        let top1 = top_k(&probs, 1)[0];
        let stats = response::analyze(out.response.view(), &cfg);
        entropies.push(stats.entropy);
        let gt = labels.as_ref().and_then(|l| l.get(&name)).copied();
        if let Some(g) = gt {
            labelled += 1;
            correct += usize::from(g == top1);
        }
        w.write_record([
            name,
            gt.map(|g| g.to_string()).unwrap_or_default(),
            top1.to_string(),
            format!("{:.6}", probs[top1]),
            gt.map(|g| u8::from(g == top1).to_string())
                .unwrap_or_default(),
            format!("{:.6}", stats.entropy),
        ])?;
        if labelled > 0 {
            bar.set_message(format!("acc {:.3}", correct as f64 / labelled as f64));
        }
    }
    bar.finish_and_clear();
    w.flush()?;
    println!(
        "scored {} images ({} skipped) with {} on {} -> {}",
        entropies.len(),
        skipped,
        guard.manifest().name,
        guard.backend(),
        args.output.display()
    );
    if let Some((mut d, p)) = det_csv {
        d.flush()?;
        println!("{n_dets} detections -> {}", p.display());
    }
    if labelled > 0 {
        println!(
            "top-1 accuracy: {:.4} ({correct}/{labelled})",
            correct as f64 / labelled as f64
        );
    }
    if !entropies.is_empty() {
        entropies.sort_by(f64::total_cmp);
        let q = |p: f64| entropies[((entropies.len() - 1) as f64 * p).round() as usize];
        let mean = entropies.iter().sum::<f64>() / entropies.len() as f64;
        println!(
            "S̄ (bits, {} bins): mean {mean:.4}  min {:.4}  q25 {:.4}  median {:.4}  q75 {:.4}  max {:.4}",
            cfg.bins,
            q(0.0),
            q(0.25),
            q(0.5),
            q(0.75),
            q(1.0)
        );
    }
    Ok(())
}

/// `scores.csv` → `scores-detections.csv`, beside it.
fn detections_path(output: &Path) -> PathBuf {
    let stem = output
        .file_stem()
        .map_or("scores".into(), |s| s.to_string_lossy().into_owned());
    output.with_file_name(format!("{stem}-detections.csv"))
}

/// The log line of one photo's detections.
fn shown(dets: &[Detection]) -> String {
    if dets.is_empty() {
        return "no detections".into();
    }
    dets.iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join("; ")
}

fn write_detections(
    w: &mut csv::Writer<std::fs::File>,
    file: &str,
    dets: &[Detection],
    fw: u32,
    fh: u32,
) -> anyhow::Result<()> {
    for (rank, d) in dets.iter().enumerate() {
        let mut row = vec![
            file.to_string(),
            (rank + 1).to_string(),
            d.class.to_string(),
            d.label.clone(),
            format!("{:.6}", d.score),
        ];
        row.extend(d.bbox.iter().map(|v| format!("{v:.2}")));
        row.push(fw.to_string());
        row.push(fh.to_string());
        w.write_record(&row)?;
    }
    Ok(())
}
