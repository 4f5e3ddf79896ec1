//! Calibration profiles: per camera (and model) thresholds learned from clean footage.
//!
//! ```toml
//! version = 1
//! [cameras.street]
//! model = "squeezenet1.1"
//! detector = "onset"        # the score this camera uses unless --detector says otherwise
//! fpr = 0.01                # target false-positive rate per frame
//! frames = 377              # clean frames the numbers come from
//! top1_change_rate = 0.27   # flicker: share of consecutive frames whose top-1 differs
//! [cameras.street.onset]
//! threshold = 2.9
//! end_threshold = 3.1
//! mean = 0.6
//! std = 0.5
//! quantiles = { p50 = 0.4, p90 = 1.2, p99 = 2.9, max = 3.4 }
//! ```

use super::DetectorKind;
use super::combiner::Combiner;
use super::fused::{OnsetReference, SignalConfig, SignalKind};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// Current profile format version.
pub const PROFILE_VERSION: u32 = 1;

/// Errors reading or writing a profile.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    /// The file could not be read or written.
    #[error("profile {path}: {source}")]
    Io {
        /// File path.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The TOML is malformed or has unknown keys.
    #[error("profile {path}: {msg}")]
    Parse {
        /// File path.
        path: String,
        /// What is wrong (names the key).
        msg: String,
    },
}

/// Summary quantiles of a score on clean footage.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Quantiles {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest clean value.
    pub max: f64,
}

/// One score's calibration.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScoreProfile {
    /// Start threshold: at most `fpr` of clean frames score above it.
    pub threshold: f64,
    /// End (hysteresis) threshold: an open event ends after frames at or below it.
    pub end_threshold: f64,
    /// Mean on clean frames.
    pub mean: f64,
    /// Standard deviation on clean frames.
    pub std: f64,
    /// Quantiles on clean frames.
    pub quantiles: Quantiles,
}

/// One camera's calibration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CameraProfile {
    /// Model (manifest name) the scores come from; a profile for another model is not used.
    pub model: String,
    /// Default detector of this camera.
    pub detector: DetectorKind,
    /// Target per-frame false-positive rate the thresholds were set for.
    pub fpr: f64,
    /// Clean frames measured.
    pub frames: usize,
    /// Frame sampling used while calibrating (every k-th decoded frame).
    #[serde(default = "one")]
    pub every_nth: u32,
    /// Share of consecutive clean frames whose top-1 class differs (classifier flicker).
    #[serde(default)]
    pub top1_change_rate: Option<f64>,
    /// Onset (class-distribution KL) calibration.
    #[serde(default)]
    pub onset: Option<ScoreProfile>,
    /// Mean-entropy S̄ calibration.
    #[serde(default)]
    pub entropy: Option<ScoreProfile>,
    /// Response-concentration calibration.
    #[serde(default)]
    pub concentration: Option<ScoreProfile>,
    /// The fused detector's calibration (false-alarm budget shared among its signals).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fused: Option<FusedProfile>,
}

/// One signal of the fused detector, as calibrated.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignalProfile {
    /// Start threshold.
    pub threshold: f64,
    /// End threshold.
    pub end_threshold: f64,
    /// Its share of the budget, false alarms per camera-hour.
    pub budget_per_hour: f64,
    /// False events per hour the threshold is expected to give (tail fit), per camera-hour.
    pub expected_per_hour: f64,
    /// Events it gave on the calibration footage at this threshold.
    pub events_on_footage: u32,
}

impl SignalProfile {
    /// The detector configuration of this signal: calibrated thresholds, default rule shape.
    pub fn config(&self, kind: SignalKind) -> SignalConfig {
        SignalConfig {
            threshold: self.threshold,
            end_threshold: self.end_threshold,
            ..SignalConfig::default_for(kind)
        }
    }
}

/// The fused detector's calibration of one camera.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FusedProfile {
    /// False alarms per camera-hour the thresholds were set for, all signals together.
    pub budget_per_hour: f64,
    /// Stream time of clean footage measured, hours.
    pub hours: f64,
    /// Onset reference.
    #[serde(default)]
    pub reference: OnsetReference,
    /// Frames in the onset reference.
    #[serde(default = "three")]
    pub reference_frames: usize,
    /// Scene-cut threshold, gray levels.
    #[serde(default)]
    pub cut_threshold: Option<f64>,
    /// The camera's usual pixel change, gray levels (the onset's motion discount); absent in
    /// profiles calibrated before it existed, whose thresholds were set without it.
    #[serde(default)]
    pub motion_scale: Option<f64>,
    /// The patch signal's texture floor, gray levels; absent in profiles calibrated before
    /// the gate existed (their patch threshold was set on the bare concentration).
    #[serde(default)]
    pub patch_texture: Option<f64>,
    /// Per signal.
    pub signals: BTreeMap<SignalKind, SignalProfile>,
}

