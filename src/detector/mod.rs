//! Detector: per-frame scores → thresholded decisions → per-camera events.
//!
//! Three scores, one chosen per camera ([`DetectorKind`]):
//! - `entropy`: the paper's mean local entropy S̄ of the response (higher = suspicious);
//! - `concentration`: share of |response| in the best window (adversarial patches);
//! - `onset`: KL divergence of the class distribution from the camera's own recent past
//!   (imperceptible perturbations that start while the camera watches; FINDINGS.md).
//!
//! [`CameraDetector`] holds one camera's state: the onset reference, the temporal rule
//! ([`rule`]) and the open event ([`tracker`]). [`profile`] stores calibrated thresholds,
//! [`calibrate`] computes them from clean footage.

pub mod budget;
pub mod calibrate;
pub mod camera;
pub mod cascade;
pub mod combiner;
pub mod cut;
pub mod event;
pub mod fused;
pub mod profile;
pub mod rule;
pub mod score;
pub mod state;
pub mod tracker;
pub mod vanish;

pub use camera::{CameraDetector, DetectorConfig, FrameInput, Observation};
pub use fused::{FusedConfig, FusedDetector, SignalKind};
pub use profile::{CameraProfile, Profile};
pub use score::FrameScores;

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// What a camera runs: the fused detector (every signal, one event per attack) or one score.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum DetectorChoice {
    /// The fused detector ([`fused`]).
    Fused,
    /// One score with its own rule.
    Single(DetectorKind),
}

impl FromStr for DetectorChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "fused" {
            return Ok(DetectorChoice::Fused);
        }
        s.parse::<DetectorKind>()
            .map(DetectorChoice::Single)
            .map_err(|_| format!("unknown detector {s:?} (fused, onset, entropy, concentration)"))
    }
}

impl TryFrom<String> for DetectorChoice {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<DetectorChoice> for String {
    fn from(c: DetectorChoice) -> String {
        match c {
            DetectorChoice::Fused => "fused".into(),
            DetectorChoice::Single(k) => k.name().into(),
        }
    }
}

/// Which per-frame score drives a camera's events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DetectorKind {
    /// The paper's S̄ (mean 3×3 local entropy of the gray response map), bits.
    Entropy,
    /// Share of Σ|response| inside the best window (0–1): adversarial patches.
    Concentration,
    /// KL(p_t ‖ reference) of the class distribution, nats: attack onsets on video.
    #[default]
    Onset,
}

impl DetectorKind {
    /// All kinds, in a fixed order (calibration computes every one).
    pub const ALL: [DetectorKind; 3] = [
        DetectorKind::Onset,
        DetectorKind::Entropy,
        DetectorKind::Concentration,
    ];

    /// The name used in configs, profiles and events.
    pub fn name(self) -> &'static str {
        match self {
            DetectorKind::Entropy => "entropy",
            DetectorKind::Concentration => "concentration",
            DetectorKind::Onset => "onset",
        }
    }
}

impl fmt::Display for DetectorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for DetectorKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "entropy" => Ok(Self::Entropy),
            "concentration" | "patch" => Ok(Self::Concentration),
            "onset" | "kl" => Ok(Self::Onset),
            _ => Err(format!(
                "unknown detector {s:?} (onset, entropy, concentration)"
            )),
        }
    }
}
