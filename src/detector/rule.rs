//! The temporal rule: per-frame decisions → one open/closed state per camera.
//!
//! - **Start**: at least `k` of the last `n` frames score over `threshold`. The event starts at
//!   the earliest of those over-threshold frames.
//! - **End (hysteresis)**: `clear_frames` consecutive frames at or below `end_threshold`
//!   (which may sit below `threshold`), or `max_event_ms` of stream time, or the stream ends.
//!
//! Isolated spikes (the classifier's ordinary flicker) never start an event when k ≥ 2, and a
//! stretch of attacked frames with a few quiet frames inside it stays ONE event as long as
//! fewer than `clear_frames` quiet frames come in a row.

use serde::{Deserialize, Serialize};
use std::collections::VecDeque;

/// Parameters of the rule.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RuleConfig {
    /// A frame is "over" when its score is strictly greater than this.
    pub threshold: f64,
    /// While open, a frame is "clear" when its score is ≤ this.
    pub end_threshold: f64,
    /// Over-threshold frames needed in the window to start.
    pub k: usize,
    /// Window length, frames.
    pub n: usize,
    /// Consecutive clear frames that end an open event.
    pub clear_frames: usize,
    /// Longest event, stream ms; past it the event ends (0 = no limit).
    pub max_event_ms: u64,
}

/// Why an event ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// `clear_frames` consecutive frames at or below the end threshold.
    Cleared,
    /// Open for `max_event_ms`: taken as a lasting scene change.
    Timeout,
    /// The stream ended or the guard shut down.
    Finished,
}

/// What one frame did to the rule's state.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Transition {
    /// Closed before and after.
    Idle,
    /// Opened on this frame; the event starts at `start_pts_ms` (earliest over frame in the window).
    Start {
        /// Stream time of the first over-threshold frame of the window.
        start_pts_ms: u64,
    },
    /// Open before and after.
    Open,
    /// Closed on this frame.
    End(EndReason),
}

/// One camera's rule state.
#[derive(Debug, Clone)]
pub struct Rule {
    cfg: RuleConfig,
    window: VecDeque<(bool, u64)>,
    open_since: Option<u64>,
    clear_run: usize,
}

impl Rule {
    /// A closed rule; `k` is clamped to 1..=n and `clear_frames` to ≥ 1.
    pub fn new(mut cfg: RuleConfig) -> Self {
        cfg.n = cfg.n.max(1);
        cfg.k = cfg.k.clamp(1, cfg.n);
        cfg.clear_frames = cfg.clear_frames.max(1);
        Rule {
            cfg,
            window: VecDeque::with_capacity(cfg.n),
            open_since: None,
            clear_run: 0,
        }
    }

    /// The parameters in force.
    pub fn config(&self) -> &RuleConfig {
        &self.cfg
    }

    /// Whether an event is open.
    pub fn is_open(&self) -> bool {
        self.open_since.is_some()
    }

    /// Whether a score is over the start threshold.
    pub fn over(&self, score: f64) -> bool {
        score > self.cfg.threshold
    }

    /// Feeds one frame's score at stream time `pts_ms`.
    pub fn step(&mut self, score: f64, pts_ms: u64) -> Transition {
        let over = self.over(score);
        match self.open_since {
            None => {
                self.window.push_back((over, pts_ms));
                while self.window.len() > self.cfg.n {
                    self.window.pop_front();
                }
                let count = self.window.iter().filter(|w| w.0).count();
                if count >= self.cfg.k {
                    let start = self.window.iter().find(|w| w.0).map_or(pts_ms, |w| w.1);
                    self.open_since = Some(start);
                    self.clear_run = 0;
                    self.window.clear();
                    Transition::Start {
                        start_pts_ms: start,
                    }
                } else {
                    Transition::Idle
                }
            }
            Some(since) => {
                if score <= self.cfg.end_threshold {
                    self.clear_run += 1;
                } else {
                    self.clear_run = 0;
                }
                if self.clear_run >= self.cfg.clear_frames {
                    self.close();
                    Transition::End(EndReason::Cleared)
                } else if self.cfg.max_event_ms > 0
                    && pts_ms.saturating_sub(since) >= self.cfg.max_event_ms
                {
                    self.close();
                    Transition::End(EndReason::Timeout)
                } else {
                    Transition::Open
                }
            }
        }
    }

    /// Closes an open event (end of stream); returns whether one was open.
    pub fn finish(&mut self) -> bool {
        let was = self.is_open();
        self.close();
        was
    }

