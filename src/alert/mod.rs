//! Alert stage: noise control → durable spool (redb) → one worker per sink
//! (webhook / MQTT / exec / file), at least once, in order, with capped exponential backoff.
//!
//! ```text
//! submit(Event) ──try_send──▶ [bounded queue] ──▶ spool writer thread
//!   (never blocks)                                 noise filter → redb commit (fsync)
//!                                                    │ wake
//!                          ┌─────────────────────────┼──────────────────────┐
//!                     worker(webhook)           worker(mqtt)  ...      worker(file)
//!                  next_for → deliver → ack    (retry with backoff until delivered)
//! ```
//!
//! Use [`AlertHub::start`] with the `[[sink]]`, `[spool]` and `[alerts]` tables, call
//! [`AlertHub::submit`] (or [`AlertHandle::submit`] from other threads) per event, register
//! the metrics with [`AlertHub::register_metrics`], and end with [`AlertHub::shutdown`].

pub mod config;
pub mod metrics;
pub mod noise;
pub mod sink;
pub mod spool;

use crate::detector::event::Event;
use config::{AlertsConfig, SinkConfig, SpoolConfig};
use crossbeam_channel::{Receiver, Sender, TrySendError, select};
use metrics::AlertMetrics;
use noise::{NoiseFilter, Verdict};
use sink::Sink;
use spool::Spool;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

enum Msg {
    Event(Box<Event>),
    Shutdown,
}

/// State of one sink, as reported by [`AlertHub::sink_status`].
#[derive(Debug, Clone)]
pub struct SinkStatus {
    /// Sink name.
    pub name: String,
    /// `webhook`, `mqtt`, `exec` or `file`.
    pub kind: &'static str,
    /// Events delivered by this process.
    pub delivered: u64,
    /// Failed attempts by this process (each retried).
    pub failed: u64,
    /// Events in the spool not yet delivered.
    pub queued: u64,
    /// Age of the oldest of them.
    pub oldest_age: Option<Duration>,
}

/// Counters shared by the hub, its handles and its threads.
struct Shared {
    metrics: AlertMetrics,
    drops_logged: AtomicU64,
    /// Events accounted for by the writer (spooled, suppressed or dropped there).
    processed: AtomicU64,
    /// Events accepted by `submit` into the queue.
    accepted: AtomicU64,
}

impl Shared {
    fn drop_event(&self, reason: &str, id: &str) {
        self.metrics
            .dropped
            .get_or_create(&AlertMetrics::reason(reason))
            .inc();
        let n = self.drops_logged.fetch_add(1, Ordering::Relaxed);
        if n < 10 || n.is_power_of_two() {
            tracing::warn!(reason, id, dropped_so_far = n + 1, "alert event dropped");
        }
    }
}

/// Cheap, cloneable submitter for other threads.
#[derive(Clone)]
pub struct AlertHandle {
    tx: Sender<Msg>,
    shared: Arc<Shared>,
}

impl AlertHandle {
    /// Hands the event to the spool writer; never blocks. If the queue is full (the spool
    /// disk is stuck) or the hub is shut down, the event is dropped, counted
    /// (`advguard_alert_dropped_total{reason="queue_full"|"closed"}`) and logged.
    pub fn submit(&self, ev: Event) {
        self.shared.metrics.submitted.inc();
        match self.tx.try_send(Msg::Event(Box::new(ev))) {
            Ok(()) => {
                self.shared.accepted.fetch_add(1, Ordering::SeqCst);
            }
            Err(TrySendError::Full(Msg::Event(ev))) => self.shared.drop_event("queue_full", &ev.id),
            Err(TrySendError::Disconnected(Msg::Event(ev))) => {
                self.shared.drop_event("closed", &ev.id)
            }
            Err(_) => {}
        }
    }
}

struct Worker {
    name: String,
    kind: &'static str,
    wake: Sender<()>,
    done: Receiver<()>,
    thread: Option<JoinHandle<()>>,
}

