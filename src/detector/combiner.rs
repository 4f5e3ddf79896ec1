//! A learned, explainable combiner of per-frame statistics (issue 12 §3): standardised
//! features → L2-regularised logistic regression → one logit, higher = adversarial.
//!
//! Features are grouped by the engine pass they need ([`Pass`]), so a caller (the video
//! detector, `eval`, `explain`) runs only the passes of the features its model was fitted on:
//! - [`Pass::Primary`]: the guided guard pass every frame gets anyway (margin, class entropy,
//!   S̄ variants, multi-scale concentration): free;
//! - [`Pass::Median`]: one more guided guard pass on the 3×3-median-filtered frame (response
//!   cosine distance, feature-squeezing KL and L1 of the class distributions);
//! - [`Pass::BitDepth`]: one forward-only pass on the 5-bit copy (feature-squeezing KL and L1).
//!
//! The regression is written here (Newton's method on the penalised, class-balanced log-loss)
//! because linfa-logistic 0.8 pins ndarray 0.16 and this crate is on 0.17; with ≤ 16 features a
//! dense Newton step is a few microseconds and its optimum is checked by the tests.

use crate::engine::{Guard, GuardError, softmax, top_k};
use crate::response::{GrayMode, entropy, gray, region, squeeze};
use ndarray::{Array3, ArrayView3};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Instant;

/// Bits per channel of the bit-depth squeezer (Xu et al. 2018 used 5 on ImageNet).
pub const SQUEEZE_BITS: u32 = 5;
/// Floor added before the logarithm of KL and cosine distances: they span six decades, and a
/// linear model needs them on a log scale; fixed before any data was seen.
pub const LOG_FLOOR: f64 = 1e-6;
/// Multi-scale window sides on a 224 map (the same squares of 2–20 % of the image as `eval`).
pub const SCAN_WINDOWS: [usize; 6] = [32, 44, 56, 72, 88, 100];

/// Errors of the combiner.
#[derive(Debug, thiserror::Error)]
pub enum CombinerError {
    /// An engine pass failed.
    #[error(transparent)]
    Guard(#[from] GuardError),
    /// A feature the model needs was not computed (its pass was not run).
    #[error("combiner feature {0:?} is missing (its engine pass was not run)")]
    Missing(String),
    /// A feature name is not one of [`FEATURES`].
    #[error("unknown combiner feature {0:?} (known: {known})", known = feature_names().join(", "))]
    Unknown(String),
    /// Fitting is impossible with these data.
    #[error("cannot fit the combiner: {0}")]
    Fit(String),
}

/// An engine pass a feature needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Pass {
    /// The frame's own guided guard pass (no extra cost).
    Primary,
    /// A guided guard pass on the 3×3-median-filtered frame (one extra guard frame).
    Median,
    /// A forward-only pass on the bit-depth-reduced frame (one extra forward).
    BitDepth,
}

impl Pass {
    /// Name in logs and tables.
    pub fn name(self) -> &'static str {
        match self {
            Pass::Primary => "primary guard",
            Pass::Median => "median guard",
            Pass::BitDepth => "bit-depth forward",
        }
    }
}

/// The class-distribution margin 1 − (p1 − p2) (named as in `eval`).
pub const F_MARGIN: &str = "margin 1−(p1−p2) (no response)";
/// Entropy of the class distribution, nats.
pub const F_CLASS_ENTROPY: &str = "class entropy";
/// The paper's S̄, signed gray, 16 bins.
pub const F_S_SIGNED: &str = "S̄ guided last-conv signed/16";
/// S̄ with abs-p99 gray, 256 bins.
pub const F_S_ABSP99: &str = "S̄ guided last-conv abs-p99/256";
/// Multi-scale concentration.
pub const F_MULTISCALE: &str = "multi-scale concentration guided last-conv";
/// ln(floor + 1 − cos(response, response of the median copy)).
pub const F_MEDIAN_COS: &str = "log median response cos distance";
/// ln(floor + KL(p ‖ p_median)).
pub const F_MEDIAN_KL: &str = "log median squeeze KL";
/// ‖p − p_median‖₁.
pub const F_MEDIAN_L1: &str = "median squeeze L1";
/// ln(floor + KL(p ‖ p_5bit)).
pub const F_BITS_KL: &str = "log bit-depth squeeze KL";
/// ‖p − p_5bit‖₁.
pub const F_BITS_L1: &str = "bit-depth squeeze L1";

