//! `advguard alert`: send test events through the configured sinks, drain the spool,
//! show its state. Reads only `[[sink]]`, `[spool]` and `[alerts]` of the cameras TOML.

use advguard::alert::config::{AlertFile, AlertsConfig, resolve_sinks};
use advguard::alert::spool::{Spool, now_ms};
use advguard::alert::{AlertHub, SinkStatus};
use advguard::detector::event::{ClassGuess, Event, Phase};
use anyhow::Context;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Arguments of `advguard alert`.
#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Subcommand)]
enum Cmd {
    /// Submit N synthetic test events (detector "test": one start, updates, one end)
    /// through the configured sinks and wait for delivery.
    Test(TestArgs),
    /// Deliver the spool backlog and exit.
    Drain(DrainArgs),
    /// Show queued events and the oldest age per sink.
    Status(StatusArgs),
}

#[derive(clap::Args)]
struct TestArgs {
    /// Cameras TOML with `[[sink]]` / `[spool]` / `[alerts]`.
    #[arg(long)]
    config: PathBuf,
    /// Number of messages (start, N-2 updates, end; 1 = a start only).
    #[arg(long, default_value_t = 3)]
    count: u32,
    /// Camera name in the test events.
    #[arg(long, default_value = "test")]
    camera: String,
    /// Seconds to wait for delivery before giving up (the rest stays spooled).
    #[arg(long, default_value_t = 30.0)]
    timeout: f64,
    /// Keep running this many seconds after delivery (e.g. to watch MQTT availability).
    #[arg(long, default_value_t = 0.0)]
    hold: f64,
}

#[derive(clap::Args)]
struct DrainArgs {
    /// Cameras TOML.
    #[arg(long)]
    config: PathBuf,
    /// Seconds to wait for the backlog to drain.
    #[arg(long, default_value_t = 60.0)]
    timeout: f64,
}

#[derive(clap::Args)]
struct StatusArgs {
    /// Cameras TOML.
    #[arg(long)]
    config: PathBuf,
}

/// Runs `advguard alert`.
pub fn run(args: Args) -> anyhow::Result<()> {
    match args.cmd {
        Cmd::Test(a) => test(a),
        Cmd::Drain(a) => drain(a),
        Cmd::Status(a) => status(a),
    }
}

fn load(path: &std::path::Path) -> anyhow::Result<AlertFile> {
    let f = AlertFile::load(path)?;
    if f.sink.is_empty() {
        anyhow::bail!("{}: no [[sink]] configured", path.display());
    }
    Ok(f)
}

fn print_table(rows: &[SinkStatus]) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "{:<20} {:<8} {:>10} {:>8} {:>8} {:>12}",
        "SINK", "KIND", "DELIVERED", "FAILED", "QUEUED", "OLDEST_AGE_S"
    );
    for r in rows {
        let age = r
            .oldest_age
            .map(|d| format!("{:.1}", d.as_secs_f64()))
            .unwrap_or_else(|| "-".into());
        let _ = writeln!(
            out,
            "{:<20} {:<8} {:>10} {:>8} {:>8} {:>12}",
            r.name, r.kind, r.delivered, r.failed, r.queued, age
        );
    }
    let _ = out.flush();
}

type Attachment = Option<Arc<Vec<u8>>>;

fn test_images() -> (Attachment, Attachment) {
    use image::ImageEncoder;
    let (w, h) = (64u32, 48u32);
    let mut rgb = Vec::with_capacity((w * h * 3) as usize);
    let mut gray = Vec::with_capacity((w * h) as usize);
    for y in 0..h {
        for x in 0..w {
            rgb.extend_from_slice(&[(x * 4) as u8, (y * 5) as u8, 128]);
            gray.push(((x + y) * 2) as u8);
        }
    }
    let mut jpg = Vec::new();
    let jpeg = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpg, 80)
        .write_image(&rgb, w, h, image::ExtendedColorType::Rgb8)
        .ok()
        .map(|_| Arc::new(jpg));
    let mut png = Vec::new();
    let png = image::codecs::png::PngEncoder::new(&mut png)
        .write_image(&gray, w, h, image::ExtendedColorType::L8)
        .ok()
        .map(|_| Arc::new(png));
    (jpeg, png)
}