/// The alert hub: owns the spool, the spool-writer thread and one worker per sink.
pub struct AlertHub {
    handle: AlertHandle,
    /// `None` when no sink is configured: nothing is spooled then.
    spool: Option<Arc<Spool>>,
    writer: Option<JoinHandle<()>>,
    workers: Vec<Worker>,
    draining: Arc<AtomicBool>,
    /// Dropped (closed) at the hard-stop deadline: wakes every backoff sleep.
    stop_tx: Option<Sender<()>>,
}

/// Spools an `interrupted` end for every event that a previous run left open (it was
/// killed mid-event), before any sink starts, so receivers see each such event closed.
/// Returns how many; a spool error is logged and start-up goes on.
fn close_interrupted(spool: &Spool) -> u64 {
    let open = match spool.open_events() {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!("cannot read the events left open by a previous run: {e}");
            return 0;
        }
    };
    if open.is_empty() {
        return 0;
    }
    let now = crate::detector::tracker::now_rfc3339();
    let ends: Vec<Event> = open
        .iter()
        .map(|ev| ev.interrupted_end(now.clone()))
        .collect();
    for ev in &ends {
        tracing::warn!(
            camera = %ev.camera,
            event_id = %ev.event_id,
            since = %ev.start_time,
            "event left open by a previous run (killed?): closing it as interrupted"
        );
    }
    match spool.append(&ends) {
        Ok(_) => ends.len() as u64,
        Err(e) => {
            tracing::warn!(
                "cannot spool the ends of {} interrupted events: {e}",
                ends.len()
            );
            0
        }
    }
}

/// Retry timing.
#[derive(Clone, Copy, Debug)]
struct Backoff {
    initial: Duration,
    max: Duration,
}

impl Backoff {
    fn delay(&self, failures: u32) -> Duration {
        let base =
            self.initial.as_secs_f64() * 2f64.powi(failures.saturating_sub(1).min(30) as i32);
        let base = base.min(self.max.as_secs_f64());
        let jitter = 0.75 + 0.5 * rand::random::<f64>();
        Duration::from_secs_f64((base * jitter).min(self.max.as_secs_f64()))
    }
}

