//! A dead or hanging alert receiver must never slow the video down.
//!
//! `advguard watch` scores a real clip with a webhook sink twice over: once against a real HTTP
//! receiver that answers 200, once against a receiver that accepts the connection and never
//! answers (the worst case: every delivery waits for its timeout). The processed frame rate,
//! taken from the wall-clock stamps of the `--frames-out` records, must stay within 25 % of the
//! sink-up run (see the assertion for why 25 %). Runs alternate (up, down, up, down) and the
//! best of each pair is compared, so a burst of load from elsewhere on the machine does not
//! decide the outcome.

use serde_json::Value;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

fn data() -> PathBuf {
    advguard::data_dir()
}

/// A real HTTP receiver that answers 200 and counts the POSTs it got.
fn receiver_up() -> (String, Arc<AtomicU64>) {
    let server = tiny_http::Server::http("127.0.0.1:0").expect("bind receiver");
    let port = server.server_addr().to_ip().expect("ip").port();
    let got = Arc::new(AtomicU64::new(0));
    let g = got.clone();
    std::thread::spawn(move || {
        for mut req in server.incoming_requests() {
            let mut body = Vec::new();
            let _ = req.as_reader().read_to_end(&mut body);
            if !body.is_empty() {
                g.fetch_add(1, Ordering::SeqCst);
            }
            let _ = req.respond(tiny_http::Response::empty(200));
        }
    });
    (format!("http://127.0.0.1:{port}/hook"), got)
}

/// A receiver that accepts connections and never answers: every request runs into its timeout.
fn receiver_hanging() -> (String, Arc<AtomicU64>) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    let accepted = Arc::new(AtomicU64::new(0));
    let a = accepted.clone();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in l.incoming().flatten() {
            a.fetch_add(1, Ordering::SeqCst);
            held.push(s);
        }
    });
    (format!("http://127.0.0.1:{port}/hook"), accepted)
}

struct RunResult {
    fps: f64,
    frames: usize,
    stdout_events: usize,
}

fn watch_with_sink(dir: &Path, tag: &str, url: &str) -> RunResult {
    let cfg = dir.join(format!("{tag}.toml"));
    std::fs::write(
        &cfg,
        format!(
            "[[sink]]\nkind = \"webhook\"\nurl = \"{url}\"\ntimeout_secs = 2\n\n\
             [spool]\npath = \"{}\"\n\n[alerts]\ncooldown_secs = 0\nupdate_interval_secs = 0\n",
            dir.join(format!("{tag}.redb")).display()
        ),
    )
    .expect("config");
    let frames = dir.join(format!("{tag}.jsonl"));
    let out = Command::new(env!("CARGO_BIN_EXE_advguard"))
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
        // Every frame over the threshold: one long event whose updates keep the sink busy.
        .args([
            "--detector",
            "concentration",
            "--threshold",
            "0",
            "--update-secs",
            "0.3",
        ])
        .arg("--config")
        .arg(&cfg)
        .arg("--frames-out")
        .arg(&frames)
        .output()
        .expect("run watch");
    assert!(
        out.status.success(),
        "watch failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stamps: Vec<u64> = std::fs::read_to_string(&frames)
        .expect("frames-out")
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).expect("json line");
            v["unix_ms"].as_u64().expect("unix_ms")
        })
        .collect();
    assert!(stamps.len() > 20, "too few frames scored: {}", stamps.len());
    let span = (stamps[stamps.len() - 1] - stamps[0]) as f64 / 1e3;
    let stdout_events = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("\"event_id\""))
        .count();
    RunResult {
        fps: (stamps.len() - 1) as f64 / span,
        frames: stamps.len(),
        stdout_events,
    }
}

#[test]
fn a_hanging_receiver_does_not_slow_the_video() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (up_url, delivered) = receiver_up();
    let (down_url, accepted) = receiver_hanging();

    let mut up = Vec::new();
    let mut down = Vec::new();
    for round in 0..2 {
        up.push(watch_with_sink(dir.path(), &format!("up{round}"), &up_url));
        down.push(watch_with_sink(
            dir.path(),
            &format!("down{round}"),
            &down_url,
        ));
    }
    for r in up.iter().chain(&down) {
        // start + several updates: the sink had real work during the run.
        assert!(
            r.stdout_events >= 3,
            "too few event messages: {}",
            r.stdout_events
        );
        assert_eq!(r.frames, up[0].frames, "every run scores the same frames");
    }
    assert!(
        delivered.load(Ordering::SeqCst) >= 3,
        "the live receiver got events"
    );
    assert!(
        accepted.load(Ordering::SeqCst) >= 1,
        "the hanging receiver was tried"
    );

    let best = |v: &[RunResult]| v.iter().map(|r| r.fps).fold(0.0, f64::max);
    let (fps_up, fps_down) = (best(&up), best(&down));
    eprintln!(
        "processed fps: sink up {:?} (best {fps_up:.2}), sink hanging {:?} (best {fps_down:.2}), ratio {:.3}",
        up.iter().map(|r| r.fps).collect::<Vec<_>>(),
        down.iter().map(|r| r.fps).collect::<Vec<_>>(),
        fps_down / fps_up
    );
    // A sink that blocked the video would stall it for every delivery's 2 s timeout,
    // with an update due every 0.3 s. Retrying a dead receiver does cost some CPU on a
    // 2-core machine: measured ratios 1.14 (an earlier session), 0.90 and 0.86 (later
    // runs of the same code path), so the bound leaves room for that.
    assert!(
        fps_down >= 0.75 * fps_up,
        "a hanging receiver slowed the video: {fps_down:.2} vs {fps_up:.2} frames/s"
    );
}
