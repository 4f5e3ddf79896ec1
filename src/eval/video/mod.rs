//! `advguard eval-video`: the video guard measured as operators live with it.
//!
//! 1. **Footage** ([`footage`]): each clip is decoded once at model size (≤ `max_fps`). Its
//!    first `cal_fraction` is calibration footage, the rest test footage; no frame is in both.
//!    Camera sessions are replays of one part with a per-session [`footage::Look`] (mirror,
//!    zoom crop, brightness) and start offset. **A replay seam is a camera restart**: every
//!    session starts with a fresh detector, so seams never count as cuts or alarms.
//! 2. **Scoring** ([`score`]): every session goes through the camera's H.264 encoder; a scene
//!    patch is pasted before it, digital attacks act after it; then the guard scores every
//!    frame. Per-frame records are stored per session, so a run resumes where it stopped and
//!    the detector can be replayed offline at any threshold.
//! 3. **Judging** ([`judge`]): per clip, the fused detector is calibrated on the calibration
//!    sessions for a false-alarm budget per camera-hour, then run on the test sessions:
//!    false alarms per camera-hour, and per stretch kind the share detected, frames from onset
//!    to alert, whether the event ends within 1 s of the attack's end, events per stretch, the
//!    box IoU for patches.

pub mod attacks;
pub mod footage;
pub mod judge;
pub mod run;
pub mod score;

pub use attacks::StretchKind;

use footage::{Clip, Look, rng_for};
use rand::Rng;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Which part of a clip a session replays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Part {
    /// The first `cal_fraction` of the clip.
    Calibration,
    /// The rest.
    Test,
}

/// One attacked stretch, in session stream time.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Stretch {
    /// Kind.
    pub kind: StretchKind,
    /// First attacked frame's stream time, ms.
    pub start_ms: u64,
    /// Stream time just after the last attacked frame, ms.
    pub end_ms: u64,
}

/// One camera session of the evaluation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionPlan {
    /// Index (stable for a given configuration).
    pub id: usize,
    /// Clip index.
    pub clip: usize,
    /// Part of the clip.
    pub part: Part,
    /// First and one-past-last clip frame.
    pub frames: (usize, usize),
    /// Look.
    pub look: LookSpec,
    /// Attacked stretch, if any.
    pub stretch: Option<Stretch>,
}

/// Serializable [`Look`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LookSpec {
    /// Mirror.
    pub flip: bool,
    /// Zoom.
    pub zoom: f32,
    /// Offset.
    pub dx: f32,
    /// Offset.
    pub dy: f32,
    /// Gain.
    pub gain: f32,
}

impl From<Look> for LookSpec {
    fn from(l: Look) -> Self {
        LookSpec {
            flip: l.flip,
            zoom: l.zoom,
            dx: l.dx,
            dy: l.dy,
            gain: l.gain,
        }
    }
}

impl From<LookSpec> for Look {
    fn from(l: LookSpec) -> Self {
        Look {
            flip: l.flip,
            zoom: l.zoom,
            dx: l.dx,
            dy: l.dy,
            gain: l.gain,
        }
    }
}

/// What to evaluate.
#[derive(Debug, Clone)]
pub struct VideoEvalConfig {
    /// Clip files.
    pub clips: Vec<PathBuf>,
    /// Clean test footage to reach, stream hours (all clips together).
    pub clean_hours: f64,
    /// Calibration footage per clip, stream minutes.
    pub cal_minutes: f64,
    /// Attacked stretches per kind.
    pub per_kind: usize,
    /// Kinds.
    pub kinds: Vec<StretchKind>,
    /// Share of each clip used for calibration only.
    pub cal_fraction: f64,
    /// Stretch length range, ms.
    pub stretch_ms: (u64, u64),
    /// Frames faster than this are thinned (every k-th frame), frames/s.
    pub max_fps: f64,
    /// False-alarm budget per camera-hour.
    pub budget: f64,
    /// Seed of every random choice.
    pub seed: u64,
}

impl Default for VideoEvalConfig {
    fn default() -> Self {
        VideoEvalConfig {
            clips: Vec::new(),
            clean_hours: 1.0,
            cal_minutes: 10.0,
            per_kind: 30,
            kinds: StretchKind::ALL.to_vec(),
            cal_fraction: 0.4,
            stretch_ms: (2000, 5000),
            max_fps: 12.5,
            budget: 0.1,
            seed: 1,
        }
    }
}

/// Plans the sessions: calibration replays per clip, then test sessions (one stretch each for
/// the first `per_kind × kinds`, clean after that) until the clean test time is reached.
pub fn plan_sessions(cfg: &VideoEvalConfig, clips: &[Clip]) -> Vec<SessionPlan> {
    let mut out = Vec::new();
    let split = |c: &Clip| {
        ((c.frames.len() as f64 * cfg.cal_fraction).round() as usize).clamp(1, c.frames.len() - 1)
    };
    // Calibration.
    for (ci, c) in clips.iter().enumerate() {
        let (lo, hi) = (0, split(c));
        let mut minutes = 0.0;
        while minutes < cfg.cal_minutes {
            let id = out.len();
            let mut rng = rng_for(cfg.seed, id, 1);
            let look = if minutes == 0.0 {
                Look::PLAIN
            } else {
                Look::random(&mut rng)
            };
            let start = if minutes == 0.0 {
                lo
            } else {
                rng.random_range(lo..=lo + (hi - lo) / 3)
            };
            minutes += (hi - start) as f64 * c.frame_ms() as f64 / 60_000.0;
            out.push(SessionPlan {
                id,
                clip: ci,
                part: Part::Calibration,
                frames: (start, hi),
                look: look.into(),
                stretch: None,
            });
        }
    }
    // Test.
    let n_attacked = cfg.per_kind * cfg.kinds.len();
    let mut clean_h = 0.0;
    let mut t = 0usize;
    while t < n_attacked || clean_h < cfg.clean_hours {
        let id = out.len();
        let nk = cfg.kinds.len().max(1);
        // Each kind gets exactly `per_kind` stretches, spread over the clips.
        let ci = if t < n_attacked {
            (t / nk) % clips.len()
        } else {
            t % clips.len()
        };
        let c = &clips[ci];
        let mut rng = rng_for(cfg.seed, id, 2);
        let (lo, hi) = (split(c), c.frames.len());
        let look = Look::random(&mut rng);
        let start = rng.random_range(lo..=lo + (hi - lo) / 4);
        let dur_ms = (hi - start) as u64 * c.frame_ms();
        let stretch = (t < n_attacked).then(|| {
            let kind = cfg.kinds[t % nk];
            let len = rng
                .random_range(cfg.stretch_ms.0..=cfg.stretch_ms.1)
                .min(dur_ms / 2);
            let s = if kind.has_onset() {
                // At least 3 s of history before the onset and 2 s of scene after the end.
                let lo_ms = 3000.min(dur_ms / 4);
                let hi_ms = dur_ms.saturating_sub(len + 2000).max(lo_ms + 1);
                rng.random_range(lo_ms..hi_ms)
            } else {
                0
            };
            // Align to frames of the session.
            let f = c.frame_ms();
            Stretch {
                kind,
                start_ms: s / f * f,
                end_ms: (s + len) / f * f,
            }
        });
        let attacked_ms = stretch.map_or(0, |s| s.end_ms - s.start_ms + 1000);
        clean_h += dur_ms.saturating_sub(attacked_ms) as f64 / 3.6e6;
        out.push(SessionPlan {
            id,
            clip: ci,
            part: Part::Test,
            frames: (start, hi),
            look: look.into(),
            stretch,
        });
        t += 1;
    }
    out
}
