//! Prometheus metrics of `advguard watch` (prometheus-client), all prefixed `advguard_`.

use crate::source::SourceStats;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

/// Label: camera.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CamLabel {
    /// Camera name.
    pub camera: String,
}

/// Labels: camera and event phase.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabel {
    /// Camera name.
    pub camera: String,
    /// start, update or end.
    pub phase: String,
}

/// Labels: camera and health state.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    /// Camera name.
    pub camera: String,
    /// starting, running, reconnecting, failed or ended.
    pub state: String,
}

/// A camera's name and its source's counters.
type Tracked = (String, Arc<SourceStats>);

type HistFamily = Family<CamLabel, Histogram, fn() -> Histogram>;

fn latency_hist() -> Histogram {
    // 1 ms … ~16 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

fn score_hist() -> Histogram {
    // Scores span 0.01 (concentration, small KL) to ~20 nats.
    Histogram::new(exponential_buckets(0.01, 2.0, 12))
}

/// All watch metrics; clones share the values.
#[derive(Clone)]
pub struct WatchMetrics {
    /// `advguard_frames_received_total{camera}`: decoded frames the source saw.
    pub received: Family<CamLabel, Counter>,
    /// `advguard_frames_processed_total{camera}`: frames scored.
    pub processed: Family<CamLabel, Counter>,
    /// `advguard_frames_guarded_total{camera}`: scored frames that got the guard pass (the
    /// others got the cascade's forward pass only).
    pub guarded: Family<CamLabel, Counter>,
    /// `advguard_frames_dropped_total{camera}`: frames dropped to keep lag bounded.
    pub dropped: Family<CamLabel, Counter>,
    /// `advguard_frames_superseded_total{camera}`: delivered frames the engine worker dropped
    /// for a newer frame of the same live camera (so none waits behind an older one); they
    /// are in `frames_dropped` too.
    pub superseded: Family<CamLabel, Counter>,
    /// `advguard_source_reconnects_total{camera}`.
    pub reconnects: Family<CamLabel, Counter>,
    /// `advguard_source_errors_total{camera}`: pipeline errors (each failed connect counts).
    pub source_errors: Family<CamLabel, Counter>,
    /// `advguard_processing_seconds{camera}`: engine + detector time per frame.
    pub processing: HistFamily,
    /// `advguard_frame_age_seconds{camera}`: capture → scored (the lag).
    pub age: HistFamily,
    /// `advguard_score{camera}`: the driving detector score.
    pub score: HistFamily,
    /// `advguard_events_total{camera,phase}`.
    pub events: Family<EventLabel, Counter>,
    /// `advguard_camera_up{camera}`: 1 while the camera is `running` (frames arriving).
    pub up: Family<CamLabel, Gauge>,
    /// `advguard_camera_state{camera,state}`: 1 for the camera's current health state, else 0.
    pub state: Family<StateLabel, Gauge>,
    /// `advguard_camera_errors_total{camera}`.
    pub errors: Family<CamLabel, Counter>,
    sources: Arc<Mutex<Vec<Tracked>>>,
}

impl Default for WatchMetrics {
    fn default() -> Self {
        WatchMetrics {
            received: Family::default(),
            processed: Family::default(),
            guarded: Family::default(),
            dropped: Family::default(),
            superseded: Family::default(),
            source_errors: Family::default(),
            reconnects: Family::default(),
            processing: Family::new_with_constructor(latency_hist as fn() -> Histogram),
            age: Family::new_with_constructor(latency_hist as fn() -> Histogram),
            score: Family::new_with_constructor(score_hist as fn() -> Histogram),
            events: Family::default(),
            up: Family::default(),
            state: Family::default(),
            errors: Family::default(),
            sources: Arc::default(),
        }
    }
}

/// The label of a camera.
pub fn cam(name: &str) -> CamLabel {
    CamLabel {
        camera: name.to_string(),
    }
}

impl WatchMetrics {
    /// Registers every metric under `advguard_`.
    pub fn register(&self, r: &mut Registry) {
        let r = r.sub_registry_with_prefix("advguard");
        r.register(
            "frames_received",
            "Decoded frames seen by the source",
            self.received.clone(),
        );
        r.register("frames_processed", "Frames scored", self.processed.clone());
        r.register(
            "frames_guarded",
            "Scored frames that got the guard pass (the rest: forward pass only, the cascade)",
            self.guarded.clone(),
        );
        r.register(
            "frames_dropped",
            "Frames dropped so that lag stays bounded",
            self.dropped.clone(),
        );
        r.register(
            "frames_superseded",
            "Delivered frames the engine worker dropped for a newer frame of the same live camera \
             (included in frames_dropped)",
            self.superseded.clone(),
        );
        r.register(
            "source_reconnects",
            "Source restarts (reconnects, watchdog)",
            self.reconnects.clone(),
        );
        r.register(
            "source_errors",
            "Source pipeline errors (each failed connect attempt counts)",
            self.source_errors.clone(),
        );
        r.register(
            "processing_seconds",
            "Guard + detector time per frame",
            self.processing.clone(),
        );
        r.register(
            "frame_age_seconds",
            "Time from capture to scored frame",
            self.age.clone(),
        );
        r.register(
            "score",
            "Driving detector score per frame",
            self.score.clone(),
        );
        r.register("events", "Event messages by phase", self.events.clone());
        r.register(
            "camera_up",
            "1 while the camera is running (frames arriving)",
            self.up.clone(),
        );
        r.register(
            "camera_state",
            "1 for the camera's health state (starting, running, reconnecting, failed, ended)",
            self.state.clone(),
        );
        r.register(
            "camera_errors",
            "Terminal camera errors",
            self.errors.clone(),
        );
    }

    /// Follows a source's own counters (received, dropped, reconnects).
    pub fn track_source(&self, camera: &str, stats: Arc<SourceStats>) {
        if let Ok(mut s) = self.sources.lock() {
            s.push((camera.to_string(), stats));
        }
    }

    /// Counts `n` frames of `camera` that the engine worker dropped for newer ones, in the
    /// source's own counters (so `frames_dropped` includes them).
    pub fn superseded(&self, camera: &str, n: u64) {
        let Ok(s) = self.sources.lock() else { return };
        if let Some((_, st)) = s.iter().find(|(c, _)| c == camera) {
            st.add_superseded(n);
        }
    }

    /// Brings the counters that mirror source stats up to date (before a scrape).
    pub fn sync_sources(&self) {
        let Ok(s) = self.sources.lock() else { return };
        let bump = |c: &Counter, v: u64| {
            let have = c.get();
            if v > have {
                c.inc_by(v - have);
            }
        };
        for (name, st) in s.iter() {
            let l = cam(name);
            bump(
                &self.received.get_or_create(&l),
                st.received.load(Ordering::Relaxed),
            );
            bump(
                &self.dropped.get_or_create(&l),
                st.dropped.load(Ordering::Relaxed),
            );
            bump(
                &self.superseded.get_or_create(&l),
                st.superseded.load(Ordering::Relaxed),
            );
            bump(
                &self.reconnects.get_or_create(&l),
                st.reconnects.load(Ordering::Relaxed),
            );
            bump(
                &self.source_errors.get_or_create(&l),
                st.errors.load(Ordering::Relaxed),
            );
        }
    }
}
