//! The cameras TOML of `advguard watch --config`: `[[camera]]`, `[metrics]` (alias `[server]`),
//! and the alert tables `[[sink]]`, `[spool]`, `[alerts]` (see docs/ALERTS.md).
//!
//! ```toml
//! [[camera]]
//! name = "gate"
//! source = "rtsp://viewer:${GATE_PASSWORD}@10.0.0.5/stream1"
//! model = "squeezenet1.1"     # optional, default: --model-name
//! profile = "gate.toml"       # optional calibration profile
//! every_nth = 2               # optional frame sampling
//! max_fps = 10.0              # optional
//! detector = "onset"          # optional: fused | onset | entropy | concentration
//!
//! [metrics]
//! bind = "127.0.0.1:9464"
//! ```
//!
//! Every table rejects unknown keys with an error that names the key and its line.
//! Strings may use `${ENV_VAR}` (`$$` for a literal `$`), so secrets stay out of the file.

use crate::alert::config::{AlertsConfig, SinkConfig, SpoolConfig, expand_env};
use crate::detector::DetectorChoice;
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// One `[[camera]]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CameraConfig {
    /// Unique camera name (labels metrics, events and the profile entry).
    pub name: String,
    /// rtsp://…, a file path, /dev/videoN, http(s)://… MJPEG, or test:[PATTERN].
    pub source: String,
    /// Model manifest name; default: the command line's `--model-name`.
    #[serde(default)]
    pub model: Option<String>,
    /// Calibration profile TOML for this camera; default: the command line's `--profile`.
    #[serde(default)]
    pub profile: Option<String>,
    /// Keep every k-th decoded frame.
    #[serde(default)]
    pub every_nth: Option<u32>,
    /// At most this many frames per second.
    #[serde(default)]
    pub max_fps: Option<f64>,
    /// The score that drives this camera's events.
    #[serde(default)]
    pub detector: Option<DetectorChoice>,
    /// Fixed start threshold (overrides the profile).
    #[serde(default)]
    pub threshold: Option<f64>,
    /// Guard pass on every k-th frame, the rest forward only (`"auto"`: from the compute
    /// budget; 1: every frame); default: the command line's `--guard-every`.
    #[serde(default)]
    pub guard_every: Option<crate::detector::cascade::GuardEvery>,
    /// Files only: pace at the stream's rate and drop like a live camera.
    #[serde(default)]
    pub realtime: Option<bool>,
}

/// `[metrics]`: where `/metrics` and `/healthz` listen.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// `host:port`, or `off`. Default `127.0.0.1:9464` (loopback only).
    pub bind: String,
    /// Token the live page requires; without one the page is served only on loopback.
    #[serde(default)]
    pub page_token: Option<String>,
}

/// The whole cameras TOML.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WatchFile {
    /// `[[camera]]` tables.
    #[serde(default)]
    pub camera: Vec<CameraConfig>,
    /// `[[sink]]` tables (alert sinks).
    #[serde(default)]
    pub sink: Vec<SinkConfig>,
    /// `[spool]`.
    #[serde(default)]
    pub spool: SpoolConfig,
    /// `[alerts]` (noise control).
    #[serde(default)]
    pub alerts: AlertsConfig,
    /// `[metrics]` (also accepted as `[server]`).
    #[serde(default, alias = "server")]
    pub metrics: Option<MetricsConfig>,
}

/// A config error: one line naming the file, line and key.
#[derive(Debug, thiserror::Error)]
#[error("config {path}: {msg}")]
pub struct WatchConfigError {
    /// File.
    pub path: String,
    /// What is wrong.
    pub msg: String,
}

impl WatchFile {
    /// Parses the TOML text (`origin` names it in errors), expands `${ENV}` in the camera and
    /// metrics strings and checks the cameras (names unique and non-empty, sampling valid).
    pub fn parse(text: &str, origin: &str) -> Result<WatchFile, WatchConfigError> {
        let err = |msg: String| WatchConfigError {
            path: origin.to_string(),
            msg,
        };
        let mut f: WatchFile = toml::from_str(text).map_err(|e| {
            let line = e
                .span()
                .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
            let msg = e.message().trim().replace('\n', " ");
            err(match line {
                Some(l) => format!("line {l}: {msg}"),
                None => msg,
            })
        })?;
        for (i, c) in f.camera.iter_mut().enumerate() {
            let ex = |k: &str, v: &str| {
                expand_env(v).map_err(|e| err(format!("key `camera[{i}].{k}`: {e}")))
            };
            c.name = ex("name", &c.name)?;
            c.source = ex("source", &c.source)?;
            if let Some(p) = &c.profile {
                c.profile = Some(ex("profile", p)?);
            }
            if let Some(m) = &c.model {
                c.model = Some(ex("model", m)?);
            }
            if c.name.trim().is_empty() {
                return Err(err(format!("key `camera[{i}].name`: must not be empty")));
            }
            if c.every_nth == Some(0) {
                return Err(err(format!("key `camera[{i}].every_nth`: must be ≥ 1")));
            }
            if let Some(fps) = c.max_fps
                && !(fps.is_finite() && fps > 0.0)
            {
                return Err(err(format!(
                    "key `camera[{i}].max_fps`: must be > 0, got {fps}"
                )));
            }
        }
        for (i, c) in f.camera.iter().enumerate() {
            if f.camera[..i].iter().any(|d| d.name == c.name) {
                return Err(err(format!(
                    "key `camera[{i}].name`: camera name {:?} is used twice",
                    c.name
                )));
            }
        }
        if let Some(m) = &mut f.metrics {
            m.bind = expand_env(&m.bind).map_err(|e| err(format!("key `metrics.bind`: {e}")))?;
            if let Some(t) = &m.page_token {
                m.page_token =
                    Some(expand_env(t).map_err(|e| err(format!("key `metrics.page_token`: {e}")))?);
            }
        }
        Ok(f)
    }

