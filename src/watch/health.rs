//! Camera health as one typed state, shared by `/healthz`, the metrics and the logs: every
//! change goes through [`HealthBoard::set`], which logs the transition and mirrors it in
//! `advguard_camera_state` / `advguard_camera_up`, so the three can never disagree.

use super::metrics::{StateLabel, WatchMetrics, cam};
use crate::source::SourceStats;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

/// Where one camera stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CameraHealth {
    /// Configured; no frame has arrived yet.
    Starting,
    /// Frames are arriving.
    Running,
    /// A live source lost its stream (error, end, watchdog) and is retrying with backoff.
    Reconnecting,
    /// Ended for good with an error (terminal).
    Failed,
    /// Ended cleanly: end of file, `--max-frames`, or shutdown (terminal).
    Ended,
}

impl CameraHealth {
    /// Every state, in a fixed order (the metric has one series per state).
    pub const ALL: [CameraHealth; 5] = [
        CameraHealth::Starting,
        CameraHealth::Running,
        CameraHealth::Reconnecting,
        CameraHealth::Failed,
        CameraHealth::Ended,
    ];

    /// The name in `/healthz`, metrics and logs.
    pub fn name(self) -> &'static str {
        match self {
            CameraHealth::Starting => "starting",
            CameraHealth::Running => "running",
            CameraHealth::Reconnecting => "reconnecting",
            CameraHealth::Failed => "failed",
            CameraHealth::Ended => "ended",
        }
    }

    /// Failed and ended cameras never come back.
    pub fn is_terminal(self) -> bool {
        matches!(self, CameraHealth::Failed | CameraHealth::Ended)
    }

    /// What a running source's own counters say (`live`: it reconnects instead of ending).
    ///
    /// A live source is running while its pipeline plays and has delivered a frame since it
    /// last (re)started; once it has had a frame or an error and is not connected, it is in
    /// its reconnect loop. A file has no reconnect loop: it runs from its first frame until
    /// the worker reports its end.
    pub fn of_source(stats: &SourceStats, live: bool) -> CameraHealth {
        let had_frame = stats.last_frame_age().is_some();
        if !live {
            return if had_frame {
                CameraHealth::Running
            } else {
                CameraHealth::Starting
            };
        }
        if stats.connected.load(Ordering::Relaxed) {
            CameraHealth::Running
        } else if had_frame
            || SourceStats::get(&stats.errors) > 0
            || SourceStats::get(&stats.reconnects) > 0
        {
            CameraHealth::Reconnecting
        } else {
            CameraHealth::Starting
        }
    }
}

impl fmt::Display for CameraHealth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The states of all cameras of a run (clones share them).
#[derive(Clone)]
pub struct HealthBoard {
    states: Arc<Mutex<BTreeMap<String, CameraHealth>>>,
    metrics: WatchMetrics,
}

impl HealthBoard {
    /// Every camera `starting`.
    pub fn new<'a>(cameras: impl IntoIterator<Item = &'a str>, metrics: WatchMetrics) -> Self {
        let board = HealthBoard {
            states: Arc::default(),
            metrics,
        };
        for c in cameras {
            board.lock().insert(c.to_string(), CameraHealth::Starting);
            board.mirror(c, CameraHealth::Starting);
        }
        board
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, CameraHealth>> {
        // The map stays consistent even if a holder panicked: every write is one insert.
        self.states.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn mirror(&self, camera: &str, state: CameraHealth) {
        for s in CameraHealth::ALL {
            self.metrics
                .state
                .get_or_create(&StateLabel {
                    camera: camera.to_string(),
                    state: s.name().to_string(),
                })
                .set(i64::from(s == state));
        }
        self.metrics
            .up
            .get_or_create(&cam(camera))
            .set(i64::from(state == CameraHealth::Running));
    }

    /// Moves a camera to `state` (terminal states are final); logs and mirrors a change.
    /// Returns whether the state changed.
    pub fn set(&self, camera: &str, state: CameraHealth) -> bool {
        let before = {
            let mut m = self.lock();
            let before = m.get(camera).copied();
            if before == Some(state) || before.is_some_and(CameraHealth::is_terminal) {
                return false;
            }
            m.insert(camera.to_string(), state);
            before
        };
        self.mirror(camera, state);
        let from = before.map_or("none", CameraHealth::name);
        match state {
            CameraHealth::Reconnecting => {
                tracing::warn!(camera, from, to = state.name(), "camera reconnecting")
            }
            CameraHealth::Failed => {
                tracing::warn!(camera, from, to = state.name(), "camera failed")
            }
            _ => tracing::info!(camera, from, to = state.name(), "camera {state}"),
        }
        true
    }

    /// One camera's state.
    pub fn get(&self, camera: &str) -> Option<CameraHealth> {
        self.lock().get(camera).copied()
    }

    /// All states, by camera name.
    pub fn snapshot(&self) -> BTreeMap<String, CameraHealth> {
        self.lock().clone()
    }

    /// `ok` while some camera is starting or running (or there is none), else `degraded`.
    pub fn status(&self) -> &'static str {
        Self::status_of(&self.lock())
    }

    /// [`HealthBoard::status`] of a snapshot.
    pub fn status_of(states: &BTreeMap<String, CameraHealth>) -> &'static str {
        let up = states
            .values()
            .any(|s| matches!(s, CameraHealth::Starting | CameraHealth::Running));
        if up || states.is_empty() {
            "ok"
        } else {
            "degraded"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_states_are_final_and_metrics_follow() {
        let m = WatchMetrics::default();
        let b = HealthBoard::new(["a", "b"], m.clone());
        assert_eq!(b.status(), "ok");
        assert!(b.set("a", CameraHealth::Running));
        assert!(!b.set("a", CameraHealth::Running));
        assert_eq!(m.up.get_or_create(&cam("a")).get(), 1);
        assert!(b.set("a", CameraHealth::Reconnecting));
        assert_eq!(m.up.get_or_create(&cam("a")).get(), 0);
        let series = |s: CameraHealth| {
            m.state
                .get_or_create(&StateLabel {
                    camera: "a".into(),
                    state: s.name().into(),
                })
                .get()
        };
        assert_eq!(series(CameraHealth::Reconnecting), 1);
        assert_eq!(series(CameraHealth::Running), 0);
        b.set("b", CameraHealth::Failed);
        assert_eq!(b.status(), "degraded", "a reconnecting, b failed");
        assert!(b.set("a", CameraHealth::Ended));
        assert!(!b.set("a", CameraHealth::Running), "ended is final");
        assert_eq!(b.get("a"), Some(CameraHealth::Ended));
        let json = serde_json::to_string(&b.snapshot()).unwrap();
        assert_eq!(json, r#"{"a":"ended","b":"failed"}"#);
    }

    #[test]
    fn source_counters_map_to_states() {
        let s = SourceStats::new();
        assert_eq!(CameraHealth::of_source(&s, true), CameraHealth::Starting);
        assert_eq!(CameraHealth::of_source(&s, false), CameraHealth::Starting);
        s.errors.fetch_add(1, Ordering::Relaxed);
        assert_eq!(
            CameraHealth::of_source(&s, true),
            CameraHealth::Reconnecting
        );
        s.connected.store(true, Ordering::Relaxed);
        assert_eq!(CameraHealth::of_source(&s, true), CameraHealth::Running);
    }
}
