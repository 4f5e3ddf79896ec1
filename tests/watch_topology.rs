//! The watch topology with real components: a worker that panics ends the run with an error
//! naming the camera (instead of hanging it); `/healthz` says `reconnecting` while a real
//! gst-rtsp-server is down and `running` again once it is back; a calibration run scores like
//! `watch` without building a detector at all.
//!
//! CPU budget: clips are sampled (`--every-nth`); about 40 s of CPU on 2 cores in all.

#[path = "common/rtsp.rs"]
mod rtsp;

#[path = "common/port.rs"]
mod port;

use advguard::detector::{DetectorConfig, DetectorKind};
use advguard::engine::compile::{CompileOptions, Mode, Seed};
use advguard::engine::{BackendKind, GuardOptions};
use advguard::response::ResponseConfig;
use advguard::source::SourceSpec;
use advguard::watch::{CameraPlan, WatchPlan};
use port::free_port;
use serde_json::Value;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

fn data() -> PathBuf {
    advguard::data_dir()
}

fn clip(name: &str) -> PathBuf {
    data().join("videos").join(name)
}

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_advguard"));
    c.env("ADVGUARD_MODELS", data().join("models"))
        .env("RUST_LOG", "warn")
        .env("NO_COLOR", "1");
    c
}

fn lines(p: &Path) -> Vec<Value> {
    let Ok(f) = std::fs::File::open(p) else {
        return vec![];
    };
    BufReader::new(f)
        .lines()
        .map_while(Result::ok)
        .filter_map(|l| serde_json::from_str(&l).ok())
        .collect()
}

/// Waits for the child to exit within `secs`; kills it and panics if it hangs.
fn wait_exit(mut child: Child, secs: u64) -> (std::process::ExitStatus, String, String) {
    let t = Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            let (mut out, mut err) = (String::new(), String::new());
            if let Some(mut o) = child.stdout.take() {
                let _ = o.read_to_string(&mut out);
            }
            if let Some(mut e) = child.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            return (st, out, err);
        }
        if t.elapsed() > Duration::from_secs(secs) {
            let _ = child.kill();
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            panic!("watch hung: still running {secs} s after it should have ended\n{err}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn events(stdout: &str) -> Vec<Value> {
    stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v.get("event_id").is_some())
        .collect()
}