/// Every feature and the pass it needs, in a fixed order.
pub const FEATURES: [(&str, Pass); 10] = [
    (F_MARGIN, Pass::Primary),
    (F_CLASS_ENTROPY, Pass::Primary),
    (F_S_SIGNED, Pass::Primary),
    (F_S_ABSP99, Pass::Primary),
    (F_MULTISCALE, Pass::Primary),
    (F_MEDIAN_COS, Pass::Median),
    (F_MEDIAN_KL, Pass::Median),
    (F_MEDIAN_L1, Pass::Median),
    (F_BITS_KL, Pass::BitDepth),
    (F_BITS_L1, Pass::BitDepth),
];

/// Names of [`FEATURES`].
pub fn feature_names() -> Vec<&'static str> {
    FEATURES.iter().map(|f| f.0).collect()
}

/// The pass a feature needs.
pub fn pass_of(name: &str) -> Result<Pass, CombinerError> {
    FEATURES
        .iter()
        .find(|f| f.0 == name)
        .map(|f| f.1)
        .ok_or_else(|| CombinerError::Unknown(name.to_string()))
}

/// Features of the given passes (`--features primary,median,bit-depth` in the CLI).
pub fn features_of(passes: &[Pass]) -> Vec<String> {
    FEATURES
        .iter()
        .filter(|f| passes.contains(&f.1))
        .map(|f| f.0.to_string())
        .collect()
}

/// The extra pass outputs on the median copy.
#[derive(Debug, Clone)]
pub struct MedianPass {
    /// Class distribution of the median-filtered frame.
    pub probs: Vec<f32>,
    /// Its guided response.
    pub response: Array3<f32>,
}

/// What the features of one frame are computed from.
#[derive(Debug, Clone)]
pub struct FrameContext<'a> {
    /// The frame, H×W×3, 0–255.
    pub pixels: ArrayView3<'a, f32>,
    /// Its class distribution (primary pass).
    pub probs: &'a [f32],
    /// Its guided response, C×H×W (primary pass).
    pub response: ArrayView3<'a, f32>,
    /// The median pass, if run.
    pub median: Option<MedianPass>,
    /// Class distribution of the bit-depth copy, if run.
    pub bit_depth: Option<Vec<f32>>,
    /// Wall time of each extra pass run by [`FrameContext::run_passes`], milliseconds.
    pub pass_ms: BTreeMap<String, f64>,
}

impl<'a> FrameContext<'a> {
    /// A context with the primary pass only.
    pub fn new(
        pixels: ArrayView3<'a, f32>,
        probs: &'a [f32],
        response: ArrayView3<'a, f32>,
    ) -> Self {
        FrameContext {
            pixels,
            probs,
            response,
            median: None,
            bit_depth: None,
            pass_ms: BTreeMap::new(),
        }
    }

    /// Runs the extra passes in `passes`: `guided` is the frame's guided guard (the same graph
    /// as the primary pass), `forward` a forward-only guard of the same model.
    pub fn run_passes(
        &mut self,
        passes: &[Pass],
        guided: &mut Guard,
        forward: &mut Guard,
    ) -> Result<(), CombinerError> {
        if passes.contains(&Pass::Median) && self.median.is_none() {
            let t = Instant::now();
            let m = squeeze::median3(self.pixels);
            let out = guided.run_pixels(m.view())?;
            self.median = Some(MedianPass {
                probs: out.probs(),
                response: out.response,
            });
            self.pass_ms
                .insert(Pass::Median.name().into(), t.elapsed().as_secs_f64() * 1e3);
        }
        if passes.contains(&Pass::BitDepth) && self.bit_depth.is_none() {
            let t = Instant::now();
            let b = squeeze::bit_depth(self.pixels, SQUEEZE_BITS);
            let out = forward.run_pixels(b.view())?;
            self.bit_depth = Some(softmax(&out.logits));
            self.pass_ms.insert(
                Pass::BitDepth.name().into(),
                t.elapsed().as_secs_f64() * 1e3,
            );
        }
        Ok(())
    }
}

/// Named feature values of one frame.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Features {
    /// Feature name → value (only those whose pass was run).
    pub values: BTreeMap<String, f64>,
}

