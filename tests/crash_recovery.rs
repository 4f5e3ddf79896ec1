//! `advguard watch` killed with SIGKILL in the middle of an open event, then started again.
//!
//! Run 1 watches a real clip with one long event (threshold 0: every frame is over it) and
//! two sinks: a file, which delivers at once, and a webhook whose receiver is down, so the
//! spool holds a backlog when the process is killed. It is killed once the file shows the
//! event's start and two updates. Run 2 starts the receiver and watches again to the end.
//!
//! Checked at both receivers, from what they really got:
//! - every message is there: per event, the sequence numbers run 0..=n without a gap;
//! - the event that run 1 left open gets exactly one `end`, marked `interrupted`;
//! - run 2's own event starts and ends normally;
//! - an id arrives twice at most once per receiver (the message in flight at the kill:
//!   delivery is at-least-once, and receivers dedupe by `id`, which is stable).

#[path = "common/port.rs"]
mod port;

use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn data() -> PathBuf {
    advguard::data_dir()
}

fn watch(cfg: &Path, stderr: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_advguard"))
        .env("ADVGUARD_MODELS", data().join("models"))
        .env("RUST_LOG", "warn")
        .env("NO_COLOR", "1")
        .arg("watch")
        .arg(format!(
            "street={}",
            data().join("videos/car-detection.mp4").display()
        ))
        .args([
            "--every-nth",
            "3",
            "--workers",
            "1",
            "--metrics-addr",
            "off",
        ])
        .args([
            "--detector",
            "concentration",
            "--threshold",
            "0",
            "--update-secs",
            "0.3",
        ])
        .arg("--config")
        .arg(cfg)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(stderr).expect("stderr file"))
        .spawn()
        .expect("start advguard watch")
}

fn parse_lines(text: &str) -> Vec<Value> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l:?}: {e}")))
        .collect()
}

/// What one receiver got, checked as the module doc says. Returns the event ids, in order.
fn check_receiver(name: &str, msgs: &[Value], killed_event: &str) -> Vec<String> {
    let mut by_id: BTreeMap<String, usize> = BTreeMap::new();
    let mut events: BTreeMap<String, Vec<&Value>> = BTreeMap::new();
    let mut order: Vec<String> = Vec::new();
    for m in msgs {
        let id = m["id"].as_str().expect("id").to_string();
        let n = by_id.entry(id).or_default();
        *n += 1;
        if *n > 1 {
            continue;
        }
        let eid = m["event_id"].as_str().expect("event_id").to_string();
        if !events.contains_key(&eid) {
            order.push(eid.clone());
        }
        events.entry(eid).or_default().push(m);
    }
    let dups: Vec<_> = by_id.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        dups.len() <= 1 && dups.iter().all(|(_, n)| **n == 2),
        "{name}: more duplicates than the one message in flight at the kill: {dups:?}"
    );
    for (eid, ms) in &events {
        let mut seqs: Vec<u64> = ms.iter().map(|m| m["seq"].as_u64().unwrap()).collect();
        seqs.sort();
        let want: Vec<u64> = (0..seqs.len() as u64).collect();
        assert_eq!(seqs, want, "{name}: event {eid} has a gap: messages lost");
        let ends: Vec<_> = ms.iter().filter(|m| m["phase"] == "end").collect();
        assert_eq!(ends.len(), 1, "{name}: event {eid} has {} ends", ends.len());
        let last = ms.iter().max_by_key(|m| m["seq"].as_u64()).unwrap();
        assert_eq!(
            last["phase"], "end",
            "{name}: event {eid}: the end is not last"
        );
        let interrupted = ends[0]["interrupted"].as_bool().unwrap_or(false);
        assert_eq!(
            interrupted,
            eid == killed_event,
            "{name}: event {eid}: interrupted = {interrupted}"
        );
    }
    assert!(
        events.contains_key(killed_event),
        "{name}: the killed run's event never arrived"
    );
    let killed = &events[killed_event];
    assert!(
        killed.iter().filter(|m| m["phase"] == "update").count() >= 2,
        "{name}: the killed event's updates are missing"
    );
    order
}