    fn close(&mut self) {
        self.open_since = None;
        self.clear_run = 0;
        self.window.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(k: usize, n: usize, clear: usize) -> Rule {
        Rule::new(RuleConfig {
            threshold: 1.0,
            end_threshold: 0.5,
            k,
            n,
            clear_frames: clear,
            max_event_ms: 0,
        })
    }

    /// Runs scores at 100 ms per frame; returns (start pts, end pts) of every event.
    fn events(r: &mut Rule, scores: &[f64]) -> Vec<(u64, Option<u64>)> {
        let mut out: Vec<(u64, Option<u64>)> = Vec::new();
        for (i, &s) in scores.iter().enumerate() {
            match r.step(s, i as u64 * 100) {
                Transition::Start { start_pts_ms } => out.push((start_pts_ms, None)),
                Transition::End(_) => out.last_mut().unwrap().1 = Some(i as u64 * 100),
                _ => {}
            }
        }
        out
    }

    #[test]
    fn isolated_spikes_never_start_with_k_2() {
        let mut r = rule(2, 3, 2);
        let s = [0.0, 2.0, 0.0, 0.0, 2.0, 0.0, 0.0, 0.0, 2.0, 0.0, 0.0];
        assert!(events(&mut r, &s).is_empty());
    }

    #[test]
    fn k_of_n_starts_at_the_first_over_frame() {
        let mut r = rule(2, 3, 2);
        let s = [0.0, 0.0, 2.0, 0.0, 2.0, 2.0, 2.0, 0.0, 0.0, 0.0];
        assert_eq!(events(&mut r, &s), vec![(200, Some(800))]);
    }

    #[test]
    fn a_stretch_with_quiet_gaps_is_one_event() {
        let mut r = rule(2, 3, 3);
        // Two quiet frames in a row inside the stretch (< clear_frames = 3).
        let s = [
            0.0, 3.0, 3.0, 0.1, 0.2, 3.0, 0.8, 3.0, 3.0, 0.0, 0.0, 0.0, 0.0,
        ];
        assert_eq!(events(&mut r, &s), vec![(100, Some(1100))]);
    }

    #[test]
    fn hysteresis_keeps_it_open_between_the_two_thresholds() {
        let mut r = rule(1, 1, 2);
        // 0.8 is under the start threshold but over the end threshold: still open.
        let s = [2.0, 0.8, 0.8, 0.8, 0.4, 0.8, 0.4, 0.4];
        assert_eq!(events(&mut r, &s), vec![(0, Some(700))]);
    }

    #[test]
    fn two_separate_stretches_are_two_events() {
        let mut r = rule(2, 3, 2);
        let s = [2.0, 2.0, 0.0, 0.0, 0.0, 2.0, 2.0, 0.0, 0.0];
        assert_eq!(events(&mut r, &s), vec![(0, Some(300)), (500, Some(800))]);
    }

    #[test]
    fn max_duration_ends_a_stuck_event() {
        let mut r = Rule::new(RuleConfig {
            max_event_ms: 500,
            ..*rule(1, 1, 2).config()
        });
        let s = [2.0; 8];
        let mut ends = vec![];
        for (i, &v) in s.iter().enumerate() {
            if let Transition::End(why) = r.step(v, i as u64 * 100) {
                ends.push((i, why));
            }
        }
        assert_eq!(ends[0], (5, EndReason::Timeout));
    }

    #[test]
    fn finish_reports_an_open_event() {
        let mut r = rule(1, 1, 2);
        assert!(!r.finish());
        r.step(5.0, 0);
        assert!(r.finish());
        assert!(!r.is_open());
    }
}

/// Parameters of the onset rule.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct OnsetConfig {
    /// A jump over this opens a candidate event.
    pub threshold: f64,
    /// While a candidate or event is open, a jump over this is the end jump.
    pub end_threshold: f64,
    /// Frames (the jump frame included) a candidate must last without an end jump before
    /// it becomes an event: a flicker spike that jumps straight back is not an event.
    pub confirm_frames: usize,
    /// Longest event, stream ms (0 = no limit).
    pub max_event_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum OnsetState {
    Idle,
    Candidate { start: u64, frames: usize },
    Open { since: u64 },
}

/// The onset rule, driven by the jump of the class distribution between consecutive frames:
/// the onset jump opens an event and the end jump closes it. In between, the attacked frames
/// may differ from the scene before the attack by any amount (measured: they do, and the
/// scene keeps moving), but they differ little from *each other*, so the event stays one.
#[derive(Debug, Clone)]
pub struct OnsetRule {
    cfg: OnsetConfig,
    state: OnsetState,
}

impl OnsetRule {
    /// A closed rule; `confirm_frames` is clamped to ≥ 1.
    pub fn new(mut cfg: OnsetConfig) -> Self {
        cfg.confirm_frames = cfg.confirm_frames.max(1);
        OnsetRule {
            cfg,
            state: OnsetState::Idle,
        }
    }

