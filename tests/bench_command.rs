//! `advguard bench` end to end, short: the interleaved pass table, the batching probe and the
//! live-stream rows with and without the cascade (the numbers themselves are for docs/, not asserted: this
//! machine is shared). A real 30-fps stream is the real clip re-timed by GStreamer.

use std::process::Command;

fn bench(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_advguard"))
        .env("ADVGUARD_MODELS", advguard::data_dir().join("models"))
        .env("RUST_LOG", "warn")
        .env("NO_COLOR", "1")
        .arg("bench")
        .args(args)
        .output()
        .unwrap()
}

/// Cells of the table row that starts with `first` and whose second cell is `second`.
fn row(out: &str, first: &str, second: &str) -> Option<Vec<String>> {
    out.lines()
        .map(|l| {
            l.trim_matches('|')
                .split('|')
                .map(|c| c.trim().to_string())
                .collect::<Vec<_>>()
        })
        .find(|c| c.len() > 2 && c[0] == first && c[1].starts_with(second))
}

#[test]
fn bench_reports_passes_and_streams_with_and_without_the_cascade() {
    let o = bench(&[
        "--pairs",
        "4",
        "--streams",
        "1",
        "--seconds",
        "4",
        "--backend",
        "tract",
    ]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{}\n{out}",
        String::from_utf8_lossy(&o.stderr)
    );
    for pass in [
        "forward (class scores)",
        "guard (scores + response + statistics)",
    ] {
        let r = row(&out, pass, "").unwrap_or_else(|| panic!("no {pass} row in\n{out}"));
        let ms: f64 = r[1].parse().unwrap();
        assert!(ms > 0.0 && ms.is_finite(), "{r:?}");
    }
    // The batching probe: both graphs batch on tract and pass the check against single runs
    // (a graph that fails it says "does not batch"); the ratio itself is for docs/.
    for pass in ["forward × 2", "guard × 2"] {
        let r = row(&out, pass, "").unwrap_or_else(|| panic!("no {pass} row in\n{out}"));
        let ratio: f64 = r[3]
            .trim_end_matches('×')
            .parse()
            .unwrap_or_else(|_| panic!("{pass}: {r:?}"));
        assert!(ratio > 0.0 && ratio.is_finite(), "{r:?}");
    }
    for every in ["auto", "1"] {
        let r = row(&out, "1", every).unwrap_or_else(|| panic!("no 1-stream {every} row\n{out}"));
        // "scored of received": frames were scored, and a 30-fps stream delivered frames.
        let cells: Vec<f64> = r[3].split(' ').filter_map(|w| w.parse().ok()).collect();
        assert!(
            cells.len() == 2 && cells[0] > 0.0 && cells[1] >= cells[0],
            "{r:?}"
        );
        // Guarding every frame: all scored frames are guard frames.
        if every == "1" {
            assert_eq!(r[4], "100 %", "{r:?}");
        }
    }
}

#[test]
fn bench_refuses_a_missing_video_and_a_bad_rate() {
    let o = bench(&["--video", "/nonexistent.mp4"]);
    assert!(!o.status.success());
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("bench video /nonexistent.mp4 not found"), "{e}");
    let o = bench(&["--fps", "0"]);
    assert!(!o.status.success());
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("--fps must be"), "{e}");
}
