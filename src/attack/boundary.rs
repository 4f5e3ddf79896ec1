//! Boundary attack (Brendel, Rauber & Bethge 2018): decision-based, forward calls only.
//!
//! Starts from uniform noise that is misclassified, blended towards the clean image by binary
//! search, then walks along the decision boundary: a random orthogonal step on the sphere
//! around the clean image (size δ·d), then a step towards it (ε·d), each judged by one forward
//! call, with δ and ε adapted to the recent success rates (target 50% and 25%, as the paper).
//! Every queried candidate is rounded to 8 bits first, so the result is adversarial as a frame.
//! Budget: `max_queries` forwards (default 200, far below the paper's thousands: expect a
//! larger perturbation than theirs).

use super::{Attack, AttackError, AttackResult, Forward, Model, argmax, check_class, finish};
use ndarray::{Array3, ArrayView3, Zip};
use rand::{Rng, SeedableRng, rngs::StdRng};
use rand_distr::StandardNormal;

/// Boundary-attack parameters.
#[derive(Debug, Clone)]
pub struct Boundary {
    /// Forward calls allowed in all (initialisation included).
    pub max_queries: u32,
    /// Initial orthogonal step, relative to the current distance.
    pub spherical_step: f32,
    /// Initial step towards the clean image, relative to the current distance.
    pub source_step: f32,
    /// Random noise images tried to find a misclassified start.
    pub init_tries: u32,
}

impl Default for Boundary {
    fn default() -> Self {
        Boundary {
            max_queries: 200,
            spherical_step: 0.05,
            source_step: 0.05,
            init_tries: 20,
        }
    }
}

fn q8(a: &Array3<f32>) -> Array3<f32> {
    a.mapv(|v| v.round().clamp(0.0, 255.0))
}

fn norm(a: &Array3<f32>) -> f32 {
    a.iter().map(|v| v * v).sum::<f32>().sqrt()
}

impl Boundary {
    /// The attack on a forward-only model (what [`Attack::run`] calls).
    pub fn attack(
        &self,
        m: &mut dyn Forward,
        px: ArrayView3<f32>,
        label: usize,
        seed: u64,
    ) -> Result<AttackResult, AttackError> {
        let start = (std::time::Instant::now(), m.calls());
        let mut rng = StdRng::seed_from_u64(seed);
        let mut queries = 0u32;
        let is_adv = |m: &mut dyn Forward, x: &Array3<f32>, q: &mut u32| {
            *q += 1;
            let l = m.logits(x.view())?;
            check_class(label, l.len())?;
            Ok::<bool, AttackError>(argmax(&l) != label)
        };
        // 1. A misclassified noise image.
        let mut start_img = None;
        for _ in 0..self.init_tries {
            let noise = px.map(|_| rng.random_range(0.0f32..=255.0).round());
            if is_adv(m, &noise, &mut queries)? {
                start_img = Some(noise);
                break;
            }
        }
        let Some(noise) = start_img else {
            let adv = px.to_owned();
            return finish(m, px, adv, label, None, false, 0, start);
        };
        // 2. Binary search on the blend clean → noise for the closest adversarial blend.
        let (mut lo, mut hi) = (0f32, 1f32);
        let blend = |t: f32| {
            let mut b = px.to_owned();
            Zip::from(&mut b)
                .and(&noise)
                .for_each(|a, &n| *a += t * (n - *a));
            q8(&b)
        };
        for _ in 0..10 {
            let mid = 0.5 * (lo + hi);
            if is_adv(m, &blend(mid), &mut queries)? {
                hi = mid;
            } else {
                lo = mid;
            }
        }
        let mut x = blend(hi);
        // 3. The walk.
        let (mut delta, mut eps) = (self.spherical_step, self.source_step);
        let (mut sph_hist, mut src_hist): (Vec<bool>, Vec<bool>) = (vec![], vec![]);
        let mut steps = 0u32;
        while queries + 2 <= self.max_queries {
            steps += 1;
            let diff = &x - &px;
            let d = norm(&diff);
            if d < 1e-3 {
                break;
            }
            // Orthogonal perturbation of norm δ·d, projected back onto the sphere of radius d.
            let mut eta: Array3<f32> = px.map(|_| rng.sample::<f32, _>(StandardNormal));
            let dir = &diff / d;
            let along: f32 = eta.iter().zip(dir.iter()).map(|(a, b)| a * b).sum();
            eta.scaled_add(-along, &dir);
            let en = norm(&eta).max(1e-12);
            eta.mapv_inplace(|v| v * delta * d / en);
            let mut sph = &diff + &eta;
            let sn = norm(&sph).max(1e-12);
            sph.mapv_inplace(|v| v * d / sn);
            let cand_s = q8(&(&px + &sph));
            let ok_s = is_adv(m, &cand_s, &mut queries)?;
            sph_hist.push(ok_s);
            if ok_s {
                let toward = sph.mapv(|v| v * (1.0 - eps));
                let cand = q8(&(&px + &toward));
                let ok = is_adv(m, &cand, &mut queries)?;
                src_hist.push(ok);
                x = if ok { cand } else { cand_s };
            }
            // Adapt every 10 trials towards the paper's target success rates.
            if sph_hist.len() >= 10 {
                let r = sph_hist.iter().filter(|b| **b).count() as f32 / sph_hist.len() as f32;
                delta *= if r > 0.5 { 1.5 } else { 1.0 / 1.5 };
                delta = delta.clamp(1e-3, 1.0);
                sph_hist.clear();
            }
            if src_hist.len() >= 10 {
                let r = src_hist.iter().filter(|b| **b).count() as f32 / src_hist.len() as f32;
                eps *= if r > 0.25 { 1.5 } else { 1.0 / 1.5 };
                eps = eps.clamp(1e-4, 0.9);
                src_hist.clear();
            }
        }
        // Every accepted point was judged as an 8-bit frame.
        finish(m, px, x, label, None, true, steps, start)
    }
}

impl Attack for Boundary {
    fn name(&self) -> &str {
        "boundary"
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
