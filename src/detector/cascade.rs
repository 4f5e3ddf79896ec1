//! The cascade: which frames of a camera get the guard pass (response statistics, heat map)
//! and which only the forward pass (class distribution, hence the onset jump and top-1).
//!
//! The forward pass costs a fraction of a guard frame (a quarter to a sixth on ONNX Runtime
//! CPU), so every frame gets it and the guard pass runs on a schedule: every k-th frame, at
//! once when the cheap signals move (an onset candidate, a new top-1), and on every frame
//! while an event is open or a response signal is over its threshold (the box, the end and
//! the k-of-n rules need consecutive responses). A persistent patch is then still seen within
//! k frames, and confirmed as fast as without the cascade from there. `auto` chooses k from the measured costs and the camera's frame
//! interval, so a camera that the worker can guard in full keeps k = 1.
//!
//! The policy is pure (no engine): `watch` drives it with real passes and `eval-video`
//! replays it over stored sessions to measure what each k costs in detection latency.

use super::score::jump;
use std::fmt;
use std::str::FromStr;

/// How often a camera's frames get the guard pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GuardEvery {
    /// From the compute budget: the smallest k that keeps up, at most [`AUTO_MAX_K`].
    #[default]
    Auto,
    /// Every k-th frame (1: every frame, no cascade).
    Every(u32),
}

/// The largest k `auto` chooses: a response at least every 3rd frame (a worker that cannot
/// keep up even then drops frames, counted, rather than leave a patch unseen longer).
pub const AUTO_MAX_K: u32 = 3;

/// Share of the frame interval a worker may spend on a camera (the rest is headroom for
/// escalations, decoding and the outputs).
const UTILISATION: f64 = 0.85;

impl FromStr for GuardEvery {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(GuardEvery::Auto),
            _ => match s.parse::<u32>() {
                Ok(k) if k >= 1 => Ok(GuardEvery::Every(k)),
                _ => Err(format!(
                    "guard_every {s:?}: expected \"auto\" or a whole number ≥ 1"
                )),
            },
        }
    }
}

impl fmt::Display for GuardEvery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GuardEvery::Auto => f.write_str("auto"),
            GuardEvery::Every(k) => write!(f, "{k}"),
        }
    }
}

impl<'de> serde::Deserialize<'de> for GuardEvery {
    /// `guard_every = "auto"` or `guard_every = 3` in a cameras TOML.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = GuardEvery;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("\"auto\" or a whole number ≥ 1")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<GuardEvery, E> {
                s.parse().map_err(E::custom)
            }
            fn visit_i64<E: serde::de::Error>(self, k: i64) -> Result<GuardEvery, E> {
                self.visit_str(&k.to_string())
            }
            fn visit_u64<E: serde::de::Error>(self, k: u64) -> Result<GuardEvery, E> {
                self.visit_str(&k.to_string())
            }
        }
        d.deserialize_any(V)
    }
}

/// What a camera's detector needs of the response.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ResponseNeed {
    /// Every frame (a response-only detector, a calibration run): no cascade.
    EveryFrame,
    /// The cascade may skip it; escalate at once when the onset jump passes `trigger`.
    Cascade {
        /// Onset jump (nats) that escalates a forward frame to a guard frame.
        trigger: Option<f64>,
    },
}

impl ResponseNeed {
    /// The cascade's escalation jump for a detector whose onset threshold is `onset`: half of
    /// it, so the guard pass already runs on an onset candidate's frame.
    pub fn from_onset(onset: Option<f64>) -> Self {
        ResponseNeed::Cascade {
            trigger: onset.filter(|t| t.is_finite() && *t > 0.0).map(|t| 0.5 * t),
        }
    }
}

/// Why a frame got the guard pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuardReason {
    /// The camera's first frame, or no cascade for this camera.
    Always,
    /// The k-th frame since the last guard frame.
    Schedule,
    /// An event is open, or a response signal is over its threshold (its rule counts frames).
    Watching,
    /// The forward pass moved: the top-1 class was not among the previous frame's top 3 (a
    /// flicker between the scene's usual classes does not count).
    Top1Change,
    /// The forward pass moved: onset jump over the trigger.
    Jump,
}

