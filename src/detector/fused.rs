//! The fused per-camera detector: every signal runs on every frame, one event per attack.
//!
//! Signals ([`SignalKind`]):
//! - `onset`: the jump of the class distribution against its recent past, confirmed by the
//!   frames after it (imperceptible attacks that start while the camera watches);
//! - `patch`: the response concentration with its box, k of n (patches, including one present
//!   from the camera's first frame), vetoed where the frame is smooth inside the box
//!   ([`crate::response::texture`]: a plain object on a plain background is not a print);
//! - `entropy`: the paper's S̄, k of n (off unless calibrated: it does not detect on our models);
//! - `vanish`: on a detector camera, a tracked person lost while the pixels where they stood
//!   barely change ([`super::vanish`]): the person-hiding patch. It reads the detections, which
//!   every pass gives, so it never waits for the guard pass.
//!
//! Any signal that fires opens the camera's one event; the event stays open while any signal
//! holds and for `merge_ms` after the last one let go, so the jumps inside an attack (per-frame
//! FGSM moves the distribution by up to 22 nats between attacked frames) continue the same
//! event instead of closing and reopening it. The end message carries the stream time of the
//! last frame a signal held, so the event's end is where the attack ended, not `merge_ms` later.
//!
//! A **scene cut** (the pixels change by more than `cut_threshold` gray levels on average) is
//! not an attack: the onset signal restarts its reference instead of firing. An imperceptible
//! attack changes the pixels by a few gray levels at most, a patch entering the scene by its
//! area share of them; a cut or a light switched on changes most of the frame.
//!
//! Below a cut, **motion explains a jump**: the onset jump of a frame whose pixels changed by
//! more than the camera's usual change (`motion_scale`, the median on its clean footage) is
//! scaled by motion_scale / change. A digital attack barely moves the 32×32 gray thumbnail
//! (its ±ε noise averages out: median 0.4–1.0 gray levels at FGSM and PGD onsets on the
//! eval-video clips), while the clean jumps that cleared the onset bar came with changes of
//! 4–7 (the bottle clip's camera moves). The price: an attack timed with a pan is discounted
//! too.

use super::DetectorKind;
use super::camera::{FrameInput, Observation};
use super::event::{ClassGuess, Event, SignalNote};
use super::profile::CameraProfile;
use super::rule::{Rule, RuleConfig, Transition};
use super::score::{FrameScores, jump, kl_divergence};
use super::tracker::{EventTracker, FrameFacts, Media};
use crate::engine::manifest::ModelKind;
use crate::response::texture;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::fmt;

/// Default stream time after the last holding frame within which a new trigger continues the
/// same event, ms.
pub const DEFAULT_MERGE_MS: u64 = 3000;
/// Default scene-cut threshold: mean absolute change of the gray frame, gray levels (0–255).
pub const DEFAULT_CUT_THRESHOLD: f64 = 30.0;
/// Default motion scale of an uncalibrated camera, gray levels: about the median clean change
/// of the three eval-video clips' calibration parts (0.25–0.47). `calibrate` measures it.
pub const DEFAULT_MOTION_SCALE: f64 = 0.5;
/// Default texture floor of the patch signal, gray levels ([`texture::box_texture`]): a box
/// smoother than it cannot fire the patch signal. Fitted on `dev` photos only: the
/// smallest box texture where the concentration box lies on a trained 5 % patch pasted as
/// eval-video pastes it (11.2 / 13.6 / 12.8 on SqueezeNet / MobileNetV2 / EfficientNet-Lite0,
/// dev files 101–250; `cargo run --release --example patch_texture`), rounded down.
pub const DEFAULT_PATCH_TEXTURE: f64 = 11.0;

/// The motion discount of an onset jump: 1 up to `scale`, then `scale / change`.
pub fn motion_discount(change: Option<f64>, scale: Option<f64>) -> f64 {
    match (change, scale) {
        (Some(c), Some(s)) if c > s && s > 0.0 => s / c,
        _ => 1.0,
    }
}

/// One signal of the fused detector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SignalKind {
    /// Class-distribution onset jump.
    Onset,
    /// Response concentration (patches).
    Patch,
    /// The paper's S̄.
    Entropy,
    /// A detector's vanishing track.
    Vanish,
}

impl SignalKind {
    /// All signals, in a fixed order.
    pub const ALL: [SignalKind; 4] = [
        SignalKind::Onset,
        SignalKind::Patch,
        SignalKind::Entropy,
        SignalKind::Vanish,
    ];

    /// The name used in configs, profiles and events.
    pub fn name(self) -> &'static str {
        match self {
            SignalKind::Onset => "onset",
            SignalKind::Patch => "patch",
            SignalKind::Entropy => "entropy",
            SignalKind::Vanish => "vanish",
        }
    }

    /// The single-score profile entry this signal takes its thresholds from, where one exists
    /// (a profile calibrated without `--budget`).
    pub fn score_kind(self) -> Option<DetectorKind> {
        match self {
            SignalKind::Onset => Some(DetectorKind::Onset),
            SignalKind::Patch => Some(DetectorKind::Concentration),
            SignalKind::Entropy => Some(DetectorKind::Entropy),
            SignalKind::Vanish => None,
        }
    }

    /// This signal's score among a frame's scores.
    pub fn score(self, s: &FrameScores) -> f64 {
        match self {
            SignalKind::Onset => s.onset,
            SignalKind::Patch => s.patch,
            SignalKind::Entropy => s.entropy,
            SignalKind::Vanish => s.vanish,
        }
    }

    /// Whether the score comes from the response (the guard pass): on the cascade's
    /// forward-only frames such a signal holds its state instead of counting the frame.
    pub fn reads_response(self) -> bool {
        matches!(self, SignalKind::Patch | SignalKind::Entropy)
    }
}