    /// Reads and parses a config file.
    pub fn load(path: &Path) -> Result<WatchFile, WatchConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| WatchConfigError {
            path: path.display().to_string(),
            msg: e.to_string(),
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// A camera's profile path resolved against the config file's folder.
    pub fn profile_path(config: &Path, p: &str) -> PathBuf {
        let p = PathBuf::from(p);
        if p.is_relative()
            && let Some(dir) = config.parent()
        {
            return dir.join(p);
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_are_named_with_their_line() {
        let t = "[[camera]]\nname = \"a\"\nsource = \"test:\"\nfps = 3\n";
        let e = WatchFile::parse(t, "c.toml").unwrap_err().to_string();
        assert!(e.contains("`fps`") && e.contains("line 4"), "{e}");
        let e = WatchFile::parse("[metricz]\nbind = \"x\"\n", "c.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("metricz"), "{e}");
        let e = WatchFile::parse(
            "[[sink]]\nkind = \"file\"\npath = \"x\"\nbogus = 1\n",
            "c.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("bogus"), "{e}");
    }

    #[test]
    fn env_is_expanded_and_missing_env_is_named() {
        // SAFETY: tests in this module do not read this variable concurrently.
        unsafe { std::env::set_var("ADVGUARD_TEST_CAM_PW", "s3cret") };
        let t = "[[camera]]\nname = \"gate\"\nsource = \"rtsp://u:${ADVGUARD_TEST_CAM_PW}@h/x\"\n\
                 [server]\nbind = \"127.0.0.1:0\"\n";
        let f = WatchFile::parse(t, "c.toml").unwrap();
        assert_eq!(f.camera[0].source, "rtsp://u:s3cret@h/x");
        assert_eq!(f.metrics.unwrap().bind, "127.0.0.1:0");
        let t = "[[camera]]\nname = \"gate\"\nsource = \"${ADVGUARD_TEST_NOT_SET_X}\"\n";
        let e = WatchFile::parse(t, "c.toml").unwrap_err().to_string();
        assert!(
            e.contains("camera[0].source") && e.contains("ADVGUARD_TEST_NOT_SET_X"),
            "{e}"
        );
    }

    #[test]
    fn guard_every_takes_auto_or_a_count_and_names_a_bad_one() {
        use crate::detector::cascade::GuardEvery;
        let cam =
            |v: &str| format!("[[camera]]\nname = \"a\"\nsource = \"test:\"\nguard_every = {v}\n");
        let f = WatchFile::parse(&cam("3"), "c.toml").unwrap();
        assert_eq!(f.camera[0].guard_every, Some(GuardEvery::Every(3)));
        let f = WatchFile::parse(&cam("\"auto\""), "c.toml").unwrap();
        assert_eq!(f.camera[0].guard_every, Some(GuardEvery::Auto));
        let e = WatchFile::parse(&cam("0"), "c.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("guard_every") && e.contains("line 4"), "{e}");
        let e = WatchFile::parse(&cam("\"often\""), "c.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("\"often\"") && e.contains("auto"), "{e}");
    }

    #[test]
    fn duplicate_names_and_bad_sampling_are_errors() {
        let t = "[[camera]]\nname = \"a\"\nsource = \"test:\"\n[[camera]]\nname = \"a\"\nsource = \"test:\"\n";
        assert!(
            WatchFile::parse(t, "c")
                .unwrap_err()
                .to_string()
                .contains("twice")
        );
        let t = "[[camera]]\nname = \"a\"\nsource = \"test:\"\nevery_nth = 0\n";
        assert!(
            WatchFile::parse(t, "c")
                .unwrap_err()
                .to_string()
                .contains("every_nth")
        );
    }
}
