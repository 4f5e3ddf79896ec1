//! Adaptive PGD against the learned combiner (issue 12 §4): L∞ PGD on the 8-bit grid that
//! ascends the cross-entropy until top-1 flips and descends the combiner's logit throughout,
//! keeping the successful iterate with the lowest logit.
//!
//! Gradients of the combiner's logit, by feature:
//! - margin and class entropy: exact, through the logits at x;
//! - feature-squeezing KL and L1: exact through the logits at x and at the squeezed copy s(x),
//!   with BPDA (Athalye et al. 2018) through the squeezer: ds(x)/dx ≈ I for the 3×3 median
//!   and the bit-depth reduction;
//! - response statistics (S̄, multi-scale concentration, median response cosine): their exact
//!   gradient is second order (the response is already a gradient), so they are estimated by
//!   SPSA with `spsa` antithetic ±1-gray-level probes (0 leaves them unattacked).
//!
//! Each step: one forward, one CE gradient, the combiner's passes at x, one gradient at each
//! squeezed copy, and 2·`spsa` evaluations of the response part.

use super::{
    AttackError, AttackResult, Forward, Model, ce_gradient, check_class, finish, is_adversarial,
};
use crate::detector::combiner::{self, Combiner, FrameContext};
use crate::engine::{Guard, softmax, top_k};
use crate::response::squeeze::{self, KL_FLOOR};
use ndarray::{Array3, ArrayView3, Zip};
use rand::{Rng, SeedableRng, rngs::StdRng};

/// Adaptive-PGD parameters (pixel units).
#[derive(Debug, Clone)]
pub struct AdaptivePgd {
    /// L∞ radius.
    pub eps: f32,
    /// Step size.
    pub step: f32,
    /// Iterations (no early stop: the logit keeps falling after the flip).
    pub iters: u32,
    /// Weight of the combiner's (normalised) gradient against the CE's.
    pub lambda: f32,
    /// SPSA probe pairs per step for the response statistics.
    pub spsa: u32,
}

impl Default for AdaptivePgd {
    fn default() -> Self {
        AdaptivePgd {
            eps: 4.0,
            step: 1.0,
            iters: 20,
            lambda: 1.0,
            spsa: 2,
        }
    }
}

fn is_response_feature(name: &str) -> bool {
    matches!(
        name,
        combiner::F_S_SIGNED
            | combiner::F_S_ABSP99
            | combiner::F_MULTISCALE
            | combiner::F_MEDIAN_COS
    )
}

/// What [`combiner_at`] returns: logit, features, class distributions of the median copy, of
/// the bit-depth copy, and of the frame.
pub type CombinerEval = (
    f64,
    combiner::Features,
    Option<Vec<f32>>,
    Option<Vec<f32>>,
    Vec<f32>,
);

/// The combiner's features and logit at x (runs the passes the combiner needs).
pub fn combiner_at(
    c: &Combiner,
    x: ArrayView3<f32>,
    guided: &mut Guard,
    forward: &mut Guard,
) -> Result<CombinerEval, AttackError> {
    let out = guided.run_pixels(x)?;
    let probs = out.probs();
    let mut ctx = FrameContext::new(x, &probs, out.response.view());
    ctx.run_passes(&c.passes(), guided, forward)
        .map_err(|e| match e {
            combiner::CombinerError::Guard(g) => AttackError::Guard(g),
            other => AttackError::Invalid(other.to_string()),
        })?;
    let f = combiner::features(&ctx);
    let (logit, _) = c
        .score(&f)
        .map_err(|e| AttackError::Invalid(e.to_string()))?;
    let med = ctx.median.map(|m| m.probs);
    Ok((logit, f, med, ctx.bit_depth, probs))
}

