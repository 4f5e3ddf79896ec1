//! DeepFool (Moosavi-Dezfooli et al. 2016), L2, Foolbox-1.x settings: the top-10 classes at
//! the clean image are the candidates, overshoot 0.02, at most 50 steps.
//!
//! Each step needs ∇(z_k − z_orig) for the 9 other candidates: one gradient call each, with
//! seed onehot(k) − onehot(orig). Works in float pixels; the result is then rounded to 8 bits,
//! and `survives_quantisation` tells whether that alone still fools the model. When it does not,
//! the perturbation is scaled up (×1.5 … ×16, L∞ ≤ 8) until the 8-bit frame does: `success`.

use super::{Attack, AttackError, AttackResult, Model, argmax, check_class, finish};
use crate::engine::top_k;
use ndarray::{Array3, ArrayView3, Zip};

/// DeepFool parameters.
#[derive(Debug, Clone)]
pub struct DeepFool {
    /// Candidate classes (top-k at the clean image, the original included).
    pub candidates: usize,
    /// Overshoot factor.
    pub overshoot: f32,
    /// Maximum steps.
    pub max_steps: u32,
    /// L∞ cap of the 8-bit repair (pixel units).
    pub max_linf: f32,
}

impl Default for DeepFool {
    fn default() -> Self {
        DeepFool {
            candidates: 10,
            overshoot: 0.02,
            max_steps: 50,
            max_linf: 8.0,
        }
    }
}

impl Attack for DeepFool {
    fn name(&self) -> &str {
        "deepfool"
    }
    fn run(
        &self,
        m: &mut dyn Model,
        px: ArrayView3<f32>,
        label: usize,
        _seed: u64,
    ) -> Result<AttackResult, AttackError> {
        let start = (std::time::Instant::now(), m.calls());
        let logits = m.logits(px)?;
        check_class(label, logits.len())?;
        let n = logits.len();
        let cands: Vec<usize> = top_k(&logits, self.candidates.max(2))
            .into_iter()
            .filter(|&k| k != label)
            .collect();
        let mut r_tot = Array3::<f32>::zeros(px.dim());
        let mut x = px.to_owned();
        let mut cur = logits;
        let mut steps = 0;
        while steps < self.max_steps && argmax(&cur) == label {
            let mut best: Option<(f32, f32, Array3<f32>)> = None;
            for &k in &cands {
                let mut seed = vec![0f32; n];
                seed[k] = 1.0;
                seed[label] = -1.0;
                let (l, w) = m.gradient(x.view(), &seed)?;
                cur = l;
                let f = cur[k] - cur[label];
                let wn2 = w.iter().map(|v| v * v).sum::<f32>();
                if wn2 <= 0.0 {
                    continue;
                }
                let dist = f.abs() / wn2.sqrt();
                if best.as_ref().is_none_or(|b| dist < b.0) {
                    best = Some((dist, (f.abs() + 1e-4) / wn2, w));
                }
            }
            let Some((_, scale, w)) = best else { break };
            r_tot.scaled_add(scale, &w);
            Zip::from(&mut x)
                .and(&px)
                .and(&r_tot)
                .for_each(|a, &c, &r| *a = (c + (1.0 + self.overshoot) * r).clamp(0.0, 255.0));
            steps += 1;
            cur = m.logits(x.view())?;
        }
        let float_ok = argmax(&cur) != label;
        let mut q = x.clone();
        super::quantise(&mut q);
        let direct = argmax(&m.logits(q.view())?) != label;
        if float_ok && !direct {
            // Rounding to 8 bits undid it (DeepFool stops right at the boundary, and most of
            // its per-pixel changes are below half a gray level): scale the perturbation up
            // until the 8-bit frame fools the model, keeping L∞ ≤ `max_linf`.
            for f in [1.5f32, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0] {
                let mut y = px.to_owned();
                Zip::from(&mut y).and(&r_tot).for_each(|a, &r| {
                    let d = (f * (1.0 + self.overshoot) * r).clamp(-self.max_linf, self.max_linf);
                    *a = (*a + d).round().clamp(0.0, 255.0)
                });
                if argmax(&m.logits(y.view())?) != label {
                    x = y;
                    break;
                }
            }
        }
        let mut r = finish(m, px, x, label, None, float_ok, steps, start)?;
        r.survives_quantisation = float_ok && direct;
        Ok(r)
    }
}
