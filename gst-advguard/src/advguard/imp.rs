//! The element: properties, caps, and the BaseTransform that hands frames to the guard worker.
//!
//! The streaming thread never runs inference: it squashes every `every-nth` frame to the
//! model's size and offers it to a one-slot channel. With `leaky=true` (the default) a frame
//! that finds the slot taken is dropped and counted; with `leaky=false` the streaming thread
//! waits (offline files, tests). The worker scores, runs the camera's detector, posts an
//! `advguard-event` message per event message and publishes its latest result, which the
//! streaming thread attaches to each outgoing buffer (and draws, with `overlay=true`).

use super::guard::{self, FieldValue, Plan, Scored, Scorer, Settings};
use super::pixels::{self, FORMATS, Layout};
use advguard::alert::{AlertHandle, AlertHub};
use advguard::detector::event::Event;
use crossbeam_channel::{Receiver, Sender, TrySendError};
use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;
use gst_base::subclass::prelude::*;
use gst_video::prelude::*;
use image::RgbImage;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

static CAT: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
    gst::DebugCategory::new(
        "advguard",
        gst::DebugColorFlags::empty(),
        Some("advguard adversarial-attack guard"),
    )
});

/// Frame counters, readable as properties at any time.
#[derive(Default)]
struct Counters {
    received: AtomicU64,
    scored: AtomicU64,
    dropped: AtomicU64,
    skipped: AtomicU64,
    failed: AtomicU64,
}

impl Counters {
    fn reset(&self) {
        for c in [
            &self.received,
            &self.scored,
            &self.dropped,
            &self.skipped,
            &self.failed,
        ] {
            c.store(0, Ordering::SeqCst);
        }
    }
}

/// The worker's latest result, as the streaming thread uses it.
struct Latest {
    scored: Scored,
    /// Index of the scored frame among the frames this element received.
    index: u64,
    size: u32,
    /// The driving detector's name.
    detector: &'static str,
    /// Heat map resized to the frame (overlay only).
    heat: Option<RgbImage>,
    /// Caption band (overlay only).
    band: Option<RgbImage>,
}

enum Job {
    Frame {
        rgb: Vec<u8>,
        pts_ms: u64,
        index: u64,
        width: u32,
        height: u32,
        /// The buffer follows a discontinuity (flag DISCONT after the first buffer: a seek,
        /// a flush, lost packets, a source that restarted).
        resumed: bool,
    },
    /// Score what is queued, end the open event, then answer.
    Drain(Sender<()>),
}

struct State {
    info: Option<gst_video::VideoInfo>,
    tx: Option<Sender<Job>>,
    worker: Option<JoinHandle<()>>,
    latest: Arc<Mutex<Option<Arc<Latest>>>>,
    hub: Option<AlertHub>,
    size: u32,
    every_nth: u64,
    overlay: bool,
    leaky: bool,
    index: u64,
    /// A DISCONT buffer arrived since the last frame sent for scoring.
    resumed: bool,
    started: Instant,
}

/// The `advguard` element's instance data.
#[derive(Default)]
pub struct Advguard {
    settings: Mutex<Settings>,
    state: Mutex<Option<State>>,
    counters: Arc<Counters>,
}

#[glib::object_subclass]
impl ObjectSubclass for Advguard {
    const NAME: &'static str = "GstAdvguard";
    type Type = super::Advguard;
    type ParentType = gst_base::BaseTransform;
}

fn str_prop(name: &str, nick: &str, blurb: &str, default: Option<&str>) -> glib::ParamSpec {
    glib::ParamSpecString::builder(name)
        .nick(nick)
        .blurb(blurb)
        .default_value(default)
        .mutable_ready()
        .build()
}

fn counter_prop(name: &str, blurb: &str) -> glib::ParamSpec {
    glib::ParamSpecUInt64::builder(name)
        .nick(name)
        .blurb(blurb)
        .read_only()
        .build()
}

