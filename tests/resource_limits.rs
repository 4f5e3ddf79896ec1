//! Resource limits: more cameras than two cores can score, servers that send garbage,
//! oversized frames and a resolution change mid-stream. Each must degrade with counted drops
//! and errors, with memory that stays bounded, and never take the other cameras down.
//!
//! Memory is read from `/proc/PID/status` (VmRSS) of the real `advguard watch` process while
//! it runs; counters from its real `/metrics`.

#[path = "common/port.rs"]
mod port;
#[path = "common/proc.rs"]
mod proc;
#[path = "common/rtsp.rs"]
mod rtsp;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The cases run one at a time: each measures what one `watch` does with the machine, and
/// three at once on 2 cores would starve each other's good cameras.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

fn data() -> PathBuf {
    advguard::data_dir()
}

fn watch(cameras: &[String], metrics_port: u16, extra: &[&str], log: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_advguard"))
        .env("ADVGUARD_MODELS", data().join("models"))
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .arg("watch")
        .args(cameras)
        .args(["--metrics-addr", &format!("127.0.0.1:{metrics_port}")])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .expect("start advguard watch")
}

fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

fn scrape(port: u16) -> Option<String> {
    ureq::get(&format!("http://127.0.0.1:{port}/metrics"))
        .timeout(Duration::from_secs(3))
        .call()
        .ok()?
        .into_string()
        .ok()
}

/// The value of one series (name with labels), 0 when absent.
fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

fn cam(name: &str, camera: &str) -> String {
    format!("advguard_{name}{{camera=\"{camera}\"}}")
}

/// SIGTERM; the process must exit cleanly, with no thread panicked.
fn terminate(mut child: Child, log: &Path) {
    let st = proc::terminate(&mut child);
    let text = std::fs::read_to_string(log).unwrap_or_default();
    assert!(st.success(), "watch exited with {st}:\n{text}");
    assert!(!text.contains("panicked"), "a thread panicked:\n{text}");
}

/// RSS samples every 2 s for `secs`; panics if the process dies.
fn sample_rss(child: &mut Child, secs: u64, log: &Path) -> Vec<f64> {
    let mut v = Vec::new();
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(secs) {
        if let Some(st) = child.try_wait().unwrap() {
            panic!(
                "watch died ({st}):\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        v.push(rss_mib(child.id()));
        std::thread::sleep(Duration::from_secs(2));
    }
    v
}

/// RSS must level off: the highest sample of the last third at most 15 % above the highest
/// of the middle third (a leak of one frame per frame would double it in seconds).
fn assert_bounded(rss: &[f64], what: &str) {
    let n = rss.len();
    assert!(n >= 9, "{what}: too few RSS samples: {rss:?}");
    let max = |s: &[f64]| s.iter().copied().fold(0.0, f64::max);
    let (mid, last) = (max(&rss[n / 3..2 * n / 3]), max(&rss[2 * n / 3..]));
    eprintln!("{what}: RSS MiB {rss:.0?}: middle third max {mid:.0}, last third max {last:.0}");
    assert!(
        last <= 1.15 * mid,
        "{what}: memory keeps growing: {mid:.0} → {last:.0} MiB ({rss:.0?})"
    );
}

/// 16 live test sources (25 fps each) on this 2-core machine: most frames cannot be scored.
/// Every camera still gets frames scored, every frame not scored is counted as dropped, and
/// memory levels off.
#[test]
fn sixteen_live_sources_on_two_cores_drop_with_counts_and_bounded_memory() {
    let _one_at_a_time = serial();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("watch.log");
    let patterns = [
        "smpte",
        "ball",
        "snow",
        "checkers-8",
        "circular",
        "zone-plate",
        "gamut",
        "pinwheel",
        "spokes",
        "gradient",
        "colors",
        "smpte75",
        "blink",
        "bar",
        "chroma-zone-plate",
        "smpte100",
    ];
    let names: Vec<String> = (0..16).map(|i| format!("c{i:02}")).collect();
    let cameras: Vec<String> = names
        .iter()
        .zip(patterns)
        .map(|(n, p)| format!("{n}=test:{p}"))
        .collect();
    let port = port::free_port();
    let mut child = watch(&cameras, port, &[], &log);
    let rss = sample_rss(&mut child, 40, &log);
    let m = scrape(port).expect("/metrics answers under load");
    terminate(child, &log);
    assert_bounded(&rss, "16 sources");
    let (mut rec, mut proc_, mut drop_) = (0.0, 0.0, 0.0);
    for n in &names {
        let (r, p, d) = (
            metric(&m, &cam("frames_received_total", n)),
            metric(&m, &cam("frames_processed_total", n)),
            metric(&m, &cam("frames_dropped_total", n)),
        );
        assert!(
            p >= 1.0,
            "camera {n} never got a frame scored: {r} received, {d} dropped"
        );
        assert!(
            r - p - d >= 0.0,
            "camera {n}: {r} received but {p} scored + {d} dropped: counted twice"
        );
        rec += r;
        proc_ += p;
        drop_ += d;
    }
    eprintln!("16 sources: received {rec}, scored {proc_}, dropped {drop_}");
    // Frames in flight are neither scored nor dropped yet: per camera its tail queue and
    // appsink (1 each), the shared channel (2 per camera), one per worker (2 at most here).
    let in_flight = 16.0 * (2.0 + 2.0) + 2.0;
    assert!(
        rec - proc_ - drop_ <= in_flight,
        "{} frames received but neither scored nor dropped (at most {in_flight} in flight): \
         frames lost uncounted",
        rec - proc_ - drop_
    );
    assert!(
        drop_ > 0.5 * rec,
        "two cores cannot score 400 frames/s; drops must show"
    );
}

/// Serves `bytes` to every TCP connection, then closes it: a "camera" that answers garbage.
fn garbage_server(bytes: Vec<u8>) -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            let mut buf = [0u8; 4096];
            let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
            let _ = s.read(&mut buf);
            let _ = s.write_all(&bytes);
        }
    });
    port
}

fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
    // xorshift: no test depends on the exact bytes, only on their being garbage.
    let mut x = seed.max(1);
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Encodes a test pattern with x264 into an H.264 byte-stream file.
fn h264(path: &Path, w: u32, h: u32, frames: u32) {
    let st = Command::new("gst-launch-1.0")
        .args([
            "-q",
            "videotestsrc",
            &format!("num-buffers={frames}"),
            "pattern=ball",
            "!",
        ])
        .arg(format!("video/x-raw,width={w},height={h},framerate=10/1"))
        .args([
            "!",
            "x264enc",
            "speed-preset=ultrafast",
            "key-int-max=10",
            "!",
            "video/x-h264,stream-format=byte-stream,profile=constrained-baseline",
            "!",
            "filesink",
        ])
        .arg(format!("location={}", path.display()))
        .status()
        .expect("gst-launch-1.0");
    assert!(st.success(), "encoding the {w}x{h} test stream failed");
}

/// Servers that send garbage: a TCP port that answers random bytes instead of RTSP, and a
/// real RTSP server whose H.264 payload is random bytes. Both cameras keep failing and
/// reconnecting, counted, while a good camera beside them goes on scoring.
#[test]
fn garbage_servers_are_counted_errors_and_the_good_camera_goes_on() {
    let _one_at_a_time = serial();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("watch.log");
    let not_rtsp = garbage_server(random_bytes(64 * 1024, 7));
    let junk = dir.path().join("junk.h264");
    // Random bytes with a start code now and then, so the payloader sends them as NAL units.
    let mut b = Vec::new();
    for i in 0..400u64 {
        b.extend_from_slice(&[0, 0, 0, 1]);
        b.extend(random_bytes(2000, i + 1));
    }
    std::fs::write(&junk, b).unwrap();
    let server = rtsp::RtspServer::start(&data().join("videos/car-detection.mp4"));
    server.mount_launch(
        "/junk",
        &format!(
            "( filesrc location=\"{}\" blocksize=2004 ! video/x-h264,stream-format=byte-stream,alignment=nal \
             ! identity sleep-time=20000 ! rtph264pay name=pay0 pt=96 )",
            junk.display()
        ),
    );
    let cameras = vec![
        format!("notrtsp=rtsp://127.0.0.1:{not_rtsp}/cam"),
        format!("junk=rtsp://127.0.0.1:{}/junk", server.port()),
        "good=test:ball".to_string(),
    ];
    let port = port::free_port();
    let mut child = watch(&cameras, port, &[], &log);
    let rss = sample_rss(&mut child, 36, &log);
    let m = scrape(port).expect("/metrics");
    terminate(child, &log);
    assert_bounded(&rss, "garbage servers");
    for bad in ["notrtsp", "junk"] {
        let errors = metric(&m, &cam("source_errors_total", bad));
        let reconnects = metric(&m, &cam("source_reconnects_total", bad));
        eprintln!("{bad}: errors {errors}, reconnects {reconnects}");
        // Garbage instead of RTSP is a pipeline error; a stream whose frames never decode
        // is a watchdog restart. Both are reconnects.
        assert!(
            reconnects >= 2.0 && (bad != "notrtsp" || errors >= 2.0),
            "{bad}: the failures were not counted (errors {errors}, reconnects {reconnects})"
        );
        assert_eq!(metric(&m, &cam("camera_up", bad)), 0.0, "{bad} is not up");
    }
    let good = metric(&m, &cam("frames_processed_total", "good"));
    assert!(
        good >= 20.0,
        "the good camera stalled beside the bad ones: {good} frames"
    );
}

