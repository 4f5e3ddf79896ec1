//! Crash recovery of the alert spool (issue 17): truncated, garbled and partly corrupted
//! files give one clear error or a recovery that keeps every record that still reads, never
//! a panic; a full disk while spooling is counted and logged, and the process goes on.
//!
//! The ground truth is the events written before the damage: every event the damaged spool
//! delivers must equal, byte for byte, the original with its id.

use advguard::alert::AlertHub;
use advguard::alert::config::{AlertFile, AlertsConfig};
use advguard::alert::spool::{Spool, SpoolError, decode_record, encode_record};
use advguard::detector::event::{Event, Phase};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

const N_EVENTS: u32 = 40;

fn ev(i: u32, attachment: usize) -> Event {
    Event {
        id: format!("e-{i}"),
        event_id: "e".into(),
        phase: if i == 0 { Phase::Start } else { Phase::Update },
        seq: i,
        camera: "gate".into(),
        model: "squeezenet1.1".into(),
        detector: "concentration".into(),
        time: "2026-01-01T00:00:00Z".into(),
        start_time: "2026-01-01T00:00:00Z".into(),
        start_pts_ms: 0,
        pts_ms: 40 * i as u64,
        score: 0.5 + i as f64 / 100.0,
        peak_score: 0.9,
        peak_pts_ms: 0,
        threshold: 0.6,
        frames_over: i,
        top1: None,
        bbox: Some([i, 2, 56, 56]),
        top1_before: None,
        interrupted: false,
        signals: Vec::new(),
        // Distinct bytes per event, so a record mixed up with another is caught.
        snapshot_jpeg: (attachment > 0)
            .then(|| Arc::new((0..attachment).map(|k| (k as u32 * 7 + i) as u8).collect())),
        heatmap_png: i
            .is_multiple_of(3)
            .then(|| Arc::new(vec![0x89, b'P', b'N', b'G', i as u8])),
    }
}

fn sinks() -> Vec<String> {
    vec!["a".to_string(), "b".to_string()]
}

/// A spool with `N_EVENTS` events, one append each (so many commits and pages); sink `a`
/// has delivered the first 5. Returns the file's bytes and the originals by id.
fn reference_spool(dir: &Path) -> (Vec<u8>, HashMap<String, Event>) {
    let p = dir.join("ref.redb");
    let s = Spool::open(&p, 1000, &sinks()).unwrap();
    let mut all = HashMap::new();
    for i in 0..N_EVENTS {
        let e = ev(i, 2000);
        s.append(std::slice::from_ref(&e)).unwrap();
        all.insert(e.id.clone(), e);
    }
    s.ack("a", 4).unwrap();
    drop(s);
    (std::fs::read(&p).unwrap(), all)
}

/// What a (possibly damaged) spool gives: the error, or the events sink `b` drains.
enum Outcome {
    Error(SpoolError),
    Drained {
        events: Vec<Event>,
        lost: u64,
        quarantined: Option<PathBuf>,
    },
}

fn drain(path: &Path) -> Outcome {
    let s = match Spool::open(path, 1000, &sinks()) {
        Ok(s) => s,
        Err(e) => return Outcome::Error(e),
    };
    let mut events = Vec::new();
    for _ in 0..(N_EVENTS * 2) {
        match s.next_for("b") {
            Ok(Some(r)) => {
                events.push(r.event);
                s.ack("b", r.seq).unwrap();
            }
            Ok(None) => break,
            Err(e) => panic!("a spool that opened must read cleanly, got: {e}"),
        }
    }
    // A spool that opened also takes new events.
    s.append(&[ev(999, 10)]).unwrap();
    let r = s.recovery();
    Outcome::Drained {
        events,
        lost: r.lost,
        quarantined: r.quarantined,
    }
}

/// Every drained event equals its original, in increasing order; returns how many came back.
fn check_kept(events: &[Event], originals: &HashMap<String, Event>, label: &str) -> usize {
    let mut last = None;
    for e in events {
        let o = originals
            .get(&e.id)
            .unwrap_or_else(|| panic!("{label}: unknown event {}", e.id));
        assert_eq!(
            e, o,
            "{label}: event {} differs from what was written",
            e.id
        );
        assert!(last < Some(e.seq), "{label}: out of order at {}", e.id);
        last = Some(e.seq);
    }
    events.len()
}

fn clear_error(e: &SpoolError) -> String {
    let m = e.to_string();
    assert!(
        !m.contains('\n') && m.len() < 400,
        "error is not one clear line: {m}"
    );
    assert!(m.contains("spool"), "error does not name the spool: {m}");
    m
}

