//! The event type that the detector emits and the alert sinks deliver.

use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Phase of an event's life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// The temporal rule fired: an attack is suspected.
    Start,
    /// The event is still open; carries the latest and peak scores.
    Update,
    /// The scores returned below the hysteresis threshold, or the stream ended.
    End,
}

/// The top-1 class at the time of the message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassGuess {
    /// ImageNet class index.
    pub index: usize,
    /// Human-readable label.
    pub label: String,
    /// Softmax probability.
    pub prob: f32,
}

/// One signal's part in an event: why it fired.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SignalNote {
    /// Signal name ("onset", "patch", "entropy").
    pub signal: String,
    /// Its highest score during the event.
    pub score: f64,
    /// Its start threshold.
    pub threshold: f64,
    /// Stream time at which it fired, ms.
    pub start_pts_ms: u64,
}

/// One message about one event. All phases of an event share `event_id`;
/// `id` is unique per message and stable across redelivery, so receivers dedupe by it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Unique, stable id of this message: `{event_id}-{seq}`.
    pub id: String,
    /// Id shared by the start, updates and end of one event.
    pub event_id: String,
    /// Phase of this message.
    pub phase: Phase,
    /// 0 for start, then 1, 2, ... for each following message of the same event.
    pub seq: u32,
    /// Camera name from the config (or the source string).
    pub camera: String,
    /// Model name (manifest name).
    pub model: String,
    /// Name of the score that fired (e.g. "concentration", "entropy", "onset").
    pub detector: String,
    /// Wall-clock time of this message, RFC 3339.
    pub time: String,
    /// Wall-clock time the event started, RFC 3339.
    pub start_time: String,
    /// Stream timestamp of the first frame of the event, ms.
    pub start_pts_ms: u64,
    /// Stream timestamp of the latest frame, ms.
    pub pts_ms: u64,
    /// Latest score.
    pub score: f64,
    /// Highest score seen during the event.
    pub peak_score: f64,
    /// Stream timestamp of the peak frame, ms.
    pub peak_pts_ms: u64,
    /// Threshold in force.
    pub threshold: f64,
    /// Frames over the threshold so far.
    pub frames_over: u32,
    /// Top-1 class at the peak frame.
    pub top1: Option<ClassGuess>,
    /// Box where the response concentrates (x, y, w, h) in frame pixels, when known.
    pub bbox: Option<[u32; 4]>,
    /// Top-1 class of the last frame before the event (the fused detector), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top1_before: Option<ClassGuess>,
    /// Every signal that fired during the event, with its peak score and threshold (fused detector).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub signals: Vec<SignalNote>,
    /// True on the `end` written at start-up for an event that a previous run left open (it
    /// was killed or lost power mid-event); its scores are those of the last spooled message.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub interrupted: bool,
    /// JPEG of the peak frame; delivered by sinks that carry attachments, never inside the JSON.
    #[serde(skip)]
    pub snapshot_jpeg: Option<Arc<Vec<u8>>>,
    /// PNG heat map of the peak frame's response; same rules as `snapshot_jpeg`.
    #[serde(skip)]
    pub heatmap_png: Option<Arc<Vec<u8>>>,
}

impl Event {
    /// The `end` that closes this event after the process that owned it died: the next
    /// message of the same event, stamped now, marked `interrupted`, without attachments.
    pub fn interrupted_end(&self, time: String) -> Event {
        let seq = self.seq + 1;
        Event {
            id: format!("{}-{seq}", self.event_id),
            phase: Phase::End,
            seq,
            time,
            interrupted: true,
            snapshot_jpeg: None,
            heatmap_png: None,
            ..self.clone()
        }
    }
}
