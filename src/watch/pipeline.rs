//! One camera's path through a worker: frame → (`--inject`) → cascade (guard or forward pass)
//! → response statistics → detector state → outputs. Everything a frame needs is computed once
//! here, the response magnitude included, and shared by the statistics, the event heat map and
//! the overlay. On the cascade's forward-only frames the last guard frame's response stands in,
//! marked stale for the detector.

use super::inject::InjectSpec;
use super::output::{Outputs, ScoredFrame};
use super::{CameraPlan, CameraSummary, overlay};
use crate::detector::FrameInput;
use crate::detector::cascade::{Cascade, Plan};
use crate::detector::cut::GrayThumb;
use crate::detector::event::ClassGuess;
use crate::detector::state::CameraState;
use crate::detector::vanish::VanishTracker;
use crate::engine::{Guard, detect, top_k};
use crate::response::{self, FrameStats, ResponseConfig};
use crate::source::Frame;
use image::RgbImage;
use std::time::Instant;

/// A camera's detector state and outputs, owned by the worker it is pinned to.
pub(super) struct CameraPipeline {
    pub plan: CameraPlan,
    state: Box<dyn CameraState>,
    /// Driving score's name and threshold (captions).
    headline: (String, f64),
    outputs: Outputs,
    /// The previous frame's thumbnail (scene cuts).
    prev_thumb: Option<GrayThumb>,
    /// A detector camera's person tracks (the vanishing-track signal); made on its first
    /// frame with detections.
    vanish: Option<VanishTracker>,
    /// Scores of the last seconds (the explain view's strip).
    history: overlay::ScoreHistory,
    /// Which frames get the guard pass.
    cascade: Cascade,
    /// The last guard frame's statistics and |response| map.
    last_response: Option<(FrameStats, ndarray::Array2<f32>)>,
    /// Each scored frame's age at its decision, s (the run's summary, the bench).
    decision_age_s: Vec<f32>,
    pub processed: u64,
    pub done: bool,
    /// A live camera (or realtime file): frames may be dropped for newer ones.
    pub live: bool,
    /// Frames the worker dropped for a newer one of this camera.
    pub superseded: u64,
}

impl CameraPipeline {
    /// A camera's pipeline; `share` cameras run on its worker (the cascade's budget).
    pub fn new(
        plan: CameraPlan,
        state: Box<dyn CameraState>,
        outputs: Outputs,
        share: usize,
    ) -> Self {
        CameraPipeline {
            headline: state.headline(),
            history: overlay::ScoreHistory::new(overlay::signals_of(&plan)),
            cascade: Cascade::new(plan.guard_every, state.response_need(), share),
            plan,
            state,
            outputs,
            prev_thumb: None,
            vanish: None,
            last_response: None,
            decision_age_s: Vec::new(),
            processed: 0,
            done: false,
            live: false,
            superseded: 0,
        }
    }