impl AlertHub {
    /// Validates the config (expanding `${ENV}`; errors name the key), opens the spool and
    /// starts the writer and one worker per sink. Undelivered events from a previous run
    /// are delivered first.
    pub fn start(
        sinks: &[SinkConfig],
        spool: &SpoolConfig,
        alerts: &AlertsConfig,
    ) -> anyhow::Result<AlertHub> {
        let resolved = config::resolve_sinks(sinks)?;
        let path = spool.resolved_path()?;
        let names: Vec<String> = resolved.iter().map(|(n, _)| n.clone()).collect();
        let spool_db = if names.is_empty() {
            tracing::info!("no [[sink]] configured: alerts are not spooled or delivered");
            None
        } else {
            Some(Spool::open(&path, spool.max_events, &names)?)
        };
        let mut built: Vec<(Box<dyn Sink>, &'static str)> = Vec::new();
        for (i, (name, cfg)) in resolved.iter().enumerate() {
            let s =
                sink::build(name, cfg).map_err(|e| anyhow::anyhow!("sink[{i}] ({name}): {e}"))?;
            built.push((s, cfg.kind()));
        }
        let shared = Arc::new(Shared {
            metrics: AlertMetrics::default(),
            drops_logged: AtomicU64::new(0),
            processed: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
        });
        if let Some(s) = &spool_db {
            let lost = s.recovery().lost;
            if lost > 0 {
                shared
                    .metrics
                    .dropped
                    .get_or_create(&AlertMetrics::reason("spool_corrupt"))
                    .inc_by(lost);
            }
        }
        if let Some(s) = &spool_db {
            shared.metrics.interrupted.inc_by(close_interrupted(s));
        }
        let backoff = Backoff {
            initial: Duration::from_millis(spool.retry_initial_ms.max(1)),
            max: Duration::from_millis(spool.retry_max_ms.max(spool.retry_initial_ms).max(1)),
        };
        let draining = Arc::new(AtomicBool::new(false));
        let (stop_tx, stop_rx) = crossbeam_channel::bounded::<()>(0);
        let mut workers = Vec::new();
        for (s, kind) in built {
            let name = s.name().to_string();
            let (wake_tx, wake_rx) = crossbeam_channel::bounded(1);
            let (done_tx, done_rx) = crossbeam_channel::bounded(1);
            let ctx = WorkerCtx {
                spool: spool_db.clone().expect("spool opened when sinks exist"),
                shared: shared.clone(),
                wake: wake_rx,
                stop: stop_rx.clone(),
                draining: draining.clone(),
                backoff,
            };
            let thread = std::thread::Builder::new()
                .name(format!("alert-{name}"))
                .spawn(move || {
                    run_worker(s, ctx);
                    let _ = done_tx.send(());
                })?;
            workers.push(Worker {
                name,
                kind,
                wake: wake_tx,
                done: done_rx,
                thread: Some(thread),
            });
        }
        let (tx, rx) = crossbeam_channel::bounded(spool.queue.max(1));
        let writer = {
            let spool_db = spool_db.clone();
            let shared = shared.clone();
            let wakes: Vec<Sender<()>> = workers.iter().map(|w| w.wake.clone()).collect();
            let filter = NoiseFilter::from_config(alerts);
            std::thread::Builder::new()
                .name("alert-spool".into())
                .spawn(move || run_writer(rx, spool_db, shared, wakes, filter))?
        };
        tracing::info!(spool = %path.display(), sinks = ?names, "alert hub started");
        Ok(AlertHub {
            handle: AlertHandle { tx, shared },
            spool: spool_db,
            writer: Some(writer),
            workers,
            draining,
            stop_tx: Some(stop_tx),
        })
    }

    /// Hands the event over and returns at once (see [`AlertHandle::submit`]).
    pub fn submit(&self, ev: Event) {
        self.handle.submit(ev)
    }

    /// A cloneable submitter for other threads.
    pub fn handle(&self) -> AlertHandle {
        self.handle.clone()
    }

    /// The metrics (clones share values).
    pub fn metrics(&self) -> &AlertMetrics {
        &self.handle.shared.metrics
    }

    /// Registers the alert metrics (`advguard_alert_*`) in a prometheus-client registry.
    pub fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        self.metrics().register(registry)
    }

    /// Per-sink state (delivered/failed by this process; queued/oldest from the spool).
    pub fn sink_status(&self) -> Vec<SinkStatus> {
        let m = self.metrics();
        let now = spool::now_ms();
        self.workers
            .iter()
            .map(|w| {
                let l = AlertMetrics::sink(&w.name);
                let b = self
                    .spool
                    .as_ref()
                    .and_then(|s| s.backlog(&w.name).ok())
                    .unwrap_or_default();
                SinkStatus {
                    name: w.name.clone(),
                    kind: w.kind,
                    delivered: m.delivered.get_or_create(&l).get(),
                    failed: m.failed.get_or_create(&l).get(),
                    queued: b.queued,
                    oldest_age: b
                        .oldest_queued_at_ms
                        .map(|t| Duration::from_millis(now.saturating_sub(t))),
                }
            })
            .collect()
    }

    /// True when every submitted event has been spooled (or suppressed/dropped) and
    /// every sink has delivered everything in the spool.
    pub fn is_idle(&self) -> bool {
        let s = &self.handle.shared;
        s.processed.load(Ordering::SeqCst) >= s.accepted.load(Ordering::SeqCst)
            && self.workers.iter().all(|w| {
                self.spool
                    .as_ref()
                    .is_some_and(|s| s.backlog(&w.name).is_ok_and(|b| b.queued == 0))
            })
    }

