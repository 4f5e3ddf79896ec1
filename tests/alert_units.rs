//! Alert stage without network: config errors, noise control, spool, file and exec sinks.

use advguard::alert::AlertHub;
use advguard::alert::config::{
    AlertFile, AlertsConfig, SinkConfig, SpoolConfig, expand_env, resolve_sinks,
};
use advguard::alert::noise::{NoiseFilter, Verdict};
use advguard::alert::spool::Spool;
use advguard::detector::event::{Event, Phase};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub fn ev(event_id: &str, seq: u32, phase: Phase, camera: &str) -> Event {
    Event {
        id: format!("{event_id}-{seq}"),
        event_id: event_id.into(),
        phase,
        seq,
        camera: camera.into(),
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
        snapshot_jpeg: None,
        heatmap_png: None,
    }
}

fn parse_err(toml: &str) -> String {
    match AlertFile::parse(toml) {
        Ok(f) => match resolve_sinks(&f.sink) {
            Ok(_) => panic!("config accepted: {toml}"),
            Err(e) => e.to_string(),
        },
        Err(e) => e.to_string(),
    }
}

#[test]
fn config_parses_all_kinds_and_ignores_other_tables() {
    let f = AlertFile::parse(
        r#"
        [[camera]]
        name = "door"
        url = "rtsp://x"
        [[sink]]
        kind = "webhook"
        url = "https://example.com/hook"
        [[sink]]
        kind = "mqtt"
        [[sink]]
        kind = "exec"
        command = ["/bin/true"]
        [[sink]]
        kind = "file"
        path = "/tmp/x.jsonl"
        [[sink]]
        kind = "file"
        path = "/tmp/y.jsonl"
        [spool]
        path = "/tmp/s.redb"
        max_events = 5
        [alerts]
        cooldown_secs = 5
        update_interval_secs = 2
        "#,
    )
    .unwrap();
    let r = resolve_sinks(&f.sink).unwrap();
    let names: Vec<_> = r.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["webhook", "mqtt", "exec", "file", "file-2"]);
    assert_eq!(f.spool.max_events, 5);
    assert_eq!(f.alerts.cooldown_secs, 5.0);
    match &r[1].1 {
        SinkConfig::Mqtt(m) => assert_eq!(m.topic_prefix, "advguard"),
        _ => panic!(),
    }
}

#[test]
fn config_errors_name_the_key() {
    let e = parse_err("[[sink]]\nkind = \"smtp\"\n");
    assert!(e.contains("`kind`") && e.contains("smtp"), "{e}");

    let e = parse_err("[[sink]]\nkind = \"webhook\"\nurl = \"ftp://x/y\"\n");
    assert!(e.contains("sink[0].url") && e.contains("bad URL"), "{e}");
    let e = parse_err(
        "[[sink]]\nkind = \"file\"\npath = \"/tmp/a\"\n[[sink]]\nkind = \"webhook\"\nurl = \"http://\"\n",
    );
    assert!(e.contains("sink[1].url"), "{e}");

    let e = parse_err(
        "[[sink]]\nkind = \"webhook\"\nurl = \"http://127.0.0.1:1/\"\nsecret = \"${ADVGUARD_TEST_SURELY_UNSET_VAR}\"\n",
    );
    assert!(
        e.contains("sink[0].secret") && e.contains("ADVGUARD_TEST_SURELY_UNSET_VAR"),
        "{e}"
    );

    let e = parse_err("[[sink]]\nkind = \"webhook\"\nurll = \"http://x/\"\n");
    assert!(e.contains("urll"), "{e}");
    let e = parse_err("[[sink]]\nurl = \"http://x/\"\n");
    assert!(e.contains("`kind`"), "{e}");
    let e = toml::from_str::<SpoolConfig>("max_event = 3")
        .unwrap_err()
        .to_string();
    assert!(e.contains("max_event"), "{e}");
    let e = toml::from_str::<AlertsConfig>("cooldown = 3")
        .unwrap_err()
        .to_string();
    assert!(e.contains("cooldown"), "{e}");
}

