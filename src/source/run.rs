//! The per-camera supervisor thread: plays the pipeline, watches its bus, restarts it
//! with backoff when a live source fails or stalls, and ends a file cleanly at EOS.

use super::SourceMsg;
use super::frame::{Frame, copy_rgb};
use super::pipeline;
use super::spec::{SourceKind, SourceSpec};
use super::stats::SourceStats;
use crossbeam_channel::{Receiver, Sender, TrySendError};
use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};

/// How often the supervisor looks at the bus, the stop flag and the watchdog.
const TICK: Duration = Duration::from_millis(100);
/// With an unbounded channel a live source still drops once this many messages wait,
/// so that a slow consumer sees fresh frames rather than a growing backlog.
const UNBOUNDED_LIVE_CAP: usize = 4;

/// Everything the supervisor thread owns.
pub(crate) struct Ctx {
    pub camera: Arc<str>,
    /// The input as it may appear in logs (redacted URI or file path).
    pub shown: String,
    pub spec: SourceSpec,
    pub kind: SourceKind,
    pub desc: String,
    pub tx: Sender<SourceMsg>,
    pub stats: Arc<SourceStats>,
    pub stop: Arc<AtomicBool>,
    pub wake: Receiver<()>,
}

impl Ctx {
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// Removes the URI's password from GStreamer's texts, which may quote the URI.
    fn sanitize(&self, text: &str) -> String {
        super::uri::scrub(text, &self.spec.uri)
    }
}

/// How one pipeline run ended.
enum Outcome {
    Stopped,
    Eos { duration_ns: Option<u64> },
    Error(String),
    Stalled(Duration),
}

/// State one run shares between the streaming thread and the supervisor.
struct Run {
    started: Instant,
    /// Frames that reached the appsink in this run.
    frames: AtomicU64,
    /// Frames that entered the tail queue in this run.
    queued: AtomicU64,
    /// Leaky-queue drops of this run already added to the stats.
    drops_counted: AtomicU64,
    /// Micros since `started` of the last frame, plus one (0 = none yet).
    last_frame_us: AtomicU64,
    /// Largest PTS + duration seen, ns (to spot truncated files).
    end_ns: AtomicU64,
    /// The streaming thread is waiting for the consumer (back-pressure, not a stall).
    waiting: AtomicBool,
}

impl Run {
    fn new() -> Self {
        Run {
            started: Instant::now(),
            frames: AtomicU64::new(0),
            queued: AtomicU64::new(0),
            drops_counted: AtomicU64::new(0),
            last_frame_us: AtomicU64::new(0),
            waiting: AtomicBool::new(false),
            end_ns: AtomicU64::new(0),
        }
    }

    /// Marks progress now (a frame arrived or the consumer took one).
    fn touch(&self) {
        let us = self.started.elapsed().as_micros() as u64 + 1;
        self.last_frame_us.store(us, Ordering::Relaxed);
    }

    fn quiet_for(&self) -> Duration {
        match self.last_frame_us.load(Ordering::Relaxed) {
            0 => self.started.elapsed(),
            us => self
                .started
                .elapsed()
                .saturating_sub(Duration::from_micros(us - 1)),
        }
    }

    /// Adds leaky-queue drops: frames that entered the queue, never reached the sink
    /// and are not waiting in it. `slack` covers a frame counted but not yet enqueued.
    fn count_drops(&self, stats: &SourceStats, level: u64, slack: u64) {
        let lost = self
            .queued
            .load(Ordering::SeqCst)
            .saturating_sub(self.frames.load(Ordering::SeqCst) + level + slack);
        let before = self.drops_counted.fetch_max(lost, Ordering::SeqCst);
        if lost > before {
            stats.add_dropped_pipeline(lost - before);
        }
    }
}

/// Last delivered stream time and when, kept across runs so timestamps never go back.
type Timeline = Arc<Mutex<Option<(u64, Instant)>>>;