impl ObjectImpl for Advguard {
    fn properties() -> &'static [glib::ParamSpec] {
        static PROPS: LazyLock<Vec<glib::ParamSpec>> = LazyLock::new(|| {
            vec![
                str_prop(
                    "model-name",
                    "Model name",
                    "Built-in model (squeezenet1.1, efficientnet_lite0, mobilenet_v2) or a manifest TOML",
                    Some("squeezenet1.1"),
                ),
                str_prop(
                    "model",
                    "Model file",
                    "ONNX file of the model (default: looked up by the manifest in $ADVGUARD_MODELS, the cache, or downloaded)",
                    None,
                ),
                str_prop(
                    "backend",
                    "Backend",
                    "tract (default), auto, ort, ort-cuda or tensorrt (auto: ONNX Runtime when its library is found)",
                    Some("tract"),
                ),
                str_prop(
                    "profile",
                    "Profile",
                    "Calibration profile TOML from `advguard calibrate` (thresholds of this camera)",
                    None,
                ),
                str_prop(
                    "detector",
                    "Detector",
                    "Score that drives events: onset, entropy or concentration (default: the profile's, else onset)",
                    None,
                ),
                glib::ParamSpecUInt::builder("every-nth")
                    .nick("Every n-th")
                    .blurb("Score every n-th frame (the others pass with the latest scores)")
                    .minimum(1)
                    .default_value(1)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecBoolean::builder("overlay")
                    .nick("Overlay")
                    .blurb("Draw the latest heat map, response box and score on the video")
                    .default_value(false)
                    .mutable_ready()
                    .build(),
                str_prop(
                    "config",
                    "Config",
                    "Cameras TOML whose [[sink]], [spool] and [alerts] tables receive the events",
                    None,
                ),
                str_prop(
                    "inject",
                    "Inject (test/demo)",
                    "Test and demo facility: replace frames in a stream-time stretch by 8-bit FGSM adversarials, fgsm:eps=4:from=8:to=12[:target=N] (eps <= 8)",
                    None,
                ),
                str_prop(
                    "camera",
                    "Camera",
                    "Camera name in events and the profile lookup (default: the element's name)",
                    None,
                ),
                glib::ParamSpecBoolean::builder("leaky")
                    .nick("Leaky")
                    .blurb("Drop (and count) frames the guard cannot take; false makes the streaming thread wait for it (files, tests)")
                    .default_value(true)
                    .mutable_ready()
                    .build(),
                counter_prop("frames-received", "Frames that reached the element"),
                counter_prop("frames-scored", "Frames the guard scored"),
                counter_prop(
                    "frames-dropped",
                    "Frames dropped because the guard was busy (leaky=true)",
                ),
                counter_prop("frames-skipped", "Frames not offered because of every-nth"),
            ]
        });
        PROPS.as_ref()
    }

    fn set_property(&self, _id: usize, value: &glib::Value, pspec: &glib::ParamSpec) {
        let mut s = self.settings.lock().unwrap_or_else(|e| e.into_inner());
        let opt = || value.get::<Option<String>>().ok().flatten();
        match pspec.name() {
            "model-name" => s.model_name = opt().unwrap_or_else(|| "squeezenet1.1".into()),
            "model" => s.model = opt(),
            "backend" => s.backend = opt().unwrap_or_else(|| "tract".into()),
            "profile" => s.profile = opt(),
            "detector" => s.detector = opt(),
            "every-nth" => s.every_nth = value.get().unwrap_or(1),
            "overlay" => s.overlay = value.get().unwrap_or(false),
            "config" => s.config = opt(),
            "inject" => s.inject = opt(),
            "camera" => s.camera = opt(),
            "leaky" => s.leaky = value.get().unwrap_or(true),
            other => gst::warning!(CAT, imp = self, "property {other} is read-only"),
        }
    }

    fn property(&self, _id: usize, pspec: &glib::ParamSpec) -> glib::Value {
        let s = self.settings.lock().unwrap_or_else(|e| e.into_inner());
        let c = &self.counters;
        match pspec.name() {
            "model-name" => s.model_name.to_value(),
            "model" => s.model.to_value(),
            "backend" => s.backend.to_value(),
            "profile" => s.profile.to_value(),
            "detector" => s.detector.to_value(),
            "every-nth" => s.every_nth.to_value(),
            "overlay" => s.overlay.to_value(),
            "config" => s.config.to_value(),
            "inject" => s.inject.to_value(),
            "camera" => s.camera.to_value(),
            "leaky" => s.leaky.to_value(),
            "frames-received" => c.received.load(Ordering::SeqCst).to_value(),
            "frames-scored" => c.scored.load(Ordering::SeqCst).to_value(),
            "frames-dropped" => c.dropped.load(Ordering::SeqCst).to_value(),
            "frames-skipped" => c.skipped.load(Ordering::SeqCst).to_value(),
            _ => pspec.default_value().clone(),
        }
    }
}