/// The plan for a frame before any pass ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// Run the guard pass straight away.
    Guard(GuardReason),
    /// Run the forward pass, then ask [`Cascade::escalate`].
    Forward,
}

/// Frames by pass, for metrics and the bench.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CascadeCounts {
    /// Frames that got the guard pass.
    pub guard: u64,
    /// Frames that got only the forward pass.
    pub forward: u64,
    /// Guard frames that a forward pass escalated (each cost a forward pass too).
    pub escalated: u64,
}

/// One camera's cascade state.
#[derive(Debug, Clone)]
pub struct Cascade {
    every: GuardEvery,
    need: ResponseNeed,
    /// Cameras sharing this camera's worker (they split its time).
    share: usize,
    since_guard: u32,
    /// The previous frame's class distribution and its top 3 classes.
    prev: Option<(Vec<f32>, [usize; 3])>,
    last: Option<(u64, u64)>,
    interval_ms: Option<f64>,
    guard_ms: Option<f64>,
    forward_ms: Option<f64>,
    k: u32,
    counts: CascadeCounts,
}

fn ewma(old: Option<f64>, x: f64) -> Option<f64> {
    Some(old.map_or(x, |o| 0.9 * o + 0.1 * x))
}

fn top3(p: &[f32]) -> [usize; 3] {
    let mut t = [usize::MAX; 3];
    for (i, &v) in p.iter().enumerate() {
        let mut k = 3;
        while k > 0 && (t[k - 1] == usize::MAX || v > p[t[k - 1]]) {
            k -= 1;
        }
        if k < 3 {
            t.copy_within(k..2, k + 1);
            t[k] = i;
        }
    }
    t
}

impl Cascade {
    /// A camera's cascade; `share` cameras run on its worker.
    pub fn new(every: GuardEvery, need: ResponseNeed, share: usize) -> Self {
        let k = match (need, every) {
            (ResponseNeed::EveryFrame, _) => 1,
            (_, GuardEvery::Every(k)) => k.max(1),
            (_, GuardEvery::Auto) => 1,
        };
        Cascade {
            every,
            need,
            share: share.max(1),
            since_guard: 0,
            prev: None,
            last: None,
            interval_ms: None,
            guard_ms: None,
            forward_ms: None,
            k,
            counts: CascadeCounts::default(),
        }
    }

    /// The k in force: a guard frame at least every k frames.
    pub fn k(&self) -> u32 {
        self.k
    }

    /// Frames by pass so far.
    pub fn counts(&self) -> CascadeCounts {
        self.counts
    }

    /// Whether this camera runs a cascade at all (k may still be 1 under `auto`).
    pub fn enabled(&self) -> bool {
        matches!(self.need, ResponseNeed::Cascade { .. }) && self.every != GuardEvery::Every(1)
    }

    /// The plan for the frame `seq` at `pts_ms`, before any pass; `watching`: the detector wants
    /// the response ([`crate::detector::state::CameraState::wants_response`]: an open event of
    /// a detector that reads it, or a response signal over its threshold).
    pub fn plan(&mut self, seq: u64, pts_ms: u64, watching: bool) -> Plan {
        if let Some((s0, p0)) = self.last
            && seq > s0
            && pts_ms > p0
        {
            // The source's frame interval, not the interval between frames that reached the
            // worker: a source that drops (it cannot deliver while the worker is busy) must not
            // make the budget look larger. Consecutive deliveries show the true interval, so
            // the estimate follows the smallest gap and rises only slowly.
            let dt = (pts_ms - p0) as f64 / (seq - s0) as f64;
            self.interval_ms = Some(match self.interval_ms {
                Some(i) if dt >= i => 0.99 * i + 0.01 * dt,
                _ => dt,
            });
        }
        self.last = Some((seq, pts_ms));
        if !self.enabled() || self.prev.is_none() {
            Plan::Guard(GuardReason::Always)
        } else if watching {
            Plan::Guard(GuardReason::Watching)
        } else if self.since_guard + 1 >= self.k {
            Plan::Guard(GuardReason::Schedule)
        } else {
            Plan::Forward
        }
    }