/// Supervisor loop: one pipeline at a time, restarted with backoff while the source is live.
pub(crate) fn supervise(ctx: Ctx, first: gst::Pipeline) {
    let live = ctx.kind.is_live();
    let timeline: Timeline = Arc::new(Mutex::new(None));
    let mut next = Some(first);
    let mut attempt: u32 = 0;
    info!(camera = %ctx.camera, source = %ctx.shown, kind = ctx.kind.name(), "source starting");
    loop {
        if ctx.stopped() {
            break;
        }
        let pipeline = match next.take() {
            Some(p) => p,
            None => match pipeline::build(&ctx.spec, &ctx.kind, &ctx.desc) {
                Ok(p) => p,
                Err(e) => {
                    finish(
                        &ctx,
                        SourceMsg::Error {
                            camera: ctx.camera.clone(),
                            error: ctx.sanitize(&e.to_string()),
                        },
                    );
                    break;
                }
            },
        };
        let run = Arc::new(Run::new());
        let outcome = play(&ctx, &pipeline, &run, &timeline);
        let _ = pipeline.set_state(gst::State::Null);
        if live {
            // Stopped: nothing is in flight any more, whatever did not arrive was dropped.
            run.count_drops(&ctx.stats, 0, 0);
        }
        ctx.stats.connected.store(false, Ordering::Relaxed);
        drop(pipeline);
        let reason = match outcome {
            Outcome::Stopped => break,
            Outcome::Eos { duration_ns } if !live => {
                let end = run.end_ns.load(Ordering::Relaxed);
                let msg = match truncated(end, duration_ns) {
                    Some(why) => {
                        let error = format!("{}: {why}", ctx.shown);
                        warn!(camera = %ctx.camera, "{error}");
                        ctx.stats.set_error(error.clone());
                        SourceMsg::Error {
                            camera: ctx.camera.clone(),
                            error,
                        }
                    }
                    None => {
                        info!(camera = %ctx.camera, source = %ctx.shown, frames = run.frames.load(Ordering::Relaxed), "end of file");
                        SourceMsg::Eos {
                            camera: ctx.camera.clone(),
                        }
                    }
                };
                finish(&ctx, msg);
                break;
            }
            Outcome::Stalled(quiet) if !live => {
                let frames = run.frames.load(Ordering::Relaxed);
                let error = if frames == 0 {
                    format!(
                        "{}: no video frame could be decoded within {:.1} s: the file is damaged \
                         or has no video stream GStreamer can decode",
                        ctx.shown,
                        quiet.as_secs_f64()
                    )
                } else {
                    format!(
                        "{}: decoding stalled after {frames} frames ({:.1} s without progress): \
                         the file is damaged",
                        ctx.shown,
                        quiet.as_secs_f64()
                    )
                };
                warn!(camera = %ctx.camera, "{error}");
                ctx.stats.set_error(error.clone());
                finish(
                    &ctx,
                    SourceMsg::Error {
                        camera: ctx.camera.clone(),
                        error,
                    },
                );
                break;
            }
            Outcome::Error(error) if !live => {
                warn!(camera = %ctx.camera, "{error}");
                finish(
                    &ctx,
                    SourceMsg::Error {
                        camera: ctx.camera.clone(),
                        error,
                    },
                );
                break;
            }
            Outcome::Eos { .. } => "the stream ended".to_string(),
            Outcome::Error(error) => error,
            Outcome::Stalled(quiet) => {
                ctx.stats.watchdog_restarts.fetch_add(1, Ordering::Relaxed);
                let why = format!(
                    "{}: no frame for {:.1} s (watchdog)",
                    ctx.shown,
                    quiet.as_secs_f64()
                );
                ctx.stats.set_error(why.clone());
                why
            }
        };
        if run.frames.load(Ordering::Relaxed) > 0 {
            attempt = 0;
        }
        let delay = backoff(&ctx.spec, attempt);
        attempt = attempt.saturating_add(1);
        warn!(camera = %ctx.camera, "{reason}; reconnecting in {:.2} s", delay.as_secs_f64());
        if wait(&ctx, delay) {
            break;
        }
        ctx.stats.reconnects.fetch_add(1, Ordering::Relaxed);
        info!(camera = %ctx.camera, source = %ctx.shown, attempt, "reconnecting");
    }
    debug!(camera = %ctx.camera, "source thread ends");
}

/// A file that ends well before its own duration was cut off.
fn truncated(end_ns: u64, duration_ns: Option<u64>) -> Option<String> {
    let dur = duration_ns?;
    // Audio tracks may run a little longer than video: allow 1 s or 2 %.
    let slack = (dur / 50).max(1_000_000_000);
    (end_ns + slack < dur).then(|| {
        format!(
            "the video stops at {:.1} s of its {:.1} s duration: the file is truncated or damaged",
            end_ns as f64 / 1e9,
            dur as f64 / 1e9
        )
    })
}

