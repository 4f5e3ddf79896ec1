//! The learned combiner in the evaluation harness: its features in each image's scores, the
//! training rows `advguard fit` reads from a `dev` report, its score on a `val` report, the
//! disjointness check between the two, and the cost of its extra passes in guard frames.

use super::detectors::Scores;
use super::metrics::{median, threshold_at_fpr};
use super::report::{CLEAN, Record};
use super::table::Table;
use crate::detector::combiner::{self, Combiner, FrameContext, Pass};
use crate::engine::{Guard, GuardError};
use ndarray::ArrayView3;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Name of the combiner's row in the tables.
pub const COMBINER: &str = "combiner (logistic, fit on dev)";
/// Key of the primary pass's wall time in [`Scores::pass_ms`].
pub const PRIMARY_MS: &str = "primary guard";

/// Errors of the combiner's evaluation steps.
#[derive(Debug, thiserror::Error)]
pub enum EvalCombinerError {
    /// A photo could not be read for hashing.
    #[error("reading {path}: {source}")]
    Io {
        /// File.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// Evaluated photos were used to fit the combiner.
    #[error(
        "{n} of the evaluated photos were used to fit the combiner (first: {first}); judge it on photos it never saw"
    )]
    Overlap {
        /// How many.
        n: usize,
        /// One of them.
        first: String,
    },
    /// The combiner itself failed.
    #[error(transparent)]
    Combiner(#[from] combiner::CombinerError),
}

/// Adds every combiner feature (and the extra passes' wall times) to an image's scores.
/// `probs`/`response` are the primary guided pass on `px`; `guided` is that same guard.
pub fn insert_features(
    s: &mut Scores,
    px: ArrayView3<f32>,
    probs: &[f32],
    response: ArrayView3<f32>,
    guided: &mut Guard,
    forward: &mut Guard,
) -> Result<(), GuardError> {
    let mut ctx = FrameContext::new(px, probs, response);
    match ctx.run_passes(&[Pass::Median, Pass::BitDepth], guided, forward) {
        Ok(()) => {}
        Err(combiner::CombinerError::Guard(e)) => return Err(e),
        // run_passes fails only in the engine; anything else would be a bug worth seeing.
        Err(e) => unreachable!("combiner passes: {e}"),
    }
    for (k, v) in combiner::features(&ctx).values {
        s.values.entry(k).or_insert(v);
    }
    s.pass_ms.extend(ctx.pass_ms);
    Ok(())
}

/// First 16 hex digits of a file's SHA-256 (content identity, whatever the file is called).
pub fn file_digest(path: &Path) -> Result<String, EvalCombinerError> {
    let bytes = std::fs::read(path).map_err(|source| EvalCombinerError::Io {
        path: path.display().to_string(),
        source,
    })?;
    Ok(hex::encode(&Sha256::digest(&bytes)[..8]))
}

/// Training rows from a report's records: clean, correctly classified photos (negatives) and
/// successful adversarials of `attacks` (positives; all attacks when empty) that carry every
/// feature in `names`. Returns (rows, labels, files used).
pub fn training_rows(
    records: &[Record],
    names: &[String],
    attacks: &[String],
) -> (Vec<Vec<f64>>, Vec<bool>, BTreeSet<String>) {
    let (mut x, mut y, mut files) = (vec![], vec![], BTreeSet::new());
    for r in records {
        let pos = if r.attack == CLEAN {
            if !r.correct {
                continue;
            }
            false
        } else {
            if !r.success || !(attacks.is_empty() || attacks.contains(&r.attack)) {
                continue;
            }
            true
        };
        let Some(s) = &r.scores else { continue };
        let row: Option<Vec<f64>> = names.iter().map(|n| s.values.get(n).copied()).collect();
        if let Some(row) = row.filter(|r| r.iter().all(|v| v.is_finite())) {
            x.push(row);
            y.push(pos);
            files.insert(r.file.clone());
        }
    }
    (x, y, files)
}

/// The combiner's logit on the training clean rows at 1 % FPR.
pub fn clean_threshold(c: &Combiner, x: &[Vec<f64>], y: &[bool]) -> f64 {
    let clean: Vec<f64> = x
        .iter()
        .zip(y)
        .filter(|(_, p)| !**p)
        .filter_map(|(r, _)| {
            let f = combiner::Features {
                values: c.features.iter().cloned().zip(r.iter().copied()).collect(),
            };
            c.score(&f).ok().map(|s| s.0)
        })
        .collect();
    threshold_at_fpr(&clean, 0.01)
}

/// Refuses an evaluation whose photos (by content) were used to fit `c`.
pub fn check_disjoint<'a>(
    c: &Combiner,
    photos: impl Iterator<Item = &'a Path>,
) -> Result<usize, EvalCombinerError> {
    let train: BTreeSet<&str> = c.fit.train_sha256.iter().map(String::as_str).collect();
    let (mut n, mut seen, mut first) = (0, 0, String::new());
    for p in photos {
        seen += 1;
        if train.contains(file_digest(p)?.as_str()) {
            if n == 0 {
                first = p.display().to_string();
            }
            n += 1;
        }
    }
    if n > 0 {
        return Err(EvalCombinerError::Overlap { n, first });
    }
    Ok(seen)
}

