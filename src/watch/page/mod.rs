//! The live page (`/` on the metrics address): what it shows is kept here, in a
//! [`PageBoard`] that the cameras' page outputs write and the HTTP server reads.
//!
//! A frame costs the worker one copy of the model-size frame and its heat map; the explain
//! picture is drawn and encoded only when a browser asks for it (and once per frame however
//! many browsers ask).

pub mod access;

use crate::detector::event::{Event, Phase};
use crate::detector::score::FrameScores;
use crate::watch::health::HealthBoard;
use crate::watch::overlay::{self, Explain, ScoreHistory};
use image::RgbImage;
use ndarray::Array2;
use serde::Serialize;
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

/// The page itself: one HTML file with its CSS and JS inline, no build step.
pub const INDEX_HTML: &str = include_str!("index.html");

/// Events kept for the page (the newest; older ones drop off).
pub const MAX_EVENTS: usize = 30;

/// Bytes of event pictures (snapshots and heat maps) the page keeps; older events keep
/// their text and lose their pictures first. Without it the list's pictures grow the live
/// heap by ~5 MB as it fills (a heat map is ~140 kB), which the hour soak read as a creep
/// (docs/RELIABILITY.md). The alert sinks and the spool carry every event's pictures anyway.
pub const MAX_EVENT_IMAGE_BYTES: usize = 2 << 20;

/// What a camera's latest scored frame leaves for the page.
#[derive(Debug, Clone)]
pub struct Latest {
    /// Frames delivered by the source before this one.
    pub seq: u64,
    /// Stream time, ms.
    pub pts_ms: u64,
    /// The frame as the guard saw it (model size).
    pub frame: RgbImage,
    /// |response| at the frame's size.
    pub magnitude: Array2<f32>,
    /// Response box in frame pixels.
    pub bbox: [u32; 4],
    /// The camera's frame size.
    pub native: (u32, u32),
    /// Object detections (detector models), boxes in `frame` pixels.
    pub detections: Vec<crate::engine::detect::Detection>,
    /// Caption of the explain picture.
    pub caption: String,
    /// An event is open after this frame.
    pub alert: bool,
    /// The frame was replaced by `--inject`.
    pub injected: bool,
    /// Every score of the frame.
    pub scores: FrameScores,
    /// The driving score.
    pub score: f64,
    /// Driving score's name and start threshold.
    pub headline: (String, f64),
    /// Top-1 class label and probability.
    pub top1: (String, f32),
    /// Scores of the last seconds (the strip).
    pub history: ScoreHistory,
}

#[derive(Default)]
struct CameraSlot {
    latest: Option<Arc<Latest>>,
    /// The encoded picture of frame `seq`, shared by every browser asking for it.
    jpeg: Option<(u64, Arc<Vec<u8>>)>,
}

/// One event as the page lists it: its latest message, with the attachments kept from
/// whichever message carried them.
#[derive(Debug, Clone)]
struct EventSlot {
    latest: Event,
    snapshot: Option<Arc<Vec<u8>>>,
    heatmap: Option<Arc<Vec<u8>>>,
}

#[derive(Default)]
struct Board {
    cameras: BTreeMap<String, CameraSlot>,
    events: VecDeque<EventSlot>,
}

/// The page's state, shared by the cameras' outputs and the server.
#[derive(Clone, Default)]
pub struct PageBoard {
    inner: Arc<Mutex<Board>>,
}

/// One signal of a camera in `/api/state`.
#[derive(Debug, Serialize)]
struct SignalView<'a> {
    name: &'a str,
    value: f64,
    threshold: f64,
    over: bool,
}

