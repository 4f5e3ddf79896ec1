//! The vanishing-track signal of a detector camera (issue 14 §4): an object tracked for a while
//! that stops being detected away from the frame's edges while the pixels where it stood barely
//! change. A person who walks off changes those pixels, or leaves at an edge; something passing
//! in front changes them too. A printed patch that switches the detector off does neither.
//!
//! Tracks are kept by greedy IoU matching of the detections of one class, frame by frame.

use crate::engine::detect::{Detection, box_iou as iou};

/// Side of the gray thumbnail a track's box is compared through.
const THUMB: usize = 16;

/// The pixel change a loss may show and still count as a vanishing (median |Δ gray| over the
/// box's thumbnail cells, 0–255): the bar `eval-hide` judged the signal at (docs/EVAL.md). A
/// walking person's own motion, carried on at its velocity, stays under it on the shared clip;
/// someone walking off or passing in front changes most of the cells by more.
pub const DEFAULT_MAX_CHANGE: f64 = 10.0;

/// Settings of the vanishing-track signal.
#[derive(Debug, Clone, PartialEq)]
pub struct VanishConfig {
    /// Tracked class (COCO person = 0).
    pub class: usize,
    /// Detections below this score are not tracked (the decode's operating threshold).
    pub threshold: f32,
    /// IoU at which a detection continues a track.
    pub match_iou: f32,
    /// Frames a track must have been matched on before its loss counts.
    pub min_age: u32,
    /// Consecutive unmatched frames after which the loss is judged.
    pub lost_frames: u32,
    /// A box closer than this share of the frame side to an edge it moves towards may simply
    /// have left.
    pub edge: f32,
    /// Losses whose pixel change is at most this (median |Δ gray| over the box's thumbnail
    /// cells, 0–255) fire. The median, so that a sticker covering a tenth of the box (the
    /// attack itself appearing) does not count as the scene changing.
    pub max_change: f64,
    /// Losses of tracks less confident than this (mean of their last scores) do not fire: a
    /// person the detector only just saw drops out of it naturally.
    pub min_confidence: f32,
    /// Unmatched tracks are forgotten after this many frames.
    pub forget_frames: u32,
}

impl Default for VanishConfig {
    fn default() -> Self {
        VanishConfig {
            class: 0,
            threshold: 0.3,
            match_iou: 0.3,
            min_age: 3,
            lost_frames: 3,
            edge: 0.04,
            max_change: f64::NEG_INFINITY,
            min_confidence: 0.0,
            forget_frames: 30,
        }
    }
}

#[derive(Debug, Clone)]
struct Track {
    id: u64,
    bbox: [f32; 4],
    /// Centre motion per frame (x, y), smoothed over the matched frames.
    vel: [f32; 2],
    age: u32,
    lost: u32,
    score: f32,
    /// The last few matched scores, newest last.
    recent: Vec<f32>,
    thumb: Vec<f32>,
}

/// Matched scores a track's confidence is the mean of.
const RECENT: usize = 5;

/// A track lost while not leaving the frame: the candidate the signal judges.
#[derive(Debug, Clone, PartialEq)]
pub struct Loss {
    /// Track id.
    pub track: u64,
    /// Its last box, frame pixels.
    pub bbox: [f32; 4],
    /// Frames it had been matched on.
    pub age: u32,
    /// Its last score.
    pub score: f32,
    /// Mean of its last matched scores (up to five).
    pub confidence: f32,
    /// Median |Δ gray| over the box's thumbnail cells since its last match (0–255), where the
    /// box should be now (carried on at the track's velocity, best of a small search).
    pub change: f64,
    /// Whether it fires (`change ≤ max_change` and `confidence ≥ min_confidence`).
    pub fires: bool,
}

/// What the vanishing-track signal saw on one frame: its most confident loss with a pixel
/// change under the bar. The fused detector's `vanish` signal thresholds `score`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Vanished {
    /// The lost track's confidence (mean of its last matched scores, 0–1).
    pub score: f64,
    /// Its last box, frame pixels.
    pub bbox: [u32; 4],
    /// Its pixel change (0–255).
    pub change: f64,
}

