//! Turns the rule's transitions into [`Event`] messages: one `start`, rate-limited `update`s,
//! one `end`, all sharing a UUID v7 `event_id`.

use super::event::{ClassGuess, Event, Phase};
use std::sync::Arc;

/// What the tracker needs to know about one frame.
#[derive(Debug, Clone)]
pub struct FrameFacts {
    /// Stream time, ms.
    pub pts_ms: u64,
    /// The driving score.
    pub score: f64,
    /// Over the start threshold.
    pub over: bool,
    /// Top-1 class.
    pub top1: Option<ClassGuess>,
    /// Where the response concentrates, frame pixels.
    pub bbox: Option<[u32; 4]>,
}

#[derive(Debug, Clone)]
struct Open {
    event_id: String,
    seq: u32,
    start_time: String,
    start_pts_ms: u64,
    peak_score: f64,
    peak_pts_ms: u64,
    frames_over: u32,
    top1: Option<ClassGuess>,
    bbox: Option<[u32; 4]>,
    last_msg_pts: u64,
    last: FrameFacts,
    snapshot_jpeg: Option<Arc<Vec<u8>>>,
    heatmap_png: Option<Arc<Vec<u8>>>,
}

/// Renders the snapshot JPEG and heat-map PNG of the current frame (either may be absent).
pub type Media<'a> = dyn FnMut() -> (Option<Vec<u8>>, Option<Vec<u8>>) + 'a;

/// One camera's event builder.
#[derive(Debug, Clone)]
pub struct EventTracker {
    camera: String,
    model: String,
    detector: String,
    threshold: f64,
    update_interval_ms: u64,
    open: Option<Open>,
}

/// Current wall-clock time, RFC 3339 with milliseconds.
pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

impl EventTracker {
    /// A tracker; `update_interval_ms` (stream time) spaces the `update` messages.
    pub fn new(
        camera: &str,
        model: &str,
        detector: &str,
        threshold: f64,
        update_interval_ms: u64,
    ) -> Self {
        EventTracker {
            camera: camera.into(),
            model: model.into(),
            detector: detector.into(),
            threshold,
            update_interval_ms,
            open: None,
        }
    }

    /// Whether an event is open.
    pub fn is_open(&self) -> bool {
        self.open.is_some()
    }

    /// Sets the detector name and threshold of the next messages (the fused detector names the
    /// signal that opened the event).
    pub fn set_detector(&mut self, detector: &str, threshold: f64) {
        self.detector = detector.to_string();
        self.threshold = threshold;
    }

    /// Id of the open event.
    pub fn event_id(&self) -> Option<&str> {
        self.open.as_ref().map(|o| o.event_id.as_str())
    }

    /// Opens an event at this frame (the rule fired); `start_pts_ms` may be earlier.
    /// `media` renders the frame's snapshot JPEG and heat-map PNG; it is called only for
    /// frames that become the event's peak, so quiet frames cost no encoding.
    pub fn start(&mut self, start_pts_ms: u64, f: &FrameFacts, media: &mut Media<'_>) -> Event {
        let now = now_rfc3339();
        let o = Open {
            event_id: uuid::Uuid::now_v7().to_string(),
            seq: 0,
            start_time: now,
            start_pts_ms: start_pts_ms.min(f.pts_ms),
            peak_score: f.score,
            peak_pts_ms: f.pts_ms,
            frames_over: 0,
            top1: f.top1.clone(),
            bbox: f.bbox,
            last_msg_pts: f.pts_ms,
            last: f.clone(),
            snapshot_jpeg: None,
            heatmap_png: None,
        };
        self.open = Some(o);
        self.note(f, media, true);
        self.message(Phase::Start)
    }

    /// Records a frame of the open event; renders media when it is the (first or new) peak.
    fn note(&mut self, f: &FrameFacts, media: &mut Media<'_>, first: bool) {
        let Some(o) = self.open.as_mut() else {
            return;
        };
        if f.over {
            o.frames_over += 1;
        }
        o.last = f.clone();
        if first || f.score > o.peak_score {
            o.peak_score = f.score;
            o.peak_pts_ms = f.pts_ms;
            o.top1 = f.top1.clone();
            o.bbox = f.bbox;
            let (jpeg, png) = media();
            o.snapshot_jpeg = jpeg.map(Arc::new);
            o.heatmap_png = png.map(Arc::new);
        }
    }

