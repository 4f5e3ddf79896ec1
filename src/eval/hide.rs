//! Judging the person-hiding patch on photos: how many persons it hides (against natural
//! stickers pasted the same way), and whether the guard's response statistics flag the pasted
//! photos, with thresholds from clean photos of the training split only.

use super::metrics::{auc, median, rate_above, threshold_at_fpr};
use crate::eval::detectors::SCAN_WINDOWS;
use crate::response::{self, GrayMode, ResponseConfig, gray, region};
use ndarray::ArrayView3;
use serde::{Deserialize, Serialize};

/// What is pasted on the persons of a test photo.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Pasted {
    /// Nothing (the clean photo).
    Clean,
    /// The trained hiding patch.
    Patch,
    /// Uniform 8-bit noise of the patch's size: a natural control.
    Noise,
    /// A crop of another photo of the patch's size: a natural control (a printed picture).
    Photo,
}

impl Pasted {
    /// Every kind, clean first.
    pub const ALL: [Pasted; 4] = [Pasted::Clean, Pasted::Patch, Pasted::Noise, Pasted::Photo];

    /// Name in tables.
    pub fn name(self) -> &'static str {
        match self {
            Pasted::Clean => "clean",
            Pasted::Patch => "hiding patch",
            Pasted::Noise => "noise sticker",
            Pasted::Photo => "photo sticker",
        }
    }
}

/// The response statistics of one photo.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// Share of Σ|response| in the best window (the window scaled from 56 px at 224).
    pub concentration: f64,
    /// Its box, x, y, w, h.
    pub conc_box: [u32; 4],
    /// Largest excess of mass share over area share over the scan windows (scaled).
    pub multiscale: f64,
    /// Its box.
    pub ms_box: [u32; 4],
    /// The paper's S̄ (signed gray map, 16 bins).
    pub entropy: f64,
}

/// Window sides for a `size`-pixel model input: the classifier windows (chosen for 224)
/// scaled, so that they cover the same share of the frame.
pub fn windows(size: usize) -> (usize, Vec<usize>) {
    let s = |w: usize| ((w * size) as f64 / 224.0).round().max(1.0) as usize;
    (s(56), SCAN_WINDOWS.iter().map(|&w| s(w)).collect())
}

/// The statistics of a C×H×W response at a `size`-pixel input.
pub fn stats(resp: ArrayView3<f32>, size: usize) -> Stats {
    let (win, scan) = windows(size);
    let cfg = ResponseConfig {
        gray: GrayMode::Signed,
        bins: 16,
        window: win,
    };
    let s = response::analyze(resp, &cfg);
    let mag = gray::magnitude(resp);
    let (multiscale, ms_box) = region::multiscale_excess(mag.view(), &scan);
    Stats {
        concentration: s.concentration,
        conc_box: s.bbox,
        multiscale,
        ms_box,
        entropy: s.entropy,
    }
}

/// One judged photo.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PhotoRecord {
    /// File name.
    pub file: String,
    /// `train` or `test`.
    pub split: String,
    /// What was pasted.
    pub pasted: Pasted,
    /// Boxes pasted (x, y, w, h); empty when clean.
    pub boxes: Vec<[u32; 4]>,
    /// Persons in the clean photo (pasted ones).
    pub persons: usize,
    /// Of them, hidden.
    pub hidden: usize,
    /// The statistics.
    pub stats: Stats,
}

/// A statistic of [`Stats`] by name, with its box.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Statistic {
    /// Best-window share.
    Concentration,
    /// Multi-scale excess.
    Multiscale,
    /// S̄; flagged when high (the paper's direction).
    Entropy,
}

impl Statistic {
    /// Every statistic.
    pub const ALL: [Statistic; 3] = [
        Statistic::Concentration,
        Statistic::Multiscale,
        Statistic::Entropy,
    ];

    /// Name in tables.
    pub fn name(self) -> &'static str {
        match self {
            Statistic::Concentration => "concentration",
            Statistic::Multiscale => "multi-scale concentration",
            Statistic::Entropy => "S̄ (paper)",
        }
    }

    fn value(self, s: &Stats) -> f64 {
        match self {
            Statistic::Concentration => s.concentration,
            Statistic::Multiscale => s.multiscale,
            Statistic::Entropy => s.entropy,
        }
    }

    fn bbox(self, s: &Stats) -> Option<[u32; 4]> {
        match self {
            Statistic::Concentration => Some(s.conc_box),
            Statistic::Multiscale => Some(s.ms_box),
            Statistic::Entropy => None,
        }
    }
}

/// One row of the detection table.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// Statistic.
    pub statistic: Statistic,
    /// Threshold at the FPR on the training split's clean photos.
    pub threshold: f64,
    /// Share of the test split's clean photos above it.
    pub test_fpr: f64,
    /// Per pasted kind (patch, noise, photo).
    pub kinds: Vec<KindCell>,
}