/// Exponential backoff with jitter, so many cameras do not reconnect in lockstep.
fn backoff(spec: &SourceSpec, attempt: u32) -> Duration {
    let base = spec
        .reconnect_initial
        .saturating_mul(1u32 << attempt.min(20))
        .min(spec.reconnect_max);
    let jitter = 0.75 + 0.5 * rand::random::<f64>();
    base.mul_f64(jitter).min(spec.reconnect_max)
}

/// Sleeps `d` unless stopped first; true when stopped.
fn wait(ctx: &Ctx, d: Duration) -> bool {
    let until = Instant::now() + d;
    loop {
        if ctx.stopped() {
            return true;
        }
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        // A stop() wakes us through this channel.
        let _ = ctx.wake.recv_timeout(left.min(TICK));
    }
}

/// Sends a terminal message, waiting for room (the consumer must see it) unless stopped.
fn finish(ctx: &Ctx, msg: SourceMsg) {
    let _ = send_blocking(ctx.tx.clone(), msg, &ctx.stop);
}

/// Blocking send that gives up when the source is stopped or the consumer is gone.
fn send_blocking(tx: Sender<SourceMsg>, mut msg: SourceMsg, stop: &AtomicBool) -> bool {
    loop {
        match tx.send_timeout(msg, TICK) {
            Ok(()) => return true,
            Err(crossbeam_channel::SendTimeoutError::Timeout(m)) => {
                if stop.load(Ordering::SeqCst) {
                    return false;
                }
                msg = m;
            }
            Err(crossbeam_channel::SendTimeoutError::Disconnected(_)) => return false,
        }
    }
}

/// Plays one pipeline until it ends, fails, stalls or the source is stopped.
fn play(ctx: &Ctx, pipeline: &gst::Pipeline, run: &Arc<Run>, timeline: &Timeline) -> Outcome {
    if let Err(e) = install(ctx, pipeline, run, timeline) {
        return Outcome::Error(format!("{}: {e}", ctx.shown));
    }
    let Some(bus) = pipeline.bus() else {
        return Outcome::Error(format!("{}: pipeline without a bus", ctx.shown));
    };
    let types = [
        gst::MessageType::Error,
        gst::MessageType::Eos,
        gst::MessageType::Warning,
    ];
    if pipeline.set_state(gst::State::Playing).is_err() {
        let why = bus
            .timed_pop_filtered(
                Some(gst::ClockTime::from_seconds(1)),
                &[gst::MessageType::Error],
            )
            .and_then(|m| match m.view() {
                gst::MessageView::Error(e) => Some(error_text(ctx, e)),
                _ => None,
            })
            .unwrap_or_else(|| format!("{}: the pipeline does not start", ctx.shown));
        ctx.stats.set_error(why.clone());
        return Outcome::Error(why);
    }
    let tick = gst::ClockTime::from_mseconds(TICK.as_millis() as u64);
    loop {
        if ctx.stopped() {
            return Outcome::Stopped;
        }
        if let Some(msg) = bus.timed_pop_filtered(Some(tick), &types) {
            match msg.view() {
                gst::MessageView::Error(e) => {
                    let why = error_text(ctx, e);
                    ctx.stats.set_error(why.clone());
                    return Outcome::Error(why);
                }
                gst::MessageView::Eos(_) => {
                    let duration_ns = pipeline
                        .query_duration::<gst::ClockTime>()
                        .map(|d| d.nseconds());
                    return Outcome::Eos { duration_ns };
                }
                gst::MessageView::Warning(w) => {
                    warn!(camera = %ctx.camera, "{}: {}", ctx.shown, ctx.sanitize(&w.error().to_string()));
                }
                _ => {}
            }
        }
        // Files too: GStreamer 1.22's decodebin can swallow a demuxer error that races
        // its autoplugging, leaving a pipeline that never prerolls and never says why.
        if !run.waiting.load(Ordering::SeqCst) {
            let quiet = run.quiet_for();
            if quiet > ctx.spec.watchdog {
                return Outcome::Stalled(quiet);
            }
        }
    }
}