fn three() -> usize {
    3
}

fn one() -> u32 {
    1
}

impl CameraProfile {
    /// The calibration of one score, if it was measured.
    pub fn score(&self, kind: DetectorKind) -> Option<&ScoreProfile> {
        match kind {
            DetectorKind::Onset => self.onset.as_ref(),
            DetectorKind::Entropy => self.entropy.as_ref(),
            DetectorKind::Concentration => self.concentration.as_ref(),
        }
    }
}

/// A calibration profile: camera name → its calibration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// Format version ([`PROFILE_VERSION`]).
    pub version: u32,
    /// Cameras by name.
    #[serde(default)]
    pub cameras: BTreeMap<String, CameraProfile>,
    /// Learned combiners by model name (see the combiner section below).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub combiners: BTreeMap<String, Combiner>,
}

impl Default for Profile {
    fn default() -> Self {
        Profile {
            version: PROFILE_VERSION,
            cameras: BTreeMap::new(),
            combiners: BTreeMap::new(),
        }
    }
}

impl Profile {
    /// Parses profile TOML; `origin` names the file in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Profile, ProfileError> {
        let p: Profile = toml::from_str(text).map_err(|e| ProfileError::Parse {
            path: origin.into(),
            msg: e.message().trim().to_string(),
        })?;
        if p.version != PROFILE_VERSION {
            return Err(ProfileError::Parse {
                path: origin.into(),
                msg: format!(
                    "key `version`: {} is not supported (expected {PROFILE_VERSION})",
                    p.version
                ),
            });
        }
        Ok(p)
    }

    /// Reads a profile file.
    pub fn load(path: &Path) -> Result<Profile, ProfileError> {
        let text = std::fs::read_to_string(path).map_err(|source| ProfileError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Writes the profile as TOML.
    pub fn save(&self, path: &Path) -> Result<(), ProfileError> {
        let text = toml::to_string_pretty(self).map_err(|e| ProfileError::Parse {
            path: path.display().to_string(),
            msg: e.to_string(),
        })?;
        std::fs::write(path, text).map_err(|source| ProfileError::Io {
            path: path.display().to_string(),
            source,
        })
    }

    /// The camera's calibration if it exists and was made with `model`.
    pub fn lookup(&self, camera: &str, model: &str) -> Option<&CameraProfile> {
        self.cameras.get(camera).filter(|c| c.model == model)
    }
}

// ---- Combiner section (issue 12 §3) -------------------------------------------------------
// A combiner is per model, not per camera: it is fitted on labelled photos (`advguard fit`),
// while its alarm threshold is a camera's to calibrate like any other score.

impl Profile {
    /// The learned combiner of `model`, if one was fitted.
    pub fn combiner(&self, model: &str) -> Option<&Combiner> {
        self.combiners.get(model)
    }

    /// Stores (or replaces) the combiner of `model`.
    pub fn set_combiner(&mut self, model: &str, c: Combiner) {
        self.combiners.insert(model.to_string(), c);
    }
}
// ---- end of the combiner section ------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_unknown_key_is_named() {
        let mut p = Profile::default();
        p.cameras.insert(
            "street".into(),
            CameraProfile {
                model: "squeezenet1.1".into(),
                detector: DetectorKind::Onset,
                fpr: 0.01,
                frames: 100,
                every_nth: 1,
                top1_change_rate: Some(0.25),
                onset: Some(ScoreProfile {
                    threshold: 2.0,
                    end_threshold: 2.5,
                    mean: 0.5,
                    std: 0.4,
                    quantiles: Quantiles {
                        p50: 0.4,
                        p90: 1.0,
                        p99: 2.0,
                        max: 2.2,
                    },
                }),
                entropy: None,
                concentration: None,
                fused: None,
            },
        );
        let text = toml::to_string_pretty(&p).unwrap();
        let q = Profile::parse(&text, "x.toml").unwrap();
        assert_eq!(p, q);
        assert!(q.lookup("street", "squeezenet1.1").is_some());
        assert!(q.lookup("street", "mobilenet_v2").is_none());
        let bad = text.replace("fpr =", "fpr_typo =");
        let e = Profile::parse(&bad, "x.toml").unwrap_err().to_string();
        assert!(e.contains("fpr_typo"), "{e}");
    }
}