impl PageBoard {
    /// A board listing `cameras` (each shown from the start, before its first frame).
    pub fn new<'a>(cameras: impl IntoIterator<Item = &'a str>) -> Self {
        let b = PageBoard::default();
        {
            let mut g = b.lock();
            for c in cameras {
                g.cameras.insert(c.to_string(), CameraSlot::default());
            }
        }
        b
    }

    fn lock(&self) -> MutexGuard<'_, Board> {
        // A panic elsewhere while holding the lock leaves plain data: keep serving it.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Replaces a camera's latest frame.
    pub fn set_latest(&self, camera: &str, latest: Latest) {
        let latest = Arc::new(latest);
        let mut g = self.lock();
        g.cameras.entry(camera.to_string()).or_default().latest = Some(latest);
    }

    /// Books one event message: a new event goes on top, a later message of a known event
    /// replaces it (keeping the attachments an earlier message carried).
    pub fn event(&self, ev: &Event) {
        let mut g = self.lock();
        if let Some(slot) = g
            .events
            .iter_mut()
            .find(|s| s.latest.event_id == ev.event_id)
        {
            slot.latest = text_only(ev);
            if ev.snapshot_jpeg.is_some() {
                slot.snapshot = ev.snapshot_jpeg.clone();
            }
            if ev.heatmap_png.is_some() {
                slot.heatmap = ev.heatmap_png.clone();
            }
        } else {
            g.events.push_front(EventSlot {
                latest: text_only(ev),
                snapshot: ev.snapshot_jpeg.clone(),
                heatmap: ev.heatmap_png.clone(),
            });
            g.events.truncate(MAX_EVENTS);
        }
        let mut budget = MAX_EVENT_IMAGE_BYTES;
        for s in g.events.iter_mut() {
            for img in [&mut s.snapshot, &mut s.heatmap] {
                let n = img.as_ref().map_or(0, |b| b.len());
                if n > budget {
                    *img = None;
                } else {
                    budget -= n;
                }
            }
        }
    }

    /// The latest explain picture of `camera` as JPEG; `None` before its first frame or for
    /// an unknown camera.
    pub fn frame_jpeg(&self, camera: &str) -> Option<Arc<Vec<u8>>> {
        let latest = {
            let g = self.lock();
            let slot = g.cameras.get(camera)?;
            let latest = slot.latest.clone()?;
            if let Some((seq, j)) = &slot.jpeg
                && *seq == latest.seq
            {
                return Some(j.clone());
            }
            latest
        };
        // Drawn outside the lock: the worker never waits on a browser.
        let img = overlay::explain(&Explain {
            frame: &latest.frame,
            magnitude: latest.magnitude.view(),
            bbox: Some(latest.bbox),
            size: latest.native,
            caption: &latest.caption,
            alert: latest.alert,
            history: Some(&latest.history),
            detections: &latest.detections,
        });
        let jpeg = Arc::new(crate::viz::jpeg_bytes(&img));
        let mut g = self.lock();
        if let Some(slot) = g.cameras.get_mut(camera) {
            slot.jpeg = Some((latest.seq, jpeg.clone()));
        }
        Some(jpeg)
    }

    /// The snapshot JPEG of event `event_id`, when it has one.
    pub fn snapshot(&self, event_id: &str) -> Option<Arc<Vec<u8>>> {
        let g = self.lock();
        g.events
            .iter()
            .find(|s| s.latest.event_id == event_id)
            .and_then(|s| s.snapshot.clone())
    }

    /// The heat-map PNG of event `event_id` (the explain picture of its peak frame).
    pub fn heatmap(&self, event_id: &str) -> Option<Arc<Vec<u8>>> {
        let g = self.lock();
        g.events
            .iter()
            .find(|s| s.latest.event_id == event_id)
            .and_then(|s| s.heatmap.clone())
    }

    /// What `/api/state` answers: every camera (health from `health`, scores, picture URL)
    /// and the recent events, newest first.
    pub fn state(&self, health: &HealthBoard) -> serde_json::Value {
        let states = health.snapshot();
        let g = self.lock();
        let cameras: Vec<serde_json::Value> = g
            .cameras
            .iter()
            .map(|(name, slot)| {
                let enc = urlencode(name);
                let mut v = serde_json::json!({
                    "name": name,
                    "health": states.get(name).map_or("unknown", |h| h.name()),
                    "frame_url": format!("/camera/{enc}/frame.jpg"),
                    "has_frame": slot.latest.is_some(),
                });
                if let Some(l) = &slot.latest {
                    let signals: Vec<SignalView> = l
                        .history
                        .signals()
                        .iter()
                        .map(|s| {
                            let value = overlay::score_of(&l.scores, &s.name);
                            SignalView {
                                name: &s.name,
                                value,
                                threshold: s.threshold,
                                over: value > s.threshold,
                            }
                        })
                        .collect();
                    v["seq"] = l.seq.into();
                    v["pts_ms"] = l.pts_ms.into();
                    v["alert"] = l.alert.into();
                    v["injected"] = l.injected.into();
                    v["score"] = finite(l.score);
                    v["detector"] = l.headline.0.clone().into();
                    v["threshold"] = finite(l.headline.1);
                    v["signals"] = serde_json::to_value(signals).unwrap_or_default();
                    v["top1"] = serde_json::json!({ "label": l.top1.0, "prob": l.top1.1 });
                    v["size"] = serde_json::json!([l.native.0, l.native.1]);
                }
                v
            })
            .collect();
        let events: Vec<serde_json::Value> = g
            .events
            .iter()
            .map(|s| {
                let e = &s.latest;
                let id = urlencode(&e.event_id);
                serde_json::json!({
                    "event_id": e.event_id,
                    "camera": e.camera,
                    "phase": phase_name(e.phase),
                    "open": e.phase != Phase::End,
                    "detector": e.detector,
                    "start_time": e.start_time,
                    "time": e.time,
                    "start_pts_ms": e.start_pts_ms,
                    "pts_ms": e.pts_ms,
                    "score": finite(e.score),
                    "peak_score": finite(e.peak_score),
                    "threshold": finite(e.threshold),
                    "top1": e.top1.as_ref().map(|t| serde_json::json!({"label": t.label, "prob": t.prob})),
                    "snapshot_url": s.snapshot.as_ref().map(|_| format!("/event/{id}/snapshot.jpg")),
                    "heatmap_url": s.heatmap.as_ref().map(|_| format!("/event/{id}/heatmap.png")),
                })
            })
            .collect();
        serde_json::json!({
            "status": HealthBoard::status_of(&states),
            "cameras": cameras,
            "events": events,
        })
    }
}

