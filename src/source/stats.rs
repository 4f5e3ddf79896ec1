//! Per-source counters, shared lock-free with metrics.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Per-source counters (shared, lock-free), read by metrics.
///
/// `received = delivered + dropped + skipped − superseded` (up to frames still in flight):
/// a superseded frame was delivered, then dropped by the consumer for a newer one.
#[derive(Debug)]
pub struct SourceStats {
    /// Decoded frames that reached the source's tail queue.
    pub received: AtomicU64,
    /// Frames sent to the consumer.
    pub delivered: AtomicU64,
    /// All dropped frames: `dropped_pipeline + dropped_consumer + superseded`.
    pub dropped: AtomicU64,
    /// Delivered frames the consumer dropped for a newer frame of this source (it scores
    /// the newest frame of a live camera, never one behind it).
    pub superseded: AtomicU64,
    /// Frames the leaky tail queue discarded because scaling/conversion fell behind.
    pub dropped_pipeline: AtomicU64,
    /// Frames the consumer could not take (channel full; live sources and realtime files).
    pub dropped_consumer: AtomicU64,
    /// Frames left out on purpose by `every_nth` / `max_fps`.
    pub skipped: AtomicU64,
    /// Pipeline restarts after a failure, an end of stream or a watchdog stall (live sources).
    pub reconnects: AtomicU64,
    /// Restarts caused by the watchdog (no frame for `watchdog`); included in `reconnects`.
    pub watchdog_restarts: AtomicU64,
    /// Pipeline errors seen (each failed connect attempt counts).
    pub errors: AtomicU64,
    /// True while the pipeline is playing and has delivered a frame since it (re)started.
    pub connected: AtomicBool,
    origin: Instant,
    /// Micros since `origin` of the last received frame, plus one (0 = never).
    last_frame_us: AtomicU64,
    last_error: Mutex<Option<String>>,
}

impl Default for SourceStats {
    fn default() -> Self {
        Self::new()
    }
}

impl SourceStats {
    /// Zeroed counters.
    pub fn new() -> Self {
        SourceStats {
            received: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            superseded: AtomicU64::new(0),
            dropped_pipeline: AtomicU64::new(0),
            dropped_consumer: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            watchdog_restarts: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            connected: AtomicBool::new(false),
            origin: Instant::now(),
            last_frame_us: AtomicU64::new(0),
            last_error: Mutex::new(None),
        }
    }

    /// Time since the last frame arrived from GStreamer (None before the first).
    pub fn last_frame_age(&self) -> Option<Duration> {
        match self.last_frame_us.load(Ordering::Relaxed) {
            0 => None,
            us => Some(
                self.origin
                    .elapsed()
                    .saturating_sub(Duration::from_micros(us - 1)),
            ),
        }
    }

    /// The most recent error message (credentials redacted), if any.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().ok().and_then(|g| g.clone())
    }

    /// Shorthand for a relaxed load of one counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    pub(crate) fn frame_arrived(&self) {
        let us = self.origin.elapsed().as_micros() as u64 + 1;
        self.last_frame_us.store(us, Ordering::Relaxed);
    }

    pub(crate) fn add_dropped_consumer(&self, n: u64) {
        self.dropped_consumer.fetch_add(n, Ordering::Relaxed);
        self.dropped.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts `n` delivered frames the consumer dropped for newer ones.
    pub fn add_superseded(&self, n: u64) {
        self.superseded.fetch_add(n, Ordering::Relaxed);
        self.dropped.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn add_dropped_pipeline(&self, n: u64) {
        self.dropped_pipeline.fetch_add(n, Ordering::Relaxed);
        self.dropped.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn set_error(&self, message: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut g) = self.last_error.lock() {
            *g = Some(message);
        }
    }
}