impl fmt::Display for SignalKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How the onset score compares a frame with the camera's past.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnsetReference {
    /// Symmetric KL to the previous frame. The default: on the full SqueezeNet eval-video run
    /// it gave fewer false alarms per hour and caught more stretches than the mean
    /// (docs/EVAL.md), because the mean lags a scene's slow drift.
    #[default]
    Previous,
    /// Symmetric KL to the mean distribution of the last `reference_frames` frames before it:
    /// one flickering frame moves a mean of several less than it moves its neighbour.
    Mean,
}

/// One signal's thresholds and rule.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SignalConfig {
    /// Start threshold (score strictly above it).
    pub threshold: f64,
    /// End threshold (onset: the end jump; k of n: the clear level).
    pub end_threshold: f64,
    /// k of n window (onset: `k` = frames a candidate must last, the jump frame included).
    pub k: usize,
    /// Window length, frames.
    pub n: usize,
    /// Consecutive clear frames that end a k-of-n signal.
    pub clear_frames: usize,
}

impl SignalConfig {
    /// Uncalibrated defaults (docs/STREAMING.md says where they come from).
    pub fn default_for(kind: SignalKind) -> SignalConfig {
        match kind {
            SignalKind::Onset => SignalConfig {
                threshold: 3.0,
                end_threshold: 2.0,
                k: 2,
                n: 2,
                clear_frames: 6,
            },
            SignalKind::Patch => SignalConfig {
                threshold: 0.6,
                end_threshold: 0.6,
                k: 3,
                n: 5,
                clear_frames: 3,
            },
            SignalKind::Entropy => SignalConfig {
                threshold: 3.0,
                end_threshold: 3.0,
                k: 3,
                n: 5,
                clear_frames: 3,
            },
            // A loss is one frame (the track's `lost_frames`-th unmatched one): it fires alone.
            // The uncalibrated bar: a track the detector held at a mean score above 0.5.
            SignalKind::Vanish => SignalConfig {
                threshold: 0.5,
                end_threshold: 0.5,
                k: 1,
                n: 1,
                clear_frames: 1,
            },
        }
    }
}

/// The fused detector's configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct FusedConfig {
    /// The signals in force and their thresholds (a signal absent here does not run).
    pub signals: Vec<(SignalKind, SignalConfig)>,
    /// Onset reference.
    pub reference: OnsetReference,
    /// Frames averaged into the onset reference.
    pub reference_frames: usize,
    /// See [`DEFAULT_MERGE_MS`].
    pub merge_ms: u64,
    /// See [`DEFAULT_CUT_THRESHOLD`]; `None`: no cut detection.
    pub cut_threshold: Option<f64>,
    /// The camera's usual pixel change, gray levels (see the module docs; `None`: onset jumps
    /// are not discounted by motion).
    pub motion_scale: Option<f64>,
    /// The patch signal's texture floor, gray levels (see [`DEFAULT_PATCH_TEXTURE`]; `None`:
    /// the concentration alone).
    pub patch_texture: Option<f64>,
    /// Longest event, stream ms (0 = no limit): past it the event ends as a lasting change.
    pub max_event_ms: u64,
    /// Spacing of `update` messages, stream ms.
    pub update_interval_ms: u64,
    /// Where the thresholds came from ("profile", "default", …), for logs.
    pub source: &'static str,
}

impl Default for FusedConfig {
    fn default() -> Self {
        FusedConfig {
            signals: [SignalKind::Onset, SignalKind::Patch]
                .into_iter()
                .map(|k| (k, SignalConfig::default_for(k)))
                .collect(),
            reference: OnsetReference::default(),
            reference_frames: 3,
            merge_ms: DEFAULT_MERGE_MS,
            cut_threshold: Some(DEFAULT_CUT_THRESHOLD),
            motion_scale: Some(DEFAULT_MOTION_SCALE),
            patch_texture: Some(DEFAULT_PATCH_TEXTURE),
            max_event_ms: 300_000,
            update_interval_ms: 5_000,
            source: "default",
        }
    }
}

impl FusedConfig {
    /// The defaults with the thresholds of a calibrated camera. A fused calibration
    /// (`[cameras.X.fused]`) sets every signal it has; otherwise the per-score thresholds
    /// are used for onset and patch.
    pub fn from_profile(p: &CameraProfile) -> FusedConfig {
        Self::from_profile_over(FusedConfig::default(), p)
    }

    /// [`Self::from_profile`] over other defaults (a detector camera's
    /// [`Self::for_detector`]). A single-score profile sets the signals it has thresholds
    /// for and leaves the rest at their defaults.
    pub fn from_profile_over(base: FusedConfig, p: &CameraProfile) -> FusedConfig {
        let mut c = base;
        if let Some(f) = &p.fused {
            c.signals = f.signals.iter().map(|(k, s)| (*k, s.config(*k))).collect();
            c.reference = f.reference;
            c.reference_frames = f.reference_frames;
            c.cut_threshold = f.cut_threshold;
            c.motion_scale = f.motion_scale;
            c.patch_texture = f.patch_texture;
            c.source = "profile";
            return c;
        }
        for (k, s) in c.signals.iter_mut() {
            if let Some(sp) = k.score_kind().and_then(|d| p.score(d)) {
                s.threshold = sp.threshold;
                s.end_threshold = sp.end_threshold;
                c.source = "profile";
            }
        }
        c
    }

