//! Detector variants scored side by side on the same image: the paper's mean local entropy S̄
//! under several gray conversions and bin counts, the response seed (last conv vs top-1
//! logit), guided vs plain backward, the response concentration (share of Σ|r| in the best
//! window, with its box) and the max over blocks of the mean local entropy (with its box),
//! plus the prediction margin as a response-free baseline.
//!
//! Every score is oriented "higher = adversarial" in the paper's direction (entropy rises under
//! attack); a variant whose AUC is below 0.5 is one where that direction is wrong.

use crate::engine::compile::{CompileOptions, Mode, Seed};
use crate::engine::manifest::Manifest;
use crate::engine::{BackendKind, Guard, GuardError, GuardOptions, top_k};
use crate::response::{self, GrayMode, ResponseConfig, entropy, region};
use ndarray::{Array3, ArrayView3};
use std::collections::BTreeMap;
use std::path::Path;

/// The paper's detector: guided backprop from the last conv block, `signed` gray, 16 bins.
pub const PAPER: &str = "S̄ guided last-conv signed/16";
/// The region statistic aimed at patches.
pub const CONCENTRATION: &str = "concentration guided last-conv";
/// The multi-scale region statistic (largest excess of mass share over area share).
pub const MULTISCALE: &str = "multi-scale concentration guided last-conv";
/// The patch signal of the fused detector: the concentration scaled by its box's texture gate.
pub const GATED: &str = "concentration × texture gate guided last-conv";
/// Block size of the block-max entropy statistic, map pixels.
pub const BLOCK: usize = 32;
/// Window sides of the multi-scale concentration on a 224 map: squares of 2 % to 20 % of the
/// image, chosen from the patch sizes the threat model names, not fitted to scores.
pub const SCAN_WINDOWS: [usize; 6] = [32, 44, 56, 72, 88, 100];

/// Scores of one image: variant → score, and variant → box for the region statistics.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Scores {
    /// Variant name → score (higher = adversarial).
    pub values: BTreeMap<String, f64>,
    /// Variant name → [x, y, w, h] in map pixels (region statistics only).
    pub boxes: BTreeMap<String, [u32; 4]>,
    /// Top-1 class of the image.
    pub top1: usize,
    /// Its probability.
    pub top1_prob: f32,
    /// Wall time of each engine pass, milliseconds (the combiner's cost in guard frames).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pass_ms: BTreeMap<String, f64>,
}

/// The guards the variants need (guided last-conv, guided top-1, plain last-conv).
pub struct Scorer {
    guided: Guard,
    top1: Guard,
    plain: Guard,
    /// Forward-only classifier for the combiner's bit-depth pass; when set, the combiner's
    /// features and extra passes are scored too.
    forward: Option<Guard>,
}

fn open(
    m: &Manifest,
    path: Option<&Path>,
    backend: BackendKind,
    mode: Mode,
    seed: Seed,
) -> Result<Guard, GuardError> {
    Guard::open(
        m,
        &GuardOptions {
            model_path: path.map(Path::to_path_buf),
            backend,
            compile: Some(CompileOptions {
                mode,
                seed,
                input_shape: None,
                ..Default::default()
            }),
        },
    )
}

fn cfg(gray: GrayMode, bins: usize) -> ResponseConfig {
    ResponseConfig {
        gray,
        bins,
        ..ResponseConfig::default()
    }
}

impl Scorer {
    /// Opens the three guard graphs.
    pub fn open(
        m: &Manifest,
        path: Option<&Path>,
        backend: BackendKind,
    ) -> Result<Scorer, GuardError> {
        Ok(Scorer {
            guided: open(m, path, backend, Mode::Guided, Seed::LastConv)?,
            top1: open(m, path, backend, Mode::Guided, Seed::Top1)?,
            plain: open(m, path, backend, Mode::Plain, Seed::LastConv)?,
            forward: None,
        })
    }

    /// Also scores the learned combiner's features (a median guard pass and a bit-depth
    /// forward pass per image).
    pub fn with_combiner_features(
        mut self,
        m: &Manifest,
        path: Option<&Path>,
        backend: BackendKind,
    ) -> Result<Scorer, GuardError> {
        self.forward = Some(Guard::open(
            m,
            &GuardOptions {
                model_path: path.map(Path::to_path_buf),
                backend,
                compile: None,
            },
        )?);
        Ok(self)
    }

