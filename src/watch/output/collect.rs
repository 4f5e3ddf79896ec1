//! The calibration collector: keeps every scored frame's class distribution and statistics,
//! handed back in the camera's summary (`advguard calibrate` computes thresholds from them).

use super::{FrameOutput, OutputError, ScoredFrame};
use crate::detector::calibrate::CleanFrame;
use crate::watch::CameraSummary;

/// A camera's clean frames, kept in order.
#[derive(Default)]
pub struct CollectOutput {
    frames: Vec<CleanFrame>,
}

impl FrameOutput for CollectOutput {
    fn name(&self) -> &'static str {
        "collect"
    }

    fn frame(&mut self, f: &ScoredFrame<'_>) -> Result<(), OutputError> {
        self.frames.push(CleanFrame {
            pts_ms: f.pts_ms,
            pixel_change: f.pixel_change,
            probs: f.probs.to_vec(),
            entropy: f.stats.entropy,
            concentration: f.stats.concentration,
            box_texture: f.stats.box_texture,
            vanish: f.vanish,
        });
        Ok(())
    }

    fn finish(&mut self, summary: &mut CameraSummary) -> Result<(), OutputError> {
        summary.frames = std::mem::take(&mut self.frames);
        Ok(())
    }
}