/// One RTSP stream that starts at 320×240, jumps to 3840×2160 (oversized for the model: 70×
/// its input) and drops back to 640×480. The camera scores frames of every part, decoded
/// memory is freed again, and nothing fails.
#[test]
fn resolution_changes_mid_stream_and_oversized_frames_keep_scoring() {
    let _one_at_a_time = serial();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("watch.log");
    let parts = [(320, 240, 40), (3840, 2160, 30), (640, 480, 40)];
    let mut all = Vec::new();
    for (i, (w, h, n)) in parts.iter().enumerate() {
        let p = dir.path().join(format!("p{i}.h264"));
        h264(&p, *w, *h, *n);
        all.extend(std::fs::read(&p).unwrap());
    }
    let stream = dir.path().join("changes.h264");
    std::fs::write(&stream, all).unwrap();
    let server = rtsp::RtspServer::start(&data().join("videos/car-detection.mp4"));
    server.mount_launch(
        "/changes",
        &format!(
            "( filesrc location=\"{}\" ! h264parse ! video/x-h264,framerate=10/1 ! identity sync=true \
             ! rtph264pay name=pay0 pt=96 config-interval=-1 )",
            stream.display()
        ),
    );
    let frames = dir.path().join("frames.jsonl");
    let port = port::free_port();
    let mut child = watch(
        &[format!("cam=rtsp://127.0.0.1:{}/changes", server.port())],
        port,
        &["--frames-out", frames.to_str().unwrap()],
        &log,
    );
    let rss = sample_rss(&mut child, 24, &log);
    let m = scrape(port).expect("/metrics");
    terminate(child, &log);
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let pts: Vec<f64> = std::fs::read_to_string(&frames)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["pts_ms"].as_f64())
        .collect();
    eprintln!(
        "resolution changes: {} frames scored, pts {:?}..{:?}, RSS {rss:.0?}, errors {}",
        pts.len(),
        pts.first(),
        pts.last(),
        metric(&m, &cam("camera_errors_total", "cam"))
    );
    // 4 s at 320×240, 3 s at 4K, then 4 s at 640×480: frames from each part were scored.
    for (from, to, part) in [
        (0.0, 4000.0, "320x240"),
        (4000.0, 7000.0, "3840x2160"),
        (7000.0, 11000.0, "640x480"),
    ] {
        assert!(
            pts.iter().any(|p| *p >= from && *p < to),
            "no frame of the {part} part was scored (pts {pts:?}):\n{text}"
        );
    }
    // The 4K part's decoded frames (~12 MiB each in I420) must not pile up: 30 of them
    // queued would already pass 360 MiB above the ~150 MiB this run needs otherwise.
    let peak = rss.iter().copied().fold(0.0, f64::max);
    assert!(
        peak < 512.0,
        "RSS reached {peak:.0} MiB: decoded 4K frames pile up"
    );
}
