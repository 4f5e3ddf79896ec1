//! The paper's tables as Markdown and CSV.
//!
//! Table 1: per attack, the images attacked (and wall time), success rate, mean ground-truth and
//! target confidence after the attack, detection rate at 1/5/10% FPR, plus AUC. Table 2: per
//! detector, recall/precision at the clean-chosen threshold and AUC, averaged over attacks.

use std::fmt::Write as _;

/// A plain table of strings.
#[derive(Debug, Clone, Default)]
pub struct Table {
    /// Column names.
    pub headers: Vec<String>,
    /// Rows, each as long as `headers`.
    pub rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these columns.
    pub fn new(headers: &[&str]) -> Table {
        Table {
            headers: headers.iter().map(|s| s.to_string()).collect(),
            rows: vec![],
        }
    }

    /// GitHub-flavoured Markdown.
    pub fn to_markdown(&self) -> String {
        let mut s = String::new();
        let esc = |c: &str| c.replace('|', "\\|");
        let _ = writeln!(
            s,
            "| {} |",
            self.headers
                .iter()
                .map(|h| esc(h))
                .collect::<Vec<_>>()
                .join(" | ")
        );
        let _ = writeln!(s, "|{}", "---|".repeat(self.headers.len()));
        for r in &self.rows {
            let _ = writeln!(
                s,
                "| {} |",
                r.iter().map(|c| esc(c)).collect::<Vec<_>>().join(" | ")
            );
        }
        s
    }

    /// CSV (RFC 4180 quoting).
    pub fn to_csv(&self) -> String {
        let q = |c: &str| {
            if c.contains([',', '"', '\n']) {
                format!("\"{}\"", c.replace('"', "\"\""))
            } else {
                c.to_string()
            }
        };
        let mut s = String::new();
        for r in std::iter::once(&self.headers).chain(&self.rows) {
            let _ = writeln!(
                s,
                "{}",
                r.iter().map(|c| q(c)).collect::<Vec<_>>().join(",")
            );
        }
        s
    }
}

/// One attack's row of Table 1.
#[derive(Debug, Clone)]
pub struct AttackRow {
    /// Attack name.
    pub attack: String,
    /// Correctly classified images attacked.
    pub images: usize,
    /// Wall time of the attack over all images (seconds, summed over workers).
    pub seconds: f64,
    /// Successful (8-bit) attacks / images.
    pub success: f64,
    /// Share of float successes that survive 8-bit rounding.
    pub survives_quantisation: f64,
    /// Mean ground-truth confidence on successful adversarials.
    pub gt_conf: f64,
    /// Mean target (new top-1) confidence on successful adversarials.
    pub target_conf: f64,
    /// Median L2 and L∞ of successful adversarials, pixel units.
    pub median_l2: f64,
    /// Median L∞.
    pub median_linf: f64,
    /// Detection rate at 1%, 5%, 10% FPR for the row's detector.
    pub det: [f64; 3],
    /// AUC for the row's detector.
    pub auc: f64,
}

fn f3(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.3}")
    } else {
        "–".into()
    }
}

/// Table 1 for one detector.
pub fn table1(rows: &[AttackRow]) -> Table {
    let mut t = Table::new(&[
        "attack",
        "#images (time)",
        "success",
        "survives 8-bit",
        "gt conf",
        "target conf",
        "median L2 / L∞",
        "FPR 1%",
        "FPR 5%",
        "FPR 10%",
        "AUC",
    ]);
    for r in rows {
        t.rows.push(vec![
            r.attack.clone(),
            format!("{} ({:.0} s)", r.images, r.seconds),
            f3(r.success),
            f3(r.survives_quantisation),
            f3(r.gt_conf),
            f3(r.target_conf),
            format!("{:.1} / {:.0}", r.median_l2, r.median_linf),
            f3(r.det[0]),
            f3(r.det[1]),
            f3(r.det[2]),
            f3(r.auc),
        ]);
    }
    t
}

/// One detector's results on every attack (same order as the attack list).
#[derive(Debug, Clone)]
pub struct DetectorRow {
    /// Detector variant name.
    pub detector: String,
    /// Per attack: (AUC, detection at 1% FPR).
    pub per_attack: Vec<(f64, f64)>,
    /// Recall, precision at the clean-chosen threshold, averaged over attacks.
    pub recall: f64,
    /// Precision (see `recall`).
    pub precision: f64,
    /// Mean AUC over attacks.
    pub auc: f64,
}

/// Detectors side by side: AUC / detection at 1% FPR for each attack.
pub fn detectors_by_attack(attacks: &[String], rows: &[DetectorRow]) -> Table {
    let mut h: Vec<String> = vec!["detector".into()];
    h.extend(attacks.iter().map(|a| format!("{a} AUC / @1%")));
    h.push("mean AUC".into());
    let mut t = Table {
        headers: h,
        rows: vec![],
    };
    for r in rows {
        let mut row = vec![r.detector.clone()];
        row.extend(
            r.per_attack
                .iter()
                .map(|(a, d)| format!("{} / {}", f3(*a), f3(*d))),
        );
        row.push(f3(r.auc));
        t.rows.push(row);
    }
    t
}

/// Table 2: recall, precision and AUC per detector, averaged over attacks.
pub fn table2(rows: &[DetectorRow], fpr: f64) -> Table {
    let mut t = Table::new(&[
        "detector",
        &format!("recall (clean FPR {:.0}%)", fpr * 100.0),
        "precision",
        "AUC",
    ]);
    for r in rows {
        t.rows.push(vec![
            r.detector.clone(),
            f3(r.recall),
            f3(r.precision),
            f3(r.auc),
        ]);
    }
    t
}