/// d feature / d logits at x (p side) and at the squeezed copy (q side) for a KL or L1 feature.
fn squeeze_seeds(p: &[f32], q: &[f32], log_kl: bool) -> (Vec<f32>, Vec<f32>) {
    let n = p.len();
    let (mut sp, mut sq) = (vec![0f32; n], vec![0f32; n]);
    if log_kl {
        let a: Vec<f64> = p
            .iter()
            .zip(q)
            .map(|(&x, &y)| (x as f64).max(KL_FLOOR).ln() - (y as f64).max(KL_FLOOR).ln())
            .collect();
        let kl = squeeze::kl(p, q);
        let d = 1.0 / (combiner::LOG_FLOOR + kl);
        for j in 0..n {
            sp[j] = (d * p[j] as f64 * (a[j] - kl)) as f32;
            sq[j] = (d * (q[j] - p[j]) as f64) as f32;
        }
    } else {
        let s: Vec<f32> = p.iter().zip(q).map(|(x, y)| (x - y).signum()).collect();
        let ep: f32 = p.iter().zip(&s).map(|(a, b)| a * b).sum();
        let eq: f32 = q.iter().zip(&s).map(|(a, b)| a * b).sum();
        for j in 0..n {
            sp[j] = p[j] * (s[j] - ep);
            sq[j] = -q[j] * (s[j] - eq);
        }
    }
    (sp, sq)
}

fn unit(g: &Array3<f32>) -> Array3<f32> {
    let n = g.iter().map(|v| (*v as f64).powi(2)).sum::<f64>().sqrt() as f32;
    if n > 0.0 { g / n } else { g.clone() }
}

impl AdaptivePgd {
    /// Attacks one image of class `label`; `guided`/`forward` are the combiner's guards.
    #[allow(clippy::too_many_arguments)]
    pub fn run(
        &self,
        m: &mut dyn Model,
        c: &Combiner,
        guided: &mut Guard,
        forward: &mut Guard,
        px: ArrayView3<f32>,
        label: usize,
        seed: u64,
    ) -> Result<AttackResult, AttackError> {
        let start = (std::time::Instant::now(), Forward::calls(m));
        let mut rng = StdRng::seed_from_u64(seed);
        let eps = self.eps.max(0.0);
        let mut x = px.to_owned();
        Zip::from(&mut x).and(&px).for_each(|a, &c0| {
            *a = (c0 + rng.random_range(-eps..=eps))
                .round()
                .clamp(0.0, 255.0)
        });
        let slopes = c.slopes();
        let resp_w: Vec<(usize, f64)> = c
            .features
            .iter()
            .enumerate()
            .filter(|(_, n)| is_response_feature(n))
            .map(|(i, _)| (i, slopes[i]))
            .collect();
        let mut best: Option<(f64, Array3<f32>)> = None;
        for _ in 0..self.iters {
            let logits = m.logits(x.view())?;
            check_class(label, logits.len())?;
            let adv = is_adversarial(&logits, label, None);
            let (logit, f, med, bits, _) = combiner_at(c, x.view(), guided, forward)?;
            if adv && best.as_ref().is_none_or(|b| logit < b.0) {
                best = Some((logit, x.clone()));
            }
            let g_c = self.logit_gradient(
                m,
                c,
                &slopes,
                &resp_w,
                &f,
                x.view(),
                &logits,
                med,
                bits,
                guided,
                forward,
                &mut rng,
            )?;
            let mut dir = -self.lambda * unit(&g_c);
            if !adv {
                dir = dir + unit(&ce_gradient(m, x.view(), &logits, label)?);
            }
            Zip::from(&mut x).and(&dir).and(&px).for_each(|a, &d, &c0| {
                let v = (*a + self.step * d.signum() * (d != 0.0) as u8 as f32)
                    .clamp(c0 - eps, c0 + eps);
                *a = v.round().clamp(0.0, 255.0)
            });
        }
        let logits = m.logits(x.view())?;
        if is_adversarial(&logits, label, None) {
            let (logit, ..) = combiner_at(c, x.view(), guided, forward)?;
            if best.as_ref().is_none_or(|b| logit < b.0) {
                best = Some((logit, x.clone()));
            }
        }
        let (ok, out) = match best {
            Some((_, b)) => (true, b),
            None => (false, x),
        };
        finish(m, px, out, label, None, ok, self.iters, start)
    }