    /// The guided last-conv guard and the forward guard (when combiner features are on).
    pub fn combiner_guards(&mut self) -> Option<(&mut Guard, &mut Guard)> {
        Some((&mut self.guided, self.forward.as_mut()?))
    }

    /// All variant scores of one H×W×3 image (0–255). Three guard calls.
    pub fn score(&mut self, px: ArrayView3<f32>) -> Result<Scores, GuardError> {
        let mut s = Scores::default();
        let t0 = std::time::Instant::now();
        let g = self.guided.run_pixels(px)?;
        s.pass_ms.insert(
            super::combiner::PRIMARY_MS.into(),
            t0.elapsed().as_secs_f64() * 1e3,
        );
        let p = g.probs();
        let top = top_k(&p, 2);
        s.top1 = top[0];
        s.top1_prob = p[top[0]];
        s.values.insert(
            "margin 1−(p1−p2) (no response)".into(),
            1.0 - (p[top[0]] - p[top[1]]) as f64,
        );
        entropy_variants(&mut s, "guided last-conv", &g.response, true);
        texture_gated(&mut s, px);
        if let Some(fwd) = self.forward.as_mut() {
            let r = g.response.view();
            super::combiner::insert_features(&mut s, px, &p, r, &mut self.guided, fwd)?;
        }
        let t = self.top1.run_pixels(px)?;
        entropy_variants(&mut s, "guided top1", &t.response, false);
        let pl = self.plain.run_pixels(px)?;
        entropy_variants(&mut s, "plain last-conv", &pl.response, false);
        Ok(s)
    }
}

/// The fused detector's patch score on a photo (`px`, H×W×3 at the map's size): the
/// concentration times the texture gate of its box at the default floor.
fn texture_gated(s: &mut Scores, px: ArrayView3<f32>) {
    let (Some(&c), Some(&bbox)) = (s.values.get(CONCENTRATION), s.boxes.get(CONCENTRATION)) else {
        return;
    };
    let (h, w, _) = px.dim();
    let floor = Some(crate::detector::fused::DEFAULT_PATCH_TEXTURE);
    let score = response::texture::gated_score(c, px, bbox, (w as u32, h as u32), floor);
    s.values.insert(GATED.into(), score);
    s.boxes.insert(GATED.into(), bbox);
}

/// S̄ variants, concentration and block-max entropy of one response, named with `tag`.
fn entropy_variants(s: &mut Scores, tag: &str, r: &Array3<f32>, all_grays: bool) {
    let base = response::analyze(r.view(), &cfg(GrayMode::Signed, 16));
    s.values.insert(format!("S̄ {tag} signed/16"), base.entropy);
    let key = format!("concentration {tag}");
    s.values.insert(key.clone(), base.concentration);
    s.boxes.insert(key, base.bbox);
    let mag = response::gray::magnitude(r.view());
    let side = mag.nrows().min(mag.ncols()) as f64 / 224.0;
    let wins: Vec<usize> = SCAN_WINDOWS
        .iter()
        .map(|&w| ((w as f64 * side).round() as usize).max(1))
        .collect();
    let (ex, eb) = region::multiscale_excess(mag.view(), &wins);
    let key = format!("multi-scale concentration {tag}");
    s.values.insert(key.clone(), ex);
    s.boxes.insert(key, eb);
    let local = entropy::local_entropy(base.gray.view(), 16);
    let (bm, bb) = region::block_max_mean(local.view(), BLOCK);
    let key = format!("block-max entropy {tag} signed/16");
    s.values.insert(key.clone(), bm);
    s.boxes.insert(key, bb);
    let extra: &[(GrayMode, usize)] = if all_grays {
        &[
            (GrayMode::Signed, 256),
            (GrayMode::Abs, 16),
            (GrayMode::Abs, 256),
            (GrayMode::AbsP99, 256),
            (GrayMode::SignedP99, 256),
        ]
    } else {
        &[(GrayMode::AbsP99, 256)]
    };
    for &(gm, bins) in extra {
        let gray = response::gray::gray_map(r.view(), gm);
        let name = match gm {
            GrayMode::Abs => "abs",
            GrayMode::AbsP99 => "abs-p99",
            GrayMode::Signed => "signed",
            GrayMode::SignedP99 => "signed-p99",
        };
        s.values.insert(
            format!("S̄ {tag} {name}/{bins}"),
            entropy::mean_local_entropy(gray.view(), bins),
        );
    }
}
