//! One-pixel attack (Su et al. 2019): differential evolution over k pixels (x, y, r, g, b),
//! minimising the ground-truth probability, stopping once it is below 5% (as the paper).
//!
//! Forward calls only (it sees the model as [`Forward`]). Budget: `population` ×
//! (1 + `generations`) forwards at most; defaults 20 × 7 = 140 with k = 3 pixels
//! (Su et al. used 400 × 100: this budget is ~300× smaller, so expect a lower success rate).
//! DE/rand/1 with F = 0.5 and no crossover, as Su et al.; colours start from N(128, 127).

use super::{Attack, AttackError, AttackResult, Forward, Model, check_class, finish};
use crate::engine::softmax;
use ndarray::{Array3, ArrayView3};
use rand::{Rng, SeedableRng, rngs::StdRng};
use rand_distr::{Distribution, Normal};

/// One-pixel (k-pixel) attack parameters.
#[derive(Debug, Clone)]
pub struct OnePixel {
    /// Pixels changed (k).
    pub pixels: usize,
    /// DE population size.
    pub population: usize,
    /// DE generations after the initial population.
    pub generations: u32,
    /// Stop once the ground-truth probability is below this.
    pub stop_prob: f32,
    /// Differential weight F.
    pub f: f32,
}

impl Default for OnePixel {
    fn default() -> Self {
        OnePixel {
            pixels: 3,
            population: 20,
            generations: 6,
            stop_prob: 0.05,
            f: 0.5,
        }
    }
}

/// Writes a candidate's k pixels into a copy of the image.
pub fn apply(px: ArrayView3<f32>, genes: &[f32]) -> Array3<f32> {
    let (h, w, _) = px.dim();
    let mut out = px.to_owned();
    for g in genes.chunks_exact(5) {
        let x = (g[0].round() as isize).clamp(0, w as isize - 1) as usize;
        let y = (g[1].round() as isize).clamp(0, h as isize - 1) as usize;
        for c in 0..3 {
            out[[y, x, c]] = g[2 + c].round().clamp(0.0, 255.0);
        }
    }
    out
}

impl OnePixel {
    /// The attack on a forward-only model (what [`Attack::run`] calls).
    pub fn attack(
        &self,
        m: &mut dyn Forward,
        px: ArrayView3<f32>,
        label: usize,
        seed: u64,
    ) -> Result<AttackResult, AttackError> {
        let start = (std::time::Instant::now(), m.calls());
        if self.pixels == 0 || self.population < 4 {
            return Err(AttackError::Invalid(
                "one-pixel needs ≥ 1 pixel and a population ≥ 4".into(),
            ));
        }
        let (h, w, _) = px.dim();
        let mut rng = StdRng::seed_from_u64(seed);
        let color = Normal::new(128f32, 127f32).expect("valid normal");
        let dims = 5 * self.pixels;
        let hi = |j: usize| match j % 5 {
            0 => (w - 1) as f32,
            1 => (h - 1) as f32,
            _ => 255.0,
        };
        let fit_of = |m: &mut dyn Forward, g: &[f32]| -> Result<f32, AttackError> {
            let l = m.logits(apply(px, g).view())?;
            check_class(label, l.len())?;
            Ok(softmax(&l)[label])
        };
        let mut pop: Vec<Vec<f32>> = Vec::with_capacity(self.population);
        let mut fit = Vec::with_capacity(self.population);
        for _ in 0..self.population {
            let g: Vec<f32> = (0..dims)
                .map(|j| match j % 5 {
                    0 | 1 => rng.random_range(0.0..=hi(j)),
                    _ => color.sample(&mut rng).clamp(0.0, 255.0),
                })
                .collect();
            fit.push(fit_of(m, &g)?);
            pop.push(g);
        }
        let best_of = |fit: &[f32]| {
            (0..fit.len())
                .min_by(|&a, &b| fit[a].total_cmp(&fit[b]))
                .unwrap_or(0)
        };
        let mut gen_done = 0;
        while gen_done < self.generations && fit[best_of(&fit)] >= self.stop_prob {
            for i in 0..self.population {
                let pick = |rng: &mut StdRng| loop {
                    let j = rng.random_range(0..self.population);
                    if j != i {
                        break j;
                    }
                };
                let (a, b, c) = (pick(&mut rng), pick(&mut rng), pick(&mut rng));
                let trial: Vec<f32> = (0..dims)
                    .map(|j| (pop[a][j] + self.f * (pop[b][j] - pop[c][j])).clamp(0.0, hi(j)))
                    .collect();
                let f = fit_of(m, &trial)?;
                if f <= fit[i] {
                    pop[i] = trial;
                    fit[i] = f;
                }
                if fit[i] < self.stop_prob {
                    break;
                }
            }
            gen_done += 1;
        }
        let adv = apply(px, &pop[best_of(&fit)]);
        // Pixels are integers from the start: nothing is lost to 8-bit rounding.
        let l = m.logits(adv.view())?;
        let ok = super::argmax(&l) != label;
        finish(m, px, adv, label, None, ok, gen_done, start)
    }
}

impl Attack for OnePixel {
    fn name(&self) -> &str {
        "onepixel"
    }
    fn run(
        &self,
        m: &mut dyn Model,
        px: ArrayView3<f32>,
        label: usize,
        seed: u64,
    ) -> Result<AttackResult, AttackError> {
        self.attack(m, px, label, seed)
    }
}
