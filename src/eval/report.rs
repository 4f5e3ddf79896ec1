//! Per-image records (the resumable cache of `advguard eval`) → tables and plots.

use super::detectors::{CONCENTRATION, MULTISCALE, PAPER, Scores};
use super::metrics::{auc, mean, median, precision_recall, roc, threshold_at_fpr, tpr_at_fpr};
use super::plots::{PlotError, hist_plot, roc_plot};
use super::table::{AttackRow, DetectorRow, Table, detectors_by_attack, table1, table2};
use crate::response::region::iou;
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use std::path::Path;

/// Attack name of the clean records.
pub const CLEAN: &str = "clean";

/// One image under one attack (or clean), as cached in `records.jsonl`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    /// Image file name.
    pub file: String,
    /// Attack name, or `clean`.
    pub attack: String,
    /// Ground-truth class.
    pub label: usize,
    /// Clean records: top-1 is the label. Attack records: always true (only those are attacked).
    pub correct: bool,
    /// The 8-bit adversarial fools the model.
    pub success: bool,
    /// The float adversarial did.
    pub float_success: bool,
    /// The float adversarial, simply rounded to 8 bits, still fooled the model.
    #[serde(default)]
    pub survives_quantisation: bool,
    /// Label probability after the attack.
    pub gt_conf: f32,
    /// New top-1 (or the target).
    pub target_class: usize,
    /// Its probability.
    pub target_conf: f32,
    /// L2 distance, pixel units.
    pub l2: f32,
    /// L∞ distance, pixel units.
    pub linf: f32,
    /// Attack iterations.
    pub iterations: u32,
    /// Attack wall time, seconds.
    pub seconds: f64,
    /// Forward-only engine calls of the attack.
    pub forward_calls: u64,
    /// Gradient engine calls of the attack.
    pub gradient_calls: u64,
    /// Patch box, for patch attacks.
    pub patch_box: Option<[u32; 4]>,
    /// Detector scores (clean images, and successful adversarials only).
    pub scores: Option<Scores>,
}

fn slug(s: &str) -> String {
    let mut o = String::new();
    for c in s.chars() {
        if c.is_ascii_alphanumeric() {
            o.push(c.to_ascii_lowercase());
        } else if !o.ends_with('-') {
            o.push('-');
        }
    }
    o.trim_matches('-').to_string()
}

fn values<'a>(recs: impl Iterator<Item = &'a Record>, det: &str) -> Vec<f64> {
    recs.filter_map(|r| r.scores.as_ref()?.values.get(det).copied())
        .filter(|v| v.is_finite())
        .collect()
}

fn by_attack<'a>(records: &'a [Record], a: &'a str) -> impl Iterator<Item = &'a Record> + 'a {
    records.iter().filter(move |r| r.attack == a)
}

/// What `build` produces, ready to be written.
pub struct Report {
    /// table1.md
    pub table1_md: String,
    /// table1.csv (every detector × attack)
    pub table1_csv: String,
    /// table2.md
    pub table2_md: String,
    /// table2.csv
    pub table2_csv: String,
    /// (detector, AUC per attack, mean AUC), for logs and tests.
    pub summary: Vec<DetectorRow>,
}

