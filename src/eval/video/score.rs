//! Scoring sessions: encoder, attacks, guard; one stored record per session (resumable).

use super::SessionPlan;
use super::attacks::{self, DigitalCtx, SceneMotion};
use super::footage::{Clip, Look, h264_round_trip, rng_for};
use crate::attack::Oracle;
use crate::detector::cut::GrayThumb;
use crate::engine::{Guard, top_k};
use crate::response::{self, ResponseConfig};
use ndarray::Array3;
use rand::Rng;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// One scored frame (without its class distribution, stored beside it).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FrameRec {
    /// Session stream time, ms.
    pub pts_ms: u64,
    /// The paper's S̄.
    pub entropy: f64,
    /// Response concentration.
    pub concentration: f64,
    /// Its box, frame pixels.
    pub bbox: [u32; 4],
    /// The frame's texture inside it, gray levels (absent in sessions scored before the
    /// patch signal's texture gate: they are judged on the concentration alone).
    #[serde(default)]
    pub box_texture: Option<f64>,
    /// Pixel change from the previous frame, gray levels.
    pub pixel_change: f64,
    /// Top-1 class.
    pub top1: usize,
    /// The frame is attacked.
    pub attacked: bool,
    /// The pasted patch's box, when one is in the frame.
    pub patch_box: Option<[u32; 4]>,
}

/// A scored session.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionRec {
    /// The plan it was scored from.
    pub plan: SessionPlan,
    /// Clip name.
    pub clip: String,
    /// Frames.
    pub frames: Vec<FrameRec>,
    /// Class distributions, frame-major.
    #[serde(skip)]
    pub probs: Vec<Vec<f32>>,
    /// Engine calls of the attacks (gradients + forwards) in this session.
    pub attack_calls: u64,
}

impl SessionRec {
    fn paths(dir: &Path, id: usize) -> (PathBuf, PathBuf) {
        (
            dir.join(format!("session-{id:05}.json")),
            dir.join(format!("session-{id:05}.f16")),
        )
    }

    /// Loads a stored session if it exists and was scored from the same plan.
    pub fn load(dir: &Path, plan: &SessionPlan) -> Option<SessionRec> {
        let (j, b) = Self::paths(dir, plan.id);
        let mut rec: SessionRec = serde_json::from_slice(&std::fs::read(j).ok()?).ok()?;
        if rec.plan != *plan {
            return None;
        }
        let bytes = std::fs::read(b).ok()?;
        let n = rec.frames.len();
        if n == 0 || bytes.len() % (2 * n) != 0 {
            return None;
        }
        let classes = bytes.len() / 2 / n;
        rec.probs = bytes
            .chunks_exact(2 * classes)
            .map(|c| {
                c.chunks_exact(2)
                    .map(|h| half::f16::from_le_bytes([h[0], h[1]]).to_f32())
                    .collect()
            })
            .collect();
        Some(rec)
    }

    /// Stores the session (class distributions as f16: 2 KB per ImageNet frame).
    pub fn save(&self, dir: &Path) -> anyhow::Result<()> {
        let (j, b) = Self::paths(dir, self.plan.id);
        let mut bytes = Vec::with_capacity(self.probs.len() * 2000);
        for p in &self.probs {
            for v in p {
                bytes.extend_from_slice(&half::f16::from_f32(*v).to_le_bytes());
            }
        }
        std::fs::write(&b, bytes)?;
        // The JSON last: a session counts as done only once both files are complete.
        let tmp = j.with_extension("json.part");
        std::fs::write(&tmp, serde_json::to_vec(self)?)?;
        std::fs::rename(tmp, j)?;
        Ok(())
    }
}

