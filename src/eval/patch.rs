//! The patch evaluation: names of the patch attacks and sticker controls, the per-model table
//! (rows = detector, columns = patch attack: AUC, detection at 1 % and 5 % FPR, localisation
//! IoU), the stickers' alarm rate, and the statistic the adaptive attacker pushes down.
//!
//! Thresholds come from the clean photos only. A patch column judges the successful patched
//! photos; a sticker column judges every stickered photo (a sticker is a control, not an
//! attack: its number is the share that would raise an alarm).

use super::metrics::{auc, mean, rate_above, threshold_at_fpr};
use super::report::{CLEAN, Record};
use super::table::Table;
use crate::engine::Guard;
use crate::response::{gray, region};
use ndarray::ArrayView3;

/// Name of the targeted patch attack at `area` percent.
pub fn targeted(area: f32) -> String {
    format!("patch-{area}%")
}
/// Name of the untargeted patch attack.
pub fn untargeted(area: f32) -> String {
    format!("patch-untargeted-{area}%")
}
/// Name of the adaptive (detector-aware) patch attack.
pub fn adaptive(area: f32) -> String {
    format!("patch-adaptive-{area}%")
}
/// Name of the random-noise sticker control.
pub fn noise_sticker(area: f32) -> String {
    format!("sticker-noise-{area}%")
}
/// Name of the real-photo-crop sticker control.
pub fn photo_sticker(area: f32) -> String {
    format!("sticker-photo-{area}%")
}

/// Whether an attack name is a sticker control (every pasted photo is scored and judged).
pub fn is_sticker(name: &str) -> bool {
    name.starts_with("sticker-")
}

/// Whether an attack name pastes something (patch or sticker), so it has a box to localise.
pub fn is_pasted(name: &str) -> bool {
    name.starts_with("patch") || is_sticker(name)
}

/// The fused detector's patch score of one image (H×W×3 at the model's size): the share of
/// Σ|response| in the best `window`² box times the texture gate of that box at the default
/// floor. The statistic the adaptive attacker is given (one guard call), so it may lower the
/// concentration or smooth the box.
pub fn patch_score(
    guard: &mut Guard,
    px: ArrayView3<f32>,
    window: usize,
) -> Result<f64, crate::engine::GuardError> {
    let out = guard.run_pixels(px)?;
    let mag = gray::magnitude(out.response.view());
    let (c, bbox) = region::best_window_share(mag.view(), window);
    let (mh, mw) = mag.dim();
    Ok(crate::response::texture::gated_score(
        c,
        px,
        bbox,
        (mw as u32, mh as u32),
        Some(crate::detector::fused::DEFAULT_PATCH_TEXTURE),
    ))
}

/// One cell of the patch table.
#[derive(Debug, Clone, Copy, Default)]
pub struct Cell {
    /// AUC clean vs judged photos.
    pub auc: f64,
    /// Detection (alarm, for stickers) rate at the clean 1 % FPR threshold.
    pub det1: f64,
    /// The same at 5 %.
    pub det5: f64,
    /// Mean IoU of the statistic's box with the pasted box (NaN when it has none).
    pub iou: f64,
    /// Photos judged.
    pub n: usize,
}

/// The judged photos of one attack: successful patches; every sticker.
fn judged<'a>(records: &'a [Record], attack: &'a str) -> impl Iterator<Item = &'a Record> + 'a {
    records
        .iter()
        .filter(move |r| r.attack == attack && (r.success || is_sticker(attack)))
        .filter(|r| r.scores.is_some())
}

/// The cell of one detector on one attack.
pub fn cell(records: &[Record], attack: &str, detector: &str) -> Cell {
    let val = |r: &Record| {
        r.scores
            .as_ref()
            .and_then(|s| s.values.get(detector))
            .copied()
    };
    let clean: Vec<f64> = records
        .iter()
        .filter(|r| r.attack == CLEAN && r.correct)
        .filter_map(val)
        .collect();
    let adv: Vec<f64> = judged(records, attack).filter_map(val).collect();
    let ious: Vec<f64> = judged(records, attack)
        .filter_map(|r| {
            let b = *r.scores.as_ref()?.boxes.get(detector)?;
            Some(region::iou(b, r.patch_box?))
        })
        .collect();
    Cell {
        auc: auc(&clean, &adv).unwrap_or(f64::NAN),
        det1: rate_above(&adv, threshold_at_fpr(&clean, 0.01)),
        det5: rate_above(&adv, threshold_at_fpr(&clean, 0.05)),
        iou: if ious.is_empty() {
            f64::NAN
        } else {
            mean(&ious)
        },
        n: adv.len(),
    }
}

fn f3(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.3}")
    } else {
        "–".into()
    }
}

/// Rows = detector, columns = pasted attacks; each cell "AUC / @1% / @5% / IoU (n)".
pub fn table(records: &[Record], attacks: &[String], detectors: &[String]) -> Table {
    let pasted: Vec<&String> = attacks.iter().filter(|a| is_pasted(a)).collect();
    let mut h = vec!["detector".to_string()];
    h.extend(pasted.iter().map(|a| {
        if is_sticker(a) {
            format!("{a} AUC / alarm @1% / @5% / IoU (n)")
        } else {
            format!("{a} AUC / @1% / @5% / IoU (n)")
        }
    }));
    let hr: Vec<&str> = h.iter().map(String::as_str).collect();
    let mut t = Table::new(&hr);
    for d in detectors {
        let mut row = vec![d.clone()];
        for a in &pasted {
            let c = cell(records, a, d);
            row.push(format!(
                "{} / {} / {} / {} ({})",
                f3(c.auc),
                f3(c.det1),
                f3(c.det5),
                f3(c.iou),
                c.n
            ));
        }
        t.rows.push(row);
    }
    t
}

/// The same numbers as a long CSV: detector, attack, auc, det_fpr1, det_fpr5, iou, n.
pub fn table_csv(records: &[Record], attacks: &[String], detectors: &[String]) -> Table {
    let mut t = Table::new(&[
        "detector", "attack", "auc", "det_fpr1", "det_fpr5", "iou", "n",
    ]);
    for d in detectors {
        for a in attacks.iter().filter(|a| is_pasted(a)) {
            let c = cell(records, a, d);
            t.rows.push(vec![
                d.clone(),
                a.clone(),
                format!("{:.4}", c.auc),
                format!("{:.4}", c.det1),
                format!("{:.4}", c.det5),
                format!("{:.4}", c.iou),
                c.n.to_string(),
            ]);
        }
    }
    t
}

/// Success of each pasted attack on the evaluated photos: (attack, attacked, succeeded).
pub fn success(records: &[Record], attacks: &[String]) -> Vec<(String, usize, usize)> {
    attacks
        .iter()
        .filter(|a| is_pasted(a))
        .map(|a| {
            let all: Vec<&Record> = records.iter().filter(|r| &r.attack == a).collect();
            (
                a.clone(),
                all.len(),
                all.iter().filter(|r| r.success).count(),
            )
        })
        .collect()
}
