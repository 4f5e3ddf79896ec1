//! The live page's view of a camera: its latest frame, scores and events go to the
//! [`PageBoard`] the HTTP server shows (the picture itself is drawn only when asked for).

use super::{FrameOutput, OutputError, ScoredFrame};
use crate::detector::event::Event;
use crate::watch::page::{Latest, PageBoard};

/// A camera's page output.
pub struct PageOutput {
    camera: String,
    /// Driving score's name and start threshold, for the caption.
    headline: (String, f64),
    board: PageBoard,
}

impl PageOutput {
    /// The page view of `camera`, captioned with its detector's `headline`.
    pub fn new(camera: &str, headline: (String, f64), board: PageBoard) -> Self {
        PageOutput {
            camera: camera.to_string(),
            headline,
            board,
        }
    }
}

impl FrameOutput for PageOutput {
    fn name(&self) -> &'static str {
        "page"
    }

    fn frame(&mut self, f: &ScoredFrame<'_>) -> Result<(), OutputError> {
        let (kind, thr) = (&self.headline.0, self.headline.1);
        let caption = format!(
            "{}  {kind} {:.2} / {thr:.2}  {} ({:.2}){}",
            self.camera,
            f.obs.score,
            f.top1.label.split(',').next().unwrap_or(""),
            f.top1.prob,
            if f.obs.in_event { "  ALERT" } else { "" }
        );
        self.board.set_latest(
            &self.camera,
            Latest {
                seq: f.seq,
                pts_ms: f.pts_ms,
                frame: f.image.clone(),
                magnitude: f.magnitude.to_owned(),
                bbox: f.stats.bbox,
                native: f.native,
                detections: f.detections.to_vec(),
                caption,
                alert: f.obs.in_event,
                injected: f.injected,
                scores: f.obs.scores,
                score: f.obs.score,
                headline: self.headline.clone(),
                top1: (f.top1.label.clone(), f.top1.prob),
                history: f.history.clone(),
            },
        );
        Ok(())
    }

    fn event(&mut self, ev: &Event) -> Result<(), OutputError> {
        self.board.event(ev);
        Ok(())
    }
}