    /// The defaults of a detector camera (an object detector's model): the vanishing-track
    /// signal beside the others.
    pub fn for_detector() -> FusedConfig {
        let mut c = FusedConfig::default();
        c.signals.push((
            SignalKind::Vanish,
            SignalConfig::default_for(SignalKind::Vanish),
        ));
        c
    }

    /// The defaults for a camera running a model of this kind.
    pub fn for_model(kind: ModelKind) -> FusedConfig {
        match kind {
            ModelKind::Classifier => FusedConfig::default(),
            ModelKind::Detector => FusedConfig::for_detector(),
        }
    }

    /// Thresholds in force, for logs.
    pub fn describe(&self) -> String {
        self.signals
            .iter()
            .map(|(k, s)| format!("{k}>{:.4}", s.threshold))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// The onset signal's state: a jump opens a candidate, the next frames confirm it (they do
/// not jump straight back), the end jump releases it.
#[derive(Debug, Clone, Copy, PartialEq)]
enum OnsetPhase {
    Idle,
    Candidate {
        start: u64,
        frames: usize,
    },
    /// `calm`: frames since the last jump over the end threshold; `jumped`: one came since the
    /// onset (a stable attack, such as targeted PGD, holds until its end jump).
    Open {
        calm: usize,
        jumped: bool,
    },
}

enum SignalRule {
    Onset(OnsetPhase),
    KofN(Rule),
}

struct SignalState {
    kind: SignalKind,
    cfg: SignalConfig,
    rule: SignalRule,
    /// The last over-threshold frame while closed (the onset rule confirms one frame late).
    last_over: Option<FrameFacts>,
    /// A response signal was over its threshold or held on its last fresh frame: the cascade
    /// guards the next frames so that its k-of-n rule counts consecutive frames.
    wants: bool,
}

/// What one signal did on one frame.
struct Step {
    score: f64,
    over: bool,
    /// Fired on this frame; the attack started at this stream time.
    fired: Option<u64>,
    /// Holds (its own rule is open) after this frame.
    holds: bool,
    /// The frame is part of the attack as the signal sees it (over threshold, or a jump of an
    /// open onset): the event's end is its last hot frame.
    hot: bool,
}

impl SignalState {
    fn new(kind: SignalKind, cfg: SignalConfig) -> Self {
        let rule = match kind {
            SignalKind::Onset => SignalRule::Onset(OnsetPhase::Idle),
            _ => SignalRule::KofN(Rule::new(RuleConfig {
                threshold: cfg.threshold,
                end_threshold: cfg.end_threshold,
                k: cfg.k,
                n: cfg.n,
                clear_frames: cfg.clear_frames,
                max_event_ms: 0,
            })),
        };
        SignalState {
            kind,
            cfg,
            rule,
            last_over: None,
            wants: false,
        }
    }

    /// `score` drives the start; `back` says the frame returned to the scene (onset: the end
    /// jump, or for a candidate, the jump straight back).
    fn step(&mut self, score: f64, back: impl Fn(&SignalConfig) -> bool, pts_ms: u64) -> Step {
        let score = if score.is_finite() { score } else { 0.0 };
        let over = score > self.cfg.threshold;
        let cfg = self.cfg;
        let mut hot = false;
        let (fired, holds) = match &mut self.rule {
            SignalRule::Onset(phase) => {
                let (next, fired) = match *phase {
                    OnsetPhase::Idle if over => {
                        if cfg.k <= 1 {
                            (
                                OnsetPhase::Open {
                                    calm: 0,
                                    jumped: false,
                                },
                                Some(pts_ms),
                            )
                        } else {
                            (
                                OnsetPhase::Candidate {
                                    start: pts_ms,
                                    frames: 1,
                                },
                                None,
                            )
                        }
                    }
                    OnsetPhase::Idle => (OnsetPhase::Idle, None),
                    OnsetPhase::Candidate { .. } if back(&cfg) => (OnsetPhase::Idle, None),
                    OnsetPhase::Candidate { start, frames } if frames + 1 >= cfg.k => (
                        OnsetPhase::Open {
                            calm: 0,
                            jumped: false,
                        },
                        Some(start),
                    ),
                    OnsetPhase::Candidate { start, frames } => (
                        OnsetPhase::Candidate {
                            start,
                            frames: frames + 1,
                        },
                        None,
                    ),
                    // A jump while open may be the end jump or one more jump inside a jumpy
                    // attack: the attack is over once the distribution has stayed calm for
                    // `clear_frames` frames after it.
                    OnsetPhase::Open { .. } if back(&cfg) => {
                        hot = true;
                        (
                            OnsetPhase::Open {
                                calm: 0,
                                jumped: true,
                            },
                            None,
                        )
                    }
                    OnsetPhase::Open { calm, jumped: true } if calm + 1 >= cfg.clear_frames => {
                        (OnsetPhase::Idle, None)
                    }
                    OnsetPhase::Open { calm, jumped } => (
                        OnsetPhase::Open {
                            calm: calm + 1,
                            jumped,
                        },
                        None,
                    ),
                };
                *phase = next;
                (fired, matches!(next, OnsetPhase::Open { .. }))
            }
            SignalRule::KofN(r) => {
                let fired = match r.step(score, pts_ms) {
                    Transition::Start { start_pts_ms } => Some(start_pts_ms),
                    _ => None,
                };
                (fired, r.is_open())
            }
        };
        if matches!(self.rule, SignalRule::KofN(_)) {
            hot = over && holds;
        }
        Step {
            score,
            over,
            fired,
            holds,
            hot: hot || fired.is_some(),
        }
    }

    /// A cascade forward-only frame for a response signal: its score is the last guard frame's,
    /// so the rule neither counts the frame nor fires; it holds what it held, and the frame is
    /// not hot (an event's end stays on a frame whose response was seen).
    fn hold(&self, score: f64) -> Step {
        let holds = match &self.rule {
            SignalRule::KofN(r) => r.is_open(),
            SignalRule::Onset(p) => matches!(p, OnsetPhase::Open { .. }),
        };
        Step {
            score: if score.is_finite() { score } else { 0.0 },
            over: false,
            fired: None,
            holds,
            hot: false,
        }
    }

    /// Whether the onset signal is between its jump and its confirmation.
    fn is_candidate(&self) -> bool {
        matches!(self.rule, SignalRule::Onset(OnsetPhase::Candidate { .. }))
    }

    fn reset(&mut self) {
        match &mut self.rule {
            SignalRule::Onset(p) => *p = OnsetPhase::Idle,
            SignalRule::KofN(r) => {
                r.finish();
            }
        }
        self.last_over = None;
    }
}

/// The camera's open event.
struct OpenEvent {
    /// The last frame that was part of the attack as a signal saw it (the event's end).
    last_hot: FrameFacts,
    /// Stream time of the last frame a signal held (the merge window counts from it).
    last_hold_ms: u64,
    since: u64,
    notes: Vec<SignalNote>,
}

/// One camera's fused detector.
pub struct FusedDetector {
    cfg: FusedConfig,
    signals: Vec<SignalState>,
    tracker: EventTracker,
    open: Option<OpenEvent>,
    /// Recent class distributions outside events (the onset reference).
    history: VecDeque<Vec<f32>>,
    prev: Option<Vec<f32>>,
    /// The reference the last frame was scored against: a candidate's next frame is judged
    /// against the frames before the jump.
    last_reference: Option<Vec<f32>>,
    /// This frame's jump from `last_reference` (see [`FusedDetector::onset_confirm`]).
    confirm: f64,
    /// Top-1 of the last frame before the open event (the "class before").
    before: Option<ClassGuess>,
    last: Option<FrameFacts>,
    cuts: u64,
}

impl FusedDetector {
    /// A detector for `camera` running `model`.
    pub fn new(camera: &str, model: &str, cfg: FusedConfig) -> Self {
        let signals = cfg
            .signals
            .iter()
            .map(|(k, s)| SignalState::new(*k, *s))
            .collect();
        FusedDetector {
            tracker: EventTracker::new(camera, model, "fused", 0.0, cfg.update_interval_ms),
            signals,
            open: None,
            history: VecDeque::new(),
            prev: None,
            last_reference: None,
            confirm: 0.0,
            before: None,
            last: None,
            cuts: 0,
            cfg,
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> &FusedConfig {
        &self.cfg
    }

    /// Whether an event is open.
    pub fn in_event(&self) -> bool {
        self.open.is_some()
    }

    /// Scene cuts seen so far.
    pub fn cuts(&self) -> u64 {
        self.cuts
    }

    /// A new scene or a gap in the stream: the next distribution is its own reference.
    fn restart_reference(&mut self) {
        self.history.clear();
        self.prev = None;
        self.last_reference = None;
        for s in &mut self.signals {
            if s.kind == SignalKind::Onset {
                s.reset();
            }
        }
    }

    /// The mean of the reference frames: the frames before the onset while a candidate or an
    /// event holds them.
    fn reference(&self, len: usize) -> Option<Vec<f32>> {
        if self.history.is_empty() {
            return None;
        }
        let n = self.history.len() as f32;
        let mut m = vec![0f32; len];
        for h in &self.history {
            for (a, b) in m.iter_mut().zip(h) {
                *a += b / n;
            }
        }
        Some(m)
    }

    /// The last frame's jump from the reference its previous frame was scored against. A
    /// candidate at frame i is confirmed when frame i + 1's value stays over the end threshold
    /// (still away from the scene before the jump); calibration reads it on every frame.
    pub fn onset_confirm(&self) -> f64 {
        self.confirm
    }

    /// Scores one frame and advances every signal; `media` renders the snapshot and heat map
    /// (only for frames that become the event's peak).
    pub fn observe(&mut self, f: &FrameInput<'_>, media: &mut Media<'_>) -> Observation {
        let kl = self
            .prev
            .as_ref()
            .map_or(0.0, |q| kl_divergence(f.probs, q));
        let prev_jump = self.prev.as_ref().map_or(0.0, |q| jump(f.probs, q));
        let cut = matches!((f.pixel_change, self.cfg.cut_threshold), (Some(c), Some(t)) if c > t);
        if cut {
            self.cuts += 1;
            self.restart_reference();
            tracing::debug!(pts_ms = f.pts_ms, "scene cut: onset reference restarted");
        }
        let reference = self.reference(f.probs.len());
        let from_reference = reference.as_ref().map_or(0.0, |m| jump(f.probs, m));
        // While a candidate holds the history, `last_reference` is the reference now too.
        let confirm = self
            .last_reference
            .as_ref()
            .map_or(0.0, |m| jump(f.probs, m));
        self.last_reference = reference;
        self.confirm = confirm;
        let scores = FrameScores {
            entropy: f.stats.entropy,
            concentration: f.stats.concentration,
            patch: f.stats.concentration
                * texture::gate(f.stats.box_texture, self.cfg.patch_texture),
            kl,
            onset: match self.cfg.reference {
                OnsetReference::Previous => prev_jump,
                OnsetReference::Mean => from_reference,
            } * motion_discount(f.pixel_change, self.cfg.motion_scale),
            vanish: f.vanish.map_or(0.0, |v| v.score),
        };
        // A vanishing over its bar places the frame where the person was, not at the response.
        let vanish_box = f
            .vanish
            .filter(|v| {
                self.signals
                    .iter()
                    .any(|s| s.kind == SignalKind::Vanish && v.score > s.cfg.threshold)
            })
            .map(|v| v.bbox);
        let base = FrameFacts {
            pts_ms: f.pts_ms,
            score: 0.0,
            over: false,
            top1: Some(f.top1.clone()),
            bbox: vanish_box.or(f.bbox),
        };
        let mut fired: Vec<(usize, u64)> = Vec::new();
        let mut holds = false;
        let mut hot = false;
        let mut over_any = false;
        let mut ratio: f64 = 0.0;
        let mut steps = Vec::with_capacity(self.signals.len());
        for (i, s) in self.signals.iter_mut().enumerate() {
            let score = s.kind.score(&scores);
            let mut facts = base.clone();
            facts.score = score;
            let was_open = matches!(s.rule, SignalRule::Onset(OnsetPhase::Open { .. }));
            let st = if cut && s.kind == SignalKind::Onset {
                Step {
                    score,
                    over: false,
                    fired: None,
                    holds: false,
                    hot: false,
                }
            } else if s.kind == SignalKind::Onset {
                // A candidate back near the frames before its jump was flicker (a per-frame
                // attack jumps again but stays away from them); an open event ends at the end
                // jump between consecutive frames, then calm.
                let candidate = s.is_candidate();
                s.step(
                    score,
                    |c| {
                        if candidate {
                            confirm <= c.end_threshold
                        } else {
                            prev_jump > c.end_threshold
                        }
                    },
                    f.pts_ms,
                )
            } else if !f.fresh && s.kind.reads_response() {
                s.hold(score)
            } else {
                let st = s.step(score, |_| false, f.pts_ms);
                s.wants = st.over || st.holds;
                st
            };
            facts.over = st.over;
            if s.kind == SignalKind::Onset && was_open && !st.holds {
                // The end jump: the reference rebuilds from the scene after it.
                self.history.clear();
            }
            if let Some(start) = st.fired {
                fired.push((i, start));
            } else if st.over && self.open.is_none() {
                s.last_over = Some(facts.clone());
            }
            holds |= st.holds;
            hot |= st.hot;
            over_any |= st.over;
            if s.cfg.threshold > 0.0 {
                ratio = ratio.max(st.score / s.cfg.threshold);
            }
            steps.push(st);
        }
        let mut facts = base.clone();
        facts.score = ratio;
        facts.over = over_any;
        let mut events = Vec::new();
        if let Some((i, start)) = fired.first().copied() {
            match self.open.as_mut() {
                None => {
                    let s = &mut self.signals[i];
                    // Open with the frame the signal's rule started at (the onset jump frame is
                    // one frame before its confirmation), then count this frame.
                    let first = s
                        .last_over
                        .take()
                        .filter(|o| o.pts_ms == start && o.pts_ms != f.pts_ms)
                        .map(|mut o| {
                            o.score /= s.cfg.threshold.max(f64::MIN_POSITIVE);
                            o
                        });
                    self.tracker.set_detector(s.kind.name(), s.cfg.threshold);
                    let ev = match first {
                        Some(o) => {
                            let ev = self.tracker.start(start, &o, media);
                            let _ = self.tracker.observe(&facts, media);
                            ev
                        }
                        None => self.tracker.start(start, &facts, media),
                    };
                    let mut ev = ev;
                    let notes: Vec<SignalNote> = fired
                        .iter()
                        .map(|&(j, at)| note(&self.signals[j], steps[j].score, at))
                        .collect();
                    ev.signals = notes.clone();
                    ev.top1_before = self.before.clone();
                    events.push(ev);
                    self.open = Some(OpenEvent {
                        last_hot: facts.clone(),
                        last_hold_ms: f.pts_ms,
                        since: start,
                        notes,
                    });
                }
                Some(o) => {
                    o.last_hot = facts.clone();
                    o.last_hold_ms = f.pts_ms;
                    for &(j, at) in &fired {
                        let sig = self.signals[j].kind;
                        match o.notes.iter_mut().find(|n| n.signal == sig.name()) {
                            Some(n) => n.score = n.score.max(steps[j].score),
                            None => o.notes.push(note(&self.signals[j], steps[j].score, at)),
                        }
                    }
                    if let Some(mut ev) = self.tracker.observe(&facts, media) {
                        ev.signals = o.notes.clone();
                        ev.top1_before = self.before.clone();
                        events.push(ev);
                    }
                }
            }
        } else if let Some(o) = self.open.as_mut() {
            if holds {
                o.last_hold_ms = f.pts_ms;
            }
            if hot {
                o.last_hot = facts.clone();
            }
            for (j, st) in steps.iter().enumerate() {
                let name = self.signals[j].kind.name();
                if let Some(n) = o.notes.iter_mut().find(|n| n.signal == name) {
                    n.score = n.score.max(st.score);
                }
            }
            let quiet_for = f.pts_ms.saturating_sub(o.last_hold_ms);
            let too_long = self.cfg.max_event_ms > 0
                && f.pts_ms.saturating_sub(o.since) >= self.cfg.max_event_ms;
            if (!holds && quiet_for >= self.cfg.merge_ms) || too_long {
                let last = if too_long {
                    facts.clone()
                } else {
                    o.last_hot.clone()
                };
                let notes = o.notes.clone();
                if let Some(mut ev) = self.tracker.end(Some(&last)) {
                    ev.signals = notes;
                    ev.top1_before = self.before.clone();
                    events.push(ev);
                }
                self.open = None;
                if too_long {
                    // A lasting change: the scene as it is now is the new normal.
                    self.history.clear();
                    for s in &mut self.signals {
                        s.reset();
                    }
                }
            } else if let Some(mut ev) = self.tracker.observe(&facts, media) {
                ev.signals = o.notes.clone();
                ev.top1_before = self.before.clone();
                events.push(ev);
            }
        }
        if self.open.is_none() && fired.is_empty() {
            self.before = Some(f.top1.clone());
        }
        // The reference follows the frames the onset signal does not hold: inside an event
        // whose onset has let go it follows the attacked frames, so the end jump back to the
        // scene fires again and, within `merge_ms`, continues the same event.
        let onset_busy = self.signals.iter().zip(&steps).any(|(s, st)| {
            s.kind == SignalKind::Onset && (st.over || st.holds || s.is_candidate())
        });
        if fired.is_empty() && !onset_busy {
            self.history.push_back(f.probs.to_vec());
            while self.history.len() > self.cfg.reference_frames.max(1) {
                self.history.pop_front();
            }
        }
        self.prev = Some(f.probs.to_vec());
        self.last = Some(facts);
        Observation {
            scores,
            score: ratio,
            over: over_any,
            in_event: self.open.is_some(),
            events,
        }
    }

    /// Ends an open event (end of stream, shutdown); `None` when none is open.
    pub fn finish(&mut self) -> Option<Event> {
        let o = self.open.take()?;
        for s in &mut self.signals {
            s.reset();
        }
        let mut ev = self.tracker.end(Some(&o.last_hot))?;
        ev.signals = o.notes;
        ev.top1_before = self.before.clone();
        Some(ev)
    }
}

fn note(s: &SignalState, score: f64, at: u64) -> SignalNote {
    SignalNote {
        signal: s.kind.name().to_string(),
        score,
        threshold: s.cfg.threshold,
        start_pts_ms: at,
    }
}

use super::cascade::ResponseNeed;

impl super::state::CameraState for FusedDetector {
    fn observe(&mut self, f: &FrameInput<'_>, media: &mut Media<'_>) -> Observation {
        FusedDetector::observe(self, f, media)
    }

    fn stream_gap(&mut self) {
        self.restart_reference();
    }

    fn finish(&mut self) -> Option<Event> {
        FusedDetector::finish(self)
    }

    fn describe(&self) -> String {
        format!(
            "fused: {} (merge {} ms, cut > {}; thresholds from {})",
            self.cfg.describe(),
            self.cfg.merge_ms,
            self.cfg
                .cut_threshold
                .map_or("off".to_string(), |c| format!("{c}")),
            self.cfg.source
        )
    }

    fn headline(&self) -> (String, f64) {
        // The fused score is the largest score / threshold ratio: 1 is the alarm line.
        ("fused".into(), 1.0)
    }

    fn wants_response(&self) -> bool {
        // An open event follows its box and finds its end in the response; a response signal
        // over its threshold counts consecutive frames.
        self.open.is_some()
            || self
                .signals
                .iter()
                .any(|s| s.kind.reads_response() && s.wants)
    }

    fn response_need(&self) -> ResponseNeed {
        ResponseNeed::from_onset(
            self.signals
                .iter()
                .find(|s| s.kind == SignalKind::Onset)
                .map(|s| s.cfg.threshold),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detector::event::Phase;
    use crate::response::FrameStats;
    use ndarray::Array2;

    fn stats(c: f64) -> FrameStats {
        FrameStats {
            entropy: 1.0,
            concentration: c,
            bbox: [10, 10, 56, 56],
            gray: Array2::zeros((1, 1)),
            box_texture: None,
        }
    }

    fn guess() -> ClassGuess {
        ClassGuess {
            index: 0,
            label: "x".into(),
            prob: 0.5,
        }
    }

    /// Runs frames (probs, concentration, pixel change) at 100 ms spacing.
    fn run(d: &mut FusedDetector, frames: &[(Vec<f32>, f64, f64)]) -> Vec<Event> {
        let mut out = Vec::new();
        for (i, (p, c, px)) in frames.iter().enumerate() {
            let st = stats(*c);
            let input = FrameInput {
                pts_ms: i as u64 * 100,
                probs: p,
                stats: &st,
                top1: guess(),
                bbox: Some(st.bbox),
                pixel_change: Some(*px),
                vanish: None,
                fresh: true,
            };
            out.extend(d.observe(&input, &mut || (None, None)).events);
        }
        out.extend(d.finish());
        out
    }

    fn flicker(i: usize) -> Vec<f32> {
        let mut p = [0.01f32; 10];
        p[i % 2] = 0.5;
        p[(i + 1) % 2] = 0.35;
        let s: f32 = p.iter().sum();
        p.iter().map(|v| v / s).collect()
    }

    fn attacked(i: usize) -> Vec<f32> {
        // Per-frame FGSM: mass on odd classes, jumping between them from frame to frame.
        let mut p = [0.01f32; 10];
        p[5 + i % 3] = 0.9;
        let s: f32 = p.iter().sum();
        p.iter().map(|v| v / s).collect()
    }

    /// A stream gap (a reconnect) restarts the onset reference: the first frame after it is
    /// a new baseline however far its distribution is from the last one before the gap.
    #[test]
    fn a_stream_gap_is_not_an_onset() {
        use crate::detector::state::CameraState;
        let one_hot = |k: usize| {
            let mut p = vec![0.001f32; 10];
            p[k] = 0.991;
            p
        };
        let calm = stats(0.1);
        let opened = |gap: bool| {
            let mut d = FusedDetector::new("cam", "m", FusedConfig::default());
            let mut events = Vec::new();
            for i in 0..30u64 {
                if gap && i == 15 {
                    d.stream_gap();
                }
                let p = one_hot(if i < 15 { 0 } else { 7 });
                let f = FrameInput {
                    pts_ms: i * 100,
                    probs: &p,
                    stats: &calm,
                    fresh: true,
                    top1: guess(),
                    bbox: Some(calm.bbox),
                    pixel_change: Some(1.0),
                    vanish: None,
                };
                events.extend(d.observe(&f, &mut || (None, None)).events);
            }
            events.len()
        };
        assert!(opened(false) > 0, "the same jump without a gap is an onset");
        assert_eq!(opened(true), 0);
    }

    /// The cascade's stale frames: a patch rule (3 of 5 over 0.6) counts only frames whose
    /// response was seen, and asks for the response while it is over its threshold.
    #[test]
    fn stale_frames_neither_count_nor_fire_and_an_over_patch_wants_the_response() {
        use crate::detector::state::CameraState;
        let mut d = FusedDetector::new("cam", "m", FusedConfig::default());
        let hot = stats(0.9);
        let frame = |i: u64, fresh: bool| FrameInput {
            pts_ms: i * 100,
            probs: &[0.5, 0.3, 0.2],
            stats: &hot,
            fresh,
            top1: guess(),
            bbox: Some(hot.bbox),
            pixel_change: Some(1.0),
            vanish: None,
        };
        assert!(!d.wants_response());
        // One fresh frame over the threshold, then stale copies of it: no event however many.
        assert!(
            d.observe(&frame(0, true), &mut || (None, None))
                .events
                .is_empty()
        );
        assert!(
            d.wants_response(),
            "an over patch signal wants the next response"
        );
        for i in 1..20 {
            let o = d.observe(&frame(i, false), &mut || (None, None));
            assert!(o.events.is_empty() && !o.in_event, "stale frame {i} fired");
        }
        // Two more fresh frames make 3 of 5: the event opens, and wants the response.
        let mut fired = false;
        for i in 20..22 {
            fired |= !d
                .observe(&frame(i, true), &mut || (None, None))
                .events
                .is_empty();
        }
        assert!(fired, "3 fresh frames over the threshold open the event");
        assert!(d.wants_response());
    }

    #[test]
    fn a_jumpy_attack_stretch_is_one_event_that_ends_with_it() {
        let mut d = FusedDetector::new("cam", "m", FusedConfig::default());
        let frames: Vec<_> = (0..120)
            .map(|i| {
                let p = if (40..80).contains(&i) {
                    attacked(i)
                } else {
                    flicker(i)
                };
                (p, 0.2, 1.0)
            })
            .collect();
        let ev = run(&mut d, &frames);
        let starts: Vec<_> = ev.iter().filter(|e| e.phase == Phase::Start).collect();
        let ends: Vec<_> = ev.iter().filter(|e| e.phase == Phase::End).collect();
        assert_eq!(starts.len(), 1, "{ev:#?}");
        assert_eq!(ends.len(), 1);
        assert_eq!(starts[0].start_pts_ms, 4000);
        assert_eq!(starts[0].detector, "onset");
        assert!(
            ends[0].pts_ms >= 7900 && ends[0].pts_ms <= 8100,
            "end at {}",
            ends[0].pts_ms
        );
    }

    #[test]
    fn a_scene_cut_and_a_pan_are_not_attacks_but_the_same_jump_without_them_is() {
        let shift = |i: usize| {
            let mut p = [0.01f32; 10];
            p[8] = 0.9;
            let _ = i;
            let s: f32 = p.iter().sum();
            p.iter().map(|v| v / s).collect::<Vec<f32>>()
        };
        let frames = |cut_px: f64| -> Vec<(Vec<f32>, f64, f64)> {
            (0..60)
                .map(|i| {
                    let p = if i >= 30 { shift(i) } else { flicker(i) };
                    (p, 0.2, if i == 30 { cut_px } else { 0.3 })
                })
                .collect()
        };
        let mut d = FusedDetector::new("cam", "m", FusedConfig::default());
        let ev = run(&mut d, &frames(80.0));
        assert!(ev.is_empty(), "{ev:#?}");
        assert_eq!(d.cuts(), 1);
        // A digital attacker's jump: the pixels barely change.
        let mut d = FusedDetector::new("cam", "m", FusedConfig::default());
        let ev = run(&mut d, &frames(0.4));
        assert_eq!(ev.iter().filter(|e| e.phase == Phase::Start).count(), 1);
        assert_eq!(d.cuts(), 0);
        // The same jump while the camera pans (12 gray levels, under the cut): motion
        // explains it. Without the discount it is an onset again.
        let mut d = FusedDetector::new("cam", "m", FusedConfig::default());
        assert!(run(&mut d, &frames(12.0)).is_empty());
        assert_eq!(d.cuts(), 0);
        let off = FusedConfig {
            motion_scale: None,
            ..FusedConfig::default()
        };
        let mut d = FusedDetector::new("cam", "m", off);
        let ev = run(&mut d, &frames(12.0));
        assert_eq!(ev.iter().filter(|e| e.phase == Phase::Start).count(), 1);
    }

    /// A person lost in place fires the vanish signal once, boxed where they stood, on a
    /// forward-only frame too; a loss under the bar, or on a classifier's config, does not.
    #[test]
    fn a_vanishing_track_opens_one_event_at_the_lost_box() {
        use crate::detector::vanish::Vanished;
        let calm = stats(0.2);
        let run_vanish = |cfg: FusedConfig, score: f64| {
            let mut d = FusedDetector::new("cam", "m", cfg);
            let mut out = Vec::new();
            for i in 0..80u64 {
                let p = flicker(i as usize);
                let input = FrameInput {
                    pts_ms: i * 100,
                    probs: &p,
                    stats: &calm,
                    fresh: i % 3 == 0,
                    top1: guess(),
                    bbox: Some(calm.bbox),
                    pixel_change: Some(1.0),
                    vanish: (i == 20 || i == 24).then_some(Vanished {
                        score,
                        bbox: [100, 50, 180, 300],
                        change: 2.0,
                    }),
                };
                out.extend(d.observe(&input, &mut || (None, None)).events);
            }
            out.extend(d.finish());
            out
        };
        let ev = run_vanish(FusedConfig::for_detector(), 0.7);
        let starts: Vec<_> = ev.iter().filter(|e| e.phase == Phase::Start).collect();
        assert_eq!(
            starts.len(),
            1,
            "two losses 0.4 s apart are one event: {ev:#?}"
        );
        assert_eq!(starts[0].detector, "vanish");
        assert_eq!(starts[0].start_pts_ms, 2000);
        assert_eq!(starts[0].bbox, Some([100, 50, 180, 300]));
        assert_eq!(ev.iter().filter(|e| e.phase == Phase::End).count(), 1);
        assert!(run_vanish(FusedConfig::for_detector(), 0.4).is_empty());
        assert!(run_vanish(FusedConfig::default(), 0.9).is_empty());
    }

    #[test]
    fn a_patch_from_the_first_frame_fires_the_patch_signal_with_its_box() {
        let mut d = FusedDetector::new("cam", "m", FusedConfig::default());
        let frames: Vec<_> = (0..50)
            .map(|i| (flicker(i), if i < 30 { 0.9 } else { 0.2 }, 1.0))
            .collect();
        let ev = run(&mut d, &frames);
        let starts: Vec<_> = ev.iter().filter(|e| e.phase == Phase::Start).collect();
        assert_eq!(starts.len(), 1, "{ev:#?}");
        assert_eq!(starts[0].detector, "patch");
        assert_eq!(starts[0].start_pts_ms, 0);
        assert_eq!(starts[0].bbox, Some([10, 10, 56, 56]));
        assert_eq!(starts[0].signals[0].signal, "patch");
    }
    /// A smooth object that draws the response (one bottle on a plain table) is not a
    /// patch: the texture gate keeps its concentration under the bar, while a textured box of
    /// the same concentration still fires; without the gate the smooth box fires too.
    #[test]
    fn the_texture_gate_stops_a_smooth_box_but_not_a_printed_patch() {
        let events = |texture: f64, cfg: FusedConfig| {
            let mut d = FusedDetector::new("cam", "m", cfg);
            let mut n = 0;
            for i in 0..30usize {
                let mut st = stats(0.9);
                st.box_texture = Some(texture);
                let p = flicker(i);
                let input = FrameInput {
                    pts_ms: i as u64 * 100,
                    probs: &p,
                    stats: &st,
                    top1: guess(),
                    bbox: Some(st.bbox),
                    pixel_change: Some(1.0),
                    vanish: None,
                    fresh: true,
                };
                let o = d.observe(&input, &mut || (None, None));
                n += o.events.iter().filter(|e| e.phase == Phase::Start).count();
            }
            n
        };
        assert_eq!(events(3.0, FusedConfig::default()), 0);
        assert_eq!(events(30.0, FusedConfig::default()), 1);
        let off = FusedConfig {
            patch_texture: None,
            ..FusedConfig::default()
        };
        assert_eq!(events(3.0, off), 1);
    }
}
