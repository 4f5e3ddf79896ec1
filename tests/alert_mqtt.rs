//! MQTT sink against a real Mosquitto broker started by the test on a free loopback port.

#[path = "common/port.rs"]
mod port;
use advguard::alert::AlertHub;
use advguard::alert::config::{AlertFile, AlertsConfig};
use advguard::alert::metrics::ReasonLabel;
use advguard::detector::event::{Event, Phase};
use crossbeam_channel::Receiver;
use port::free_port;
use rumqttc::{Client, MqttOptions, Packet, QoS};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_advguard");

struct Broker {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Broker {
    fn start() -> Broker {
        // A port can be briefly held by a child forked elsewhere (see common/port.rs): if
        // mosquitto exits because it cannot listen, try again on another port.
        for _ in 0..5 {
            if let Some(b) = Self::try_start() {
                return b;
            }
        }
        panic!("mosquitto did not start on five ports")
    }

    fn try_start() -> Option<Broker> {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let conf = dir.path().join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"),
        )
        .unwrap();
        let mut child = Command::new("/usr/sbin/mosquitto")
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto installed");
        let t0 = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if child.try_wait().unwrap().is_some() {
                return None;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "mosquitto did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(Broker {
            child,
            port,
            _dir: dir,
        })
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Debug, Clone)]
struct Msg {
    topic: String,
    payload: Vec<u8>,
    retain: bool,
}