#[test]
fn expand_env_substitutes_and_names_missing() {
    // SAFETY: single-threaded use of a variable no other test touches.
    unsafe { std::env::set_var("ADVGUARD_TEST_SECRET_X", "s3cr3t") };
    assert_eq!(
        expand_env("a${ADVGUARD_TEST_SECRET_X}b$$c$d").unwrap(),
        "as3cr3tb$c$d"
    );
    let e = expand_env("${ADVGUARD_TEST_NOPE_NOPE}")
        .unwrap_err()
        .to_string();
    assert!(e.contains("ADVGUARD_TEST_NOPE_NOPE"), "{e}");
    assert!(expand_env("${unterminated").is_err());
}

#[test]
fn noise_lasting_event_gives_one_start_throttled_updates_one_end() {
    let mut f = NoiseFilter::new(Duration::from_secs(30), Duration::from_secs(10));
    let t0 = Instant::now();
    let s = |x: u64| t0 + Duration::from_secs(x);
    let mut passed = Vec::new();
    let mut push = |v: Verdict| {
        if let Verdict::Pass(e) = v {
            passed.push((e.phase, e.seq))
        }
    };
    push(f.filter(ev("a", 0, Phase::Start, "cam"), s(0)));
    for i in 1..=60u32 {
        push(f.filter(ev("a", i, Phase::Update, "cam"), s(i as u64)));
        // another camera is throttled independently
        let _ = f.filter(ev("b", i, Phase::Update, "other"), s(i as u64));
    }
    push(f.filter(ev("a", 61, Phase::End, "cam"), s(61)));
    let starts = passed.iter().filter(|p| p.0 == Phase::Start).count();
    let ends = passed.iter().filter(|p| p.0 == Phase::End).count();
    let updates = passed.iter().filter(|p| p.0 == Phase::Update).count();
    assert_eq!((starts, ends), (1, 1));
    assert_eq!(updates, 6, "{passed:?}"); // at 10, 20, ..., 60 s

    // Flapping: a new start 5 s after the end is suppressed with its end...
    assert!(matches!(
        f.filter(ev("c", 0, Phase::Start, "cam"), s(66)),
        Verdict::Suppress("cooldown")
    ));
    assert!(matches!(
        f.filter(ev("c", 1, Phase::Update, "cam"), s(70)),
        Verdict::Suppress("cooldown")
    ));
    assert!(matches!(
        f.filter(ev("c", 2, Phase::End, "cam"), s(71)),
        Verdict::Suppress("cooldown")
    ));
    // ...but one that outlasts the cooldown is promoted to a start.
    assert!(matches!(
        f.filter(ev("d", 0, Phase::Start, "cam"), s(80)),
        Verdict::Suppress("cooldown")
    ));
    match f.filter(ev("d", 5, Phase::Update, "cam"), s(102)) {
        Verdict::Pass(e) => assert_eq!((e.phase, e.seq, e.id.as_str()), (Phase::Start, 5, "d-5")),
        v => panic!("{v:?}"),
    }
    assert!(matches!(
        f.filter(ev("d", 6, Phase::End, "cam"), s(103)),
        Verdict::Pass(_)
    ));
    // After the cooldown a start passes.
    assert!(matches!(
        f.filter(ev("e", 0, Phase::Start, "cam"), s(200)),
        Verdict::Pass(_)
    ));
}