#[test]
fn sigkill_mid_event_then_restart_delivers_everything_and_closes_the_event() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hook_port = port::free_port();
    let file_out = dir.path().join("events.jsonl");
    let cfg = dir.path().join("alerts.toml");
    std::fs::write(
        &cfg,
        format!(
            "[[sink]]\nkind = \"webhook\"\nurl = \"http://127.0.0.1:{hook_port}/hook\"\ntimeout_secs = 2\n\n\
             [[sink]]\nkind = \"file\"\npath = \"{}\"\n\n\
             [spool]\npath = \"{}\"\nretry_initial_ms = 50\nretry_max_ms = 200\n\n\
             [alerts]\ncooldown_secs = 0\nupdate_interval_secs = 0\n",
            file_out.display(),
            dir.path().join("spool.redb").display()
        ),
    )
    .expect("config");

    // Run 1: the webhook receiver is down; kill once the file shows a start and two updates.
    let err1 = dir.path().join("run1.stderr");
    let mut run1 = watch(&cfg, &err1);
    let deadline = Instant::now() + Duration::from_secs(120);
    let killed_event = loop {
        if let Some(status) = run1.try_wait().expect("try_wait") {
            panic!(
                "run 1 ended ({status}) before it could be killed:\n{}",
                std::fs::read_to_string(&err1).unwrap_or_default()
            );
        }
        let msgs = parse_lines(&std::fs::read_to_string(&file_out).unwrap_or_default());
        let updates = msgs.iter().filter(|m| m["phase"] == "update").count();
        if msgs.first().is_some_and(|m| m["phase"] == "start") && updates >= 2 {
            break msgs[0]["event_id"].as_str().unwrap().to_string();
        }
        assert!(Instant::now() < deadline, "run 1 never opened an event");
        std::thread::sleep(Duration::from_millis(20));
    };
    run1.kill().expect("SIGKILL"); // Child::kill is SIGKILL on Unix
    let status = run1.wait().expect("wait");
    assert!(!status.success(), "run 1 was not killed: {status}");
    let before_restart = parse_lines(&std::fs::read_to_string(&file_out).unwrap());
    assert!(
        before_restart.iter().all(|m| m["phase"] != "end"),
        "the event ended before the kill; the test did not kill mid-event"
    );

    // Run 2: the receiver is up now; watch the clip to its end.
    let got: Arc<Mutex<Vec<Value>>> = Arc::default();
    let server = port::bind_with_retry(|| tiny_http::Server::http(("127.0.0.1", hook_port)));
    let g = got.clone();
    std::thread::spawn(move || {
        for mut req in server.incoming_requests() {
            let mut body = String::new();
            let _ = req.as_reader().read_to_string(&mut body);
            if let Ok(v) = serde_json::from_str::<Value>(&body) {
                g.lock().unwrap().push(v);
            }
            let _ = req.respond(tiny_http::Response::empty(200));
        }
    });
    let err2 = dir.path().join("run2.stderr");
    let status = watch(&cfg, &err2).wait().expect("run 2");
    let log2 = std::fs::read_to_string(&err2).unwrap_or_default();
    assert!(status.success(), "run 2 failed ({status}):\n{log2}");
    assert!(
        log2.contains("closing it as interrupted") && log2.contains(&killed_event),
        "run 2 did not say it closed the interrupted event:\n{log2}"
    );

    let file_msgs = parse_lines(&std::fs::read_to_string(&file_out).unwrap());
    let hook_msgs = got.lock().unwrap().clone();
    let file_events = check_receiver("file", &file_msgs, &killed_event);
    let hook_events = check_receiver("webhook", &hook_msgs, &killed_event);
    assert_eq!(file_events.len(), 2, "file: events {file_events:?}");
    assert_eq!(
        file_events, hook_events,
        "both receivers got the same events"
    );
    let ids = |v: &[Value]| {
        let mut s: Vec<String> = v.iter().map(|m| m["id"].as_str().unwrap().into()).collect();
        s.sort();
        s.dedup();
        s
    };
    assert_eq!(
        ids(&file_msgs),
        ids(&hook_msgs),
        "both receivers got the same messages"
    );
    eprintln!(
        "file: {} messages ({} before the kill), webhook: {} messages; events {file_events:?}",
        file_msgs.len(),
        before_restart.len(),
        hook_msgs.len()
    );
}
