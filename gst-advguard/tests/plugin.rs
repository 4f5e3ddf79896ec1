//! The built `libgstadvguard.so` driven through the real GStreamer tools (`gst-inspect-1.0`,
//! `gst-launch-1.0`) with `GST_PLUGIN_PATH` pointing at it, and loaded once in-process to read
//! the per-buffer scores meta. Needs `ADVGUARD_DATA` (the shared clips and models).

use gst::prelude::*;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::Instant;

/// A folder holding only the plugin (GStreamer would otherwise scan every .so of target/),
/// and a registry of our own so the user's cache is neither used nor touched.
struct PluginEnv {
    plugins: PathBuf,
    so: PathBuf,
    registry: PathBuf,
    _dir: tempfile::TempDir,
}

fn plugin_env() -> &'static PluginEnv {
    static ENV: OnceLock<PluginEnv> = OnceLock::new();
    ENV.get_or_init(|| {
        // The test binary is target/<profile>/deps/plugin-*; cargo builds the cdylib beside it
        // (deps/) and copies it one level up.
        let exe = std::env::current_exe().expect("test executable path");
        let deps = exe.parent().expect("deps folder");
        let so = [
            deps.join("libgstadvguard.so"),
            deps.join("../libgstadvguard.so"),
        ]
        .into_iter()
        .filter(|p| p.exists())
        .max_by_key(|p| p.metadata().and_then(|m| m.modified()).ok())
        .expect("libgstadvguard.so next to the test binary (cargo test -p gst-advguard)");
        let dir = tempfile::tempdir().expect("temp dir");
        let plugins = dir.path().join("plugins");
        std::fs::create_dir(&plugins).expect("plugin dir");
        std::os::unix::fs::symlink(
            so.canonicalize().expect("plugin path"),
            plugins.join("libgstadvguard.so"),
        )
        .expect("plugin link");
        let env = PluginEnv {
            plugins,
            so,
            registry: dir.path().join("registry.bin"),
            _dir: dir,
        };
        // Build the registry once, before tests run tools in parallel.
        let o = tool(&env, "gst-inspect-1.0", &["advguard"]);
        assert!(o.status.success(), "gst-inspect-1.0 advguard: {}", text(&o));
        env
    })
}

fn data() -> PathBuf {
    advguard::data_dir()
}

fn clip() -> PathBuf {
    let p = data().join("videos/car-detection.mp4");
    assert!(p.exists(), "{} missing: set ADVGUARD_DATA", p.display());
    p
}

fn models() -> PathBuf {
    std::env::var_os("ADVGUARD_MODELS").map_or_else(|| data().join("models"), PathBuf::from)
}

fn tool(env: &PluginEnv, name: &str, args: &[&str]) -> Output {
    Command::new(name)
        .args(args)
        .env("GST_PLUGIN_PATH", &env.plugins)
        .env("GST_REGISTRY", &env.registry)
        .env("ADVGUARD_MODELS", models())
        .env_remove("GST_DEBUG")
        .output()
        .unwrap_or_else(|e| panic!("{name}: {e} (install gstreamer1.0-tools)"))
}

/// Runs `gst-launch-1.0 [-m] PIPELINE` (the pipeline split at whitespace, as a shell would).
fn launch(messages: bool, pipeline: &str) -> Output {
    let mut args: Vec<&str> = if messages { vec!["-m"] } else { vec![] };
    args.extend(pipeline.split_whitespace());
    tool(plugin_env(), "gst-launch-1.0", &args)
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The value of `name=(type)value` in a serialized structure line.
fn field(line: &str, name: &str) -> Option<String> {
    let at = line.find(&format!(" {name}=("))?;
    let rest = &line[at + name.len() + 3..];
    let rest = &rest[rest.find(')')? + 1..];
    let end = rest.find([',', ';']).unwrap_or(rest.len());
    Some(rest[..end].trim_matches('"').to_string())
}

fn num(line: &str, name: &str) -> u64 {
    field(line, name)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no number {name} in {line}"))
}

/// Per-buffer checksums printed by `checksumsink`.
fn checksums(o: &Output) -> Vec<String> {
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| {
            let (t, sum) = l.split_once(' ')?;
            (t.contains(':') && sum.len() == 40).then(|| sum.to_string())
        })
        .collect()
}