    /// After a forward pass with class distribution `probs`: the reason to run the guard pass
    /// on the same frame, if the cheap signals moved.
    pub fn escalate(&self, probs: &[f32]) -> Option<GuardReason> {
        let (q, t) = self.prev.as_ref()?;
        if !t.contains(&top3(probs)[0]) {
            return Some(GuardReason::Top1Change);
        }
        match self.need {
            ResponseNeed::Cascade { trigger: Some(tr) } if jump(probs, q) > tr => {
                Some(GuardReason::Jump)
            }
            _ => None,
        }
    }

    /// Records what ran on the frame: the guard pass (`guard_ms`; `escalated` when a forward
    /// pass of `forward_ms` ran first) or the forward pass only; `probs` become the reference.
    pub fn record(&mut self, probs: &[f32], guard_ms: Option<f64>, forward_ms: Option<f64>) {
        if let Some(f) = forward_ms {
            self.forward_ms = ewma(self.forward_ms, f);
        }
        match guard_ms {
            Some(g) => {
                self.guard_ms = ewma(self.guard_ms, g);
                self.counts.guard += 1;
                if forward_ms.is_some() {
                    self.counts.escalated += 1;
                }
                self.since_guard = 0;
            }
            None => {
                self.counts.forward += 1;
                self.since_guard += 1;
            }
        }
        // The reference buffer is reused: this runs on every frame.
        match &mut self.prev {
            Some((q, t)) => {
                q.clear();
                q.extend_from_slice(probs);
                *t = top3(probs);
            }
            None => self.prev = Some((probs.to_vec(), top3(probs))),
        }
        if self.every == GuardEvery::Auto && self.enabled() {
            self.k = self.auto_k();
        }
    }

