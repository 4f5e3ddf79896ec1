//! Per-frame metrics: frames scored, processing time, lag, the driving score, events by phase.

use super::{FrameOutput, OutputError, ScoredFrame};
use crate::detector::event::{Event, Phase};
use crate::watch::metrics::{CamLabel, EventLabel, WatchMetrics, cam};

/// A camera's series in the run's metrics.
pub struct MetricsOutput {
    label: CamLabel,
    metrics: WatchMetrics,
}

impl MetricsOutput {
    /// The series of `camera`.
    pub fn new(camera: &str, metrics: WatchMetrics) -> Self {
        MetricsOutput {
            label: cam(camera),
            metrics,
        }
    }
}

impl FrameOutput for MetricsOutput {
    fn name(&self) -> &'static str {
        "metrics"
    }

    fn frame(&mut self, f: &ScoredFrame<'_>) -> Result<(), OutputError> {
        let (m, l) = (&self.metrics, &self.label);
        m.processed.get_or_create(l).inc();
        if f.guarded {
            m.guarded.get_or_create(l).inc();
        }
        m.processing.get_or_create(l).observe(f.proc_s);
        m.age.get_or_create(l).observe(f.age_s);
        m.score.get_or_create(l).observe(f.obs.score);
        Ok(())
    }

    fn event(&mut self, ev: &Event) -> Result<(), OutputError> {
        let phase = match ev.phase {
            Phase::Start => "start",
            Phase::Update => "update",
            Phase::End => "end",
        };
        self.metrics
            .events
            .get_or_create(&EventLabel {
                camera: self.label.camera.clone(),
                phase: phase.into(),
            })
            .inc();
        Ok(())
    }
}