#[test]
fn element_registers_with_its_properties() {
    let env = plugin_env();
    let o = tool(env, "gst-inspect-1.0", &["advguard"]);
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(out.contains("Filter/Analyzer/Video"), "{out}");
    assert!(out.contains("libgstadvguard.so"), "{out}");
    for p in [
        "model-name",
        "model",
        "backend",
        "profile",
        "detector",
        "every-nth",
        "overlay",
        "config",
        "inject",
        "camera",
        "leaky",
        "frames-dropped",
    ] {
        assert!(
            out.lines()
                .any(|l| l.trim_start().starts_with(&format!("{p} ")) && l.contains(':')),
            "property {p} not listed:\n{out}"
        );
    }
    println!("plugin: {}", env.so.display());
}

#[test]
fn a_clip_passes_unchanged_and_the_overlay_draws_on_it() {
    let src = format!(
        "filesrc location={} ! decodebin ! videoconvert ! video/x-raw,format=BGRx",
        clip().display()
    );
    let plain = launch(false, &format!("{src} ! checksumsink"));
    assert!(plain.status.success(), "{}", text(&plain));
    let want = checksums(&plain);
    assert_eq!(want.len(), 377, "car-detection.mp4 has 377 frames");

    let t = Instant::now();
    let guarded = launch(
        true,
        &format!("{src} ! advguard every-nth=8 leaky=false ! checksumsink"),
    );
    let out = text(&guarded);
    assert!(guarded.status.success(), "{out}");
    assert_eq!(checksums(&guarded), want, "advguard changed the video");
    let stats = out
        .lines()
        .find(|l| l.contains("advguard-stats"))
        .unwrap_or_else(|| panic!("no advguard-stats message:\n{out}"));
    // 377 frames, every 8th offered: 48 scored, 329 skipped, none dropped (leaky=false).
    assert_eq!(num(stats, "received"), 377, "{stats}");
    assert_eq!(num(stats, "scored"), 48, "{stats}");
    assert_eq!(num(stats, "skipped"), 329, "{stats}");
    assert_eq!(num(stats, "dropped"), 0, "{stats}");
    println!("passthrough, 48 scored: {:.1} s", t.elapsed().as_secs_f64());

    let drawn = launch(
        false,
        &format!("{src} ! advguard every-nth=8 leaky=false overlay=true ! checksumsink"),
    );
    assert!(drawn.status.success(), "{}", text(&drawn));
    let got = checksums(&drawn);
    assert_eq!(got.len(), 377);
    // Frames pass unchanged until the first score exists: with one slot and leaky=false the
    // streaming thread runs at most three offered frames (3 × 8) ahead of the worker. From then
    // on every frame carries the overlay.
    let first = got
        .iter()
        .zip(&want)
        .position(|(a, b)| a != b)
        .expect("the overlay changed no frame");
    let after = got[first..]
        .iter()
        .zip(&want[first..])
        .filter(|(a, b)| a != b)
        .count();
    println!("overlay: frames 0..{first} before the first score, then {after} drawn");
    assert!(first <= 24, "first overlay on frame {first}");
    assert_eq!(
        after,
        377 - first,
        "a frame after the first score was not drawn"
    );
}

