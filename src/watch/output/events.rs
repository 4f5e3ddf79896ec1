//! Events: one JSON line per message on stdout, and every message to the alert hub (which
//! never blocks: its queue drops and counts when full, see docs/ALERTS.md).

use super::{FrameOutput, OutputError, ScoredFrame};
use crate::alert::AlertHandle;
use crate::detector::event::{Event, Phase};
use crate::watch::CameraSummary;
use std::io::Write;

/// A camera's event messages to stdout and the alert hub.
pub struct EventsOutput {
    stdout: bool,
    alerts: Option<AlertHandle>,
    starts: u64,
}

impl EventsOutput {
    /// `stdout`: print JSON lines; `alerts`: submit to the hub.
    pub fn new(stdout: bool, alerts: Option<AlertHandle>) -> Self {
        EventsOutput {
            stdout,
            alerts,
            starts: 0,
        }
    }
}

impl FrameOutput for EventsOutput {
    fn name(&self) -> &'static str {
        "events"
    }

    fn frame(&mut self, _f: &ScoredFrame<'_>) -> Result<(), OutputError> {
        Ok(())
    }

    fn event(&mut self, ev: &Event) -> Result<(), OutputError> {
        if ev.phase == Phase::Start {
            self.starts += 1;
        }
        if let Some(a) = &self.alerts {
            a.submit(ev.clone());
        }
        if self.stdout {
            let line = serde_json::to_string(ev).map_err(|e| OutputError::new("events", e))?;
            // One locked write per line: cameras on other workers never interleave inside it.
            let mut o = std::io::stdout().lock();
            if let Err(e) = writeln!(o, "{line}").and_then(|()| o.flush()) {
                // A closed stdout must not stop the alerts: only the printing stops.
                self.stdout = false;
                tracing::error!(camera = %ev.camera, "events on stdout stopped: {e}");
            }
        }
        Ok(())
    }

    fn finish(&mut self, summary: &mut CameraSummary) -> Result<(), OutputError> {
        summary.events = self.starts;
        Ok(())
    }
}