impl Vanished {
    /// The strongest firing loss of a frame, if any.
    pub fn strongest(losses: &[Loss]) -> Option<Vanished> {
        losses
            .iter()
            .filter(|l| l.fires)
            .max_by(|a, b| a.confidence.total_cmp(&b.confidence))
            .map(|l| Vanished {
                score: l.confidence as f64,
                bbox: l.bbox.map(|v| v.max(0.0).round() as u32),
                change: l.change,
            })
    }
}

/// Tracks one class over the frames of a camera and reports losses.
#[derive(Debug, Clone)]
pub struct VanishTracker {
    cfg: VanishConfig,
    tracks: Vec<Track>,
    next: u64,
}

impl VanishTracker {
    /// A tracker with no tracks.
    pub fn new(cfg: VanishConfig) -> VanishTracker {
        VanishTracker {
            cfg,
            tracks: vec![],
            next: 0,
        }
    }

    /// The tracker a detector camera runs in `watch`: every loss under
    /// [`DEFAULT_MAX_CHANGE`] fires, and the fused detector's `vanish` threshold is the
    /// confidence bar (calibrated per camera by `advguard calibrate --budget`).
    pub fn for_camera() -> VanishTracker {
        VanishTracker::new(VanishConfig {
            max_change: DEFAULT_MAX_CHANGE,
            ..VanishConfig::default()
        })
    }

    /// One frame, as the fused detector reads it: [`Self::update`], then the strongest loss.
    pub fn observe(&mut self, dets: &[Detection], rgb: &[u8], w: u32, h: u32) -> Option<Vanished> {
        Vanished::strongest(&self.update(dets, rgb, w, h))
    }

    /// The settings.
    pub fn config(&self) -> &VanishConfig {
        &self.cfg
    }

    /// Forgets every track (a scene cut, a reconnect).
    pub fn reset(&mut self) {
        self.tracks.clear();
    }

    /// One frame: its detections (frame pixels) and its w×h RGB8 pixels. Returns the tracks
    /// lost, and not leaving the frame, on this frame.
    pub fn update(&mut self, dets: &[Detection], rgb: &[u8], w: u32, h: u32) -> Vec<Loss> {
        let cfg = &self.cfg;
        let mut dets: Vec<&Detection> = dets
            .iter()
            .filter(|d| d.class == cfg.class && d.score >= cfg.threshold)
            .collect();
        dets.sort_by(|a, b| b.score.total_cmp(&a.score));
        let mut taken = vec![false; self.tracks.len()];
        let mut fresh = vec![];
        for d in dets {
            let best = self
                .tracks
                .iter()
                .enumerate()
                .filter(|(i, _)| !taken[*i])
                .map(|(i, t)| (i, iou(t.bbox, d.bbox)))
                .filter(|(_, v)| *v >= cfg.match_iou)
                .max_by(|a, b| a.1.total_cmp(&b.1));
            match best {
                Some((i, _)) => {
                    taken[i] = true;
                    let t = &mut self.tracks[i];
                    let step = [
                        (d.bbox[0] + d.bbox[2] - t.bbox[0] - t.bbox[2]) / 2.0,
                        (d.bbox[1] + d.bbox[3] - t.bbox[1] - t.bbox[3]) / 2.0,
                    ];
                    let k = if t.age == 1 { 1.0 } else { 0.5 };
                    t.vel = [
                        (1.0 - k) * t.vel[0] + k * step[0] / (t.lost + 1) as f32,
                        (1.0 - k) * t.vel[1] + k * step[1] / (t.lost + 1) as f32,
                    ];
                    t.bbox = d.bbox;
                    t.age += 1;
                    t.lost = 0;
                    t.score = d.score;
                    t.recent.push(d.score);
                    if t.recent.len() > RECENT {
                        t.recent.remove(0);
                    }
                    t.thumb = thumb(rgb, w, h, d.bbox);
                }
                None => fresh.push(d),
            }
        }
        let mut losses = vec![];
        for (i, t) in self.tracks.iter_mut().enumerate() {
            if taken[i] {
                continue;
            }
            t.lost += 1;
            if t.lost == cfg.lost_frames && t.age >= cfg.min_age && !leaving(t, w, h, cfg.edge) {
                let change = moved_change(rgb, w, h, t);
                let confidence = t.recent.iter().sum::<f32>() / t.recent.len().max(1) as f32;
                losses.push(Loss {
                    track: t.id,
                    bbox: t.bbox,
                    age: t.age,
                    score: t.score,
                    confidence,
                    change,
                    fires: change <= cfg.max_change && confidence >= cfg.min_confidence,
                });
            }
        }
        let forget = cfg.forget_frames;
        self.tracks.retain(|t| t.lost <= forget);
        for d in fresh {
            self.tracks.push(Track {
                id: self.next,
                bbox: d.bbox,
                vel: [0.0, 0.0],
                age: 1,
                lost: 0,
                score: d.score,
                recent: vec![d.score],
                thumb: thumb(rgb, w, h, d.bbox),
            });
            self.next += 1;
        }
        losses
    }
}