fn phase_name(p: Phase) -> String {
    serde_json::to_value(p)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// JSON has no infinity or NaN: such a number is `null`.
fn finite(v: f64) -> serde_json::Value {
    if v.is_finite() {
        v.into()
    } else {
        serde_json::Value::Null
    }
}

/// Percent-encodes a path segment (camera names and event ids in URLs).
pub fn urlencode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Decodes a percent-encoded path segment; `None` when it is malformed or not UTF-8.
pub fn urldecode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = s.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// The event without its pictures: the slot keeps those, once, under the byte budget.
fn text_only(ev: &Event) -> Event {
    Event {
        snapshot_jpeg: None,
        heatmap_png: None,
        ..ev.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_segments_round_trip() {
        for s in ["street", "cam 1/ä", "a%b", ""] {
            assert_eq!(urldecode(&urlencode(s)).as_deref(), Some(s));
        }
        assert_eq!(urldecode("%zz"), None);
        assert_eq!(urldecode("%4"), None);
    }

    fn event(n: usize, phase: &str, pictures: bool) -> Event {
        let mut ev: Event = serde_json::from_value(serde_json::json!({
            "id": format!("e{n}-0"), "event_id": format!("e{n}"), "phase": phase, "seq": 0,
            "camera": "cam", "model": "m", "detector": "onset", "time": "t", "start_time": "t",
            "start_pts_ms": 0, "pts_ms": 0, "score": 1.0, "peak_score": 1.0, "peak_pts_ms": 0,
            "threshold": 0.5, "frames_over": 1, "top1": null, "bbox": null,
        }))
        .unwrap();
        if pictures {
            ev.snapshot_jpeg = Some(Arc::new(vec![n as u8; 100_000]));
            ev.heatmap_png = Some(Arc::new(vec![n as u8; 300_000]));
        }
        ev
    }

    fn picture_bytes(b: &PageBoard) -> usize {
        let g = b.lock();
        g.events
            .iter()
            .map(|s| {
                assert!(s.latest.snapshot_jpeg.is_none() && s.latest.heatmap_png.is_none());
                [&s.snapshot, &s.heatmap]
                    .iter()
                    .map(|i| i.as_ref().map_or(0, |v| v.len()))
                    .sum::<usize>()
            })
            .sum()
    }

    /// The page's pictures stay under their byte budget however many events come; the
    /// newest events keep theirs, an update without pictures keeps the start's.
    #[test]
    fn event_pictures_are_bounded_newest_first() {
        let b = PageBoard::new(["cam"]);
        for n in 0..40 {
            b.event(&event(n, "start", true));
            assert!(picture_bytes(&b) <= MAX_EVENT_IMAGE_BYTES);
        }
        assert_eq!(b.lock().events.len(), MAX_EVENTS);
        assert!(picture_bytes(&b) > MAX_EVENT_IMAGE_BYTES / 2);
        assert!(b.snapshot("e39").is_some() && b.heatmap("e39").is_some());
        assert!(b.snapshot("e20").is_none() && b.heatmap("e20").is_none());
        b.event(&event(39, "end", false));
        assert_eq!(b.heatmap("e39").unwrap()[0], 39);
        assert_eq!(b.lock().events[0].latest.phase, Phase::End);
    }
}