/// Engines and attack material of one scoring worker.
pub struct Scorer {
    /// The guard (guided response) as `watch` runs it.
    pub guard: Guard,
    /// The attacker's model.
    pub oracle: Oracle,
    /// Response statistics configuration.
    pub response: ResponseConfig,
    /// The universal perturbation.
    pub universal: Option<Array3<f32>>,
    /// The patch (side×side×3).
    pub patch: Option<Array3<f32>>,
    /// Seed.
    pub seed: u64,
}

impl Scorer {
    /// Scores one session.
    pub fn score(&mut self, plan: &SessionPlan, clip: &Clip) -> anyhow::Result<SessionRec> {
        let size = clip.size;
        let f_ms = clip.frame_ms();
        let look: Look = plan.look.into();
        let stretch = plan.stretch;
        let mut rng = rng_for(self.seed, plan.id, 3);
        let in_stretch = |t: u64| stretch.is_some_and(|s| (s.start_ms..s.end_ms).contains(&t));
        // The scene, with the patch in it where one is.
        let mut scene = Vec::with_capacity(plan.frames.1 - plan.frames.0);
        let mut boxes = Vec::new();
        let motion = match (&self.patch, stretch) {
            (Some(p), Some(s)) if s.kind.in_scene() => {
                Some(SceneMotion::random(p.dim().0, size, &mut rng))
            }
            (None, Some(s)) if s.kind.in_scene() => {
                anyhow::bail!("stretch kind {} needs a patch (--patch PNG)", s.kind)
            }
            _ => None,
        };
        for (i, fi) in (plan.frames.0..plan.frames.1).enumerate() {
            let t = i as u64 * f_ms;
            let mut rgb = look.apply(&clip.frames[fi], size);
            let mut pb = None;
            if let (Some(m), Some(p), Some(s)) = (&motion, &self.patch, stretch)
                && in_stretch(t)
            {
                let ts = (t - s.start_ms) as f32 / 1000.0;
                pb = Some(attacks::paste_in_scene(&mut rgb, size, p, m, ts, &mut rng));
            }
            scene.push(rgb);
            boxes.push(pb);
        }
        let encoded = h264_round_trip(&scene, size, f_ms)?;
        let ctx = DigitalCtx {
            target: rng.random_range(0..1000),
            universal: self.universal.clone(),
        };
        let calls0 = crate::attack::Forward::calls(&self.oracle);
        let mut frames = Vec::with_capacity(encoded.len());
        let mut probs = Vec::with_capacity(encoded.len());
        let mut prev: Option<GrayThumb> = None;
        for (i, rgb) in encoded.into_iter().enumerate() {
            let t = i as u64 * f_ms;
            let attacked = in_stretch(t);
            let rgb = match stretch {
                Some(s) if attacked && !s.kind.in_scene() => attacks::attack_frame(
                    s.kind,
                    &mut self.oracle,
                    &rgb,
                    size,
                    t - s.start_ms,
                    &ctx,
                    self.seed ^ (plan.id as u64) << 20 ^ i as u64,
                )?,
                _ => rgb,
            };
            let thumb = GrayThumb::new(&rgb, size, size);
            let pixel_change = prev.as_ref().map_or(0.0, |p| thumb.change(p));
            prev = Some(thumb);
            let out = self.guard.run_rgb8(&rgb, size, size)?;
            let p = out.probs();
            let mut stats = response::analyze(out.response.view(), &self.response);
            stats.measure_texture(&rgb, size, size);
            frames.push(FrameRec {
                pts_ms: t,
                entropy: stats.entropy,
                concentration: stats.concentration,
                bbox: stats.bbox,
                box_texture: stats.box_texture,
                pixel_change,
                top1: top_k(&p, 1).first().copied().unwrap_or(0),
                attacked,
                patch_box: boxes[i],
            });
            probs.push(p);
        }
        let calls = crate::attack::Forward::calls(&self.oracle) - calls0;
        Ok(SessionRec {
            plan: plan.clone(),
            clip: clip.name.clone(),
            frames,
            probs,
            attack_calls: calls.forward + calls.gradient,
        })
    }
}