/// Whether the object may simply have left the frame: its box, carried on at its velocity,
/// is within `edge` of a side it moves towards. A tall person touching the top edge while
/// walking sideways has not left through the top.
fn leaving(t: &Track, w: u32, h: u32, edge: f32) -> bool {
    let n = t.lost as f32;
    let [vx, vy] = t.vel;
    let b = [
        t.bbox[0] + vx * n,
        t.bbox[1] + vy * n,
        t.bbox[2] + vx * n,
        t.bbox[3] + vy * n,
    ];
    let (mx, my) = (edge * w as f32, edge * h as f32);
    // Slower than this (pixels per frame) is standing, not leaving.
    let slow = 0.25;
    (b[0] <= mx && vx < -slow)
        || (b[1] <= my && vy < -slow)
        || (b[2] >= w as f32 - mx && vx > slow)
        || (b[3] >= h as f32 - my && vy > slow)
}

/// The box's pixels as a THUMB×THUMB gray thumbnail (area means), so a change is measured the
/// same way on a small and a large box.
fn thumb(rgb: &[u8], w: u32, h: u32, b: [f32; 4]) -> Vec<f32> {
    let (w, h) = (w as usize, h as usize);
    let x0 = (b[0].max(0.0) as usize).min(w.saturating_sub(1));
    let y0 = (b[1].max(0.0) as usize).min(h.saturating_sub(1));
    let x1 = (b[2].ceil().max(0.0) as usize).clamp(x0 + 1, w.max(x0 + 1));
    let y1 = (b[3].ceil().max(0.0) as usize).clamp(y0 + 1, h.max(y0 + 1));
    let mut sum = vec![0f32; THUMB * THUMB];
    let mut n = vec![0u32; THUMB * THUMB];
    for y in y0..y1.min(h) {
        let ty = (y - y0) * THUMB / (y1 - y0);
        for x in x0..x1.min(w) {
            let tx = (x - x0) * THUMB / (x1 - x0);
            let p = 3 * (y * w + x);
            if p + 2 >= rgb.len() {
                continue;
            }
            let g = 0.299 * rgb[p] as f32 + 0.587 * rgb[p + 1] as f32 + 0.114 * rgb[p + 2] as f32;
            sum[ty * THUMB + tx] += g;
            n[ty * THUMB + tx] += 1;
        }
    }
    sum.iter()
        .zip(&n)
        .map(|(s, &k)| if k > 0 { s / k as f32 } else { 0.0 })
        .collect()
}

/// The change where the object should be now: its last box carried on at its velocity, then
/// the best of a small search around that (±10 % of the box, and ±10 % in size), since a
/// walking person keeps neither a constant pace nor a constant distance to the camera. A
/// hidden person is still there, so some nearby box matches it; a person who left, or was
/// covered, leaves no such box.
fn moved_change(rgb: &[u8], w: u32, h: u32, t: &Track) -> f64 {
    let n = t.lost as f32;
    let b = t.bbox;
    let (bw, bh) = (b[2] - b[0], b[3] - b[1]);
    let mut best = f64::INFINITY;
    for scale in [1.0f32, 0.9, 1.1] {
        let (gx, gy) = ((scale - 1.0) * bw / 2.0, (scale - 1.0) * bh / 2.0);
        for iy in -2i32..=2 {
            for ix in -2i32..=2 {
                let dx = t.vel[0] * n + ix as f32 * 0.05 * bw;
                let dy = t.vel[1] * n + iy as f32 * 0.05 * bh;
                let at = [
                    b[0] + dx - gx,
                    b[1] + dy - gy,
                    b[2] + dx + gx,
                    b[3] + dy + gy,
                ];
                best = best.min(median_abs_diff(&thumb(rgb, w, h, at), &t.thumb));
            }
        }
    }
    best
}