/// Builds the tables from records. `attacks` gives the row order; `detectors` (substrings)
/// restricts the variants shown (empty = all); `fpr` is Table 2's clean false-positive rate.
/// `extra_seconds` adds one-off costs (patch training) to an attack's wall time.
pub fn build(
    records: &[Record],
    attacks: &[String],
    detectors: &[String],
    fpr: f64,
    extra_seconds: &dyn Fn(&str) -> f64,
) -> Report {
    let clean: Vec<&Record> = records
        .iter()
        .filter(|r| r.attack == CLEAN && r.correct)
        .collect();
    let n_clean_all = records.iter().filter(|r| r.attack == CLEAN).count();
    let mut dets: Vec<String> = clean
        .iter()
        .filter_map(|r| r.scores.as_ref())
        .flat_map(|s| s.values.keys().cloned())
        .collect();
    dets.sort();
    dets.dedup();
    if !detectors.is_empty() {
        dets.retain(|d| detectors.iter().any(|f| d.contains(f.as_str())));
    }
    // The paper's detector first, then the patch statistic, then the rest.
    dets.sort_by_key(|d| (d != PAPER, d != CONCENTRATION, d != MULTISCALE, d.clone()));
    let mut csv = Table::new(&[
        "detector",
        "attack",
        "images",
        "seconds",
        "success",
        "survives_quantisation",
        "gt_conf",
        "target_conf",
        "median_l2",
        "median_linf",
        "det_fpr1",
        "det_fpr5",
        "det_fpr10",
        "auc",
        "n_clean",
        "n_adv",
    ]);
    let mut md = String::new();
    let _ = writeln!(
        md,
        "# Table 1: attacks and detection\n\nClean images: {} ({} correctly classified and attacked). \
         Thresholds are chosen on the clean scores only; failed attacks are left out of the \
         adversarial set. Wall time is the attack's own time summed over images (patch: plus training).\n",
        n_clean_all,
        clean.len()
    );
    let mut summary = vec![];
    let mut rows_by_det: Vec<(String, Vec<AttackRow>)> = vec![];
    for d in &dets {
        let cs = values(clean.iter().copied(), d);
        let mut rows = vec![];
        let mut per = vec![];
        let (mut rec_s, mut prec_s) = (vec![], vec![]);
        for a in attacks {
            let all: Vec<&Record> = by_attack(records, a).collect();
            let ok: Vec<&Record> = all.iter().copied().filter(|r| r.success).collect();
            let fl = all.iter().filter(|r| r.float_success).count();
            let adv = values(ok.iter().copied(), d);
            let det = [0.01, 0.05, 0.10].map(|f| tpr_at_fpr(&cs, &adv, f).0);
            let au = auc(&cs, &adv).unwrap_or(f64::NAN);
            let t = threshold_at_fpr(&cs, fpr);
            let (p, r) = precision_recall(&cs, &adv, t);
            if !adv.is_empty() {
                rec_s.push(r);
                prec_s.push(p);
            }
            per.push((au, det[0]));
            let row = AttackRow {
                attack: a.clone(),
                images: all.len(),
                seconds: all.iter().map(|r| r.seconds).sum::<f64>() + extra_seconds(a),
                success: ok.len() as f64 / all.len().max(1) as f64,
                survives_quantisation: all
                    .iter()
                    .filter(|r| r.float_success && r.survives_quantisation)
                    .count() as f64
                    / fl.max(1) as f64,
                gt_conf: mean(&ok.iter().map(|r| r.gt_conf as f64).collect::<Vec<_>>()),
                target_conf: mean(&ok.iter().map(|r| r.target_conf as f64).collect::<Vec<_>>()),
                median_l2: median(&ok.iter().map(|r| r.l2 as f64).collect::<Vec<_>>()),
                median_linf: median(&ok.iter().map(|r| r.linf as f64).collect::<Vec<_>>()),
                det,
                auc: au,
            };
            csv.rows.push(vec![
                d.clone(),
                a.clone(),
                row.images.to_string(),
                format!("{:.1}", row.seconds),
                format!("{:.4}", row.success),
                format!("{:.4}", row.survives_quantisation),
                format!("{:.4}", row.gt_conf),
                format!("{:.4}", row.target_conf),
                format!("{:.2}", row.median_l2),
                format!("{:.2}", row.median_linf),
                format!("{:.4}", det[0]),
                format!("{:.4}", det[1]),
                format!("{:.4}", det[2]),
                format!("{au:.4}"),
                cs.len().to_string(),
                adv.len().to_string(),
            ]);
            rows.push(row);
        }
        let aucs: Vec<f64> = per.iter().map(|p| p.0).filter(|v| v.is_finite()).collect();
        summary.push(DetectorRow {
            detector: d.clone(),
            per_attack: per,
            recall: mean(&rec_s),
            precision: mean(&prec_s),
            auc: mean(&aucs),
        });
        rows_by_det.push((d.clone(), rows));
    }
    for (d, rows) in rows_by_det
        .iter()
        .filter(|(d, _)| d == PAPER || d == CONCENTRATION || d == MULTISCALE)
    {
        let _ = writeln!(md, "## Detector: {d}\n\n{}", table1(rows).to_markdown());
    }
    let _ = writeln!(
        md,
        "## All detector variants: AUC / detection rate at 1% FPR\n\n{}",
        detectors_by_attack(attacks, &summary).to_markdown()
    );
    // Patch localisation: the statistic's box against the pasted patch.
    let mut loc = Table::new(&["attack", "statistic", "mean IoU", "IoU ≥ 0.5", "n"]);
    for a in attacks.iter().filter(|a| a.starts_with("patch")) {
        for key in [
            CONCENTRATION.to_string(),
            MULTISCALE.to_string(),
            "block-max entropy guided last-conv signed/16".to_string(),
            "concentration plain last-conv".to_string(),
        ] {
            let ious: Vec<f64> = by_attack(records, a)
                .filter(|r| r.success)
                .filter_map(|r| Some(iou(*r.scores.as_ref()?.boxes.get(&key)?, r.patch_box?)))
                .collect();
            if ious.is_empty() {
                continue;
            }
            let hit = ious.iter().filter(|v| **v >= 0.5).count() as f64 / ious.len() as f64;
            loc.rows.push(vec![
                a.clone(),
                key,
                format!("{:.3}", mean(&ious)),
                format!("{hit:.3}"),
                ious.len().to_string(),
            ]);
        }
    }
    if !loc.rows.is_empty() {
        let _ = writeln!(md, "## Patch localisation\n\n{}", loc.to_markdown());
    }
    let t2 = table2(&summary, fpr);
    let table2_md = format!(
        "# Table 2: recall / precision at the clean-chosen threshold (clean FPR {:.0}%), mean over attacks\n\n{}",
        fpr * 100.0,
        t2.to_markdown()
    );
    Report {
        table1_md: md,
        table1_csv: csv.to_csv(),
        table2_md,
        table2_csv: t2.to_csv(),
        summary,
    }
}

/// ROC curves (one per attack) and clean-vs-adversarial histograms for the key detectors.
pub fn plots(dir: &Path, records: &[Record], attacks: &[String]) -> Result<(), PlotError> {
    let clean: Vec<&Record> = records
        .iter()
        .filter(|r| r.attack == CLEAN && r.correct)
        .collect();
    for d in [PAPER, CONCENTRATION, MULTISCALE] {
        let cs = values(clean.iter().copied(), d);
        let mut curves = vec![];
        for a in attacks {
            let adv = values(records.iter().filter(|r| &r.attack == a && r.success), d);
            if adv.is_empty() || cs.is_empty() {
                continue;
            }
            let au = auc(&cs, &adv).unwrap_or(f64::NAN);
            curves.push((format!("{a} (AUC {au:.3})"), roc(&cs, &adv)));
            hist_plot(
                &dir.join(format!("hist_{}_{}", slug(d), slug(a))),
                &format!("{a}: {d}"),
                d,
                &cs,
                &adv,
            )?;
        }
        roc_plot(&dir.join(format!("roc_{}", slug(d))), d, &curves)?;
    }
    Ok(())
}
