//! The CI version of the soak (docs/RELIABILITY.md has the hour): `advguard soak` for two
//! minutes, two live RTSP cameras replaying real clips, the server killed every 30 s.

use serde_json::Value;
use std::process::Command;

#[test]
fn two_minute_soak_survives_server_kills_with_bounded_memory_and_age() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_advguard"))
        .env("ADVGUARD_MODELS", advguard::data_dir().join("models"))
        .env("NO_COLOR", "1")
        .env("RUST_LOG", "warn")
        .args([
            "soak",
            "--duration",
            "120s",
            "--restart-every",
            "30s",
            "--outage",
            "3s",
        ])
        .args(["--sample-every", "10s", "--warmup", "40s", "-o"])
        .arg(dir.path())
        .output()
        .expect("run advguard soak");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "soak failed:\n{stderr}");
    let r: Value = serde_json::from_slice(
        &std::fs::read(dir.path().join("summary.json")).expect("summary.json"),
    )
    .expect("summary JSON");
    eprintln!("{r:#}");
    assert_eq!(r["survived"], true, "the watch process died");
    assert!(
        r["kills"].as_u64().unwrap() >= 3,
        "too few server kills: {r}"
    );
    assert_eq!(
        r["reconnects_ok"], true,
        "a reconnect took longer than its backoff: {r}"
    );
    let recon = std::fs::read_to_string(dir.path().join("reconnects.csv")).unwrap();
    assert!(
        recon
            .lines()
            .skip(1)
            .all(|l| l.split(',').nth(1) == Some("true")),
        "a kill went unnoticed by the watch:\n{recon}"
    );
    // The hour's goal is ±5 %; two minutes hold too few samples after warm-up for that
    // band to be more than noise, so here it is ±10 % (the hour is in docs/RELIABILITY.md).
    let band = r["rss_band_pct"].as_array().unwrap();
    let (lo, hi) = (band[0].as_f64().unwrap(), band[1].as_f64().unwrap());
    assert!(
        lo >= -10.0 && hi <= 10.0,
        "RSS band {lo:+.1} % .. {hi:+.1} %"
    );
    // Decision age stays bounded (no queue grows): every interval's p99 under 4.1 s.
    let csv = std::fs::read_to_string(dir.path().join("soak.csv")).unwrap();
    let rows: Vec<Vec<f64>> = csv
        .lines()
        .skip(1)
        .map(|l| {
            l.split(',')
                .map(|v| v.parse().unwrap_or(f64::NAN))
                .collect()
        })
        .collect();
    assert!(rows.len() >= 10, "too few samples:\n{csv}");
    for row in &rows {
        assert!(
            row[3].is_nan() || row[3] <= 4096.0,
            "decision age p99 {} ms:\n{csv}",
            row[3]
        );
    }
    let processed: f64 = rows.iter().map(|r| r[5]).sum();
    assert!(
        processed >= 100.0,
        "only {processed} frames scored in two minutes"
    );
    assert!(dir.path().join("soak.png").is_file(), "no plot");
    // A reconnect is a gap, not a jump: the clean clips give no onset event. Before the
    // cameras restarted their references on a resumed stream, every kill opened one per camera.
    let events = std::fs::read_to_string(dir.path().join("events.jsonl")).unwrap();
    let onsets: Vec<&str> = events
        .lines()
        .filter(|l| {
            let e: Value = serde_json::from_str(l).unwrap();
            e["phase"] == "start" && e["detector"] == "onset"
        })
        .collect();
    assert!(
        onsets.is_empty(),
        "onset events on clean footage:\n{onsets:#?}"
    );
}