#[test]
fn a_busy_guard_drops_and_counts_instead_of_holding_the_stream() {
    let t = Instant::now();
    let o = launch(
        true,
        &format!(
            "filesrc location={} ! decodebin ! videoconvert ! advguard ! fakesink",
            clip().display()
        ),
    );
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    let stats = out
        .lines()
        .find(|l| l.contains("advguard-stats"))
        .unwrap_or_else(|| panic!("no advguard-stats message:\n{out}"));
    let (rx, sc, dr) = (
        num(stats, "received"),
        num(stats, "scored"),
        num(stats, "dropped"),
    );
    println!(
        "leaky run: {rx} received, {sc} scored, {dr} dropped in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    assert_eq!(rx, 377, "{stats}");
    assert_eq!(num(stats, "failed"), 0, "{stats}");
    // Decoding outruns a guard frame (tens of ms) by far: most frames cannot be scored.
    assert!(dr > 0 && sc > 0, "{stats}");
    assert_eq!(sc + dr, rx, "every frame is scored or dropped: {stats}");
}

/// One clean pass in-process, reading the `advguard-scores` meta of every buffer: stream time
/// → onset jump of each scored frame.
fn clean_onsets(every_nth: u32) -> BTreeMap<u64, f64> {
    gst::init().expect("gst init");
    let env = plugin_env();
    gst::Plugin::load_file(&env.so).expect("load libgstadvguard.so");
    // SAFETY: set before the pipeline exists; no other thread of this test reads it.
    unsafe { std::env::set_var("ADVGUARD_MODELS", models()) };
    let desc = format!(
        "filesrc location={} ! decodebin ! videoconvert ! advguard name=g camera=street every-nth={every_nth} leaky=false ! appsink name=sink sync=false",
        clip().display()
    );
    let pipeline = gst::parse::launch(&desc)
        .expect("pipeline")
        .downcast::<gst::Pipeline>()
        .expect("a pipeline");
    let sink = pipeline
        .by_name("sink")
        .and_then(|e| e.downcast::<gst_app::AppSink>().ok())
        .expect("appsink");
    pipeline.set_state(gst::State::Playing).expect("playing");
    let mut onsets = BTreeMap::new();
    let mut buffers = 0;
    while let Ok(sample) = sink.pull_sample() {
        buffers += 1;
        let buf = sample.buffer().expect("buffer");
        for m in buf.iter_meta::<gst_video::VideoRegionOfInterestMeta>() {
            if m.roi_type() != "advguard" {
                continue;
            }
            let s = m.param("advguard-scores").expect("advguard-scores param");
            let pts: u64 = s.get("pts_ms").expect("pts_ms");
            let onset: f64 = s.get("onset").expect("onset");
            let lag: u64 = s.get("lag_frames").expect("lag_frames");
            // One frame in the worker, one in the slot, and the streaming thread up to the
            // next offered frame: never more than three offered frames behind.
            assert!(lag <= 3 * every_nth as u64, "scores lag {lag} frames");
            onsets.insert(pts, onset);
        }
    }
    let g = pipeline.by_name("g").expect("advguard element");
    let scored: u64 = g.property("frames-scored");
    pipeline.set_state(gst::State::Null).expect("null");
    assert_eq!(buffers, 377);
    // The meta carries the latest scores: the last few results come after the last buffer has
    // passed, and on a loaded machine a result can be replaced by the next one before a buffer
    // reads it (185 of 189 here at load average 6). Most must show up.
    assert!(
        onsets.len() as u64 * 10 >= scored * 9,
        "{} of {scored}",
        onsets.len()
    );
    println!(
        "{} of {scored} scored frames seen in the meta",
        onsets.len()
    );
    onsets
}

#[test]
fn an_injected_stretch_posts_one_event_from_start_to_end() {
    // Calibrate through the element itself, as `advguard calibrate --fpr 0.005` would:
    // threshold = the clean jump at 0.5 % FPR, end threshold = the jump at 1 %, capped.
    let onsets = clean_onsets(2);
    let jumps: Vec<f64> = onsets.values().skip(1).copied().collect();
    use advguard::detector::calibrate::threshold_at_fpr;
    let thr = threshold_at_fpr(&jumps, 0.005).expect("clean jumps");
    let end = threshold_at_fpr(&jumps, 0.01)
        .expect("clean jumps")
        .min(thr);
    let mut sorted = jumps.clone();
    sorted.sort_by(f64::total_cmp);
    println!(
        "clean: {} scored frames, largest jumps {:?} → threshold {thr:.3}, end {end:.3}",
        onsets.len(),
        &sorted[sorted.len().saturating_sub(3)..]
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let profile = dir.path().join("street.toml");
    std::fs::write(
        &profile,
        format!(
            "version = 1\n[cameras.street]\nmodel = \"squeezenet1.1\"\ndetector = \"onset\"\nfpr = 0.005\nframes = {}\nevery_nth = 2\n\
             [cameras.street.onset]\nthreshold = {thr}\nend_threshold = {end}\nmean = 0.0\nstd = 0.0\n\
             quantiles = {{ p50 = 0.0, p90 = 0.0, p99 = 0.0, max = {thr} }}\n",
            onsets.len()
        ),
    )
    .expect("profile");

    let o = launch(
        true,
        &format!(
            "filesrc location={} ! decodebin ! videoconvert ! advguard camera=street profile={} every-nth=2 leaky=false inject=fgsm:eps=4:from=8:to=12 ! fakesink",
            clip().display(),
            profile.display()
        ),
    );
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    let events: Vec<&str> = out
        .lines()
        .filter(|l| l.contains("advguard-event"))
        .collect();
    for e in &events {
        println!(
            "{} start_pts_ms={} pts_ms={} score={}",
            field(e, "phase").unwrap_or_default(),
            num(e, "start_pts_ms"),
            num(e, "pts_ms"),
            field(e, "score").unwrap_or_default()
        );
    }
    let phase = |p: &str| {
        events
            .iter()
            .filter(|l| field(l, "phase").as_deref() == Some(p))
            .copied()
            .collect::<Vec<_>>()
    };
    let (starts, ends) = (phase("start"), phase("end"));
    assert_eq!(
        starts.len(),
        1,
        "one start expected:\n{}",
        events.join("\n")
    );
    assert_eq!(ends.len(), 1, "one end expected:\n{}", events.join("\n"));
    // Frames are 160 ms apart (12.5 fps, every 2nd): the event opens on the first attacked
    // frame and ends on the first clean one after the stretch.
    let s = num(starts[0], "start_pts_ms");
    assert!((8000..8160).contains(&s), "event starts at {s} ms");
    let e = num(ends[0], "pts_ms");
    assert!((12000..12160).contains(&e), "event ends at {e} ms");
    assert_eq!(field(starts[0], "event_id"), field(ends[0], "event_id"));
    // The JSON line rides along (its commas are escaped in the printed structure).
    assert!(
        starts[0].contains("json=(string)") && starts[0].contains(r#"\"start_pts_ms\":8000"#),
        "{}",
        starts[0]
    );
}

#[test]
fn a_bad_property_is_one_clear_error() {
    let base = "videotestsrc num-buffers=2 ! videoconvert ! advguard";
    for (prop, want) in [
        (
            "detector=psychic",
            "detector=psychic: unknown detector \"psychic\" (onset, entropy, concentration)",
        ),
        (
            "backend=gpu",
            "backend=gpu: unknown backend \"gpu\" (auto, tract, ort, ort-cuda, tensorrt)",
        ),
        ("inject=pgd:from=1:to=2", "inject=pgd:from=1:to=2: "),
        (
            "profile=/nonexistent/cam.toml",
            "profile=/nonexistent/cam.toml: ",
        ),
        (
            "config=/nonexistent/cameras.toml",
            "config=/nonexistent/cameras.toml: ",
        ),
        ("overlay=maybe", "could not set property \"overlay\""),
    ] {
        let o = launch(false, &format!("{base} {prop} ! fakesink"));
        let out = text(&o);
        assert!(!o.status.success(), "{prop}: the pipeline ran:\n{out}");
        let hits: Vec<&str> = out.lines().filter(|l| l.contains(want)).collect();
        assert_eq!(
            hits.len(),
            1,
            "{prop}: expected one line with {want:?}:\n{out}"
        );
        assert!(!out.contains("panicked"), "{out}");
    }
}
