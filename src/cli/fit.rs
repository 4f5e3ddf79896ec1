//! `advguard fit`: fits the learned combiner on a `dev` evaluation report and stores it in a
//! profile. The report must come from `advguard eval --combiner-features` on `dev` photos; the
//! combiner is then judged with `advguard eval --combiner PROFILE` on `val` photos it never saw.

use super::attack::labelled_images;
use advguard::detector::Profile;
use advguard::detector::combiner::{self, Combiner, Pass};
use advguard::eval::combiner::{clean_threshold, file_digest, training_rows};
use advguard::eval::report::Record;
use anyhow::{Context, bail};
use std::io::BufRead;
use std::path::{Path, PathBuf};

/// Arguments of `advguard fit`.
#[derive(clap::Args)]
pub struct Args {
    /// Report folder of `advguard eval --combiner-features` on the training photos.
    #[arg(long)]
    pub report: PathBuf,
    /// The photos that report was made from (their content hashes go into the profile).
    #[arg(long)]
    pub images: PathBuf,
    /// Labels CSV of those photos.
    #[arg(long)]
    pub labels: PathBuf,
    /// Profile to write the combiner into (created, or updated in place).
    #[arg(long)]
    pub profile: PathBuf,
    /// Model (manifest name) the report was made with; the combiner is stored under it.
    #[arg(long = "model-name", default_value = advguard::engine::manifest::DEFAULT_MODEL)]
    pub model_name: String,
    /// Passes whose features are used: primary (free), median (one guard frame), bit-depth
    /// (one forward); or explicit feature names.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "primary,median,bit-depth"
    )]
    pub features: Vec<String>,
    /// Attacks whose successful adversarials are the positives (default: all in the report).
    #[arg(long, value_delimiter = ',')]
    pub attacks: Vec<String>,
    /// L2 penalty on the standardised weights.
    #[arg(long, default_value_t = 0.01)]
    pub l2: f64,
}

/// Feature names from `--features`: pass names expand to their features.
fn feature_list(items: &[String]) -> anyhow::Result<Vec<String>> {
    let mut out: Vec<String> = vec![];
    for it in items {
        let pass = match it.trim() {
            "primary" => Some(Pass::Primary),
            "median" => Some(Pass::Median),
            "bit-depth" => Some(Pass::BitDepth),
            _ => None,
        };
        let add = match pass {
            Some(p) => combiner::features_of(&[p]),
            None => {
                combiner::pass_of(it.trim())?;
                vec![it.trim().to_string()]
            }
        };
        for a in add {
            if !out.contains(&a) {
                out.push(a);
            }
        }
    }
    if out.is_empty() {
        bail!("--features is empty");
    }
    Ok(out)
}

fn read_records(p: &Path) -> anyhow::Result<Vec<Record>> {
    let f = std::fs::File::open(p).with_context(|| format!("opening {}", p.display()))?;
    let mut out = vec![];
    for line in std::io::BufReader::new(f).lines() {
        let line = line.with_context(|| format!("reading {}", p.display()))?;
        // A torn last line of an interrupted eval is skipped, as eval itself does.
        if let Ok(r) = serde_json::from_str::<Record>(&line) {
            out.push(r);
        }
    }
    Ok(out)
}

/// Runs `advguard fit`.
pub fn run(args: Args) -> anyhow::Result<()> {
    let names = feature_list(&args.features)?;
    let records = read_records(&args.report.join("records.jsonl"))?;
    let (x, y, files) = training_rows(&records, &names, &args.attacks);
    let n1 = y.iter().filter(|v| **v).count();
    if x.is_empty() {
        bail!(
            "{} has no record with all of the features {:?}: run `advguard eval --combiner-features` first",
            args.report.display(),
            names
        );
    }
    let mut c = Combiner::fit(&names, &x, &y, args.l2)?;
    let photos = labelled_images(&args.images, &args.labels)?;
    let mut digests = vec![];
    for l in photos.iter().filter(|l| files.contains(&l.name)) {
        digests.push(file_digest(&l.path)?);
    }
    if digests.len() != files.len() {
        bail!(
            "{} of the report's {} photos are not in {}: --images must be the folder the report was made from",
            files.len() - digests.len(),
            files.len(),
            args.images.display()
        );
    }
    digests.sort();
    digests.dedup();
    let mut attacks: Vec<String> = records
        .iter()
        .filter(|r| r.attack != advguard::eval::report::CLEAN && r.success)
        .filter(|r| args.attacks.is_empty() || args.attacks.contains(&r.attack))
        .map(|r| r.attack.clone())
        .collect();
    attacks.sort();
    attacks.dedup();
    c.fit.threshold_fpr1 = clean_threshold(&c, &x, &y);
    c.fit.source = args.report.display().to_string();
    c.fit.attacks = attacks;
    c.fit.train_sha256 = digests;
    let mut profile = if args.profile.exists() {
        Profile::load(&args.profile)?
    } else {
        Profile::default()
    };
    println!(
        "combiner for {}: {} clean + {} adversarial rows from {} photos; passes {:?}",
        args.model_name,
        x.len() - n1,
        n1,
        files.len(),
        c.passes().iter().map(|p| p.name()).collect::<Vec<_>>()
    );
    println!(
        "  {:<45} {:>10} {:>10} {:>10}",
        "feature", "weight", "mean", "scale"
    );
    for i in 0..c.features.len() {
        println!(
            "  {:<45} {:>10.4} {:>10.4} {:>10.4}",
            c.features[i], c.weights[i], c.mean[i], c.scale[i]
        );
    }
    println!(
        "  bias {:.4}; logit threshold at 1 % FPR on these clean photos: {:.4}",
        c.bias, c.fit.threshold_fpr1
    );
    profile.set_combiner(&args.model_name, c);
    profile.save(&args.profile)?;
    println!("written to {}", args.profile.display());
    Ok(())
}