    /// A frame while the event stays open: the `update` message, if one is due.
    pub fn observe(&mut self, f: &FrameFacts, media: &mut Media<'_>) -> Option<Event> {
        self.open.as_ref()?;
        self.note(f, media, false);
        let due = self
            .open
            .as_ref()
            .is_some_and(|o| f.pts_ms.saturating_sub(o.last_msg_pts) >= self.update_interval_ms);
        due.then(|| self.message(Phase::Update))
    }

    /// Closes the open event with `f` as its last frame (None: keep the last seen frame).
    pub fn end(&mut self, f: Option<&FrameFacts>) -> Option<Event> {
        if let Some(f) = f
            && let Some(o) = self.open.as_mut()
        {
            o.last = f.clone();
        }
        self.open.as_ref()?;
        let ev = self.message(Phase::End);
        self.open = None;
        Some(ev)
    }

    fn message(&mut self, phase: Phase) -> Event {
        let o = self.open.as_mut().expect("message only for an open event");
        let seq = o.seq;
        o.seq += 1;
        o.last_msg_pts = o.last.pts_ms;
        Event {
            id: format!("{}-{seq}", o.event_id),
            event_id: o.event_id.clone(),
            phase,
            seq,
            camera: self.camera.clone(),
            model: self.model.clone(),
            detector: self.detector.clone(),
            time: now_rfc3339(),
            start_time: o.start_time.clone(),
            start_pts_ms: o.start_pts_ms,
            pts_ms: o.last.pts_ms,
            score: o.last.score,
            peak_score: o.peak_score,
            peak_pts_ms: o.peak_pts_ms,
            threshold: self.threshold,
            frames_over: o.frames_over,
            top1: o.top1.clone(),
            bbox: o.bbox,
            top1_before: None,
            interrupted: false,
            signals: Vec::new(),
            snapshot_jpeg: o.snapshot_jpeg.clone(),
            heatmap_png: o.heatmap_png.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(pts: u64, score: f64) -> FrameFacts {
        FrameFacts {
            pts_ms: pts,
            score,
            over: score > 1.0,
            top1: None,
            bbox: None,
        }
    }

    #[test]
    fn start_updates_end_share_an_id_and_updates_are_rate_limited() {
        let mut t = EventTracker::new("cam", "m", "onset", 1.0, 1000);
        let mut renders = 0;
        let mut media = || {
            renders += 1;
            (Some(vec![1u8]), None)
        };
        let s = t.start(0, &f(0, 2.0), &mut media);
        let mut msgs = vec![s];
        for pts in (100..=3000).step_by(100) {
            let score = if pts == 2000 { 9.0 } else { 1.5 };
            msgs.extend(t.observe(&f(pts, score), &mut media));
        }
        msgs.extend(t.end(Some(&f(3100, 0.0))));
        let phases: Vec<Phase> = msgs.iter().map(|m| m.phase).collect();
        assert_eq!(phases[0], Phase::Start);
        assert_eq!(*phases.last().unwrap(), Phase::End);
        // 3 s of updates at one per second.
        assert_eq!(phases.iter().filter(|p| **p == Phase::Update).count(), 3);
        let id = &msgs[0].event_id;
        assert!(msgs.iter().all(|m| &m.event_id == id));
        let ids: std::collections::HashSet<_> = msgs.iter().map(|m| m.id.clone()).collect();
        assert_eq!(ids.len(), msgs.len());
        let end = msgs.last().unwrap();
        assert_eq!(end.peak_pts_ms, 2000);
        assert_eq!(end.peak_score, 9.0);
        assert!(end.snapshot_jpeg.is_some());
        // Media rendered for the start frame and the one new peak only.
        assert_eq!(renders, 2);
        assert_eq!(end.pts_ms, 3100);
        assert_eq!(end.frames_over, 31);
        assert!(t.end(None).is_none());
    }

    #[test]
    fn event_ids_are_uuid_v7() {
        let mut t = EventTracker::new("cam", "m", "onset", 1.0, 1000);
        let s = t.start(0, &f(0, 2.0), &mut || (None, None));
        let u = uuid::Uuid::parse_str(&s.event_id).unwrap();
        assert_eq!(u.get_version_num(), 7);
        assert_eq!(s.id, format!("{}-0", s.event_id));
    }
}