fn ln_floor(v: f64) -> f64 {
    (LOG_FLOOR + v.max(0.0)).ln()
}

/// Entropy of a distribution, nats.
pub fn class_entropy(p: &[f32]) -> f64 {
    p.iter()
        .filter(|&&v| v > 0.0)
        .map(|&v| -(v as f64) * (v as f64).ln())
        .sum()
}

/// Every feature whose pass is in the context.
pub fn features(ctx: &FrameContext) -> Features {
    let mut v = BTreeMap::new();
    let p = ctx.probs;
    let top = top_k(p, 2);
    let p2 = top.get(1).map_or(0.0, |&k| p[k]);
    v.insert(F_MARGIN.into(), 1.0 - (p[top[0]] - p2) as f64);
    v.insert(F_CLASS_ENTROPY.into(), class_entropy(p));
    let r = ctx.response;
    let g = gray::gray_map(r, GrayMode::Signed);
    v.insert(F_S_SIGNED.into(), entropy::mean_local_entropy(g.view(), 16));
    let g = gray::gray_map(r, GrayMode::AbsP99);
    v.insert(
        F_S_ABSP99.into(),
        entropy::mean_local_entropy(g.view(), 256),
    );
    let mag = gray::magnitude(r);
    let side = mag.nrows().min(mag.ncols()) as f64 / 224.0;
    let wins: Vec<usize> = SCAN_WINDOWS
        .iter()
        .map(|&w| ((w as f64 * side).round() as usize).max(1))
        .collect();
    v.insert(
        F_MULTISCALE.into(),
        region::multiscale_excess(mag.view(), &wins).0,
    );
    if let Some(m) = &ctx.median {
        v.insert(
            F_MEDIAN_COS.into(),
            ln_floor(squeeze::cosine_distance(r, m.response.view())),
        );
        v.insert(F_MEDIAN_KL.into(), ln_floor(squeeze::kl(p, &m.probs)));
        v.insert(F_MEDIAN_L1.into(), squeeze::l1(p, &m.probs));
    }
    if let Some(b) = &ctx.bit_depth {
        v.insert(F_BITS_KL.into(), ln_floor(squeeze::kl(p, b)));
        v.insert(F_BITS_L1.into(), squeeze::l1(p, b));
    }
    Features { values: v }
}

/// How a combiner was fitted (what `explain` and the disjointness check read).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FitInfo {
    /// Where the training records came from (image folder / report).
    pub source: String,
    /// Attacks whose successful adversarials were the positives.
    pub attacks: Vec<String>,
    /// Clean (negative) examples.
    pub n_clean: usize,
    /// Adversarial (positive) examples.
    pub n_adv: usize,
    /// L2 penalty on the standardised weights.
    pub l2: f64,
    /// Logit threshold at 1 % FPR on the training clean photos (the camera recalibrates).
    pub threshold_fpr1: f64,
    /// First 16 hex digits of the SHA-256 of every training photo file, sorted: an evaluation
    /// refuses photos whose content is among them.
    pub train_sha256: Vec<String>,
}

/// A fitted combiner: z_i = (x_i − mean_i) / scale_i, logit = bias + Σ w_i z_i.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Combiner {
    /// Feature names, in weight order.
    pub features: Vec<String>,
    /// Training mean of each feature.
    pub mean: Vec<f64>,
    /// Training standard deviation of each feature (1 where it was 0).
    pub scale: Vec<f64>,
    /// Weight of each standardised feature.
    pub weights: Vec<f64>,
    /// Intercept.
    pub bias: f64,
    /// Provenance.
    pub fit: FitInfo,
}

/// Name of the intercept in [`Combiner::score`]'s contributions.
pub const BIAS: &str = "(bias)";

impl Combiner {
    /// The passes this combiner's features need, in order.
    pub fn passes(&self) -> Vec<Pass> {
        let mut p: Vec<Pass> = self
            .features
            .iter()
            .filter_map(|f| pass_of(f).ok())
            .collect();
        p.sort();
        p.dedup();
        p
    }

    /// Computes this combiner's features of a frame (see [`features`]).
    pub fn features(ctx: &FrameContext) -> Features {
        features(ctx)
    }

