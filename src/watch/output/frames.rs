//! `--frames-out`: one JSON line per scored frame, one file shared by every camera.

use super::{FrameOutput, OutputError, ScoredFrame};
use crate::detector::event::ClassGuess;
use crate::watch::CameraSummary;
use serde::Serialize;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One line of `--frames-out`.
#[derive(Debug, Clone, Serialize)]
pub struct FrameRecord {
    /// Camera name.
    pub camera: String,
    /// Frames delivered by the source before this one.
    pub seq: u64,
    /// Stream time, ms.
    pub pts_ms: u64,
    /// The driving score.
    pub score: f64,
    /// Over the start threshold.
    pub over_threshold: bool,
    /// An event is open after this frame.
    pub in_event: bool,
    /// Top-1 class.
    pub top1: ClassGuess,
    /// The paper's S̄, bits.
    pub entropy: f64,
    /// Response concentration.
    pub concentration: f64,
    /// KL(p_t ‖ p_{t−1}), nats.
    pub kl: f64,
    /// Onset score KL(p_t ‖ reference), nats.
    pub onset: f64,
    /// A detector camera's track lost in place on this frame: its lost box and confidence.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vanish: Option<VanishRecord>,
    /// Capture → scored, ms (the lag).
    pub age_ms: f64,
    /// Guard + detector time, ms.
    pub proc_ms: f64,
    /// The frame was replaced by `--inject`.
    pub injected: bool,
    /// The frame got the guard pass (false: the cascade's forward pass only; `entropy` and
    /// `concentration` are then the last guard frame's).
    pub guarded: bool,
    /// Object detections (detector models; empty for classifiers), boxes in model-input
    /// pixels.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub detections: Vec<crate::engine::detect::Detection>,
    /// Wall-clock time the frame was scored, ms since the Unix epoch (throughput from the records).
    pub unix_ms: u64,
}

/// A vanishing track in a frame record.
#[derive(Debug, Clone, Serialize)]
pub struct VanishRecord {
    /// The track's mean last score.
    pub confidence: f64,
    /// Median |Δ gray| where it should be now (0–255).
    pub change: f64,
    /// Its last box, model-input pixels.
    pub bbox: [u32; 4],
}

impl FrameRecord {
    /// The record of a scored frame.
    pub fn of(f: &ScoredFrame<'_>) -> FrameRecord {
        FrameRecord {
            camera: f.camera.to_string(),
            seq: f.seq,
            pts_ms: f.pts_ms,
            score: f.obs.score,
            over_threshold: f.obs.over,
            in_event: f.obs.in_event,
            top1: f.top1.clone(),
            entropy: f.obs.scores.entropy,
            concentration: f.obs.scores.concentration,
            kl: f.obs.scores.kl,
            onset: f.obs.scores.onset,
            vanish: f.vanish.map(|v| VanishRecord {
                confidence: v.score,
                change: v.change,
                bbox: v.bbox,
            }),
            age_ms: f.age_s * 1e3,
            proc_ms: f.proc_s * 1e3,
            injected: f.injected,
            guarded: f.guarded,
            detections: f.detections.to_vec(),
            unix_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
        }
    }
}

/// The open `--frames-out` file.
pub struct FramesFile {
    path: PathBuf,
    w: BufWriter<std::fs::File>,
    last_flush: Instant,
}

impl FramesFile {
    /// Creates (truncates) the file.
    pub fn create(path: &Path) -> std::io::Result<Arc<Mutex<FramesFile>>> {
        let f = std::fs::File::create(path)?;
        Ok(Arc::new(Mutex::new(FramesFile {
            path: path.to_path_buf(),
            w: BufWriter::new(f),
            last_flush: Instant::now(),
        })))
    }

    fn write(&mut self, line: &str) -> std::io::Result<()> {
        writeln!(self.w, "{line}")?;
        // Readers follow the file while watch runs: flush about once a second.
        if self.last_flush.elapsed() > Duration::from_secs(1) {
            self.w.flush()?;
            self.last_flush = Instant::now();
        }
        Ok(())
    }
}

/// A camera's lines in the shared file.
pub struct FramesOutput {
    file: Arc<Mutex<FramesFile>>,
}

impl FramesOutput {
    /// Writes to `file`.
    pub fn new(file: Arc<Mutex<FramesFile>>) -> Self {
        FramesOutput { file }
    }

    fn err(&self, f: &FramesFile, e: impl std::fmt::Display) -> OutputError {
        OutputError::new("frames", format!("--frames-out {}: {e}", f.path.display()))
    }
}

impl FrameOutput for FramesOutput {
    fn name(&self) -> &'static str {
        "frames"
    }

    fn frame(&mut self, f: &ScoredFrame<'_>) -> Result<(), OutputError> {
        let line = serde_json::to_string(&FrameRecord::of(f))
            .map_err(|e| OutputError::new("frames", e))?;
        // Each holder writes whole lines, so the file stays valid after a holder's panic.
        let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        file.write(&line).map_err(|e| self.err(&file, e))
    }

    fn finish(&mut self, _summary: &mut CameraSummary) -> Result<(), OutputError> {
        let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        file.w.flush().map_err(|e| self.err(&file, e))
    }
}
