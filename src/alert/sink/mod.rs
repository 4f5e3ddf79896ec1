//! The sinks, behind one trait.

mod exec;
mod file;
mod mqtt;
mod webhook;

pub use exec::ExecSink;
pub use file::FileSink;
pub use mqtt::MqttSink;
pub use webhook::{WebhookSink, sign, verify_signature};

use super::config::SinkConfig;
use crate::detector::event::Event;
use std::time::Duration;

/// A delivery failure; the event is retried with backoff.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SinkError(pub String);

impl SinkError {
    /// Wraps any displayable error.
    pub fn new(e: impl std::fmt::Display) -> Self {
        SinkError(e.to_string())
    }
}

/// A destination for events. One worker thread owns each sink and calls `deliver`
/// in spool order; `Ok` means the destination has the event (at least once).
pub trait Sink: Send {
    /// Unique sink name (keys the spool cursor and the metrics).
    fn name(&self) -> &str;
    /// Delivers one event, blocking at most about the configured timeout.
    fn deliver(&mut self, ev: &Event) -> Result<(), SinkError>;
    /// Called once at shutdown (MQTT publishes `offline`).
    fn close(&mut self, _timeout: Duration) {}
}

/// Builds a sink from its resolved config (see [`super::config::resolve_sinks`]).
pub fn build(name: &str, cfg: &SinkConfig) -> Result<Box<dyn Sink>, SinkError> {
    Ok(match cfg {
        SinkConfig::Webhook(c) => Box::new(WebhookSink::new(name, c)?),
        SinkConfig::Mqtt(c) => Box::new(MqttSink::new(name, c)?),
        SinkConfig::Exec(c) => Box::new(ExecSink::new(name, c)),
        SinkConfig::File(c) => Box::new(FileSink::new(name, c)?),
    })
}

/// The event as JSON, optionally with `snapshot_jpeg_base64` / `heatmap_png_base64`.
pub fn event_json(ev: &Event, attachments: bool) -> Vec<u8> {
    if !attachments || (ev.snapshot_jpeg.is_none() && ev.heatmap_png.is_none()) {
        return serde_json::to_vec(ev).expect("event serializes");
    }
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut v = serde_json::to_value(ev).expect("event serializes");
    if let Some(m) = v.as_object_mut() {
        if let Some(j) = &ev.snapshot_jpeg {
            m.insert(
                "snapshot_jpeg_base64".into(),
                b64.encode(j.as_slice()).into(),
            );
        }
        if let Some(p) = &ev.heatmap_png {
            m.insert("heatmap_png_base64".into(), b64.encode(p.as_slice()).into());
        }
    }
    serde_json::to_vec(&v).expect("json serializes")
}