#[test]
fn truncated_spool_keeps_what_reads_or_errors_never_panics() {
    let dir = tempfile::tempdir().unwrap();
    let (orig, originals) = reference_spool(dir.path());
    let p = dir.path().join("t.redb");
    let mut recovered = Vec::new();
    for frac in [0.0, 0.0001, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99, 0.9999] {
        let n = (orig.len() as f64 * frac) as usize;
        std::fs::write(&p, &orig[..n]).unwrap();
        match drain(&p) {
            Outcome::Error(e) => {
                clear_error(&e);
            }
            Outcome::Drained {
                events,
                quarantined,
                ..
            } => {
                let kept = check_kept(&events, &originals, &format!("truncated to {n}"));
                if n > 0 {
                    // redb cannot use a truncated file: it is moved aside, never deleted.
                    let q = quarantined.expect("a truncated file is quarantined");
                    assert_eq!(std::fs::read(&q).unwrap(), &orig[..n]);
                    std::fs::remove_file(q).unwrap();
                }
                recovered.push((n, kept));
            }
        }
        let _ = std::fs::remove_file(&p);
    }
    eprintln!("(bytes kept, events recovered): {recovered:?}");
    // An empty file is a fresh spool; a truncated one opens (fresh) instead of panicking.
    assert_eq!(recovered.first(), Some(&(0, 0)));
    assert!(recovered.len() >= 9, "{recovered:?}");
}

#[test]
fn garbage_file_is_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("g.redb");
    let mut x: u32 = 0x9e37_79b9;
    let garbage: Vec<u8> = (0..100_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect();
    std::fs::write(&p, &garbage).unwrap();
    let e = match Spool::open(&p, 1000, &sinks()) {
        Err(e) => e,
        Ok(_) => panic!("a file of random bytes opened as a spool"),
    };
    let m = clear_error(&e);
    assert!(matches!(e, SpoolError::NotASpool(_)), "{m}");
    assert_eq!(
        std::fs::read(&p).unwrap(),
        garbage,
        "the foreign file was modified"
    );
}

#[test]
fn garbled_header_is_quarantined_and_a_fresh_spool_works() {
    let dir = tempfile::tempdir().unwrap();
    let (mut bytes, _) = reference_spool(dir.path());
    // Keep redb's magic, garble the rest of the header (layout, commit slots).
    for (k, b) in bytes[9..4096].iter_mut().enumerate() {
        *b = (k * 31 + 7) as u8;
    }
    let p = dir.path().join("h.redb");
    std::fs::write(&p, &bytes).unwrap();
    match drain(&p) {
        Outcome::Error(e) => panic!("expected a recovery, got: {}", clear_error(&e)),
        Outcome::Drained {
            events,
            quarantined,
            ..
        } => {
            assert!(events.is_empty());
            let q = quarantined.expect("quarantined");
            assert_eq!(std::fs::read(q).unwrap(), bytes);
        }
    }
    // The fresh spool persists: the event appended by `drain` is there on reopen.
    let s = Spool::open(&p, 1000, &sinks()).unwrap();
    assert!(s.recovery().is_clean());
    assert_eq!(s.len().unwrap(), 1);
}

#[test]
fn records_corrupted_mid_file_are_dropped_the_rest_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let (orig, originals) = reference_spool(dir.path());
    let p = dir.path().join("m.redb");
    let mut x: u64 = 12345;
    let mut results = Vec::new();
    // 64 garbage bytes at 40 places spread over the file (past the 4 KiB header).
    for k in 0..40 {
        let mut b = orig.clone();
        let at = 4096 + (orig.len() - 4096 - 64) / 40 * k;
        for byte in &mut b[at..at + 64] {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *byte = x as u8;
        }
        std::fs::write(&p, &b).unwrap();
        match drain(&p) {
            Outcome::Error(e) => {
                clear_error(&e);
                results.push((at, None));
            }
            Outcome::Drained {
                events,
                lost,
                quarantined,
            } => {
                let kept = check_kept(&events, &originals, &format!("garbage at {at}"));
                // Sink b had N_EVENTS pending: each is delivered intact or counted lost
                // (lost may also count records b had... none: b delivered nothing before).
                if quarantined.is_none() && lost == 0 {
                    assert_eq!(kept, N_EVENTS as usize, "garbage at {at} went unnoticed");
                }
                if let Some(q) = quarantined {
                    std::fs::remove_file(q).unwrap();
                }
                results.push((at, Some((kept, lost))));
            }
        }
        let _ = std::fs::remove_file(&p);
    }
    eprintln!("(offset, (kept, lost)): {results:?}");
    let opened = results.iter().filter(|r| r.1.is_some()).count();
    assert!(
        opened >= 30,
        "only {opened} of 40 damaged files opened: {results:?}"
    );
}

