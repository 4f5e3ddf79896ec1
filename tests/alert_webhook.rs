//! Webhook sink against a real HTTP receiver (tiny_http) that verifies the HMAC:
//! good and bad signatures, receiver down then back (50 events), and the advguard process
//! killed mid-backlog then restarted (all 50 ids arrive; duplicates allowed).

#[path = "common/port.rs"]
mod port;
use advguard::alert::AlertHub;
use advguard::alert::config::{AlertFile, AlertsConfig};
use advguard::alert::sink::{sign, verify_signature};
use advguard::detector::event::{Event, Phase};
use port::free_port;
use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_advguard");

fn ev(event_id: &str, seq: u32) -> Event {
    Event {
        id: format!("{event_id}-{seq}"),
        event_id: event_id.into(),
        phase: if seq == 0 {
            Phase::Start
        } else {
            Phase::Update
        },
        seq,
        camera: "door".into(),
        model: "m".into(),
        detector: "test".into(),
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
        snapshot_jpeg: if seq == 0 {
            Some(Arc::new(vec![0xFF, 0xD8, 0xFF, 0xD9]))
        } else {
            None
        },
        heatmap_png: None,
    }
}

/// A real receiver: verifies `X-Advguard-Signature`, answers 401 on a bad one.
struct Receiver {
    server: Arc<tiny_http::Server>,
    ids: Arc<Mutex<Vec<String>>>,
    bad: Arc<AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Receiver {
    fn start(port: u16, secret: &str, delay: Duration) -> Receiver {
        let server = Arc::new(port::bind_with_retry(|| {
            tiny_http::Server::http(("127.0.0.1", port))
        }));
        let ids = Arc::new(Mutex::new(Vec::new()));
        let bad = Arc::new(AtomicUsize::new(0));
        let thread = {
            let (server, ids, bad, secret) =
                (server.clone(), ids.clone(), bad.clone(), secret.to_string());
            std::thread::spawn(move || {
                for mut req in server.incoming_requests() {
                    let mut body = Vec::new();
                    req.as_reader().read_to_end(&mut body).unwrap();
                    let header = |name: &'static str| {
                        req.headers()
                            .iter()
                            .find(|h| h.field.equiv(name))
                            .map(|h| h.value.as_str().to_string())
                    };
                    let sig = header("X-Advguard-Signature").unwrap_or_default();
                    if !verify_signature(secret.as_bytes(), &body, &sig) {
                        bad.fetch_add(1, Ordering::SeqCst);
                        let _ = req.respond(
                            tiny_http::Response::from_string("bad signature").with_status_code(401),
                        );
                        continue;
                    }
                    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
                    let id = v["id"].as_str().unwrap().to_string();
                    assert_eq!(header("X-Advguard-Event-Id").as_deref(), Some(id.as_str()));
                    if v["seq"] == 0 {
                        assert!(
                            v["snapshot_jpeg_base64"].is_string(),
                            "start carries the snapshot: {v}"
                        );
                    }
                    std::thread::sleep(delay);
                    ids.lock().unwrap().push(id);
                    let _ = req.respond(tiny_http::Response::from_string("ok"));
                }
            })
        };
        Receiver {
            server,
            ids,
            bad,
            thread: Some(thread),
        }
    }

    fn unique(&self) -> BTreeSet<String> {
        self.ids.lock().unwrap().iter().cloned().collect()
    }