impl GstObjectImpl for Advguard {}

impl ElementImpl for Advguard {
    fn metadata() -> Option<&'static gst::subclass::ElementMetadata> {
        static META: LazyLock<gst::subclass::ElementMetadata> = LazyLock::new(|| {
            gst::subclass::ElementMetadata::new(
                "advguard adversarial-attack guard",
                "Filter/Analyzer/Video",
                "Scores frames for adversarial attacks on a CNN from its feature response; posts advguard-event messages and attaches the scores as GstVideoRegionOfInterestMeta",
                "advguard developers",
            )
        });
        Some(&META)
    }

    fn pad_templates() -> &'static [gst::PadTemplate] {
        static TEMPLATES: LazyLock<Vec<gst::PadTemplate>> = LazyLock::new(|| {
            let caps = gst_video::VideoCapsBuilder::new()
                .format_list(FORMATS)
                .build();
            [gst::PadDirection::Src, gst::PadDirection::Sink]
                .into_iter()
                .map(|d| {
                    let name = if d == gst::PadDirection::Src {
                        "src"
                    } else {
                        "sink"
                    };
                    gst::PadTemplate::new(name, d, gst::PadPresence::Always, &caps)
                        .expect("static pad template")
                })
                .collect()
        });
        TEMPLATES.as_ref()
    }
}

/// What the worker thread owns besides the scorer.
struct WorkerCtx {
    element: glib::WeakRef<super::Advguard>,
    counters: Arc<Counters>,
    latest: Arc<Mutex<Option<Arc<Latest>>>>,
    alerts: Option<AlertHandle>,
    overlay: bool,
    camera: String,
}

fn post_event(el: &super::Advguard, ev: &Event) {
    let mut b = gst::Structure::builder("advguard-event");
    for (k, v) in guard::event_fields(ev) {
        let k = k.as_str();
        b = match v {
            FieldValue::Str(s) => b.field(k, s),
            FieldValue::U64(u) => b.field(k, u),
            FieldValue::I64(i) => b.field(k, i),
            FieldValue::F64(f) => b.field(k, f),
            FieldValue::Bool(x) => b.field(k, x),
            FieldValue::U32s(a) => b.field(k, gst::Array::new(a)),
        };
    }
    let msg = gst::message::Element::builder(b.build()).src(el).build();
    if el.post_message(msg).is_err() {
        gst::warning!(
            CAT,
            obj = el,
            "no bus to post the {:?} message of {}",
            ev.phase,
            ev.id
        );
    }
}

fn deliver(ctx: &WorkerCtx, ev: Event) {
    gst::info!(CAT, "event {} {:?} score {:.3}", ev.id, ev.phase, ev.score);
    if let Some(el) = ctx.element.upgrade() {
        post_event(&el, &ev);
    }
    if let Some(a) = &ctx.alerts {
        a.submit(ev);
    }
}