/// One line for a GStreamer error: input, message and the useful tail of the debug text.
fn error_text(ctx: &Ctx, e: &gst::message::Error) -> String {
    let dbg_text = e.debug().map(|d| d.to_string()).unwrap_or_default();
    debug!(camera = %ctx.camera, "gstreamer error: {} ({})", ctx.sanitize(&e.error().to_string()), ctx.sanitize(&dbg_text));
    // The last debug line is usually the human part ("Failed to connect. (Generic error)").
    let detail = dbg_text
        .lines()
        .last()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.contains(".c("))
        .map(|l| format!(" ({l})"))
        .unwrap_or_default();
    // Alone, the generic flow error says nothing to a user; it comes alone when
    // decodebin swallowed the demuxer's own message (see the stall check in `play`).
    let hint = if !ctx.kind.is_live() && e.error().matches(gst::StreamError::Failed) {
        ": the file is damaged or not a video GStreamer can decode"
    } else {
        ""
    };
    ctx.sanitize(&format!("{}: {}{detail}{hint}", ctx.shown, e.error()))
}

/// Hooks the counters and the frame callback into a freshly built pipeline.
fn install(
    ctx: &Ctx,
    pipeline: &gst::Pipeline,
    run: &Arc<Run>,
    timeline: &Timeline,
) -> Result<(), String> {
    let sink = pipeline
        .by_name("sink")
        .and_then(|e| e.downcast::<gst_app::AppSink>().ok())
        .ok_or("the template has no appsink named 'sink'")?;
    let tail = pipeline
        .by_name("tail")
        .ok_or("the template has no queue named 'tail'")?;
    let tail_in = tail
        .static_pad("sink")
        .ok_or("the 'tail' queue has no sink pad")?;
    {
        let run = run.clone();
        let stats = ctx.stats.clone();
        tail_in.add_probe(gst::PadProbeType::BUFFER, move |_, _| {
            run.queued.fetch_add(1, Ordering::SeqCst);
            stats.received.fetch_add(1, Ordering::Relaxed);
            gst::PadProbeReturn::Ok
        });
    }
    let mut deliver = Deliver {
        camera: ctx.camera.clone(),
        every_nth: u64::from(ctx.spec.every_nth),
        period_ms: ctx.spec.max_fps.map(|f| 1000.0 / f),
        next_due: None,
        offset: None,
        drop_when_full: ctx.kind.is_live() || ctx.spec.realtime,
        live: ctx.kind.is_live(),
        wall_clock: matches!(ctx.kind, SourceKind::HttpMjpeg(_)),
        tx: ctx.tx.clone(),
        stats: ctx.stats.clone(),
        stop: ctx.stop.clone(),
        run: run.clone(),
        timeline: timeline.clone(),
        tail: tail.downgrade(),
        shown: ctx.shown.clone(),
    };
    sink.set_callbacks(
        gst_app::AppSinkCallbacks::builder()
            .new_sample(move |s| deliver.on_sample(s))
            .build(),
    );
    Ok(())
}

/// The streaming-thread side: copies, samples, timestamps and sends each frame.
struct Deliver {
    camera: Arc<str>,
    every_nth: u64,
    period_ms: Option<f64>,
    next_due: Option<f64>,
    offset: Option<i64>,
    drop_when_full: bool,
    live: bool,
    /// Stamp frames with the time since the run started instead of the buffer PTS.
    wall_clock: bool,
    tx: Sender<SourceMsg>,
    stats: Arc<SourceStats>,
    stop: Arc<AtomicBool>,
    run: Arc<Run>,
    timeline: Timeline,
    /// Weak: the pipeline owns the queue, the callback must not keep it alive.
    tail: gst::glib::WeakRef<gst::Element>,
    shown: String,
}

impl Deliver {
    /// The decoded frame size before `videoscale`: the caps leaving the `tail` queue.
    fn native_size(&self) -> Option<(u32, u32)> {
        let caps = self.tail.upgrade()?.static_pad("src")?.current_caps()?;
        let s = caps.structure(0)?;
        let (w, h) = (s.get::<i32>("width").ok()?, s.get::<i32>("height").ok()?);
        (w > 0 && h > 0).then_some((w as u32, h as u32))
    }