#[test]
fn spool_persists_attachments_orders_and_bounds() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("s.redb");
    let names = vec!["a".to_string(), "b".to_string()];
    {
        let s = Spool::open(&p, 5, &names).unwrap();
        let mut e0 = ev("x", 0, Phase::Start, "c");
        e0.snapshot_jpeg = Some(Arc::new(vec![0xFF, 0xD8, 1, 2, 3]));
        e0.heatmap_png = Some(Arc::new(vec![0x89, b'P', b'N', b'G']));
        let r = s
            .append(&[e0.clone(), ev("x", 1, Phase::Update, "c")])
            .unwrap();
        assert_eq!((r.written, r.dropped), (2, 0));
        let rec = s.next_for("a").unwrap().unwrap();
        assert_eq!(rec.event, e0);
        s.ack("a", rec.seq).unwrap();
        assert_eq!(s.backlog("a").unwrap().queued, 1);
        assert_eq!(s.backlog("b").unwrap().queued, 2);
    }
    // Reopen: state survives.
    let s = Spool::open(&p, 5, &names).unwrap();
    assert_eq!(s.next_for("a").unwrap().unwrap().event.id, "x-1");
    assert_eq!(s.next_for("b").unwrap().unwrap().event.id, "x-0");
    // Bound: 5 events; appending 6 more drops the oldest 3 (2 + 6 - 5) and counts them.
    let more: Vec<Event> = (2..8).map(|i| ev("x", i, Phase::Update, "c")).collect();
    let r = s.append(&more).unwrap();
    assert_eq!(r.dropped, 3);
    assert_eq!(s.dropped_total().unwrap(), 3);
    assert_eq!(s.len().unwrap(), 5);
    assert_eq!(s.next_for("b").unwrap().unwrap().event.id, "x-3");
    // Fully delivered events are deleted.
    let last = s.next_for("a").unwrap().unwrap().seq + 4;
    s.ack("a", last).unwrap();
    s.ack("b", last).unwrap();
    assert_eq!(s.len().unwrap(), 0);
    assert!(s.next_for("a").unwrap().is_none());
}

fn hub_toml(dir: &std::path::Path, sinks: &str) -> AlertFile {
    let t = format!(
        "{sinks}\n[spool]\npath = \"{}\"\nretry_initial_ms = 50\nretry_max_ms = 200\n",
        dir.join("spool.redb").display()
    );
    AlertFile::parse(&t).unwrap()
}

#[test]
fn file_sink_rotates_and_keeps_n() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ev.jsonl");
    let f = hub_toml(
        dir.path(),
        &format!(
            "[[sink]]\nkind = \"file\"\npath = \"{}\"\nmax_bytes = 1000\nkeep = 2\n",
            path.display()
        ),
    );
    let hub = AlertHub::start(&f.sink, &f.spool, &AlertsConfig::pass_all()).unwrap();
    for i in 0..40 {
        hub.submit(ev("f", i, Phase::Update, "c"));
    }
    assert!(hub.wait_idle(Duration::from_secs(20)));
    hub.shutdown(Duration::from_secs(5));
    let mut ids = Vec::new();
    for p in [
        path.with_extension("jsonl.2"),
        path.with_extension("jsonl.1"),
        path.clone(),
    ] {
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(text.len() <= 1000, "{} too big", p.display());
        for l in text.lines() {
            let e: Event = serde_json::from_str(l).unwrap();
            ids.push(e.seq);
        }
    }
    assert!(!path.with_extension("jsonl.3").exists());
    // The newest lines survive, in order.
    assert_eq!(*ids.last().unwrap(), 39);
    assert!(ids.windows(2).all(|w| w[1] == w[0] + 1), "{ids:?}");
}

#[test]
fn exec_hook_that_hangs_is_killed_and_retried() {
    let dir = tempfile::tempdir().unwrap();
    let attempts = dir.path().join("attempts");
    let got = dir.path().join("got.json");
    // First two attempts hang (killed at 0.5 s), the third succeeds and saves stdin.
    let script = format!(
        "echo x >> {a}; n=$(wc -l < {a}); if [ $n -le 2 ]; then sleep 60; fi; cat > {g}",
        a = attempts.display(),
        g = got.display()
    );
    let f = hub_toml(
        dir.path(),
        &format!(
            "[[sink]]\nkind = \"exec\"\ncommand = [\"/bin/sh\", \"-c\", {script:?}]\ntimeout_secs = 0.5\n"
        ),
    );
    let hub = AlertHub::start(&f.sink, &f.spool, &AlertsConfig::pass_all()).unwrap();
    let t0 = Instant::now();
    hub.submit(ev("h", 0, Phase::Start, "cam"));
    assert!(
        hub.wait_idle(Duration::from_secs(20)),
        "exec never succeeded"
    );
    let el = t0.elapsed();
    let st = hub.shutdown(Duration::from_secs(2));
    assert_eq!(
        std::fs::read_to_string(&attempts).unwrap().lines().count(),
        3
    );
    assert_eq!((st[0].delivered, st[0].failed), (1, 2));
    assert!(
        el >= Duration::from_millis(1000) && el < Duration::from_secs(10),
        "{el:?}"
    );
    let e: Event = serde_json::from_str(&std::fs::read_to_string(&got).unwrap()).unwrap();
    assert_eq!(e.id, "h-0");
}

