//! Per-frame scores and the onset reference (the camera's recent class distribution).

use serde::Serialize;
use std::collections::VecDeque;

/// Probability floor inside the KL divergence: a class the reference never saw costs at most
/// ln(1/FLOOR) nats per unit of mass instead of infinity.
pub const KL_FLOOR: f32 = 1e-6;

/// All scores of one frame (every detector is computed; one drives the events).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct FrameScores {
    /// The paper's S̄, bits.
    pub entropy: f64,
    /// Share of Σ|response| in the best window, 0–1.
    pub concentration: f64,
    /// KL(p_t ‖ p_{t−1}), nats (0 for a camera's first frame).
    pub kl: f64,
    /// KL(p_t ‖ reference), nats: the onset score (0 while the reference is empty).
    pub onset: f64,
}

/// KL(p ‖ q) in nats, with both floored at [`KL_FLOOR`] (inputs are softmax outputs).
pub fn kl_divergence(p: &[f32], q: &[f32]) -> f64 {
    p.iter()
        .zip(q)
        .map(|(&a, &b)| {
            let a = a.max(KL_FLOOR) as f64;
            let b = b.max(KL_FLOOR) as f64;
            a * (a / b).ln()
        })
        .sum::<f64>()
        .max(0.0)
}

/// The reference a frame's distribution is compared with: the mean class distribution of the
/// last `len` frames that looked normal. Averaging absorbs ordinary flicker (a class that
/// came and went in the window keeps some mass), so only a departure from everything the
/// camera showed lately scores high. Frozen while an event is open, so an attack that
/// lasts keeps scoring against the pre-onset scene.
#[derive(Debug, Clone)]
pub struct OnsetReference {
    len: usize,
    frames: VecDeque<Vec<f32>>,
    sum: Vec<f64>,
}

impl OnsetReference {
    /// A reference over the last `len` (≥ 1) normal frames.
    pub fn new(len: usize) -> Self {
        OnsetReference {
            len: len.max(1),
            frames: VecDeque::new(),
            sum: Vec::new(),
        }
    }

    /// Frames in the window.
    pub fn count(&self) -> usize {
        self.frames.len()
    }

    /// Adds a normal frame's distribution, evicting the oldest past `len`.
    pub fn push(&mut self, p: &[f32]) {
        if self.sum.len() != p.len() {
            self.clear();
            self.sum = vec![0.0; p.len()];
        }
        for (s, &v) in self.sum.iter_mut().zip(p) {
            *s += v as f64;
        }
        self.frames.push_back(p.to_vec());
        if self.frames.len() > self.len
            && let Some(old) = self.frames.pop_front()
        {
            for (s, v) in self.sum.iter_mut().zip(old) {
                *s -= v as f64;
            }
        }
    }

    /// Forgets everything (after a scene change was accepted as the new normal).
    pub fn clear(&mut self) {
        self.frames.clear();
        self.sum.iter_mut().for_each(|s| *s = 0.0);
    }

    /// KL(p ‖ mean of the window); `None` while the window is empty.
    pub fn divergence(&self, p: &[f32]) -> Option<f64> {
        if self.frames.is_empty() || self.sum.len() != p.len() {
            return None;
        }
        let n = self.frames.len() as f64;
        let q: Vec<f32> = self.sum.iter().map(|s| (s / n) as f32).collect();
        Some(kl_divergence(p, &q))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kl_is_zero_for_equal_and_positive_otherwise() {
        let p = [0.7, 0.2, 0.1];
        assert!(kl_divergence(&p, &p).abs() < 1e-9);
        assert!(kl_divergence(&p, &[0.1, 0.2, 0.7]) > 0.5);
    }

    #[test]
    fn reference_absorbs_flicker_between_two_classes() {
        let a = [0.9, 0.05, 0.05];
        let b = [0.05, 0.9, 0.05];
        let c = [0.05, 0.05, 0.9];
        let mut r = OnsetReference::new(4);
        assert!(r.divergence(&a).is_none());
        for p in [a, b, a, b] {
            r.push(&p);
        }
        // b flickered with a: close to the mean; c never appeared: far.
        let kb = r.divergence(&b).unwrap();
        let kc = r.divergence(&c).unwrap();
        assert!(kc > 3.0 * kb, "kb {kb} kc {kc}");
        // The window slides: after four c frames, c is the normal.
        for _ in 0..4 {
            r.push(&c);
        }
        assert!(r.divergence(&c).unwrap() < 1e-6);
    }
}
