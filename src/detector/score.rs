//! Per-frame scores: the response statistics and the jumps of the class distribution.

use serde::Serialize;

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
    /// The fused detector's patch score: the concentration scaled by the texture gate
    /// ([`crate::response::texture::gate`]); the concentration itself where no gate runs.
    pub patch: f64,
    /// KL(p_t ‖ p_{t−1}), nats (0 for a camera's first frame).
    pub kl: f64,
    /// Symmetric KL between p_t and p_{t−1}, nats: the onset (jump) score; 0 on the first frame.
    pub onset: f64,
    /// A detector camera's vanishing track: the confidence of a track lost on this frame while
    /// its pixels barely changed (0 on every other frame, and on classifiers).
    pub vanish: f64,
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

/// The onset score: symmetric KL between two class distributions, KL(p‖q) + KL(q‖p), nats.
/// Symmetric because an attack's onset moves mass *onto* classes the scene never showed
/// (large KL(p_t‖p_{t−1})) and its end moves it *back* (large KL(p_{t−1}‖p_t)); one score
/// sees both jumps.
pub fn jump(p: &[f32], q: &[f32]) -> f64 {
    kl_divergence(p, q) + kl_divergence(q, p)
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
    fn jump_is_symmetric() {
        let (p, q) = ([0.7, 0.2, 0.1], [0.1, 0.2, 0.7]);
        assert!((jump(&p, &q) - jump(&q, &p)).abs() < 1e-12);
        assert!(jump(&p, &p).abs() < 1e-9);
    }
}