    /// Scores one frame and hands it to every output.
    pub fn score(
        &mut self,
        guard: &mut Guard,
        plain: Option<&mut Guard>,
        cfg: &ResponseConfig,
        f: Frame,
    ) -> anyhow::Result<()> {
        let t0 = Instant::now();
        if f.resumed {
            // A reconnect or a file started again: the frame does not follow the last one, so
            // the jump, the pixel change and the tracks would read the gap as an attack.
            self.state.stream_gap();
            self.prev_thumb = None;
            if let Some(v) = &mut self.vanish {
                v.reset();
            }
            tracing::debug!(camera = %self.plan.name, pts_ms = f.pts_ms, "stream resumed: references restarted");
        }
        let (w, h) = (f.width, f.height);
        // Without caps (a source that scales before the tail queue) the model frame's own size.
        let native = f.native.unwrap_or((w * overlay::SCALE, h * overlay::SCALE));
        let mut rgb = f.rgb;
        let mut injected = false;
        if let (Some(spec), Some(pg)) = (self.plan.inject.as_ref(), plain)
            && spec.covers(f.pts_ms)
        {
            rgb = InjectSpec::apply(spec, pg, &rgb, w, h)?;
            injected = true;
        }
        let ms = |t: Instant| t.elapsed().as_secs_f64() * 1e3;
        let (out, guard_ms, forward_ms) =
            match self
                .cascade
                .plan(f.seq, f.pts_ms, self.state.wants_response())
            {
                Plan::Guard(_) => {
                    let t = Instant::now();
                    let out = guard.run_rgb8(&rgb, w, h)?;
                    (out, Some(ms(t)), None)
                }
                Plan::Forward => {
                    let t = Instant::now();
                    let fwd = guard.forward_rgb8(&rgb, w, h)?;
                    let fwd_ms = ms(t);
                    match self.cascade.escalate(&fwd.probs()) {
                        Some(_) => {
                            let t = Instant::now();
                            let out = guard.run_rgb8(&rgb, w, h)?;
                            (out, Some(ms(t)), Some(fwd_ms))
                        }
                        None => (fwd, None, Some(fwd_ms)),
                    }
                }
            };
        let probs = out.probs();
        self.cascade.record(&probs, guard_ms, forward_ms);
        // A detector's objects come with every pass (the forward pass too).
        let detections = if detect::is_detector(guard) {
            detect::detections(guard, &out, w, h).unwrap_or_else(|e| {
                tracing::warn!(camera = %self.plan.name, "detections: {e}");
                Vec::new()
            })
        } else {
            Vec::new()
        };
        if !detections.is_empty() {
            tracing::debug!(camera = %self.plan.name, pts_ms = f.pts_ms,
                detections = %detections.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("; "),
                "objects");
        }
        let fresh = guard_ms.is_some();
        if fresh {
            let (mut stats, mag) = response::analyze_with_magnitude(out.response.view(), cfg);
            stats.measure_texture(&rgb, w, h);
            self.last_response = Some((stats, mag));
        }
        let Some((stats, magnitude)) = self.last_response.as_ref() else {
            anyhow::bail!("no guard frame yet (the cascade guards a camera's first frame)");
        };
        let k = top_k(&probs, 1).first().copied().unwrap_or(0);
        let top1 = ClassGuess {
            index: k,
            label: guard.labels().get(k).cloned().unwrap_or_default(),
            prob: probs.get(k).copied().unwrap_or(0.0),
        };
        // Every pass gives the detections, so the tracks see every frame (the cascade's
        // forward-only ones too).
        let vanish = if detect::is_detector(guard) {
            self.vanish
                .get_or_insert_with(VanishTracker::for_camera)
                .observe(&detections, &rgb, w, h)
        } else {
            None
        };
        if let Some(v) = &vanish {
            tracing::debug!(camera = %self.plan.name, pts_ms = f.pts_ms, confidence = v.score,
                change = v.change, bbox = ?v.bbox, "tracked object lost in place");
        }
        let thumb = GrayThumb::new(&rgb, w, h);
        let pixel_change = self.prev_thumb.as_ref().map(|p| thumb.change(p));
        self.prev_thumb = Some(thumb);
        let image = RgbImage::from_raw(w, h, rgb).unwrap_or_else(|| RgbImage::new(w, h));
        // The response is at model-input resolution, which is the frame's (the source scales).
        let bbox = Some(stats.bbox);
        let input = FrameInput {
            pts_ms: f.pts_ms,
            probs: &probs,
            stats,
            fresh,
            top1: top1.clone(),
            bbox,
            pixel_change,
            vanish,
        };
        let peak_caption = format!(
            "{} {} peak  {} ({:.2})",
            self.plan.name,
            self.headline.0,
            top1.label.split(',').next().unwrap_or(""),
            top1.prob
        );
        let history = &self.history;
        let mut media = || {
            // The explain view itself, as the operator sees it live (strip up to the last frame).
            let heat = overlay::explain(&overlay::Explain {
                frame: &image,
                magnitude: magnitude.view(),
                bbox,
                size: native,
                caption: &peak_caption,
                alert: true,
                history: Some(history),
                detections: &detections,
            });
            (
                // The snapshot at the camera's geometry too, not squashed to the model's.
                Some(crate::viz::jpeg_bytes(&image::imageops::resize(
                    &image,
                    native.0,
                    native.1,
                    image::imageops::FilterType::CatmullRom,
                ))),
                Some(crate::viz::png_bytes(&heat)),
            )
        };
        let obs = self.state.observe(&input, &mut media);
        // Bounded: an hour at 30 fps is 432 kB.
        if self.decision_age_s.len() < 1 << 20 {
            self.decision_age_s.push(f.captured.elapsed().as_secs_f32());
        }
        self.history.push(f.pts_ms, &obs.scores, obs.in_event);
        self.processed += 1;
        let scored = ScoredFrame {
            camera: &self.plan.name,
            seq: f.seq,
            pts_ms: f.pts_ms,
            image: &image,
            probs: &probs,
            stats,
            guarded: fresh,
            detections: &detections,
            magnitude: magnitude.view(),
            top1: &top1,
            obs: &obs,
            injected,
            pixel_change,
            vanish,
            proc_s: t0.elapsed().as_secs_f64(),
            age_s: f.captured.elapsed().as_secs_f64(),
            native,
            history: &self.history,
        };
        self.outputs.frame(&scored);
        Ok(())
    }

    /// Ends the camera: closes an open event, finishes the outputs, and returns its summary.
    pub fn end(&mut self, error: Option<String>) -> CameraSummary {
        self.done = true;
        if let Some(ev) = self.state.finish() {
            self.outputs.event(&ev);
        }
        let c = self.cascade.counts();
        let mut summary = CameraSummary {
            processed: self.processed,
            guarded: c.guard,
            escalated: c.escalated,
            guard_every: self.cascade.k(),
            superseded: self.superseded,
            decision_age_s: std::mem::take(&mut self.decision_age_s),
            error,
            ..Default::default()
        };
        self.outputs.finish(&mut summary);
        summary
    }

    /// The detector in force, for logs.
    pub fn describe(&self) -> String {
        self.state.describe()
    }

    /// Output names, for logs.
    pub fn output_names(&self) -> Vec<&'static str> {
        self.outputs.names()
    }
}