#[test]
fn undecodable_record_is_dropped_counted_and_the_others_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("spool.redb");
    {
        let s = Spool::open(&p, 1000, &["file".to_string()]).unwrap();
        s.append(&(0..5).map(|i| ev(i, 100)).collect::<Vec<_>>())
            .unwrap();
    }
    // Overwrite record 2 with bytes that are valid for redb but not a spool record.
    {
        let db = redb::Database::create(&p).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let def: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("events");
            let mut t = txn.open_table(def).unwrap();
            let mut bad = encode_record(&ev(2, 100), 0);
            bad.truncate(bad.len() / 2);
            assert!(decode_record(2, &bad).is_err());
            t.insert(2, bad.as_slice()).unwrap();
        }
        txn.commit().unwrap();
    }
    let out = dir.path().join("events.jsonl");
    let f = AlertFile::parse(&format!(
        "[[sink]]\nkind = \"file\"\npath = \"{}\"\n[spool]\npath = \"{}\"\n",
        out.display(),
        p.display()
    ))
    .unwrap();
    let hub = AlertHub::start(&f.sink, &f.spool, &AlertsConfig::pass_all()).unwrap();
    assert!(hub.wait_idle(Duration::from_secs(20)));
    assert_eq!(hub.metrics().dropped_count("spool_corrupt"), 1);
    let hub_interrupted = hub.metrics().interrupted.get();
    hub.shutdown(Duration::from_secs(5));
    let got: Vec<Event> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Event>(l).unwrap())
        .collect();
    let ids: Vec<&str> = got.iter().map(|e| e.id.as_str()).collect();
    // The event had no end when this "run" started: the hub closes it as interrupted.
    assert_eq!(ids, ["e-0", "e-1", "e-3", "e-4", "e-5"]);
    let last = got.last().unwrap();
    assert!(last.interrupted && last.phase == Phase::End && last.seq == 5);
    assert_eq!(
        hub_interrupted, 1,
        "advguard_alert_interrupted_total counts the closed event"
    );
    assert_eq!(
        Spool::open(&p, 1000, &["file".into()])
            .unwrap()
            .corrupt_total()
            .unwrap(),
        1
    );
}

/// Submits events with 64 KiB snapshots to a hub whose spool cannot grow past a limit, and
/// checks that the losses are counted, `submit` stays fast and delivery resumes.
///
/// The receiver is down during phase 1 (a directory stands where the sink's file goes), as
/// it is when a spool fills in the field: with a live receiver a fast machine delivers as
/// fast as it spools and the disk never fills.
fn run_full_disk(spool_path: &Path, out_dir: &Path, free_space: &dyn Fn()) -> String {
    let out = out_dir.join("events.jsonl");
    std::fs::create_dir(&out).unwrap();
    let f = AlertFile::parse(&format!(
        "[[sink]]\nkind = \"file\"\npath = \"{}\"\nmax_bytes = 200000\nkeep = 1\n\
         [spool]\npath = \"{}\"\nqueue = 64\nretry_initial_ms = 20\nretry_max_ms = 100\n",
        out.display(),
        spool_path.display()
    ))
    .unwrap();
    let hub = AlertHub::start(&f.sink, &f.spool, &AlertsConfig::pass_all()).unwrap();
    let mut slowest = Duration::ZERO;
    let mut i = 0;
    // Phase 1: until the spool has failed on the full disk at least a few times.
    let deadline = Instant::now() + Duration::from_secs(60);
    while hub.metrics().dropped_count("spool_error") < 5 {
        assert!(
            Instant::now() < deadline,
            "the spool never hit the full disk"
        );
        let t = Instant::now();
        hub.submit(ev(i, 64 * 1024));
        slowest = slowest.max(t.elapsed());
        i += 1;
        std::thread::sleep(Duration::from_millis(2));
    }
    let failed_at = i;
    // Phase 2: the receiver and space come back; fresh events must be spooled and delivered.
    std::fs::remove_dir(&out).unwrap();
    free_space();
    let deadline = Instant::now() + Duration::from_secs(60);
    let before = hub.metrics().spooled.get();
    while hub.metrics().spooled.get() < before + 5 {
        assert!(
            Instant::now() < deadline,
            "the spool did not recover once space was freed"
        );
        let t = Instant::now();
        hub.submit(ev(i, 1024));
        slowest = slowest.max(t.elapsed());
        i += 1;
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        hub.wait_idle(Duration::from_secs(30)),
        "backlog not delivered"
    );
    let m = hub.metrics();
    let report = format!(
        "submitted={i} failed_from={failed_at} spooled={} spool_error={} queue_full={} slowest_submit_us={}",
        m.spooled.get(),
        m.dropped_count("spool_error"),
        m.dropped_count("queue_full"),
        slowest.as_micros()
    );
    hub.shutdown(Duration::from_secs(5));
    let delivered = std::fs::read_to_string(&out)
        .unwrap_or_default()
        .lines()
        .count();
    assert!(delivered > 0);
    // `submit` hands over to a queue: it must never wait for the disk.
    assert!(slowest < Duration::from_millis(50), "{report}");
    format!("{report} delivered_last_file={delivered}")
}