/// A subscriber on `<prefix>/#`; returns once the subscription is acknowledged.
fn subscribe(port: u16, prefix: &str) -> (Client, Receiver<Msg>) {
    let mut opts = MqttOptions::new(format!("sub-{}", uuid::Uuid::new_v4()), "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(5));
    opts.set_max_packet_size(16 << 20, 16 << 20);
    let (client, mut conn) = Client::new(opts, 16);
    client
        .subscribe(format!("{prefix}/#"), QoS::AtLeastOnce)
        .unwrap();
    let (tx, rx) = crossbeam_channel::unbounded();
    let (sub_tx, sub_rx) = crossbeam_channel::bounded(1);
    std::thread::spawn(move || {
        for n in conn.iter() {
            match n {
                Ok(rumqttc::Event::Incoming(Packet::SubAck(_))) => {
                    let _ = sub_tx.try_send(());
                }
                Ok(rumqttc::Event::Incoming(Packet::Publish(p))) => {
                    let m = Msg {
                        topic: p.topic.clone(),
                        payload: p.payload.to_vec(),
                        retain: p.retain,
                    };
                    if tx.send(m).is_err() {
                        break;
                    }
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    });
    sub_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("SUBACK");
    (client, rx)
}

/// Waits for a message matching `f`.
fn wait_for(rx: &Receiver<Msg>, timeout: Duration, mut f: impl FnMut(&Msg) -> bool) -> Option<Msg> {
    let deadline = Instant::now() + timeout;
    while let Ok(m) = rx.recv_deadline(deadline) {
        if f(&m) {
            return Some(m);
        }
    }
    None
}

fn ev(event_id: &str, seq: u32, phase: Phase, jpeg: Option<Arc<Vec<u8>>>) -> Event {
    Event {
        id: format!("{event_id}-{seq}"),
        event_id: event_id.into(),
        phase,
        seq,
        camera: "door".into(),
        model: "m".into(),
        detector: "concentration".into(),
        time: "2026-01-01T00:00:00Z".into(),
        start_time: "2026-01-01T00:00:00Z".into(),
        start_pts_ms: 0,
        pts_ms: seq as u64,
        score: 1.0,
        peak_score: 1.0,
        peak_pts_ms: 0,
        threshold: 0.5,
        frames_over: seq,
        top1: None,
        bbox: None,
        top1_before: None,
        interrupted: false,
        signals: Vec::new(),
        snapshot_jpeg: jpeg,
        heatmap_png: None,
    }
}

fn config(dir: &std::path::Path, port: u16, prefix: &str) -> String {
    format!(
        "[[sink]]\nkind = \"mqtt\"\nport = {port}\ntopic_prefix = \"{prefix}\"\nclient_id = \"advguard-{prefix}\"\nkeep_alive_secs = 5\ntimeout_secs = 3\n\n[spool]\npath = \"{}\"\nretry_initial_ms = 100\nretry_max_ms = 500\n",
        dir.join("spool.redb").display()
    )
}

#[test]
fn start_update_end_and_snapshot_reach_a_subscriber() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let (_sub, rx) = subscribe(broker.port, "agx");
    let f = AlertFile::parse(&config(dir.path(), broker.port, "agx")).unwrap();
    let alerts = AlertsConfig {
        cooldown_secs: 30.0,
        update_interval_secs: 0.3,
    };
    let hub = AlertHub::start(&f.sink, &f.spool, &alerts).unwrap();
    let jpeg = Arc::new(vec![0xFF, 0xD8, 0xFF, 0xE0, 1, 2, 3, 0xFF, 0xD9]);
    hub.submit(ev("e1", 0, Phase::Start, Some(jpeg.clone())));
    std::thread::sleep(Duration::from_millis(400));
    hub.submit(ev("e1", 1, Phase::Update, None));
    hub.submit(ev("e1", 2, Phase::Update, None)); // throttled: < 0.3 s after the last update
    hub.submit(ev("e1", 3, Phase::End, None));

    let online = wait_for(&rx, Duration::from_secs(10), |m| m.topic == "agx/available")
        .expect("availability");
    assert_eq!(online.payload, b"online");
    let mut phases = Vec::new();
    let mut snapshot = None;
    let deadline = Instant::now() + Duration::from_secs(15);
    while (phases.len() < 3 || snapshot.is_none()) && Instant::now() < deadline {
        let Some(m) = wait_for(&rx, Duration::from_millis(200), |_| true) else {
            continue;
        };
        match m.topic.as_str() {
            "agx/events" => {
                let e: Event = serde_json::from_slice(&m.payload).unwrap();
                phases.push((e.phase, e.id));
            }
            "agx/door/snapshot" => snapshot = Some(m),
            _ => {}
        }
    }
    assert_eq!(
        phases,
        vec![
            (Phase::Start, "e1-0".into()),
            (Phase::Update, "e1-1".into()),
            (Phase::End, "e1-3".into())
        ]
    );
    assert_eq!(snapshot.expect("snapshot").payload, *jpeg);
    assert!(hub.wait_idle(Duration::from_secs(5)));
    let m = hub.metrics();
    let throttled = m
        .suppressed
        .get_or_create(&ReasonLabel {
            reason: "throttle".into(),
        })
        .get();
    assert_eq!(throttled, 1);

    // Clean shutdown publishes offline (retained).
    hub.shutdown(Duration::from_secs(5));
    let off =
        wait_for(&rx, Duration::from_secs(10), |m| m.topic == "agx/available").expect("offline");
    assert_eq!(off.payload, b"offline");
}

#[test]
fn last_will_offline_when_process_is_killed() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("cameras.toml");
    std::fs::write(&cfg, config(dir.path(), broker.port, "lwt")).unwrap();
    let (_sub, rx) = subscribe(broker.port, "lwt");
    let mut child = Command::new(BIN)
        .args(["alert", "test", "--config"])
        .arg(&cfg)
        .args(["--count", "3", "--camera", "gate", "--hold", "120"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.starts_with("spooled 3"), "{line}");
    let online =
        wait_for(&rx, Duration::from_secs(10), |m| m.topic == "lwt/available").expect("online");
    assert_eq!(online.payload, b"online");
    let mut n_events = 0;
    let mut snap = false;
    let deadline = Instant::now() + Duration::from_secs(15);
    while (n_events < 3 || !snap) && Instant::now() < deadline {
        if let Some(m) = wait_for(&rx, Duration::from_millis(200), |_| true) {
            if m.topic == "lwt/events" {
                let e: Event = serde_json::from_slice(&m.payload).unwrap();
                assert_eq!(e.detector, "test");
                n_events += 1;
            }
            if m.topic == "lwt/gate/snapshot" {
                assert_eq!(&m.payload[..2], &[0xFF, 0xD8]);
                snap = true;
            }
        }
    }
    assert_eq!((n_events, snap), (3, true));
    child.kill().unwrap(); // SIGKILL: no clean offline, the broker sends the Last Will
    child.wait().unwrap();
    let off =
        wait_for(&rx, Duration::from_secs(15), |m| m.topic == "lwt/available").expect("last will");
    assert_eq!(off.payload, b"offline");
    // It is retained: a new subscriber sees offline.
    let (_sub2, rx2) = subscribe(broker.port, "lwt");
    let m =
        wait_for(&rx2, Duration::from_secs(5), |m| m.topic == "lwt/available").expect("retained");
    assert!(m.retain && m.payload == b"offline");
}

#[test]
fn broker_down_at_first_then_up_delivers_spooled_events() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let f = AlertFile::parse(&config(dir.path(), port, "late")).unwrap();
    let hub = AlertHub::start(&f.sink, &f.spool, &AlertsConfig::pass_all()).unwrap();
    for i in 0..5 {
        hub.submit(ev(
            "late",
            i,
            if i == 0 { Phase::Start } else { Phase::Update },
            None,
        ));
    }
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(hub.sink_status()[0].queued, 5);
    // Start the broker on that port now.
    let bdir = tempfile::tempdir().unwrap();
    let conf = bdir.path().join("m.conf");
    std::fs::write(
        &conf,
        format!("listener {port} 127.0.0.1\nallow_anonymous true\n"),
    )
    .unwrap();
    let child = Command::new("/usr/sbin/mosquitto")
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _broker = Broker {
        child,
        port,
        _dir: bdir,
    };
    assert!(
        hub.wait_idle(Duration::from_secs(30)),
        "{:?}",
        hub.sink_status()
    );
    let st = hub.shutdown(Duration::from_secs(3));
    assert_eq!(st[0].delivered, 5);
}