fn work(mut scorer: Scorer, rx: Receiver<Job>, ctx: WorkerCtx) {
    let size = scorer.size();
    let media = ctx.alerts.is_some();
    for job in rx {
        match job {
            Job::Frame {
                rgb,
                pts_ms,
                index,
                width,
                height,
                resumed,
            } => match scorer.score(rgb, pts_ms, resumed, media, ctx.overlay) {
                Ok(mut s) => {
                    ctx.counters.scored.fetch_add(1, Ordering::SeqCst);
                    for ev in std::mem::take(&mut s.events) {
                        deliver(&ctx, ev);
                    }
                    let heat = s.heat.take().map(|h| {
                        image::imageops::resize(
                            &h,
                            width,
                            height,
                            image::imageops::FilterType::Triangle,
                        )
                    });
                    let band = ctx.overlay.then(|| {
                        let caption = format!(
                            "{} {} {:.2} / {:.2}  {} ({:.2}){}",
                            ctx.camera,
                            scorer.detector_name(),
                            s.score,
                            s.threshold,
                            s.top1.label.split(',').next().unwrap_or(""),
                            s.top1.prob,
                            if s.in_event { "  ALERT" } else { "" }
                        );
                        pixels::caption_band(width, height, &caption, s.in_event)
                    });
                    let l = Latest {
                        scored: s,
                        index,
                        size,
                        detector: scorer.detector_name(),
                        heat,
                        band,
                    };
                    *ctx.latest.lock().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(l));
                }
                Err(e) => {
                    ctx.counters.failed.fetch_add(1, Ordering::SeqCst);
                    gst::warning!(CAT, "camera {}: frame not scored: {e}", ctx.camera);
                }
            },
            Job::Drain(reply) => {
                if let Some(ev) = scorer.finish() {
                    deliver(&ctx, ev);
                }
                let _ = reply.send(());
            }
        }
    }
    // The channel closed (stop): end what is still open.
    if let Some(ev) = scorer.finish() {
        deliver(&ctx, ev);
    }
}

/// A stream time in ms: the buffer's PTS, or the time since start when it has none.
fn pts_ms(buf: &gst::BufferRef, started: Instant) -> u64 {
    buf.pts()
        .map_or(started.elapsed().as_millis() as u64, |t| t.mseconds())
}

/// The latest scores as the `advguard-scores` parameter of the ROI meta.
fn scores_structure(l: &Latest, index: u64) -> gst::Structure {
    let s = &l.scored;
    gst::Structure::builder("advguard-scores")
        .field("pts_ms", s.pts_ms)
        .field("lag_frames", index.saturating_sub(l.index))
        .field("detector", l.detector)
        .field("score", s.score)
        .field("threshold", s.threshold)
        .field("over_threshold", s.over)
        .field("in_event", s.in_event)
        .field("entropy", s.scores.entropy)
        .field("concentration", s.scores.concentration)
        .field("kl", s.scores.kl)
        .field("onset", s.scores.onset)
        .field("top1_index", s.top1.index as u64)
        .field("top1_label", s.top1.label.as_str())
        .field("top1_prob", s.top1.prob as f64)
        .field("injected", s.injected)
        .build()
}

/// The response box in frame pixels.
fn frame_box(l: &Latest, w: u32, h: u32) -> [u32; 4] {
    let b = l.scored.bbox;
    let sz = l.size.max(1) as u64;
    let sx = |v: u32| (v as u64 * w as u64 / sz) as u32;
    let sy = |v: u32| (v as u64 * h as u64 / sz) as u32;
    [sx(b[0]), sy(b[1]), sx(b[2]).max(1), sy(b[3]).max(1)]
}