/// A real full filesystem: a 2 MiB tmpfs (needs root and mount; skipped, saying so, if not).
#[test]
fn full_disk_on_a_small_tmpfs_is_counted_and_the_hub_goes_on() {
    let mnt = tempfile::tempdir().unwrap();
    let ok = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=2m", "advguard-test"])
        .arg(mnt.path())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!(
            "SKIPPED: cannot mount a tmpfs here (not root?); the RLIMIT_FSIZE test covers this"
        );
        return;
    }
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(self.0).status();
        }
    }
    let _u = Unmount(mnt.path());
    // A filler takes part of the space, and is deleted to give it back.
    let filler = mnt.path().join("filler");
    std::fs::write(&filler, vec![0u8; 512 * 1024]).unwrap();
    let out = tempfile::tempdir().unwrap();
    let r = run_full_disk(&mnt.path().join("spool.redb"), out.path(), &|| {
        std::fs::remove_file(&filler).unwrap()
    });
    eprintln!("tmpfs: {r}");
}

/// The same with a file-size limit (RLIMIT_FSIZE via `ulimit -f`, SIGXFSZ ignored so writes
/// fail with EFBIG): runs this test binary again as a child; no root needed.
#[test]
fn full_disk_by_file_size_limit_is_counted_and_the_hub_goes_on() {
    if let Ok(dir) = std::env::var("ADVGUARD_SPOOL_FULL_CHILD") {
        let dir = PathBuf::from(dir);
        // Space comes back when the sink delivers and the spool reuses its freed pages.
        let r = run_full_disk(&dir.join("spool.redb"), &dir, &|| {});
        println!("CHILD-RESULT {r}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let out = Command::new("bash")
        .arg("-c")
        .arg(
            "trap '' XFSZ; ulimit -f 4096; exec \"$0\" --exact \"$1\" --nocapture --test-threads 1",
        )
        .arg(&exe)
        .arg("full_disk_by_file_size_limit_is_counted_and_the_hub_goes_on")
        .env("ADVGUARD_SPOOL_FULL_CHILD", dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "child failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    // The harness may print "test … " on the same line before the child's own output.
    let line = stdout
        .lines()
        .find_map(|l| l.find("CHILD-RESULT").map(|k| &l[k..]))
        .unwrap_or_else(|| panic!("no result from the child:\n{stdout}\n{stderr}"));
    eprintln!("RLIMIT_FSIZE 4 MiB: {line}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// Writes the spool seeds of the fuzz corpus: records into `fuzz/corpus/spool_record`, spool
/// files into `fuzz/target/spool-seeds` (3.6 MB each, mostly zeros: commit them gzipped in
/// `fuzz/seeds/spool_file`). Run: cargo test --test spool_recovery -- --ignored write_fuzz_seeds
#[test]
#[ignore]
fn write_fuzz_seeds() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    let rec = root.join("spool_record");
    std::fs::create_dir_all(&rec).unwrap();
    for (name, e) in [
        ("plain", ev(1, 0)),
        ("snapshot", ev(2, 24)),
        ("both", ev(3, 8)),
        ("start", ev(0, 0)),
    ] {
        std::fs::write(rec.join(name), encode_record(&e, 1_767_225_600_000)).unwrap();
    }
    let files = root.join("../target/spool-seeds");
    std::fs::create_dir_all(&files).unwrap();
    let dir = tempfile::tempdir().unwrap();
    for (name, n) in [("empty", 0u32), ("three", 3)] {
        let p = dir.path().join(name);
        let s = Spool::open(&p, 64, &sinks()).unwrap();
        for i in 0..n {
            s.append(&[ev(i, 16)]).unwrap();
        }
        if n > 0 {
            s.ack("a", 0).unwrap();
        }
        drop(s);
        std::fs::copy(&p, files.join(name)).unwrap();
    }
}
