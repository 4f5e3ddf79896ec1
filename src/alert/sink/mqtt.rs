//! `kind = "mqtt"`: Frigate-like topics under `topic_prefix` (default `advguard`).
//!
//! * `<prefix>/available`: `online` (retained, on every connect) / `offline` (retained;
//!   Last Will, and published at clean shutdown).
//! * `<prefix>/events`: the event JSON (start / update / end), QoS 1.
//! * `<prefix>/<camera>/snapshot`: JPEG of the peak frame, QoS 1 (retained by default);
//!   `<prefix>/<camera>/heatmap`: PNG heat map, same rules.
//!
//! `deliver` succeeds once the broker has acknowledged (PUBACK) every message of the event.

use super::{Sink, SinkError};
use crate::alert::config::MqttConfig;
use crate::detector::event::Event;
use crossbeam_channel::{Receiver, RecvTimeoutError};
use rumqttc::{Client, Connection, LastWill, MqttOptions, Outgoing, Packet, QoS};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

enum Note {
    Sent(u16),
    Acked(u16),
}

/// The MQTT sink.
pub struct MqttSink {
    name: String,
    cfg: MqttConfig,
    client: Client,
    notes: Receiver<Note>,
    connected: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn topic_part(s: &str) -> String {
    s.chars()
        .map(|c| {
            if matches!(c, '/' | '+' | '#') || c.is_control() {
                '_'
            } else {
                c
            }
        })
        .collect()
}

impl MqttSink {
    /// Connects (in the background) to the configured broker.
    pub fn new(name: &str, cfg: &MqttConfig) -> Result<Self, SinkError> {
        let prefix = cfg.topic_prefix.clone();
        let client_id = cfg
            .client_id
            .clone()
            .unwrap_or_else(|| format!("advguard-{}", topic_part(&prefix)));
        let mut opts = MqttOptions::new(client_id, cfg.host.clone(), cfg.port);
        opts.set_keep_alive(Duration::from_secs(cfg.keep_alive_secs));
        opts.set_clean_session(true);
        opts.set_max_packet_size(64 * 1024 * 1024, 64 * 1024 * 1024);
        let avail = format!("{prefix}/available");
        opts.set_last_will(LastWill::new(&avail, "offline", QoS::AtLeastOnce, true));
        if let Some(u) = &cfg.username {
            opts.set_credentials(u.clone(), cfg.password.clone().unwrap_or_default());
        }
        let (client, conn) = Client::new(opts, 64);
        let (tx, rx) = crossbeam_channel::unbounded();
        let connected = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (client, connected, stop, name) = (
                client.clone(),
                connected.clone(),
                stop.clone(),
                name.to_string(),
            );
            std::thread::Builder::new()
                .name(format!("alert-mqtt-{name}"))
                .spawn(move || run_connection(conn, client, avail, tx, connected, stop, name))
                .map_err(SinkError::new)?
        };
        Ok(MqttSink {
            name: name.to_string(),
            cfg: cfg.clone(),
            client,
            notes: rx,
            connected,
            stop,
            thread: Some(thread),
        })
    }

    fn wait_connected(&self, deadline: Instant) -> bool {
        while !self.connected.load(Ordering::SeqCst) {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }

    /// Publishes one QoS 1 message and waits for its PUBACK.
    fn publish_acked(
        &self,
        topic: &str,
        retain: bool,
        payload: Vec<u8>,
        deadline: Instant,
    ) -> Result<(), SinkError> {
        while self.notes.try_recv().is_ok() {}
        self.client
            .try_publish(topic, QoS::AtLeastOnce, retain, payload)
            .map_err(|e| SinkError(format!("MQTT publish to {topic}: {e}")))?;
        let mut pkid = None;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.notes.recv_timeout(left) {
                Ok(Note::Sent(p)) if pkid.is_none() && p != 0 => pkid = Some(p),
                Ok(Note::Acked(p)) if pkid == Some(p) => return Ok(()),
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => {
                    return Err(SinkError(format!(
                        "MQTT {}:{}: no PUBACK for {topic} within {} s",
                        self.cfg.host, self.cfg.port, self.cfg.timeout_secs
                    )));
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(SinkError("MQTT connection thread ended".into()));
                }
            }
        }
    }
}

fn run_connection(
    mut conn: Connection,
    client: Client,
    avail: String,
    tx: crossbeam_channel::Sender<Note>,
    connected: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    name: String,
) {
    let mut logged = false;
    loop {
        match conn.recv() {
            Err(_) => break,
            Ok(Ok(rumqttc::Event::Incoming(Packet::ConnAck(_)))) => {
                connected.store(true, Ordering::SeqCst);
                logged = false;
                tracing::info!(sink = %name, "MQTT connected");
                let _ = client.try_publish(&avail, QoS::AtMostOnce, true, "online");
            }
            Ok(Ok(rumqttc::Event::Incoming(Packet::PubAck(a)))) => {
                let _ = tx.send(Note::Acked(a.pkid));
            }
            Ok(Ok(rumqttc::Event::Outgoing(Outgoing::Publish(p)))) => {
                let _ = tx.send(Note::Sent(p));
            }
            Ok(Ok(rumqttc::Event::Outgoing(Outgoing::Disconnect))) => {
                connected.store(false, Ordering::SeqCst);
                break;
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                connected.store(false, Ordering::SeqCst);
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                if !logged {
                    tracing::warn!(sink = %name, "MQTT connection: {e}; reconnecting");
                    logged = true;
                }
                std::thread::sleep(Duration::from_millis(500));
            }
        }
        if stop.load(Ordering::SeqCst) && !connected.load(Ordering::SeqCst) {
            break;
        }
    }
}

impl Sink for MqttSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn deliver(&mut self, ev: &Event) -> Result<(), SinkError> {
        let deadline = Instant::now() + Duration::from_secs_f64(self.cfg.timeout_secs);
        if !self.wait_connected(deadline) {
            return Err(SinkError(format!(
                "MQTT {}:{}: not connected",
                self.cfg.host, self.cfg.port
            )));
        }
        let p = &self.cfg.topic_prefix;
        let json = serde_json::to_vec(ev).expect("event serializes");
        self.publish_acked(&format!("{p}/events"), false, json, deadline)?;
        if self.cfg.snapshots {
            let cam = topic_part(&ev.camera);
            if let Some(j) = &ev.snapshot_jpeg {
                self.publish_acked(
                    &format!("{p}/{cam}/snapshot"),
                    self.cfg.retain_snapshots,
                    j.to_vec(),
                    deadline,
                )?;
            }
            if let Some(h) = &ev.heatmap_png {
                self.publish_acked(
                    &format!("{p}/{cam}/heatmap"),
                    self.cfg.retain_snapshots,
                    h.to_vec(),
                    deadline,
                )?;
            }
        }
        Ok(())
    }

    fn close(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout.min(Duration::from_secs(3));
        if self.connected.load(Ordering::SeqCst) {
            let avail = format!("{}/available", self.cfg.topic_prefix);
            if let Err(e) = self.publish_acked(&avail, true, b"offline".to_vec(), deadline) {
                tracing::warn!(sink = %self.name, "publishing offline: {e}");
            }
        }
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.client.try_disconnect();
        if let Some(t) = self.thread.take() {
            while !t.is_finished() && Instant::now() < deadline + Duration::from_millis(500) {
                std::thread::sleep(Duration::from_millis(10));
            }
            if t.is_finished() {
                let _ = t.join();
            }
        }
    }
}

impl Drop for MqttSink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.client.try_disconnect();
    }
}