impl Advguard {
    fn open(&self) -> Result<(State, String), gst::ErrorMessage> {
        let settings = self
            .settings
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let obj = self.obj();
        let plan: Plan = guard::plan(&settings, obj.name().as_str())
            .map_err(|e| gst::error_msg!(gst::LibraryError::Settings, ["{}", e]))?;
        for w in &plan.warnings {
            gst::warning!(CAT, imp = self, "{w}");
        }
        let scorer =
            Scorer::open(&plan).map_err(|e| gst::error_msg!(gst::LibraryError::Init, ["{}", e]))?;
        let hub = guard::start_alerts(&plan)
            .map_err(|e| gst::error_msg!(gst::LibraryError::Settings, ["{}", e]))?;
        let summary = format!(
            "camera {:?}: {} on {}, {} detector, threshold {:.3} ({}), every {} frame(s), leaky={}",
            plan.camera,
            settings.model_name,
            scorer.backend(),
            plan.detector.kind,
            plan.detector.rule.threshold,
            plan.detector.source,
            settings.every_nth,
            settings.leaky
        );
        let (tx, rx) = crossbeam_channel::bounded(1);
        let latest = Arc::new(Mutex::new(None));
        let ctx = WorkerCtx {
            element: obj.downgrade(),
            counters: self.counters.clone(),
            latest: latest.clone(),
            alerts: hub.as_ref().map(|h| h.handle()),
            overlay: settings.overlay,
            camera: plan.camera.clone(),
        };
        let size = scorer.size();
        let worker = std::thread::Builder::new()
            .name(format!("advguard-{}", plan.camera))
            .spawn(move || work(scorer, rx, ctx))
            .map_err(|e| {
                gst::error_msg!(
                    gst::CoreError::Thread,
                    ["cannot start the guard worker: {}", e]
                )
            })?;
        let state = State {
            info: None,
            tx: Some(tx),
            worker: Some(worker),
            latest,
            hub,
            size,
            every_nth: settings.every_nth.max(1) as u64,
            overlay: settings.overlay,
            leaky: settings.leaky,
            index: 0,
            resumed: false,
            started: Instant::now(),
        };
        Ok((state, summary))
    }

    /// Lets the worker score what is queued and end the open event (end of stream).
    fn drain(&self) {
        let tx = {
            let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
            st.as_ref().and_then(|s| s.tx.clone())
        };
        let Some(tx) = tx else { return };
        let (reply_tx, reply_rx) = crossbeam_channel::bounded(1);
        if tx.send(Job::Drain(reply_tx)).is_ok()
            && reply_rx.recv_timeout(Duration::from_secs(60)).is_err()
        {
            gst::warning!(
                CAT,
                imp = self,
                "the guard worker did not finish within 60 s"
            );
        }
    }

    fn post_stats(&self) {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::SeqCst);
        let s = gst::Structure::builder("advguard-stats")
            .field("received", get(&c.received))
            .field("scored", get(&c.scored))
            .field("dropped", get(&c.dropped))
            .field("skipped", get(&c.skipped))
            .field("failed", get(&c.failed))
            .build();
        gst::info!(CAT, imp = self, "{s}");
        let obj = self.obj();
        let _ = obj.post_message(gst::message::Element::builder(s).src(&*obj).build());
    }
}

impl BaseTransformImpl for Advguard {
    const MODE: gst_base::subclass::BaseTransformMode =
        gst_base::subclass::BaseTransformMode::AlwaysInPlace;
    const PASSTHROUGH_ON_SAME_CAPS: bool = false;
    const TRANSFORM_IP_ON_PASSTHROUGH: bool = false;

    fn start(&self) -> Result<(), gst::ErrorMessage> {
        self.counters.reset();
        let (state, summary) = self.open()?;
        gst::info!(CAT, imp = self, "guarding {summary}");
        *self.state.lock().unwrap_or_else(|e| e.into_inner()) = Some(state);
        Ok(())
    }

    fn stop(&self) -> Result<(), gst::ErrorMessage> {
        let st = self.state.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(mut st) = st {
            // Closing the channel ends the worker, which ends any open event first.
            st.tx.take();
            if let Some(w) = st.worker.take() {
                let _ = w.join();
            }
            if let Some(h) = st.hub.take() {
                h.shutdown(Duration::from_secs(10));
            }
        }
        Ok(())
    }

    fn set_caps(&self, incaps: &gst::Caps, _outcaps: &gst::Caps) -> Result<(), gst::LoggableError> {
        let info = gst_video::VideoInfo::from_caps(incaps)
            .map_err(|_| gst::loggable_error!(CAT, "cannot parse caps {incaps}"))?;
        if Layout::of(info.format()).is_none() {
            return Err(gst::loggable_error!(
                CAT,
                "unsupported format {:?}",
                info.format()
            ));
        }
        if let Some(st) = self
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_mut()
        {
            st.info = Some(info);
        }
        Ok(())
    }

    fn sink_event(&self, event: gst::Event) -> bool {
        if let gst::EventView::Eos(_) = event.view() {
            self.drain();
            self.post_stats();
        }
        self.parent_sink_event(event)
    }