/// Adds the combiner's logit as the [`COMBINER`] detector to every record that has its features.
/// Returns how many records got it.
pub fn add_scores(records: &mut [Record], c: &Combiner) -> usize {
    let mut n = 0;
    for r in records.iter_mut() {
        let Some(s) = r.scores.as_mut() else { continue };
        let f = combiner::Features {
            values: s.values.clone(),
        };
        if let Ok((logit, _)) = c.score(&f) {
            s.values.insert(COMBINER.to_string(), logit);
            n += 1;
        }
    }
    n
}

/// Median wall time of each pass over the scored records, and its cost in primary guard frames.
pub fn pass_costs(records: &[Record]) -> Table {
    let mut by: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for s in records.iter().filter_map(|r| r.scores.as_ref()) {
        for (k, v) in &s.pass_ms {
            by.entry(k.clone()).or_default().push(*v);
        }
    }
    let prim = by.get(PRIMARY_MS).map(|v| median(v)).unwrap_or(f64::NAN);
    let mut t = Table::new(&["pass", "median ms", "guard frames", "n"]);
    for (k, v) in &by {
        let m = median(v);
        t.rows.push(vec![
            k.clone(),
            format!("{m:.1}"),
            format!("{:.2}", m / prim),
            v.len().to_string(),
        ]);
    }
    t
}

fn scores_of<'a>(recs: impl Iterator<Item = &'a Record>, det: &str) -> Vec<f64> {
    recs.filter_map(|r| r.scores.as_ref()?.values.get(det).copied())
        .filter(|v| v.is_finite())
        .collect()
}

fn cell(clean: &[f64], adv: &[f64]) -> String {
    use super::metrics::{auc, tpr_at_fpr};
    match auc(clean, adv) {
        Some(a) => format!(
            "{a:.3} / {:.3} / {:.3}",
            tpr_at_fpr(clean, adv, 0.01).0,
            tpr_at_fpr(clean, adv, 0.05).0
        ),
        None => "–".into(),
    }
}

/// The combiner report: rows = detectors (the paper's S̄, each single feature, the combiner),
/// columns = attacks, cells = AUC / detection at 1 % / at 5 % FPR (clean-chosen thresholds);
/// then the adaptive attacker against plain PGD, and the cost of each pass in guard frames.
pub fn report_md(records: &[Record], attacks: &[String]) -> String {
    use std::fmt::Write as _;
    let clean: Vec<&Record> = records
        .iter()
        .filter(|r| r.attack == CLEAN && r.correct)
        .collect();
    let mut dets: Vec<String> = vec![super::detectors::PAPER.to_string()];
    for f in combiner::feature_names() {
        if f != super::detectors::PAPER {
            dets.push(f.to_string());
        }
    }
    dets.push(COMBINER.to_string());
    let mut h: Vec<String> = vec!["detector".into()];
    for a in attacks {
        let n = records
            .iter()
            .filter(|r| &r.attack == a && r.success && r.scores.is_some())
            .count();
        h.push(format!("{a} (n={n}) AUC / @1% / @5%"));
    }
    let mut t = Table {
        headers: h,
        rows: vec![],
    };
    for d in &dets {
        let cs = scores_of(clean.iter().copied(), d);
        if cs.is_empty() {
            continue;
        }
        let mut row = vec![d.clone()];
        for a in attacks {
            let adv = scores_of(records.iter().filter(|r| &r.attack == a && r.success), d);
            row.push(cell(&cs, &adv));
        }
        t.rows.push(row);
    }
    let mut md = String::new();
    let _ = writeln!(
        md,
        "# Learned combiner\n\nClean photos: {} correctly classified. Cells: AUC / detection at 1 % FPR / at 5 % FPR, thresholds from the clean scores only; failed attacks left out.\n\n{}",
        clean.len(),
        t.to_markdown()
    );
    if attacks.iter().any(|a| a == "adaptive-pgd") {
        let mut ta = Table::new(&["attack", "images", "success", "combiner AUC / @1% / @5%"]);
        let cs = scores_of(clean.iter().copied(), COMBINER);
        for a in ["pgd", "adaptive-pgd"] {
            let all: Vec<&Record> = records.iter().filter(|r| r.attack == a).collect();
            if all.is_empty() {
                continue;
            }
            let ok = all.iter().filter(|r| r.success).count();
            let adv = scores_of(all.iter().copied().filter(|r| r.success), COMBINER);
            ta.rows.push(vec![
                a.to_string(),
                all.len().to_string(),
                format!("{:.3}", ok as f64 / all.len() as f64),
                cell(&cs, &adv),
            ]);
        }
        let _ = writeln!(md, "## Adaptive attacker\n\n{}", ta.to_markdown());
    }
    let _ = writeln!(
        md,
        "## Cost per image (median wall time; guard frames = multiples of the primary guided pass)\n\n{}",
        pass_costs(records).to_markdown()
    );
    md
}