/// The synthetic test event: `count` messages of one event, clearly marked `detector: "test"`.
fn test_events(count: u32, camera: &str) -> Vec<Event> {
    let event_id = format!("test-{}", uuid::Uuid::new_v4());
    let start = chrono::Utc::now().to_rfc3339();
    let (jpeg, png) = test_images();
    (0..count.max(1))
        .map(|seq| {
            let phase = if seq == 0 {
                Phase::Start
            } else if seq + 1 == count {
                Phase::End
            } else {
                Phase::Update
            };
            let att = matches!(phase, Phase::Start | Phase::End);
            Event {
                id: format!("{event_id}-{seq}"),
                event_id: event_id.clone(),
                phase,
                seq,
                camera: camera.to_string(),
                model: "test".into(),
                detector: "test".into(),
                time: chrono::Utc::now().to_rfc3339(),
                start_time: start.clone(),
                start_pts_ms: 0,
                pts_ms: seq as u64 * 40,
                score: 0.9,
                peak_score: 0.9,
                peak_pts_ms: 0,
                threshold: 0.5,
                frames_over: seq + 1,
                top1: Some(ClassGuess {
                    index: 0,
                    label: "test".into(),
                    prob: 1.0,
                }),
                bbox: Some([8, 8, 32, 24]),
                top1_before: None,
                interrupted: false,
                signals: Vec::new(),
                snapshot_jpeg: if att { jpeg.clone() } else { None },
                heatmap_png: if att { png.clone() } else { None },
            }
        })
        .collect()
}

fn test(a: TestArgs) -> anyhow::Result<()> {
    let f = load(&a.config)?;
    // Test events bypass noise control: they exercise the sinks, not the filter.
    let hub = AlertHub::start(&f.sink, &f.spool, &AlertsConfig::pass_all())?;
    let events = test_events(a.count, &a.camera);
    let n = events.len() as u64;
    let ids: Vec<String> = events.iter().map(|e| e.id.clone()).collect();
    for ev in events {
        hub.submit(ev);
    }
    let timeout = Duration::from_secs_f64(a.timeout.max(0.0));
    let t0 = Instant::now();
    while hub.spooled_or_processed() < n && t0.elapsed() < timeout {
        std::thread::sleep(Duration::from_millis(5));
    }
    println!(
        "spooled {} test events ({} .. {})",
        hub.spooled_or_processed(),
        ids[0],
        ids[ids.len() - 1]
    );
    let _ = std::io::stdout().flush();
    let idle = hub.wait_idle(timeout.saturating_sub(t0.elapsed()));
    if a.hold > 0.0 {
        std::thread::sleep(Duration::from_secs_f64(a.hold));
    }
    let rows = hub.shutdown(Duration::from_secs(5));
    print_table(&rows);
    if !idle {
        let q: u64 = rows.iter().map(|r| r.queued).sum();
        anyhow::bail!(
            "not everything was delivered within {} s ({q} queued); the rest stays in the spool (`advguard alert drain`)",
            a.timeout
        );
    }
    Ok(())
}

fn drain(a: DrainArgs) -> anyhow::Result<()> {
    let f = load(&a.config)?;
    let hub = AlertHub::start(&f.sink, &f.spool, &f.alerts)?;
    let idle = hub.wait_idle(Duration::from_secs_f64(a.timeout.max(0.0)));
    let rows = hub.shutdown(Duration::from_secs(5));
    print_table(&rows);
    if !idle {
        let q: u64 = rows.iter().map(|r| r.queued).sum();
        anyhow::bail!(
            "backlog not drained within {} s: {q} events still queued",
            a.timeout
        );
    }
    Ok(())
}

fn status(a: StatusArgs) -> anyhow::Result<()> {
    let f = load(&a.config)?;
    let sinks = resolve_sinks(&f.sink)?;
    let path = f.spool.resolved_path()?;
    let names: Vec<String> = sinks.iter().map(|(n, _)| n.clone()).collect();
    let spool = Spool::open(&path, f.spool.max_events, &names)
        .with_context(|| format!("opening spool {}", path.display()))?;
    let now = now_ms();
    let rows: Vec<SinkStatus> = sinks
        .iter()
        .map(|(n, c)| {
            let b = spool.backlog(n).unwrap_or_default();
            SinkStatus {
                name: n.clone(),
                kind: c.kind(),
                delivered: 0,
                failed: 0,
                queued: b.queued,
                oldest_age: b
                    .oldest_queued_at_ms
                    .map(|t| Duration::from_millis(now.saturating_sub(t))),
            }
        })
        .collect();
    println!(
        "spool {}: {} events, {} dropped (spool full) since creation",
        path.display(),
        spool.len()?,
        spool.dropped_total()?
    );
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "{:<20} {:<8} {:>8} {:>12}",
        "SINK", "KIND", "QUEUED", "OLDEST_AGE_S"
    );
    for r in rows {
        let age = r
            .oldest_age
            .map(|d| format!("{:.1}", d.as_secs_f64()))
            .unwrap_or_else(|| "-".into());
        let _ = writeln!(
            out,
            "{:<20} {:<8} {:>8} {:>12}",
            r.name, r.kind, r.queued, age
        );
    }
    Ok(())
}