/// One pasted kind's cell of a [`Row`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KindCell {
    /// What was pasted.
    pub kind: Pasted,
    /// AUC against the test split's clean photos.
    pub auc: Option<f64>,
    /// Share above the threshold.
    pub detected: f64,
    /// Median IoU of the statistic's box with the best pasted box.
    pub iou: Option<f64>,
    /// Pasted test photos.
    pub n: usize,
}

/// The detection table: thresholds at `fpr` from `train` clean photos, judged on `test`.
pub fn table(records: &[PhotoRecord], fpr: f64) -> Vec<Row> {
    let values = |split: &str, kind: Pasted, st: Statistic| -> Vec<f64> {
        records
            .iter()
            .filter(|r| r.split == split && r.pasted == kind)
            .map(|r| st.value(&r.stats))
            .collect()
    };
    Statistic::ALL
        .iter()
        .map(|&st| {
            let train = values("train", Pasted::Clean, st);
            let clean = values("test", Pasted::Clean, st);
            let t = if train.is_empty() {
                f64::INFINITY
            } else {
                threshold_at_fpr(&train, fpr)
            };
            let kinds = Pasted::ALL[1..]
                .iter()
                .map(|&k| {
                    let adv = values("test", k, st);
                    let ious: Vec<f64> = records
                        .iter()
                        .filter(|r| r.split == "test" && r.pasted == k)
                        .filter_map(|r| {
                            let b = st.bbox(&r.stats)?;
                            r.boxes.iter().map(|p| region::iou(b, *p)).reduce(f64::max)
                        })
                        .collect();
                    KindCell {
                        kind: k,
                        auc: auc(&clean, &adv),
                        detected: rate_above(&adv, t),
                        iou: (!ious.is_empty()).then(|| median(&ious)),
                        n: adv.len(),
                    }
                })
                .collect();
            Row {
                statistic: st,
                threshold: t,
                test_fpr: rate_above(&clean, t),
                kinds,
            }
        })
        .collect()
}

/// AUC of a statistic between a split's clean photos and its photos with `kind` pasted.
pub fn auc_on(records: &[PhotoRecord], split: &str, kind: Pasted, st: Statistic) -> Option<f64> {
    let v = |k: Pasted| -> Vec<f64> {
        records
            .iter()
            .filter(|r| r.split == split && r.pasted == k)
            .map(|r| st.value(&r.stats))
            .collect()
    };
    auc(&v(Pasted::Clean), &v(kind))
}

/// The hiding table: per pasted kind, persons hidden / pasted on the test photos.
pub fn hidden(records: &[PhotoRecord]) -> Vec<(Pasted, usize, usize, usize)> {
    Pasted::ALL[1..]
        .iter()
        .map(|&k| {
            let rs: Vec<&PhotoRecord> = records
                .iter()
                .filter(|r| r.split == "test" && r.pasted == k)
                .collect();
            let photos_all = rs.iter().filter(|r| r.hidden == r.persons).count();
            (
                k,
                rs.iter().map(|r| r.hidden).sum(),
                rs.iter().map(|r| r.persons).sum(),
                photos_all,
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(split: &str, pasted: Pasted, c: f64, b: [u32; 4]) -> PhotoRecord {
        PhotoRecord {
            file: String::new(),
            split: split.into(),
            pasted,
            boxes: if pasted == Pasted::Clean {
                vec![]
            } else {
                vec![[10, 10, 20, 20]]
            },
            persons: 1,
            hidden: (pasted == Pasted::Patch) as usize,
            stats: Stats {
                concentration: c,
                conc_box: b,
                multiscale: c,
                ms_box: b,
                entropy: -c,
            },
        }
    }

    #[test]
    fn thresholds_come_from_the_training_split_only() {
        let mut r: Vec<PhotoRecord> = (0..100)
            .map(|i| rec("train", Pasted::Clean, i as f64 / 100.0, [0; 4]))
            .collect();
        // Test clean photos sit above every training value: a threshold fitted on them would
        // flag none, the one from `train` flags them all.
        r.extend((0..10).map(|_| rec("test", Pasted::Clean, 2.0, [0; 4])));
        r.extend((0..10).map(|_| rec("test", Pasted::Patch, 3.0, [10, 10, 20, 20])));
        let rows = table(&r, 0.01);
        let c = &rows[0];
        assert_eq!(c.statistic, Statistic::Concentration);
        assert!(c.threshold < 1.0);
        assert_eq!(c.test_fpr, 1.0);
        let k = c.kinds[0];
        assert_eq!(
            (k.kind, k.auc, k.detected, k.iou, k.n),
            (Pasted::Patch, Some(1.0), 1.0, Some(1.0), 10)
        );
        assert_eq!(hidden(&r)[0], (Pasted::Patch, 10, 10, 10));
    }

    #[test]
    fn windows_scale_with_the_input() {
        assert_eq!(windows(224).0, 56);
        assert_eq!(windows(512).0, 128);
        assert_eq!(windows(512).1.len(), SCAN_WINDOWS.len());
    }
}