    fn on_sample(&mut self, sink: &gst_app::AppSink) -> Result<gst::FlowSuccess, gst::FlowError> {
        let sample = sink.pull_sample().map_err(|_| gst::FlowError::Flushing)?;
        if self.stop.load(Ordering::SeqCst) {
            return Err(gst::FlowError::Flushing);
        }
        let captured = Instant::now();
        let index = self.run.frames.fetch_add(1, Ordering::SeqCst);
        let since = self.run.started.elapsed();
        self.run.touch();
        self.stats.frame_arrived();
        self.stats.connected.store(true, Ordering::Relaxed);
        if self.live
            && let Some(q) = self.tail.upgrade()
        {
            let level = u64::from(q.property::<u32>("current-level-buffers"));
            self.run.count_drops(&self.stats, level, 1);
        }
        let px = match copy_rgb(&sample) {
            Ok(px) => px,
            Err(e) => {
                warn!(camera = %self.camera, "{}: unusable frame: {e}", self.shown);
                return Ok(gst::FlowSuccess::Ok);
            }
        };
        let dur_ns = sample
            .buffer()
            .and_then(|b| b.duration())
            .map_or(0, |d| d.nseconds());
        if let Some(p) = px.pts_ns {
            self.run.end_ns.fetch_max(p + dur_ns, Ordering::Relaxed);
        }
        // MJPEG over HTTP is stamped per network read, not per frame (several frames can
        // share one stamp), so its decode time is the better clock.
        let raw_ms = match px.pts_ns {
            Some(ns) if !self.wall_clock => ns / 1_000_000,
            _ => since.as_millis() as u64,
        };
        let resumed = self.offset.is_none() && self.resumes();
        let pts_ms = self.stream_time(raw_ms, captured);
        if !self.keep(index, pts_ms) {
            self.stats.skipped.fetch_add(1, Ordering::Relaxed);
            return Ok(gst::FlowSuccess::Ok);
        }
        let seq = self.stats.delivered.load(Ordering::SeqCst);
        let msg = SourceMsg::Frame(Frame {
            camera: self.camera.clone(),
            seq,
            pts_ms,
            width: px.width,
            height: px.height,
            rgb: px.rgb,
            native: self.native_size(),
            captured,
            resumed,
        });
        if self.drop_when_full {
            if self.tx.capacity().is_none() && self.tx.len() >= UNBOUNDED_LIVE_CAP {
                self.stats.add_dropped_consumer(1);
                return Ok(gst::FlowSuccess::Ok);
            }
            match self.tx.try_send(msg) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) => {
                    self.stats.add_dropped_consumer(1);
                    return Ok(gst::FlowSuccess::Ok);
                }
                Err(TrySendError::Disconnected(_)) => return Err(self.consumer_gone()),
            }
        } else {
            self.run.waiting.store(true, Ordering::SeqCst);
            let sent = send_blocking(self.tx.clone(), msg, &self.stop);
            self.run.touch();
            self.run.waiting.store(false, Ordering::SeqCst);
            if !sent {
                if self.stop.load(Ordering::SeqCst) {
                    return Err(gst::FlowError::Flushing);
                }
                return Err(self.consumer_gone());
            }
        }
        self.stats.delivered.fetch_add(1, Ordering::SeqCst);
        Ok(gst::FlowSuccess::Ok)
    }

    /// Nobody listens any more: end the source instead of decoding for nothing.
    fn consumer_gone(&self) -> gst::FlowError {
        debug!(camera = %self.camera, "consumer gone; stopping");
        self.stop.store(true, Ordering::SeqCst);
        gst::FlowError::Flushing
    }

    /// Whether an earlier run of this source delivered frames (this run continues its timeline).
    fn resumes(&self) -> bool {
        self.timeline
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    /// Maps this run's PTS onto the source's never-decreasing timeline.
    fn stream_time(&mut self, raw_ms: u64, now: Instant) -> u64 {
        let mut tl = self.timeline.lock().unwrap_or_else(|p| p.into_inner());
        let offset = *self.offset.get_or_insert_with(|| match *tl {
            None => 0,
            Some((last, at)) => {
                let gap = (now.saturating_duration_since(at).as_millis() as u64).max(1);
                (last + gap) as i64 - raw_ms as i64
            }
        });
        let mut out = (raw_ms as i64 + offset).max(0) as u64;
        if let Some((last, _)) = *tl {
            // Strictly increasing, even where a source repeats a stamp.
            out = out.max(last + 1);
        }
        *tl = Some((out, now));
        out
    }

    /// every_nth on decoded frames, then max_fps on stream time.
    fn keep(&mut self, index: u64, pts_ms: u64) -> bool {
        if !index.is_multiple_of(self.every_nth) {
            return false;
        }
        let Some(period) = self.period_ms else {
            return true;
        };
        let t = pts_ms as f64;
        match self.next_due {
            // 1 ms of slack: PTS are rounded to ms.
            Some(due) if t + 1.0 < due => false,
            Some(due) => {
                // Keep the cadence, but do not try to catch up after a gap.
                self.next_due = Some(if t - due < period {
                    due + period
                } else {
                    t + period
                });
                true
            }
            None => {
                self.next_due = Some(t + period);
                true
            }
        }
    }
}
