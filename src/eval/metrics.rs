//! Detection metrics on clean vs adversarial scores (higher = adversarial).
//!
//! A threshold `t` flags a score `s > t`. Thresholds at a false-positive rate are chosen on the
//! clean scores alone: `t` is the (k+1)-th largest clean score with k = ⌊fpr·n⌋, so at most k
//! clean images are flagged even when scores tie.

/// Area under the ROC curve: P(adv > clean) + ½·P(adv = clean) (Mann–Whitney, ties halved).
/// `None` when either set is empty.
pub fn auc(clean: &[f64], adv: &[f64]) -> Option<f64> {
    if clean.is_empty() || adv.is_empty() {
        return None;
    }
    let mut all: Vec<(f64, bool)> = clean
        .iter()
        .map(|&v| (v, false))
        .chain(adv.iter().map(|&v| (v, true)))
        .collect();
    all.sort_by(|a, b| a.0.total_cmp(&b.0));
    // Sum of the adversarial scores' ranks, ties given their mean rank.
    let mut rank_sum = 0f64;
    let mut i = 0;
    while i < all.len() {
        let mut j = i;
        while j + 1 < all.len() && all[j + 1].0 == all[i].0 {
            j += 1;
        }
        let mean_rank = (i + j) as f64 / 2.0 + 1.0;
        rank_sum += mean_rank * all[i..=j].iter().filter(|x| x.1).count() as f64;
        i = j + 1;
    }
    let (n0, n1) = (clean.len() as f64, adv.len() as f64);
    Some((rank_sum - n1 * (n1 + 1.0) / 2.0) / (n0 * n1))
}

/// Threshold that flags at most ⌊fpr·n⌋ of the clean scores (−∞ when that is all of them).
pub fn threshold_at_fpr(clean: &[f64], fpr: f64) -> f64 {
    let mut c = clean.to_vec();
    c.sort_by(|a, b| b.total_cmp(a));
    let k = (fpr.clamp(0.0, 1.0) * c.len() as f64 + 1e-9).floor() as usize;
    if k >= c.len() {
        f64::NEG_INFINITY
    } else {
        c[k]
    }
}

/// Share of `scores` above `t`.
pub fn rate_above(scores: &[f64], t: f64) -> f64 {
    if scores.is_empty() {
        return 0.0;
    }
    scores.iter().filter(|&&s| s > t).count() as f64 / scores.len() as f64
}

/// Detection rate (TPR) at a false-positive rate, with the clean-chosen threshold.
pub fn tpr_at_fpr(clean: &[f64], adv: &[f64], fpr: f64) -> (f64, f64) {
    let t = threshold_at_fpr(clean, fpr);
    (rate_above(adv, t), t)
}

/// Precision and recall of "adversarial" at threshold `t` (clean = negatives, adv = positives).
/// Precision is 1 when nothing is flagged (no false alarms).
pub fn precision_recall(clean: &[f64], adv: &[f64], t: f64) -> (f64, f64) {
    let tp = adv.iter().filter(|&&s| s > t).count() as f64;
    let fp = clean.iter().filter(|&&s| s > t).count() as f64;
    let recall = if adv.is_empty() {
        0.0
    } else {
        tp / adv.len() as f64
    };
    let precision = if tp + fp > 0.0 { tp / (tp + fp) } else { 1.0 };
    (precision, recall)
}

/// ROC curve points (fpr, tpr), from (0, 0) to (1, 1), one point per distinct threshold.
pub fn roc(clean: &[f64], adv: &[f64]) -> Vec<(f64, f64)> {
    let mut th: Vec<f64> = clean.iter().chain(adv).copied().collect();
    th.sort_by(|a, b| b.total_cmp(a));
    th.dedup();
    let mut out = vec![(0.0, 0.0)];
    for t in th {
        // Flag s ≥ t: sweeping down through the distinct scores.
        let f = clean.iter().filter(|&&s| s >= t).count() as f64 / clean.len().max(1) as f64;
        let p = adv.iter().filter(|&&s| s >= t).count() as f64 / adv.len().max(1) as f64;
        out.push((f, p));
    }
    if out.last() != Some(&(1.0, 1.0)) {
        out.push((1.0, 1.0));
    }
    out
}

/// Median of a slice (NaN-free); 0 for an empty slice.
pub fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        0.5 * (s[n / 2 - 1] + s[n / 2])
    }
}

/// Mean of a slice; 0 for an empty slice.
pub fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        0.0
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}