fn median_abs_diff(a: &[f32], b: &[f32]) -> f64 {
    if a.is_empty() || a.len() != b.len() {
        return f64::INFINITY;
    }
    let mut d: Vec<f32> = a.iter().zip(b).map(|(x, y)| (x - y).abs()).collect();
    d.sort_by(f32::total_cmp);
    d[d.len() / 2] as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn person(b: [f32; 4]) -> Detection {
        Detection {
            class: 0,
            label: "person".into(),
            score: 0.6,
            bbox: b,
        }
    }

    /// A 100×100 gray frame with a dark square where the "person" stands.
    fn frame(person_at: Option<[f32; 4]>) -> Vec<u8> {
        let mut f = vec![128u8; 100 * 100 * 3];
        if let Some(b) = person_at {
            for y in b[1] as usize..b[3] as usize {
                for x in b[0] as usize..b[2] as usize {
                    f[3 * (y * 100 + x)..3 * (y * 100 + x) + 3].copy_from_slice(&[20, 20, 20]);
                }
            }
        }
        f
    }

    fn cfg() -> VanishConfig {
        VanishConfig {
            max_change: 10.0,
            lost_frames: 2,
            ..VanishConfig::default()
        }
    }

    #[test]
    fn a_person_who_vanishes_in_place_fires_one_who_walks_off_does_not() {
        let b = [40.0, 30.0, 60.0, 80.0];
        // Hidden: the pixels stay, the detection goes.
        let mut t = VanishTracker::new(cfg());
        for _ in 0..5 {
            assert!(t.update(&[person(b)], &frame(Some(b)), 100, 100).is_empty());
        }
        assert!(
            t.update(&[], &frame(Some(b)), 100, 100).is_empty(),
            "one missed frame is not yet a loss"
        );
        let l = t.update(&[], &frame(Some(b)), 100, 100);
        assert_eq!(l.len(), 1);
        assert!(l[0].fires && l[0].change < 1.0 && l[0].age == 5);
        // Gone: the person's pixels went with the detection.
        let mut t = VanishTracker::new(cfg());
        for _ in 0..5 {
            t.update(&[person(b)], &frame(Some(b)), 100, 100);
        }
        t.update(&[], &frame(None), 100, 100);
        let l = t.update(&[], &frame(None), 100, 100);
        assert_eq!(l.len(), 1);
        assert!(!l[0].fires && l[0].change > 50.0);
    }

    #[test]
    fn a_sticker_appearing_on_the_person_is_not_a_scene_change() {
        let b = [40.0, 30.0, 60.0, 80.0];
        let mut t = VanishTracker::new(cfg());
        for _ in 0..5 {
            t.update(&[person(b)], &frame(Some(b)), 100, 100);
        }
        // A bright 8×8 sticker on the torso: an eighth of the box.
        let mut f = frame(Some(b));
        for y in 45..53 {
            for x in 46..54 {
                f[3 * (y * 100 + x)..3 * (y * 100 + x) + 3].copy_from_slice(&[250, 250, 250]);
            }
        }
        t.update(&[], &f, 100, 100);
        let l = t.update(&[], &f, 100, 100);
        assert_eq!(l.len(), 1);
        assert!(l[0].fires, "change {}", l[0].change);
    }

    #[test]
    fn a_walking_person_hidden_mid_stride_fires_one_who_leaves_does_not() {
        let at = |k: usize| [20.0 + 4.0 * k as f32, 30.0, 40.0 + 4.0 * k as f32, 80.0];
        let mut t = VanishTracker::new(cfg());
        for k in 0..6 {
            t.update(&[person(at(k))], &frame(Some(at(k))), 100, 100);
        }
        // Still walking, no longer detected: the carried-on box finds the same pixels.
        t.update(&[], &frame(Some(at(6))), 100, 100);
        let l = t.update(&[], &frame(Some(at(7))), 100, 100);
        assert_eq!(l.len(), 1);
        assert!(l[0].fires, "change {}", l[0].change);
        // Same walk, but the person is gone from the frame.
        let mut t = VanishTracker::new(cfg());
        for k in 0..6 {
            t.update(&[person(at(k))], &frame(Some(at(k))), 100, 100);
        }
        t.update(&[], &frame(None), 100, 100);
        let l = t.update(&[], &frame(None), 100, 100);
        assert!(!l[0].fires, "change {}", l[0].change);
    }

    /// A 100×100 gray frame with a "person" whose shade runs top to bottom of its box, so a
    /// box of the wrong size sees other shades.
    fn shaded(b: [f32; 4]) -> Vec<u8> {
        let mut f = vec![128u8; 100 * 100 * 3];
        for y in b[1] as usize..(b[3] as usize).min(100) {
            let v = 20.0 + 220.0 * (y as f32 - b[1]) / (b[3] - b[1]);
            for x in b[0] as usize..(b[2] as usize).min(100) {
                f[3 * (y * 100 + x)..3 * (y * 100 + x) + 3].copy_from_slice(&[v as u8; 3]);
            }
        }
        f
    }

    #[test]
    fn a_person_walking_towards_the_camera_hidden_fires() {
        // The box grows 15 % a frame about a fixed centre (a person close to the camera).
        let at = |k: usize| {
            let s = 1.15f32.powi(k as i32);
            [
                50.0 - 6.0 * s,
                50.0 - 12.0 * s,
                50.0 + 6.0 * s,
                50.0 + 12.0 * s,
            ]
        };
        let mut t = VanishTracker::new(cfg());
        for k in 0..6 {
            t.update(&[person(at(k))], &shaded(at(k)), 100, 100);
        }
        t.update(&[], &shaded(at(6)), 100, 100);
        let l = t.update(&[], &shaded(at(7)), 100, 100);
        assert_eq!(l.len(), 1);
        assert!(l[0].fires, "change {}", l[0].change);
    }

    #[test]
    fn young_tracks_edge_tracks_and_followed_tracks_never_count() {
        let mut t = VanishTracker::new(cfg());
        let b = [40.0, 30.0, 60.0, 80.0];
        t.update(&[person(b)], &frame(Some(b)), 100, 100);
        t.update(&[], &frame(Some(b)), 100, 100);
        assert!(
            t.update(&[], &frame(Some(b)), 100, 100).is_empty(),
            "age 1 < min_age"
        );
        // Walking out through the left edge: not a loss that counts.
        let mut t = VanishTracker::new(cfg());
        let at = |k: usize| [20.0 - 4.0 * k as f32, 30.0, 40.0 - 4.0 * k as f32, 80.0];
        for k in 0..5 {
            t.update(&[person(at(k))], &frame(Some(at(k))), 100, 100);
        }
        t.update(&[], &frame(Some(at(5))), 100, 100);
        assert!(
            t.update(&[], &frame(Some(at(6))), 100, 100).is_empty(),
            "leaving through the edge"
        );
        // Standing at the edge, tall enough to touch the top: still judged.
        let e = [2.0, 0.0, 22.0, 80.0];
        let mut t = VanishTracker::new(cfg());
        for _ in 0..5 {
            t.update(&[person(e)], &frame(Some(e)), 100, 100);
        }
        t.update(&[], &frame(Some(e)), 100, 100);
        assert_eq!(t.update(&[], &frame(Some(e)), 100, 100).len(), 1);
        // A person moving a few pixels a frame stays one track.
        let mut t = VanishTracker::new(cfg());
        for k in 0..10 {
            let m = [30.0 + 2.0 * k as f32, 30.0, 50.0 + 2.0 * k as f32, 80.0];
            assert!(t.update(&[person(m)], &frame(Some(m)), 100, 100).is_empty());
        }
        assert_eq!(t.tracks.len(), 1);
        assert_eq!(t.tracks[0].age, 10);
    }
}