    /// Pixel gradient (estimate) of the combiner's logit at x.
    #[allow(clippy::too_many_arguments)]
    fn logit_gradient(
        &self,
        m: &mut dyn Model,
        c: &Combiner,
        slopes: &[f64],
        resp_w: &[(usize, f64)],
        f: &combiner::Features,
        x: ArrayView3<f32>,
        logits: &[f32],
        med: Option<Vec<f32>>,
        bits: Option<Vec<f32>>,
        guided: &mut Guard,
        forward: &mut Guard,
        rng: &mut StdRng,
    ) -> Result<Array3<f32>, AttackError> {
        let p = softmax(logits);
        let n = p.len();
        let mut seed_x = vec![0f32; n];
        let (mut seed_med, mut seed_bits) = (vec![0f32; n], vec![0f32; n]);
        let top = top_k(&p, 2);
        let h = combiner::class_entropy(&p);
        for (i, name) in c.features.iter().enumerate() {
            let w = slopes[i] as f32;
            match name.as_str() {
                combiner::F_MARGIN => {
                    let (a, b) = (top[0], top[1]);
                    for j in 0..n {
                        let da = p[a] * ((a == j) as u8 as f32 - p[j]);
                        let db = p[b] * ((b == j) as u8 as f32 - p[j]);
                        seed_x[j] -= w * (da - db);
                    }
                }
                combiner::F_CLASS_ENTROPY => {
                    for j in 0..n {
                        let lp = (p[j] as f64).max(KL_FLOOR).ln();
                        seed_x[j] -= w * (p[j] as f64 * (lp + h)) as f32;
                    }
                }
                combiner::F_MEDIAN_KL | combiner::F_MEDIAN_L1 => {
                    if let Some(q) = &med {
                        let (sp, sq) = squeeze_seeds(&p, q, name == combiner::F_MEDIAN_KL);
                        for j in 0..n {
                            seed_x[j] += w * sp[j];
                            seed_med[j] += w * sq[j];
                        }
                    }
                }
                combiner::F_BITS_KL | combiner::F_BITS_L1 => {
                    if let Some(q) = &bits {
                        let (sp, sq) = squeeze_seeds(&p, q, name == combiner::F_BITS_KL);
                        for j in 0..n {
                            seed_x[j] += w * sp[j];
                            seed_bits[j] += w * sq[j];
                        }
                    }
                }
                _ => {}
            }
        }
        let mut g = m.gradient(x, &seed_x)?.1;
        if seed_med.iter().any(|v| *v != 0.0) {
            let xm = squeeze::median3(x);
            g = g + m.gradient(xm.view(), &seed_med)?.1;
        }
        if seed_bits.iter().any(|v| *v != 0.0) {
            let xb = squeeze::bit_depth(x, combiner::SQUEEZE_BITS);
            g = g + m.gradient(xb.view(), &seed_bits)?.1;
        }
        if self.spsa > 0 && !resp_w.is_empty() {
            g = g + self.spsa_response(c, resp_w, f, x, guided, forward, rng)?;
        }
        Ok(g)
    }

    /// SPSA estimate of the gradient of Σ slope_i · response feature_i, with ±1-gray probes.
    #[allow(clippy::too_many_arguments)]
    fn spsa_response(
        &self,
        c: &Combiner,
        resp_w: &[(usize, f64)],
        _f: &combiner::Features,
        x: ArrayView3<f32>,
        guided: &mut Guard,
        forward: &mut Guard,
        rng: &mut StdRng,
    ) -> Result<Array3<f32>, AttackError> {
        let part = |f: &combiner::Features| -> f64 {
            resp_w
                .iter()
                .map(|&(i, s)| s * f.values.get(&c.features[i]).copied().unwrap_or(0.0))
                .sum()
        };
        let mut g = Array3::<f32>::zeros(x.dim());
        for _ in 0..self.spsa {
            let u =
                Array3::from_shape_fn(x.dim(), |_| if rng.random::<bool>() { 1f32 } else { -1.0 });
            let xp = (&x + &u).mapv(|v| v.clamp(0.0, 255.0));
            let xn = (&x - &u).mapv(|v| v.clamp(0.0, 255.0));
            let fp = combiner_at(c, xp.view(), guided, forward)?.1;
            let fnn = combiner_at(c, xn.view(), guided, forward)?.1;
            let d = ((part(&fp) - part(&fnn)) / 2.0) as f32;
            g = g + u * d;
        }
        Ok(g / self.spsa as f32)
    }
}