    /// Waits until [`is_idle`](Self::is_idle) or the timeout; returns whether idle.
    pub fn wait_idle(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.is_idle() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Events accepted by `submit` and already processed by the spool writer.
    pub fn spooled_or_processed(&self) -> u64 {
        self.handle.shared.processed.load(Ordering::SeqCst)
    }

    /// Stops accepting events, spools what is queued, lets the sinks deliver the backlog
    /// until `timeout`, then stops them (MQTT publishes `offline`). What is not delivered
    /// stays in the spool for the next start. Returns the per-sink state at the end.
    pub fn shutdown(mut self, timeout: Duration) -> Vec<SinkStatus> {
        let deadline = Instant::now() + timeout;
        // 1. The writer spools the queued events and exits.
        let _ = self.handle.tx.send_deadline(Msg::Shutdown, deadline);
        if let Some(w) = self.writer.take() {
            while !w.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            if w.is_finished() {
                let _ = w.join();
            }
        }
        // 2. Workers deliver until their backlog is empty, or the deadline.
        self.draining.store(true, Ordering::SeqCst);
        for w in &self.workers {
            let _ = w.wake.try_send(());
        }
        let mut pending: Vec<&Worker> = self.workers.iter().collect();
        pending.retain(|w| w.done.recv_deadline(deadline).is_err());
        // 3. Hard stop: wake every sleep; give in-flight attempts a short grace.
        self.stop_tx.take();
        let grace = Instant::now() + Duration::from_secs(3);
        pending.retain(|w| w.done.recv_deadline(grace).is_err());
        for w in &pending {
            tracing::warn!(sink = %w.name, "alert sink still busy at shutdown; its backlog stays in the spool");
        }
        let status = self.sink_status();
        for w in &mut self.workers {
            if let Some(t) = w.thread.take_if(|t| t.is_finished()) {
                let _ = t.join();
            }
        }
        status
    }
}

struct WorkerCtx {
    spool: Arc<Spool>,
    shared: Arc<Shared>,
    wake: Receiver<()>,
    stop: Receiver<()>,
    draining: Arc<AtomicBool>,
    backoff: Backoff,
}

impl WorkerCtx {
    fn stopped(&self) -> bool {
        matches!(
            self.stop.try_recv(),
            Err(crossbeam_channel::TryRecvError::Disconnected)
        )
    }

    /// Sleeps up to `d`; returns early on a wake-up (`true`) or the hard stop (`false`).
    fn sleep(&self, d: Duration, wakeable: bool) -> bool {
        if wakeable {
            select! {
                recv(self.wake) -> _ => true,
                recv(self.stop) -> _ => false,
                default(d) => true,
            }
        } else {
            select! {
                recv(self.stop) -> _ => false,
                default(d) => true,
            }
        }
    }

