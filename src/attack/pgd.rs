//! PGD / BIM under L∞ (Madry et al. 2018; Kurakin et al. 2017): repeated signed-gradient steps
//! projected back into the ε-ball, on the 8-bit grid, optionally from a random start.
//!
//! Stops early once top-1 has changed (untargeted) or reached the target, to save engine calls.
//! Each iteration: one forward (logits for the softmax seed and the stop test), one gradient.

use super::fgsm::direction;
use super::{Attack, AttackError, AttackResult, Model, check_class, finish, is_adversarial};
use ndarray::{ArrayView3, Zip};
use rand::{Rng, SeedableRng, rngs::StdRng};

/// PGD/BIM parameters (pixel units).
#[derive(Debug, Clone)]
pub struct Pgd {
    /// L∞ radius.
    pub eps: f32,
    /// Step size.
    pub step: f32,
    /// Maximum iterations.
    pub iters: u32,
    /// Start from a uniform random point of the ε-ball (PGD) instead of the clean image (BIM).
    pub random_start: bool,
    /// Targeted at this class when Some.
    pub target: Option<usize>,
}

impl Default for Pgd {
    fn default() -> Self {
        Pgd {
            eps: 4.0,
            step: 1.0,
            iters: 10,
            random_start: true,
            target: None,
        }
    }
}

impl Attack for Pgd {
    fn name(&self) -> &str {
        "pgd"
    }
    fn run(
        &self,
        m: &mut dyn Model,
        px: ArrayView3<f32>,
        label: usize,
        seed: u64,
    ) -> Result<AttackResult, AttackError> {
        let start = (std::time::Instant::now(), m.calls());
        let mut rng = StdRng::seed_from_u64(seed);
        let eps = self.eps.max(0.0);
        let mut x = px.to_owned();
        if self.random_start && eps > 0.0 {
            Zip::from(&mut x).and(&px).for_each(|a, &c| {
                *a = (c + rng.random_range(-eps..=eps)).round().clamp(0.0, 255.0)
            });
        }
        let mut it = 0;
        while it < self.iters {
            let l = m.logits(x.view())?;
            check_class(label, l.len())?;
            if it > 0 && is_adversarial(&l, label, self.target) {
                break;
            }
            let d = direction(m, x.view(), &l, label, self.target)?;
            Zip::from(&mut x).and(&d).and(&px).for_each(|a, &s, &c| {
                let v = (*a + self.step * s).clamp(c - eps, c + eps);
                *a = v.round().clamp(0.0, 255.0)
            });
            it += 1;
        }
        let l = m.logits(x.view())?;
        let ok = is_adversarial(&l, label, self.target);
        finish(m, px, x, label, self.target, ok, it, start)
    }
}