/// Camera `gate` (a real clip) panics on its 4th frame; camera `pattern` (a live test pattern,
/// which never ends by itself) runs on the other worker. The run must end, non-zero, with one
/// error line naming `gate` and the frame, and both cameras' open events must get their end.
#[test]
fn a_worker_panic_ends_the_run_with_an_error_naming_the_camera() {
    let child = bin()
        .env(advguard::watch::TEST_PANIC_ENV, "gate:4")
        .arg("watch")
        .arg(format!("gate={}", clip("car-detection.mp4").display()))
        .arg("pattern=test:ball")
        // Threshold 0: every frame is over it, so both cameras have an open event.
        .args(["--detector", "concentration", "--threshold", "0"])
        .args([
            "--every-nth",
            "4",
            "--workers",
            "2",
            "--metrics-addr",
            "off",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Before the fix the live camera kept the run alive forever.
    let (st, out, err) = wait_exit(child, 120);
    assert!(!st.success(), "a worker panic must fail the run: {err}");
    let last = err
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    assert!(
        last.starts_with("error: camera gate: engine worker ")
            && last.contains("panicked while scoring frame")
            && last.contains("test hook"),
        "last line: {last}\n{err}"
    );
    let evs = events(&out);
    for camera in ["gate", "pattern"] {
        let of = |p: &str| {
            evs.iter()
                .filter(|e| e["camera"] == camera && e["phase"] == p)
                .count()
        };
        assert_eq!(
            (of("start"), of("end")),
            (1, 1),
            "{camera}: its open event is ended: {out}\n{err}"
        );
    }
}

fn get(url: &str) -> Option<(u16, String)> {
    match ureq::get(url).timeout(Duration::from_secs(5)).call() {
        Ok(r) => Some((r.status(), r.into_string().ok()?)),
        Err(ureq::Error::Status(code, r)) => Some((code, r.into_string().ok()?)),
        Err(_) => None,
    }
}

/// Polls `/healthz` until camera `live` is in `state`, returning the status code and body.
fn wait_health(base: &str, state: &str, secs: u64, seen: &mut Vec<String>) -> (u16, Value) {
    let t = Instant::now();
    loop {
        if let Some((code, body)) = get(&format!("{base}/healthz"))
            && let Ok(v) = serde_json::from_str::<Value>(&body)
        {
            let s = v["cameras"]["live"].as_str().unwrap_or("").to_string();
            if seen.last() != Some(&s) {
                seen.push(s.clone());
            }
            if s == state {
                return (code, v);
            }
        }
        assert!(
            t.elapsed() < Duration::from_secs(secs),
            "camera never became {state} within {secs} s; states seen: {seen:?}"
        );
        std::thread::sleep(Duration::from_millis(150));
    }
}

fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
}

/// A real gst-rtsp-server is killed for 8 s and restarted on the same port: `/healthz` and the
/// metrics say `reconnecting` (503 `degraded`, the only camera is down) during the outage and
/// `running` (200 `ok`) after it, and the transition is logged.
#[test]
fn healthz_says_reconnecting_through_an_rtsp_outage() {
    let server = rtsp::RtspServer::start(&clip("car-detection.mp4"));
    let rtsp_port = server.port();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let child = bin()
        .arg("watch")
        .arg(format!("live={}", server.url()))
        .args(["--every-nth", "4", "--watchdog-secs", "2", "--workers", "1"])
        .args(["--metrics-addr", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut seen = Vec::new();
    let (code, h) = wait_health(&base, "running", 90, &mut seen);
    assert_eq!((code, h["status"].as_str()), (200, Some("ok")), "{h}");

    server.stop();
    let outage = Instant::now();
    let (code, h) = wait_health(&base, "reconnecting", 10, &mut seen);
    let noticed = outage.elapsed();
    assert_eq!((code, h["status"].as_str()), (503, Some("degraded")), "{h}");
    let (_, m) = get(&format!("{base}/metrics")).expect("metrics");
    let state = |s: &str| {
        metric(
            &m,
            &format!("advguard_camera_state{{camera=\"live\",state=\"{s}\"}}"),
        )
    };
    assert_eq!(state("reconnecting"), Some(1.0), "{m}");
    assert_eq!(state("running"), Some(0.0), "{m}");
    assert_eq!(
        metric(&m, "advguard_camera_up{camera=\"live\"}"),
        Some(0.0),
        "{m}"
    );
    // Still reconnecting for the rest of the 8-second outage.
    while outage.elapsed() < Duration::from_secs(8) {
        let (_, h) = wait_health(&base, "reconnecting", 5, &mut seen);
        assert_eq!(h["cameras"]["live"], "reconnecting");
        std::thread::sleep(Duration::from_millis(500));
    }
    let server = rtsp::RtspServer::start_on(&clip("car-detection.mp4"), rtsp_port);
    let (code, h) = wait_health(&base, "running", 60, &mut seen);
    assert_eq!((code, h["status"].as_str()), (200, Some("ok")), "{h}");
    let (_, m) = get(&format!("{base}/metrics")).expect("metrics");
    assert_eq!(
        metric(&m, "advguard_camera_up{camera=\"live\"}"),
        Some(1.0),
        "{m}"
    );
    assert!(
        metric(&m, "advguard_source_reconnects_total{camera=\"live\"}").unwrap_or(0.0) >= 1.0,
        "{m}"
    );

    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let (st, _, err) = wait_exit(child, 30);
    server.stop();
    assert!(st.success(), "{err}");
    assert!(
        err.lines()
            .any(|l| l.contains("camera reconnecting") && l.contains("live")),
        "the transition is logged: {err}"
    );
    eprintln!(
        "outage noticed after {:.2} s; states seen: {seen:?}",
        noticed.as_secs_f64()
    );
}

fn plan(collect: bool, frames_out: &Path) -> WatchPlan {
    let video = clip("car-detection.mp4");
    let mut spec = SourceSpec::new("c", video.to_string_lossy());
    spec.size = 224;
    spec.every_nth = 6;
    // Threshold 0 on every frame: any detector in the path would open an event at once.
    let mut detector = DetectorConfig::default_for(DetectorKind::Concentration);
    detector.rule.threshold = 0.0;
    detector.rule.end_threshold = 0.0;
    detector.rule.k = 1;
    detector.rule.n = 1;
    WatchPlan {
        cameras: vec![CameraPlan {
            name: "c".into(),
            spec,
            model: "squeezenet1.1".into(),
            detector,
            overlay: None,
            fused: None,
            inject: None,
            guard_every: advguard::detector::cascade::GuardEvery::Every(1),
        }],
        guard: GuardOptions {
            model_path: Some(data().join("models/squeezenet1.1.onnx")),
            backend: BackendKind::Tract,
            compile: Some(CompileOptions {
                mode: Mode::Guided,
                seed: Seed::LastConv,
                input_shape: None,
                ..Default::default()
            }),
        },
        default_model: "squeezenet1.1".into(),
        response: ResponseConfig::default(),
        workers: 1,
        frames_out: Some(frames_out.to_path_buf()),
        events_stdout: false,
        alerts: None,
        metrics_addr: None,
        page_token: None,
        max_frames: None,
        collect,
    }
}

/// A calibration run (`collect`) builds no detector: with a threshold of 0 in the plan it still
/// raises no event (the same plan as a watch run raises one), keeps every frame, and scores
/// each frame exactly as the watch run does (the same four scores, bit for bit).
#[test]
fn calibration_collects_every_frame_without_a_detector() {
    let dir = tempfile::tempdir().unwrap();
    let (wf, cf) = (dir.path().join("watch.jsonl"), dir.path().join("cal.jsonl"));
    let stop = Arc::new(AtomicBool::new(false));
    let watched = advguard::watch::run(plan(false, &wf), stop.clone()).unwrap();
    let calibrated = advguard::watch::run(plan(true, &cf), stop).unwrap();
    let (w, c) = (&watched.cameras["c"], &calibrated.cameras["c"]);
    assert!(w.error.is_none() && c.error.is_none(), "{w:?} {c:?}");
    // 377 frames, every 6th: 63, all of them (file sources do not drop).
    assert_eq!((w.processed, c.processed), (63, 63));
    assert!(w.events >= 1, "threshold 0 opens an event in watch");
    assert!(w.frames.is_empty(), "watch keeps no frames");
    assert_eq!(c.events, 0, "calibration raises no event");
    assert_eq!(c.frames.len(), 63, "calibration keeps every frame");
    let (wr, cr) = (lines(&wf), lines(&cf));
    assert_eq!((wr.len(), cr.len()), (63, 63));
    for (i, ((a, b), kept)) in wr.iter().zip(&cr).zip(&c.frames).enumerate() {
        assert_eq!(a["pts_ms"], b["pts_ms"]);
        assert_eq!(b["in_event"], false, "frame {i}");
        assert_eq!(b["over_threshold"], false, "frame {i}");
        for k in ["entropy", "concentration", "kl", "onset"] {
            assert_eq!(a[k], b[k], "{k} of frame {i}");
        }
        // JSON text round trip: equal to the last bit or two.
        let close = |v: &Value, x: f64| (v.as_f64().unwrap() - x).abs() <= 1e-12 * x.abs().max(1.0);
        assert!(close(&b["entropy"], kept.entropy), "frame {i}");
        assert!(close(&b["concentration"], kept.concentration), "frame {i}");
    }
    // The kept distributions give the recorded KL, by the library's own formula.
    for (i, (pair, rec)) in c.frames.windows(2).zip(&cr[1..]).enumerate() {
        let kl = advguard::detector::score::kl_divergence(&pair[1].probs, &pair[0].probs);
        let rec = rec["kl"].as_f64().unwrap();
        assert!(
            (kl - rec).abs() <= 1e-12 * kl.max(1.0),
            "frame {}: {kl} vs {rec}",
            i + 1
        );
    }
}
