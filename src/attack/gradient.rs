//! Foolbox-style gradient attack: one step along the L2-normalised cross-entropy gradient,
//! with the smallest step (searched on a grid) that flips top-1.
//!
//! The direction is scaled to an RMS of one pixel unit, so ε is the RMS perturbation in pixel
//! units; ε = 0.25, 0.5, … up to `max_eps` is tried, each clipped to L∞ ≤ `max_eps` (an L2 step
//! puts large changes on a few pixels; a camera attack stays within 8 gray levels) and rounded
//! to 8 bits before it is judged.
//! One gradient call, then one forward per ε tried.

use super::{Attack, AttackError, AttackResult, Model, ce_gradient, check_class, finish};
use ndarray::{ArrayView3, Zip};

/// The gradient attack with a minimal-ε line search.
#[derive(Debug, Clone)]
pub struct GradientAttack {
    /// Largest RMS step tried, and the L∞ cap, pixel units (default 8).
    pub max_eps: f32,
}

impl Attack for GradientAttack {
    fn name(&self) -> &str {
        "gradient"
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
        let mut g = ce_gradient(m, px, &logits, label)?;
        let rms = (g.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / g.len().max(1) as f64)
            .sqrt() as f32;
        if rms > 0.0 {
            g.mapv_inplace(|v| v / rms);
        }
        let n = (self.max_eps * 4.0).floor().max(1.0) as u32;
        let cap = self.max_eps;
        let mut last = px.to_owned();
        for i in 1..=n {
            let eps = i as f32 * 0.25;
            let mut adv = px.to_owned();
            Zip::from(&mut adv)
                .and(&g)
                .for_each(|a, &d| *a = (*a + (eps * d).clamp(-cap, cap)).round().clamp(0.0, 255.0));
            let l = m.logits(adv.view())?;
            if super::argmax(&l) != label {
                return finish(m, px, adv, label, None, true, i, start);
            }
            last = adv;
        }
        finish(m, px, last, label, None, false, n, start)
    }
}
