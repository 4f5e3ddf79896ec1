//! Noise control, per camera, applied before the spool.
//!
//! * **Update throttling**: at most one `update` per camera per `update_interval`
//!   (the clock starts at the `start`); `start` and `end` always pass.
//! * **Cooldown** (suppress, with promotion): after an `end`, a new `start` on the same
//!   camera within `cooldown` is suppressed, and so are its updates and its end (whose
//!   time restarts the cooldown, so a flapping detector stays quiet). If that suppressed
//!   event is still open when the cooldown runs out, its next `update` is delivered as a
//!   `start` (keeping its own `id`/`seq`), so a lasting attack is never hidden.

use crate::detector::event::{Event, Phase};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// What the filter decided.
#[derive(Debug)]
pub enum Verdict {
    /// Deliver this (possibly re-phased) event.
    Pass(Box<Event>),
    /// Dropped by noise control; the reason is `cooldown` or `throttle`.
    Suppress(&'static str),
}

#[derive(Default)]
struct Cam {
    last_end: Option<Instant>,
    last_update: Option<Instant>,
    suppressed: Option<String>,
}

/// Per-camera noise filter.
pub struct NoiseFilter {
    cooldown: Duration,
    update_interval: Duration,
    cams: HashMap<String, Cam>,
}

impl NoiseFilter {
    /// A filter with the given cooldown and update interval (zero disables each).
    pub fn new(cooldown: Duration, update_interval: Duration) -> Self {
        NoiseFilter {
            cooldown,
            update_interval,
            cams: HashMap::new(),
        }
    }

    /// From the `[alerts]` table.
    pub fn from_config(c: &super::config::AlertsConfig) -> Self {
        let d = |s: f64| Duration::from_secs_f64(if s.is_finite() && s > 0.0 { s } else { 0.0 });
        Self::new(d(c.cooldown_secs), d(c.update_interval_secs))
    }

    /// Decides about one message arriving at `now`.
    pub fn filter(&mut self, mut ev: Event, now: Instant) -> Verdict {
        let cam = self.cams.entry(ev.camera.clone()).or_default();
        let in_cooldown = |c: &Cam| {
            !self.cooldown.is_zero()
                && c.last_end
                    .is_some_and(|t| now.duration_since(t) < self.cooldown)
        };
        match ev.phase {
            Phase::Start => {
                if in_cooldown(cam) {
                    cam.suppressed = Some(ev.event_id.clone());
                    return Verdict::Suppress("cooldown");
                }
                cam.suppressed = None;
                cam.last_update = Some(now);
                Verdict::Pass(Box::new(ev))
            }
            Phase::Update => {
                if cam.suppressed.as_deref() == Some(ev.event_id.as_str()) {
                    if in_cooldown(cam) {
                        return Verdict::Suppress("cooldown");
                    }
                    // Outlasted the cooldown: deliver from here on, as a start.
                    cam.suppressed = None;
                    cam.last_update = Some(now);
                    ev.phase = Phase::Start;
                    return Verdict::Pass(Box::new(ev));
                }
                let pass = self.update_interval.is_zero()
                    || cam
                        .last_update
                        .is_none_or(|t| now.duration_since(t) >= self.update_interval);
                if pass {
                    cam.last_update = Some(now);
                    Verdict::Pass(Box::new(ev))
                } else {
                    Verdict::Suppress("throttle")
                }
            }
            Phase::End => {
                cam.last_end = Some(now);
                cam.last_update = None;
                if cam.suppressed.as_deref() == Some(ev.event_id.as_str()) {
                    cam.suppressed = None;
                    return Verdict::Suppress("cooldown");
                }
                Verdict::Pass(Box::new(ev))
            }
        }
    }
}