    fn wait_unique(&self, n: usize, timeout: Duration) -> bool {
        let t0 = Instant::now();
        while t0.elapsed() < timeout {
            if self.unique().len() >= n {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn config(dir: &std::path::Path, port: u16, secret: &str) -> String {
    format!(
        "[[camera]]\nname = \"door\"\n\n[[sink]]\nkind = \"webhook\"\nname = \"hook\"\nurl = \"http://127.0.0.1:{port}/advguard\"\nsecret = \"{secret}\"\ntimeout_secs = 2\n\n[spool]\npath = \"{}\"\nretry_initial_ms = 50\nretry_max_ms = 300\n",
        dir.join("spool.redb").display()
    )
}

#[test]
fn signature_helpers() {
    let s = sign(b"k", b"body");
    assert!(s.starts_with("sha256=") && s.len() == 7 + 64);
    assert!(verify_signature(b"k", b"body", &s));
    assert!(!verify_signature(b"k", b"bodY", &s));
    assert!(!verify_signature(b"other", b"body", &s));
    assert!(!verify_signature(b"k", b"body", "sha256=zz"));
}

#[test]
fn good_signature_accepted_bad_signature_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let rx = Receiver::start(port, "right-secret", Duration::ZERO);

    // Right secret: accepted.
    let f = AlertFile::parse(&config(dir.path(), port, "right-secret")).unwrap();
    let hub = AlertHub::start(&f.sink, &f.spool, &AlertsConfig::pass_all()).unwrap();
    for i in 0..3 {
        hub.submit(ev("good", i));
    }
    assert!(hub.wait_idle(Duration::from_secs(20)));
    hub.shutdown(Duration::from_secs(2));
    assert_eq!(rx.unique().len(), 3);
    assert_eq!(rx.bad.load(Ordering::SeqCst), 0);

    // Wrong secret: the receiver rejects it (401), the hub keeps it queued and retries.
    let dir2 = tempfile::tempdir().unwrap();
    let f = AlertFile::parse(&config(dir2.path(), port, "wrong-secret")).unwrap();
    let hub = AlertHub::start(&f.sink, &f.spool, &AlertsConfig::pass_all()).unwrap();
    hub.submit(ev("forged", 0));
    let t0 = Instant::now();
    while rx.bad.load(Ordering::SeqCst) < 3 && t0.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        rx.bad.load(Ordering::SeqCst) >= 3,
        "retries with a bad signature"
    );
    let st = hub.shutdown(Duration::from_millis(200));
    assert_eq!(st[0].delivered, 0);
    assert!(st[0].failed >= 3);
    assert_eq!(st[0].queued, 1, "a rejected event is kept, not lost");
    assert!(!rx.unique().iter().any(|id| id.starts_with("forged")));
}

#[test]
fn receiver_down_then_back_gets_all_50() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let f = AlertFile::parse(&config(dir.path(), port, "s")).unwrap();
    let hub = AlertHub::start(&f.sink, &f.spool, &AlertsConfig::pass_all()).unwrap();
    for i in 0..50 {
        hub.submit(ev("down", i));
    }
    std::thread::sleep(Duration::from_millis(1500));
    let st = hub.sink_status();
    assert_eq!(st[0].delivered, 0);
    assert!(st[0].failed >= 2, "{st:?}");
    assert_eq!(st[0].queued, 50);
    let rx = Receiver::start(port, "s", Duration::ZERO);
    assert!(
        rx.wait_unique(50, Duration::from_secs(30)),
        "got {}",
        rx.unique().len()
    );
    assert!(hub.wait_idle(Duration::from_secs(10)));
    hub.shutdown(Duration::from_secs(2));
    // In order, too.
    let ids = rx.ids.lock().unwrap().clone();
    let want: Vec<String> = (0..50).map(|i| format!("down-{i}")).collect();
    assert_eq!(ids, want);
}

#[test]
fn process_killed_mid_backlog_then_restarted_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let cfg = dir.path().join("cameras.toml");
    std::fs::write(
        &cfg,
        config(dir.path(), port, "${ADVGUARD_TEST_HOOK_SECRET}"),
    )
    .unwrap();
    // A slow receiver, so the backlog is still long when we kill the process.
    let rx = Receiver::start(port, "env-secret", Duration::from_millis(80));
    let mut child = Command::new(BIN)
        .args(["alert", "test", "--config"])
        .arg(&cfg)
        .args(["--count", "50", "--camera", "door", "--timeout", "60"])
        .env("ADVGUARD_TEST_HOOK_SECRET", "env-secret")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.starts_with("spooled 50"), "{line}");
    assert!(rx.wait_unique(5, Duration::from_secs(30)));
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let got_before = rx.unique().len();
    assert!(got_before < 50, "killed too late ({got_before})");

    // Restart: drain the backlog.
    let out = Command::new(BIN)
        .args(["alert", "drain", "--config"])
        .arg(&cfg)
        .args(["--timeout", "60"])
        .env("ADVGUARD_TEST_HOOK_SECRET", "env-secret")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ids = rx.unique();
    assert_eq!(ids.len(), 50, "lost events: got {} unique ids", ids.len());
    assert!(ids.iter().all(|id| id.starts_with("test-")));
    assert_eq!(rx.bad.load(Ordering::SeqCst), 0);

    // Status: nothing queued.
    let out = Command::new(BIN)
        .args(["alert", "status", "--config"])
        .arg(&cfg)
        .env("ADVGUARD_TEST_HOOK_SECRET", "env-secret")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("hook"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("hook") && l.split_whitespace().nth(2) == Some("0")),
        "{text}"
    );
}

#[test]
fn cli_config_errors_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("[[sink]]\nkind = \"pigeon\"\n", vec!["kind", "pigeon"]),
        (
            "[[sink]]\nkind = \"webhook\"\nurl = \"not a url\"\n",
            vec!["sink[0].url"],
        ),
        (
            "[[sink]]\nkind = \"webhook\"\nurl = \"http://127.0.0.1:1/\"\nsecret = \"${ADVGUARD_TEST_MISSING_SECRET}\"\n",
            vec!["sink[0].secret", "ADVGUARD_TEST_MISSING_SECRET"],
        ),
        ("[[sink]]\nkind = \"mqtt\"\nhots = \"x\"\n", vec!["hots"]),
    ];
    for (i, (toml, want)) in cases.iter().enumerate() {
        let p = dir.path().join(format!("c{i}.toml"));
        std::fs::write(
            &p,
            format!(
                "{toml}[spool]\npath = \"{}\"\n",
                dir.path().join("s.redb").display()
            ),
        )
        .unwrap();
        let out = Command::new(BIN)
            .args(["alert", "test", "--config"])
            .arg(&p)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        for w in want {
            assert!(err.contains(w), "case {i}: {w:?} not in {err}");
        }
        assert_eq!(
            err.lines().filter(|l| l.starts_with("error")).count(),
            1,
            "{err}"
        );
    }
}
