//! FGSM (Goodfellow et al. 2015): one step of ε·sign(∇ cross-entropy), on 8-bit pixels.
//!
//! [`MinimalFgsm`] is the paper's Foolbox-1.x setting: the smallest ε that flips top-1, here
//! searched on the 8-bit grid (ε = 1, 2, …, max pixel units), since a real frame can only
//! move in whole gray levels. One gradient call, then one forward per ε tried.

use super::{
    Attack, AttackError, AttackResult, Model, argmax, ce_gradient, check_class, finish,
    is_adversarial,
};
use crate::engine::Guard;
use ndarray::{Array3, ArrayView3, Zip};

/// sign(x) with sign(0) = 0 (f32::signum gives ±1 at zero, which would move flat pixels).
fn sign(v: f32) -> f32 {
    if v > 0.0 {
        1.0
    } else if v < 0.0 {
        -1.0
    } else {
        0.0
    }
}

/// The step direction: +sign(∇CE(label)) untargeted, −sign(∇CE(target)) targeted.
pub fn direction(
    m: &mut dyn Model,
    px: ArrayView3<f32>,
    logits: &[f32],
    label: usize,
    target: Option<usize>,
) -> Result<Array3<f32>, AttackError> {
    let (class, s) = match target {
        Some(t) => (t, -1.0),
        None => (label, 1.0),
    };
    let g = ce_gradient(m, px, logits, class)?;
    Ok(g.mapv(|v| s * sign(v)))
}

/// `px + eps·dir`, rounded and clipped to 0–255.
pub fn step(px: ArrayView3<f32>, dir: ArrayView3<f32>, eps: f32) -> Array3<f32> {
    let mut out = px.to_owned();
    Zip::from(&mut out)
        .and(&dir)
        .for_each(|o, &d| *o = (*o + eps * d).round().clamp(0.0, 255.0));
    out
}

/// Fixed-ε FGSM on 8-bit pixels (H×W×3, 0–255), untargeted on the cross-entropy of the label
/// (or targeted when `target` is Some). `guard` must be compiled in plain mode with Seed::Input.
/// Result is rounded to integers and clipped to 0–255. Two engine calls (logits, gradient).
pub fn fgsm(
    guard: &mut Guard,
    px: ArrayView3<f32>,
    label: usize,
    eps: f32,
    target: Option<usize>,
) -> Result<Array3<f32>, AttackError> {
    fgsm_model(guard, px, label, eps, target)
}

/// [`fgsm`] on any [`Model`].
pub fn fgsm_model(
    m: &mut dyn Model,
    px: ArrayView3<f32>,
    label: usize,
    eps: f32,
    target: Option<usize>,
) -> Result<Array3<f32>, AttackError> {
    if !(eps >= 0.0 && eps.is_finite()) {
        return Err(AttackError::Invalid(format!(
            "FGSM ε must be ≥ 0 pixel units, got {eps}"
        )));
    }
    let logits = m.logits(px)?;
    check_class(label, logits.len())?;
    let dir = direction(m, px, &logits, label, target)?;
    Ok(step(px, dir.view(), eps))
}

/// Fixed-ε untargeted FGSM as an [`Attack`].
#[derive(Debug, Clone)]
pub struct FixedFgsm {
    /// ε in pixel units.
    pub eps: f32,
}

impl Attack for FixedFgsm {
    fn name(&self) -> &str {
        "fgsm-fixed"
    }
    fn run(
        &self,
        m: &mut dyn Model,
        px: ArrayView3<f32>,
        label: usize,
        _seed: u64,
    ) -> Result<AttackResult, AttackError> {
        let start = (std::time::Instant::now(), m.calls());
        let adv = fgsm_model(m, px, label, self.eps, None)?;
        // On the 8-bit grid already: float and 8-bit success are the same thing.
        let l = m.logits(adv.view())?;
        let ok = is_adversarial(&l, label, None);
        finish(m, px, adv, label, None, ok, 1, start)
    }
}

/// Minimal-ε FGSM: ε = 1, 2, …, `max_eps` pixel units until top-1 changes (Foolbox 1.x style).
#[derive(Debug, Clone)]
pub struct MinimalFgsm {
    /// Largest ε tried, pixel units (default 8: the realism bound of this project).
    pub max_eps: f32,
}

impl Attack for MinimalFgsm {
    fn name(&self) -> &str {
        "fgsm"
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
        let dir = direction(m, px, &logits, label, None)?;
        let n = self.max_eps.floor().max(1.0) as u32;
        let mut last = px.to_owned();
        for e in 1..=n {
            let adv = step(px, dir.view(), e as f32);
            let l = m.logits(adv.view())?;
            if argmax(&l) != label {
                return finish(m, px, adv, label, None, true, e, start);
            }
            last = adv;
        }
        finish(m, px, last, label, None, false, n, start)
    }
}