    /// The logit and each term of it: the bias first, then w_i z_i per feature; the terms sum
    /// to the logit exactly.
    pub fn score(&self, f: &Features) -> Result<(f64, Vec<(String, f64)>), CombinerError> {
        let mut terms = vec![(BIAS.to_string(), self.bias)];
        let mut logit = self.bias;
        for (i, name) in self.features.iter().enumerate() {
            let x = *f
                .values
                .get(name)
                .ok_or_else(|| CombinerError::Missing(name.clone()))?;
            let c = self.weights[i] * (x - self.mean[i]) / self.scale[i];
            logit += c;
            terms.push((name.clone(), c));
        }
        Ok((logit, terms))
    }

    /// d logit / d feature_i (for attacks that follow the combiner's gradient).
    pub fn slopes(&self) -> Vec<f64> {
        self.weights
            .iter()
            .zip(&self.scale)
            .map(|(w, s)| w / s)
            .collect()
    }

    /// Fits on rows `x` (one value per name in `names`) with labels `y` (true = adversarial),
    /// classes weighted to equal total weight, penalty `l2`·½‖w‖² (bias unpenalised).
    pub fn fit(
        names: &[String],
        x: &[Vec<f64>],
        y: &[bool],
        l2: f64,
    ) -> Result<Combiner, CombinerError> {
        let d = names.len();
        let n1 = y.iter().filter(|v| **v).count();
        let n0 = y.len() - n1;
        if n0 < 2 || n1 < 2 {
            return Err(CombinerError::Fit(format!(
                "need at least 2 clean and 2 adversarial examples, got {n0} and {n1}"
            )));
        }
        if d == 0
            || x.iter()
                .any(|r| r.len() != d || r.iter().any(|v| !v.is_finite()))
        {
            return Err(CombinerError::Fit(
                "every row needs one finite value per feature".into(),
            ));
        }
        for n in names {
            pass_of(n)?;
        }
        let nf = x.len() as f64;
        let mean: Vec<f64> = (0..d)
            .map(|j| x.iter().map(|r| r[j]).sum::<f64>() / nf)
            .collect();
        let scale: Vec<f64> = (0..d)
            .map(|j| {
                let v = x.iter().map(|r| (r[j] - mean[j]).powi(2)).sum::<f64>() / nf;
                if v > 0.0 { v.sqrt() } else { 1.0 }
            })
            .collect();
        let z: Vec<Vec<f64>> = x
            .iter()
            .map(|r| (0..d).map(|j| (r[j] - mean[j]) / scale[j]).collect())
            .collect();
        let sw: Vec<f64> = y
            .iter()
            .map(|&c| if c { 0.5 / n1 as f64 } else { 0.5 / n0 as f64 })
            .collect();
        let theta = newton_logistic(&z, y, &sw, l2)?;
        Ok(Combiner {
            features: names.to_vec(),
            mean,
            scale,
            weights: theta[1..].to_vec(),
            bias: theta[0],
            fit: FitInfo {
                l2,
                n_clean: n0,
                n_adv: n1,
                ..FitInfo::default()
            },
        })
    }
}

/// Penalised weighted log-loss at θ = [bias, w…] (weights `sw` sum to 1).
pub fn objective(z: &[Vec<f64>], y: &[bool], sw: &[f64], l2: f64, theta: &[f64]) -> f64 {
    let mut loss = 0.0;
    for ((r, &c), &s) in z.iter().zip(y).zip(sw) {
        let t = theta[0] + r.iter().zip(&theta[1..]).map(|(a, b)| a * b).sum::<f64>();
        // log(1 + e^{-t}) for positives, log(1 + e^{t}) for negatives, overflow-safe.
        let m = if c { -t } else { t };
        loss += s * (m.max(0.0) + (-m.abs()).exp().ln_1p());
    }
    loss + 0.5 * l2 * theta[1..].iter().map(|w| w * w).sum::<f64>()
}

/// Gradient of [`objective`] at θ.
pub fn objective_gradient(
    z: &[Vec<f64>],
    y: &[bool],
    sw: &[f64],
    l2: f64,
    theta: &[f64],
) -> Vec<f64> {
    let d = theta.len();
    let mut g = vec![0.0; d];
    for ((r, &c), &s) in z.iter().zip(y).zip(sw) {
        let t = theta[0] + r.iter().zip(&theta[1..]).map(|(a, b)| a * b).sum::<f64>();
        let e = s * (sigmoid(t) - if c { 1.0 } else { 0.0 });
        g[0] += e;
        for j in 1..d {
            g[j] += e * r[j - 1];
        }
    }
    for j in 1..d {
        g[j] += l2 * theta[j];
    }
    g
}