#[test]
fn exec_nonzero_exit_is_retried() {
    let dir = tempfile::tempdir().unwrap();
    let attempts = dir.path().join("attempts");
    let script = format!(
        "echo x >> {a}; [ $(wc -l < {a}) -ge 3 ]",
        a = attempts.display()
    );
    let f = hub_toml(
        dir.path(),
        &format!(
            "[[sink]]\nkind = \"exec\"\ncommand = [\"/bin/sh\", \"-c\", {script:?}]\ntimeout_secs = 5\n"
        ),
    );
    let hub = AlertHub::start(&f.sink, &f.spool, &AlertsConfig::pass_all()).unwrap();
    hub.submit(ev("n", 0, Phase::Start, "cam"));
    assert!(hub.wait_idle(Duration::from_secs(20)));
    let st = hub.shutdown(Duration::from_secs(2));
    assert_eq!((st[0].delivered, st[0].failed), (1, 2));
}

#[test]
fn submit_never_blocks_and_metrics_encode() {
    let dir = tempfile::tempdir().unwrap();
    // A webhook to a closed port: every delivery fails, the caller must not notice.
    let f = hub_toml(
        dir.path(),
        "[[sink]]\nkind = \"webhook\"\nurl = \"http://127.0.0.1:9/\"\ntimeout_secs = 1\n",
    );
    let hub = AlertHub::start(&f.sink, &f.spool, &AlertsConfig::pass_all()).unwrap();
    let t0 = Instant::now();
    for i in 0..2000 {
        hub.submit(ev("s", i, Phase::Update, "c"));
    }
    assert!(
        t0.elapsed() < Duration::from_millis(500),
        "submit blocked: {:?}",
        t0.elapsed()
    );
    let mut reg = prometheus_client::registry::Registry::default();
    hub.register_metrics(&mut reg);
    std::thread::sleep(Duration::from_millis(1500));
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &reg).unwrap();
    assert!(
        out.contains("advguard_alert_failed_total{sink=\"webhook\"}"),
        "{out}"
    );
    assert!(
        out.contains("advguard_alert_queued{sink=\"webhook\"}"),
        "{out}"
    );
    assert!(
        out.contains("advguard_alert_oldest_undelivered_age_seconds"),
        "{out}"
    );
    let t1 = Instant::now();
    let st = hub.shutdown(Duration::from_millis(500));
    assert!(t1.elapsed() < Duration::from_secs(6));
    assert_eq!(st[0].delivered, 0);
    assert!(st[0].queued > 0);
}

#[test]
fn hub_is_send_sync_and_works_without_sinks() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<AlertHub>();
    assert_send_sync::<advguard::alert::AlertHandle>();
    let dir = tempfile::tempdir().unwrap();
    let f = hub_toml(dir.path(), "");
    let hub = AlertHub::start(&f.sink, &f.spool, &AlertsConfig::default()).unwrap();
    hub.handle().submit(ev("z", 0, Phase::Start, "c"));
    assert!(hub.wait_idle(Duration::from_secs(5)));
    assert!(hub.shutdown(Duration::from_secs(1)).is_empty());
    assert!(!dir.path().join("spool.redb").exists());
}