    fn update_gauges(&self, name: &str) {
        let l = AlertMetrics::sink(name);
        if let Ok(b) = self.spool.backlog(name) {
            self.shared
                .metrics
                .queued
                .get_or_create(&l)
                .set(b.queued as i64);
            let age = b
                .oldest_queued_at_ms
                .map(|t| spool::now_ms().saturating_sub(t) as f64 / 1000.0)
                .unwrap_or(0.0);
            self.shared.metrics.oldest_age.get_or_create(&l).set(age);
        }
    }
}

fn run_worker(mut sink: Box<dyn Sink>, ctx: WorkerCtx) {
    let name = sink.name().to_string();
    let label = AlertMetrics::sink(&name);
    let mut failures: u32 = 0;
    loop {
        ctx.update_gauges(&name);
        if ctx.stopped() {
            break;
        }
        let rec = match ctx.spool.next_for(&name) {
            Ok(r) => r,
            Err(spool::SpoolError::Corrupt(seq, msg)) => {
                // An unreadable record must not block the sink forever: skip it, counted.
                tracing::error!(sink = %name, seq, "skipping corrupt spool record: {msg}");
                match ctx.spool.skip_corrupt(&name, seq) {
                    Ok(()) => ctx
                        .shared
                        .drop_event("spool_corrupt", &format!("seq {seq}")),
                    Err(e) => {
                        tracing::error!(sink = %name, "skipping corrupt spool record: {e}");
                        if !ctx.sleep(Duration::from_secs(1), false) {
                            break;
                        }
                    }
                }
                continue;
            }
            Err(e) => {
                tracing::error!(sink = %name, "reading spool: {e}");
                if !ctx.sleep(Duration::from_secs(1), false) {
                    break;
                }
                continue;
            }
        };
        let Some(rec) = rec else {
            if ctx.draining.load(Ordering::SeqCst) {
                break;
            }
            if !ctx.sleep(Duration::from_secs(1), true) {
                break;
            }
            continue;
        };
        match sink.deliver(&rec.event) {
            Ok(()) => {
                if failures > 0 {
                    tracing::info!(sink = %name, id = %rec.event.id, attempts = failures + 1, "delivered after retries");
                }
                failures = 0;
                ctx.shared.metrics.delivered.get_or_create(&label).inc();
                if let Err(e) = ctx.spool.ack(&name, rec.seq) {
                    // Without the pause a failing spool (disk full) would redeliver in a loop.
                    tracing::error!(sink = %name, "recording delivery in spool: {e}");
                    if !ctx.sleep(Duration::from_secs(1), false) {
                        break;
                    }
                }
            }
            Err(e) => {
                failures += 1;
                ctx.shared.metrics.failed.get_or_create(&label).inc();
                let d = ctx.backoff.delay(failures);
                if failures <= 3 || failures.is_power_of_two() {
                    tracing::warn!(sink = %name, id = %rec.event.id, attempt = failures, retry_in = ?d, "delivery failed: {e}");
                }
                if !ctx.sleep(d, false) {
                    break;
                }
            }
        }
    }
    ctx.update_gauges(&name);
    sink.close(Duration::from_secs(2));
}

fn run_writer(
    rx: Receiver<Msg>,
    spool: Option<Arc<Spool>>,
    shared: Arc<Shared>,
    wakes: Vec<Sender<()>>,
    mut filter: NoiseFilter,
) {
    let mut shutdown = false;
    while !shutdown {
        let first = match rx.recv() {
            Ok(m) => m,
            Err(_) => break,
        };
        let mut batch = Vec::new();
        let mut n_msgs = 0u64;
        let mut handle = |m: Msg, batch: &mut Vec<Event>, shutdown: &mut bool, n: &mut u64| match m
        {
            Msg::Shutdown => *shutdown = true,
            Msg::Event(ev) => {
                *n += 1;
                match filter.filter(*ev, Instant::now()) {
                    Verdict::Pass(ev) => batch.push(*ev),
                    Verdict::Suppress(reason) => {
                        shared
                            .metrics
                            .suppressed
                            .get_or_create(&AlertMetrics::reason(reason))
                            .inc();
                    }
                }
            }
        };
        handle(first, &mut batch, &mut shutdown, &mut n_msgs);
        // On shutdown, take everything queued; otherwise batch up to 256 per commit.
        while shutdown || batch.len() < 256 {
            match rx.try_recv() {
                Ok(m) => handle(m, &mut batch, &mut shutdown, &mut n_msgs),
                Err(_) => break,
            }
        }
        if let (false, Some(spool)) = (batch.is_empty(), &spool) {
            match spool.append(&batch) {
                Ok(a) => {
                    shared.metrics.spooled.inc_by(a.written);
                    if a.dropped > 0 {
                        shared
                            .metrics
                            .dropped
                            .get_or_create(&AlertMetrics::reason("spool_full"))
                            .inc_by(a.dropped);
                        tracing::warn!(
                            dropped = a.dropped,
                            "alert spool full: dropped the oldest undelivered events"
                        );
                    }
                }
                Err(e) => {
                    tracing::error!("alert spool write failed: {e}");
                    for ev in &batch {
                        shared.drop_event("spool_error", &ev.id);
                    }
                }
            }
        }
        shared.processed.fetch_add(n_msgs, Ordering::SeqCst);
        for w in &wakes {
            let _ = w.try_send(());
        }
    }
}

impl Drop for AlertHub {
    fn drop(&mut self) {
        // Not shut down: stop the threads without draining (the spool keeps the backlog).
        if self.stop_tx.is_some() {
            let _ = self.handle.tx.try_send(Msg::Shutdown);
            self.draining.store(true, Ordering::SeqCst);
            self.stop_tx.take();
        }
    }
}