fn sigmoid(t: f64) -> f64 {
    if t >= 0.0 {
        1.0 / (1.0 + (-t).exp())
    } else {
        let e = t.exp();
        e / (1.0 + e)
    }
}

/// Newton's method with step halving; θ = [bias, w…].
fn newton_logistic(
    z: &[Vec<f64>],
    y: &[bool],
    sw: &[f64],
    l2: f64,
) -> Result<Vec<f64>, CombinerError> {
    let d = z[0].len() + 1;
    let mut theta = vec![0.0; d];
    let mut f = objective(z, y, sw, l2, &theta);
    for _ in 0..200 {
        let g = objective_gradient(z, y, sw, l2, &theta);
        let mut h = vec![vec![0.0; d]; d];
        for (r, &s) in z.iter().zip(sw) {
            let t = theta[0] + r.iter().zip(&theta[1..]).map(|(a, b)| a * b).sum::<f64>();
            let p = sigmoid(t);
            let wv = s * p * (1.0 - p);
            let row: Vec<f64> = std::iter::once(1.0).chain(r.iter().copied()).collect();
            for a in 0..d {
                for b in 0..d {
                    h[a][b] += wv * row[a] * row[b];
                }
            }
        }
        for (j, row) in h.iter_mut().enumerate().skip(1) {
            row[j] += l2;
        }
        // A tiny ridge keeps the unpenalised bias solvable on separable data.
        h[0][0] += 1e-12;
        let step = solve(h, g.clone()).ok_or_else(|| {
            CombinerError::Fit("singular Hessian (l2 = 0 on collinear features?)".into())
        })?;
        let mut a = 1.0;
        let mut next;
        loop {
            next = theta
                .iter()
                .zip(&step)
                .map(|(t, s)| t - a * s)
                .collect::<Vec<_>>();
            let fn_ = objective(z, y, sw, l2, &next);
            if fn_ <= f || a < 1e-8 {
                let done = (f - fn_).abs() < 1e-14;
                theta = next;
                f = fn_;
                if done {
                    return Ok(theta);
                }
                break;
            }
            a *= 0.5;
        }
        if g.iter().map(|v| v * v).sum::<f64>().sqrt() < 1e-12 {
            return Ok(theta);
        }
    }
    Ok(theta)
}

/// Solves A x = b by Gaussian elimination with partial pivoting (A small and dense).
fn solve(mut a: Vec<Vec<f64>>, mut b: Vec<f64>) -> Option<Vec<f64>> {
    let n = b.len();
    for col in 0..n {
        let piv = (col..n).max_by(|&i, &j| a[i][col].abs().total_cmp(&a[j][col].abs()))?;
        if a[piv][col].abs() < 1e-300 {
            return None;
        }
        a.swap(col, piv);
        b.swap(col, piv);
        for row in col + 1..n {
            let f = a[row][col] / a[col][col];
            let (top, rest) = a.split_at_mut(row);
            for (x, p) in rest[0][col..].iter_mut().zip(&top[col][col..]) {
                *x -= f * p;
            }
            b[row] -= f * b[col];
        }
    }
    let mut x = vec![0.0; n];
    for i in (0..n).rev() {
        let s: f64 = (i + 1..n).map(|k| a[i][k] * x[k]).sum();
        x[i] = (b[i] - s) / a[i][i];
    }
    Some(x)
}

/// One frame scored end to end: primary pass outputs in, features of the given passes out.
pub fn frame_features(
    px: ArrayView3<f32>,
    guided: &mut Guard,
    forward: &mut Guard,
    passes: &[Pass],
) -> Result<(Features, BTreeMap<String, f64>), CombinerError> {
    let t = Instant::now();
    let out = guided.run_pixels(px)?;
    let primary_ms = t.elapsed().as_secs_f64() * 1e3;
    let probs = out.probs();
    let mut ctx = FrameContext::new(px, &probs, out.response.view());
    ctx.run_passes(passes, guided, forward)?;
    let f = features(&ctx);
    let mut ms = ctx.pass_ms.clone();
    ms.insert(Pass::Primary.name().into(), primary_ms);
    Ok((f, ms))
}