    /// Whether an event is open (candidates do not count).
    pub fn is_open(&self) -> bool {
        matches!(self.state, OnsetState::Open { .. })
    }

    /// Feeds one frame's jump score at stream time `pts_ms`.
    pub fn step(&mut self, jump: f64, pts_ms: u64) -> Transition {
        match self.state {
            OnsetState::Idle => {
                if jump > self.cfg.threshold {
                    self.state = OnsetState::Candidate {
                        start: pts_ms,
                        frames: 0,
                    };
                    return self.confirm(pts_ms);
                }
                Transition::Idle
            }
            OnsetState::Candidate { .. } => {
                if jump > self.cfg.end_threshold {
                    // It jumped straight back (or elsewhere): flicker, not an attack.
                    self.state = OnsetState::Idle;
                    Transition::Idle
                } else {
                    self.confirm(pts_ms)
                }
            }
            OnsetState::Open { since } => {
                if jump > self.cfg.end_threshold {
                    self.state = OnsetState::Idle;
                    Transition::End(EndReason::Cleared)
                } else if self.cfg.max_event_ms > 0
                    && pts_ms.saturating_sub(since) >= self.cfg.max_event_ms
                {
                    self.state = OnsetState::Idle;
                    Transition::End(EndReason::Timeout)
                } else {
                    Transition::Open
                }
            }
        }
    }

    fn confirm(&mut self, _pts_ms: u64) -> Transition {
        if let OnsetState::Candidate { start, frames } = self.state {
            let frames = frames + 1;
            if frames >= self.cfg.confirm_frames {
                self.state = OnsetState::Open { since: start };
                return Transition::Start {
                    start_pts_ms: start,
                };
            }
            self.state = OnsetState::Candidate { start, frames };
        }
        Transition::Idle
    }

    /// Closes an open event or drops a candidate; returns whether an event was open.
    pub fn finish(&mut self) -> bool {
        let was = self.is_open();
        self.state = OnsetState::Idle;
        was
    }
}

#[cfg(test)]
mod onset_tests {
    use super::*;

    fn rule() -> OnsetRule {
        OnsetRule::new(OnsetConfig {
            threshold: 3.0,
            end_threshold: 2.0,
            confirm_frames: 2,
            max_event_ms: 0,
        })
    }

    fn run(r: &mut OnsetRule, jumps: &[f64]) -> Vec<(u64, Option<u64>)> {
        let mut out: Vec<(u64, Option<u64>)> = Vec::new();
        for (i, &j) in jumps.iter().enumerate() {
            match r.step(j, i as u64 * 100) {
                Transition::Start { start_pts_ms } => out.push((start_pts_ms, None)),
                Transition::End(_) => out.last_mut().unwrap().1 = Some(i as u64 * 100),
                _ => {}
            }
        }
        out
    }

    #[test]
    fn onset_jump_opens_end_jump_closes_one_event() {
        // Jumps inside the stretch (1.5) stay under the end threshold.
        let j = [0.1, 0.2, 3.5, 0.5, 1.5, 0.3, 1.9, 0.4, 2.7, 0.1, 0.2];
        assert_eq!(run(&mut rule(), &j), vec![(200, Some(800))]);
    }

    #[test]
    fn a_flicker_spike_that_jumps_back_is_no_event() {
        let j = [0.1, 3.5, 3.4, 0.1, 0.2, 4.0, 2.5, 0.1];
        assert!(run(&mut rule(), &j).is_empty());
    }

    #[test]
    fn jumps_between_the_thresholds_never_open() {
        let j = [2.9, 0.1, 2.5, 2.9, 0.0];
        assert!(run(&mut rule(), &j).is_empty());
    }

    #[test]
    fn timeout_and_finish() {
        let mut r = OnsetRule::new(OnsetConfig {
            max_event_ms: 300,
            ..rule().cfg
        });
        let j = [3.5, 0.1, 0.1, 0.1, 0.1, 0.1];
        let mut ends = vec![];
        for (i, &v) in j.iter().enumerate() {
            if let Transition::End(w) = r.step(v, i as u64 * 100) {
                ends.push((i, w));
            }
        }
        assert_eq!(ends, vec![(3, EndReason::Timeout)]);
        let mut r = rule();
        r.step(3.5, 0);
        r.step(0.1, 100);
        assert!(r.is_open() && r.finish() && !r.is_open());
    }
}