    fn transform_ip(&self, buf: &mut gst::BufferRef) -> Result<gst::FlowSuccess, gst::FlowError> {
        let mut guard = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let Some(st) = guard.as_mut() else {
            return Err(gst::FlowError::Flushing);
        };
        let Some(info) = st.info.clone() else {
            return Err(gst::FlowError::NotNegotiated);
        };
        let layout = Layout::of(info.format()).ok_or(gst::FlowError::NotNegotiated)?;
        let index = st.index;
        st.index += 1;
        self.counters.received.fetch_add(1, Ordering::SeqCst);
        let pts = pts_ms(buf, st.started);
        let take = index % st.every_nth == 0;
        // Skipped frames between a DISCONT buffer and the next scored one carry it on.
        st.resumed |= index > 0 && buf.flags().contains(gst::BufferFlags::DISCONT);
        if !take {
            self.counters.skipped.fetch_add(1, Ordering::SeqCst);
        }
        let latest = st.latest.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let (w, h) = (info.width(), info.height());
        let size = st.size as usize;
        let draw = st.overlay && latest.as_ref().is_some_and(|l| l.heat.is_some());
        let map_err = |e: glib::BoolError| {
            gst::element_imp_error!(
                self,
                gst::StreamError::Failed,
                ["cannot map the frame: {}", e]
            );
            gst::FlowError::Error
        };
        let mut job = None;
        if draw {
            let mut f =
                gst_video::VideoFrameRef::from_buffer_ref_writable(buf, &info).map_err(map_err)?;
            let stride = f.plane_stride()[0] as usize;
            if take {
                let d = f.plane_data(0).map_err(map_err)?;
                job = Some(pixels::squash(
                    d, stride, w as usize, h as usize, layout, size,
                ));
            }
            let d = f.plane_data_mut(0).map_err(map_err)?;
            if let Some(l) = latest.as_deref() {
                if let Some(heat) = &l.heat
                    && heat.dimensions() == (w, h)
                {
                    pixels::blend(d, stride, layout, heat, 0.45);
                }
                let color = if l.scored.in_event {
                    [255, 40, 40]
                } else {
                    [80, 220, 80]
                };
                let b = frame_box(l, w, h);
                pixels::draw_box(d, stride, (w as usize, h as usize), layout, b, color);
                if let Some(band) = &l.band
                    && band.width() == w
                {
                    pixels::paste_band(d, stride, layout, band);
                }
            }
        } else if take {
            let f =
                gst_video::VideoFrameRef::from_buffer_ref_readable(buf, &info).map_err(map_err)?;
            let stride = f.plane_stride()[0] as usize;
            let d = f.plane_data(0).map_err(map_err)?;
            job = Some(pixels::squash(
                d, stride, w as usize, h as usize, layout, size,
            ));
        }
        if let (Some(rgb), Some(tx)) = (job, st.tx.as_ref()) {
            let job = Job::Frame {
                rgb,
                pts_ms: pts,
                index,
                width: w,
                height: h,
                resumed: std::mem::take(&mut st.resumed),
            };
            let sent = if st.leaky {
                match tx.try_send(job) {
                    Err(TrySendError::Full(_)) => {
                        self.counters.dropped.fetch_add(1, Ordering::SeqCst);
                        Ok(())
                    }
                    Err(TrySendError::Disconnected(_)) => Err(()),
                    Ok(()) => Ok(()),
                }
            } else {
                tx.send(job).map_err(|_| ())
            };
            if sent.is_err() {
                gst::element_imp_error!(
                    self,
                    gst::CoreError::Thread,
                    ["the guard worker has stopped"]
                );
                return Err(gst::FlowError::Error);
            }
        }
        if let Some(l) = latest.as_deref() {
            let b = frame_box(l, w, h);
            let mut m = gst_video::VideoRegionOfInterestMeta::add(
                buf,
                "advguard",
                (b[0], b[1], b[2], b[3]),
            );
            m.add_param(scores_structure(l, index));
        }
        Ok(gst::FlowSuccess::Ok)
    }
}