    /// The smallest k with ((k − 1)·forward + guard) / k ≤ budget, at most [`AUTO_MAX_K`];
    /// 1 while the guard pass alone fits (which needs no forward cost measured).
    fn auto_k(&self) -> u32 {
        let (Some(g), Some(dt)) = (self.guard_ms, self.interval_ms) else {
            return self.k;
        };
        let budget = UTILISATION * dt / self.share as f64;
        if g <= budget {
            return 1;
        }
        // Until a forward pass was timed, assume a quarter of a guard frame.
        let f = self.forward_ms.unwrap_or(0.25 * g);
        if budget <= f {
            return AUTO_MAX_K;
        }
        (((g - f) / (budget - f)).ceil() as u32).clamp(1, AUTO_MAX_K)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CALM: [f32; 4] = [0.6, 0.3, 0.1, 0.0];

    fn cascade(every: GuardEvery) -> Cascade {
        Cascade::new(every, ResponseNeed::from_onset(Some(2.0)), 1)
    }

    /// Drives `n` calm frames 33 ms apart with the given pass costs; the passes run, in order.
    fn drive(c: &mut Cascade, n: u64, g: f64, f: f64) -> Vec<char> {
        let mut out = Vec::new();
        for i in 0..n {
            match c.plan(i, i * 33, false) {
                Plan::Guard(_) => {
                    c.record(&CALM, Some(g), None);
                    out.push('G');
                }
                Plan::Forward => match c.escalate(&CALM) {
                    Some(_) => {
                        c.record(&CALM, Some(g), Some(f));
                        out.push('E');
                    }
                    None => {
                        c.record(&CALM, None, Some(f));
                        out.push('f');
                    }
                },
            }
        }
        out
    }

    #[test]
    fn a_fixed_k_guards_every_kth_frame() {
        let mut c = cascade(GuardEvery::Every(3));
        let s: String = drive(&mut c, 7, 30.0, 6.0).into_iter().collect();
        assert_eq!(s, "GffGffG");
        assert_eq!(c.counts().guard, 3);
        assert_eq!(c.counts().forward, 4);
    }

    #[test]
    fn auto_keeps_every_frame_when_the_guard_fits_the_budget() {
        let mut c = cascade(GuardEvery::Auto);
        let s: String = drive(&mut c, 10, 20.0, 5.0).into_iter().collect();
        assert_eq!(s, "GGGGGGGGGG");
        assert_eq!(c.k(), 1);
    }

    #[test]
    fn auto_chooses_the_smallest_k_that_keeps_up() {
        // 33 ms per frame, 0.85 of it = 28 ms; guard 40, forward 8: k = ceil(32 / 20) = 2.
        let mut c = cascade(GuardEvery::Auto);
        drive(&mut c, 30, 40.0, 8.0);
        assert_eq!(c.k(), 2);
        // Two cameras on the worker halve the budget (14 ms): k = ceil(32 / 6) = 6 → capped.
        let mut c = Cascade::new(GuardEvery::Auto, ResponseNeed::from_onset(Some(2.0)), 2);
        drive(&mut c, 30, 40.0, 8.0);
        assert_eq!(c.k(), AUTO_MAX_K);
    }

    #[test]
    fn the_budget_is_the_source_interval_not_the_gaps_after_drops() {
        // The source drops while the worker is busy: 2 of 3 frames delivered back to back,
        // then a gap. The budget stays one 33-ms frame, so k = 2 as without drops.
        let mut c = cascade(GuardEvery::Auto);
        let mut pts = 0;
        for i in 0..60u64 {
            pts += if i % 2 == 0 { 33 } else { 66 };
            let _ = c.plan(i, pts, false);
            c.record(&CALM, Some(40.0), Some(8.0));
        }
        // (Taking the mean gap, 49.5 ms, as the budget would give k = 1: 0.85 × 49.5 > 40.)
        assert_eq!(c.k(), 2);
    }

    #[test]
    fn a_moving_forward_pass_escalates_at_once() {
        let mut c = cascade(GuardEvery::Every(4));
        assert_eq!(c.plan(0, 0, false), Plan::Guard(GuardReason::Always));
        c.record(&CALM, Some(30.0), None);
        assert_eq!(c.plan(1, 33, false), Plan::Forward);
        // Top-1 flips to class 1, one of the scene's top 3, with a small jump: flicker.
        assert_eq!(c.escalate(&[0.3, 0.6, 0.1, 0.0]), None);
        // A class the scene never ranked high takes over.
        assert_eq!(
            c.escalate(&[0.3, 0.2, 0.1, 0.4]),
            Some(GuardReason::Top1Change)
        );
        // Same top-1, but the distribution jumps by more than half the onset threshold.
        let sharp = [0.97, 0.01, 0.01, 0.01];
        assert!(jump(&sharp, &CALM) > 1.0);
        assert_eq!(c.escalate(&sharp), Some(GuardReason::Jump));
        assert_eq!(c.escalate(&[0.58, 0.31, 0.11, 0.0]), None);
    }

    #[test]
    fn top3_ranks_and_survives_short_and_tied_inputs() {
        assert_eq!(top3(&[0.1, 0.5, 0.2, 0.2]), [1, 2, 3]);
        assert_eq!(top3(&[0.3, 0.3]), [0, 1, usize::MAX]);
        assert_eq!(top3(&[]), [usize::MAX; 3]);
    }

    #[test]
    fn an_open_event_and_a_response_only_detector_guard_every_frame() {
        let mut c = cascade(GuardEvery::Every(4));
        c.plan(0, 0, false);
        c.record(&CALM, Some(30.0), None);
        assert_eq!(c.plan(1, 33, true), Plan::Guard(GuardReason::Watching));
        let mut c = Cascade::new(GuardEvery::Every(4), ResponseNeed::EveryFrame, 1);
        let s: String = drive(&mut c, 5, 30.0, 6.0).into_iter().collect();
        assert_eq!(s, "GGGGG");
        assert!(!c.enabled());
    }

    #[test]
    fn guard_every_parses_and_refuses_nonsense() {
        assert_eq!("auto".parse(), Ok(GuardEvery::Auto));
        assert_eq!("3".parse(), Ok(GuardEvery::Every(3)));
        assert!("0".parse::<GuardEvery>().unwrap_err().contains("≥ 1"));
        assert!("often".parse::<GuardEvery>().is_err());
    }
}
