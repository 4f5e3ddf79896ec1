//! `advguard soak`: live cameras for a long time, their RTSP server killed and restarted on a
//! schedule, and the watch process measured from outside every interval.
//!
//! The soak is the RTSP server (a real gst-rtsp-server in this process, one per camera, each
//! replaying a clip in real time) and the supervisor of one `advguard watch` child. It reads
//! the child's RSS from `/proc` and its Prometheus `/metrics`, so it measures exactly what an
//! operator's monitoring would. Every `restart_every` it drops the servers (clients see the
//! connection die), waits `outage`, starts them on the same ports, and times how long the
//! cameras take to come back against the reconnect backoff (0.5 s doubling, ±25 % jitter).

use super::overlay_rtsp::RtspServer;
use anyhow::Context;
use plotters::prelude::*;
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// What to soak and for how long.
#[derive(Debug, Clone)]
pub struct SoakOptions {
    /// Total run time.
    pub duration: Duration,
    /// Interval between RTSP server kills.
    pub restart_every: Duration,
    /// How long the server stays down at each kill.
    pub outage: Duration,
    /// Interval between samples (one CSV row each).
    pub sample_every: Duration,
    /// Warm-up excluded from the RSS band.
    pub warmup: Duration,
    /// One camera per clip (H.264 MP4), served over RTSP.
    pub clips: Vec<PathBuf>,
    /// The `advguard` binary to run `watch` with.
    pub watch_bin: PathBuf,
    /// Extra `watch` arguments (model, detector, every-nth).
    pub watch_args: Vec<String>,
    /// Output folder: soak.csv, reconnects.csv, soak.png, summary.json, watch.log.
    pub out: PathBuf,
}

/// One interval, as written to soak.csv.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    /// Seconds since the watch started.
    pub t_s: f64,
    /// Resident set size of the watch process, MiB.
    pub rss_mib: f64,
    /// Mean frame age at decision (capture → scored) over the interval, ms.
    pub age_mean_ms: f64,
    /// Upper bucket bound of the interval's 99th-percentile frame age, ms.
    pub age_p99_ms: f64,
    /// Frames received from the sources in the interval (all cameras).
    pub received: u64,
    /// Frames scored in the interval.
    pub processed: u64,
    /// Frames dropped (counted) in the interval.
    pub dropped: u64,
    /// Source reconnects in the interval (server kills and clip loops).
    pub reconnects: u64,
    /// Cameras `running` at the sample.
    pub cameras_up: u64,
}

/// One server kill and what the cameras did.
#[derive(Debug, Clone, Serialize)]
pub struct Reconnect {
    /// When the server was killed, s since the watch started.
    pub killed_at_s: f64,
    /// Whether the watch noticed (a camera left `running`) during the outage.
    pub noticed: bool,
    /// From the server's return to every camera `running` again, s (NaN: never).
    pub back_after_s: f64,
    /// The longest the backoff allows for that outage, plus the time to the first frame.
    pub bound_s: f64,
    /// `back_after_s <= bound_s`.
    pub within_backoff: bool,
}

/// What the soak found, with the goals judged.
#[derive(Debug, Clone, Serialize)]
pub struct SoakReport {
    /// Run time, s.
    pub duration_s: f64,
    /// Cameras.
    pub cameras: usize,
    /// Median RSS after warm-up, MiB.
    pub rss_median_mib: f64,
    /// Lowest and highest RSS after warm-up, as % from the median.
    pub rss_band_pct: (f64, f64),
    /// Worst interval p99 frame age, ms.
    pub age_p99_max_ms: f64,
    /// Frames scored, dropped, received in all.
    pub processed: u64,
    /// Frames dropped in all.
    pub dropped: u64,
    /// Frames received in all.
    pub received: u64,
    /// Server kills, and how many were followed by a reconnect within the backoff.
    pub kills: usize,
    /// Kills after which every camera was back within its bound.
    pub kills_within_backoff: usize,
    /// RSS flat within ±5 % after warm-up.
    pub rss_flat: bool,
    /// Every reconnect within its backoff.
    pub reconnects_ok: bool,
    /// The watch process was still alive at the end (it never crashed).
    pub survived: bool,
}

/// Prometheus text, summed over label sets per metric name (and per `le` for buckets).
#[derive(Debug, Default, Clone)]
struct Scrape {
    sums: BTreeMap<String, f64>,
    /// frame_age buckets: le → cumulative count, summed over cameras.
    age_buckets: BTreeMap<u64, f64>,
}

impl Scrape {
    fn parse(text: &str) -> Scrape {
        let mut s = Scrape::default();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(v) = value.parse::<f64>() else {
                continue;
            };
            let name = series.split('{').next().unwrap_or(series);
            if name == "advguard_frame_age_seconds_bucket" {
                if let Some(le) = series
                    .split("le=\"")
                    .nth(1)
                    .and_then(|r| r.split('"').next())
                {
                    // Keyed in µs so that the map sorts numerically; +Inf last.
                    let key = le.parse::<f64>().map_or(u64::MAX, |x| (x * 1e6) as u64);
                    *s.age_buckets.entry(key).or_default() += v;
                }
                continue;
            }
            *s.sums.entry(name.to_string()).or_default() += v;
        }
        s
    }

    fn get(&self, name: &str) -> f64 {
        self.sums.get(name).copied().unwrap_or(0.0)
    }
}

fn http_get(addr: &str, path: &str) -> Option<String> {
    let r = ureq::get(&format!("http://{addr}{path}"))
        .timeout(Duration::from_secs(2))
        .call()
        .ok()?;
    let mut s = String::new();
    r.into_reader().take(16 << 20).read_to_string(&mut s).ok()?;
    Some(s)
}

fn rss_mib(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = s
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

/// The longest the source's backoff (0.5 s doubling, ±25 % jitter, capped at 30 s) can keep
/// a camera away after an outage of `outage`, plus `first_frame` to reconnect and decode.
pub fn reconnect_bound(outage: Duration, first_frame: Duration) -> Duration {
    // Attempts at cumulative times; the attempt pending when the server returns is at most
    // one (maximally jittered) step after it.
    let (mut t, mut step) = (0.0f64, 0.5f64);
    let d = outage.as_secs_f64();
    loop {
        let next = t + step * 0.75;
        if next >= d {
            return Duration::from_secs_f64((step * 1.25).min(30.0)) + first_frame;
        }
        t = next;
        step = (step * 2.0).min(30.0);
    }
}

fn serve(clips: &[PathBuf], ports: &[u16]) -> anyhow::Result<Vec<RtspServer>> {
    clips
        .iter()
        .zip(ports)
        .map(|(clip, &port)| {
            let mut last = None;
            for _ in 0..50 {
                match RtspServer::start("127.0.0.1", port) {
                    Ok(s) => {
                        let launch = format!(
                            "( filesrc location=\"{}\" ! qtdemux ! h264parse ! rtph264pay name=pay0 pt=96 config-interval=-1 )",
                            clip.display()
                        );
                        s.mount_launch("/cam", &launch, false);
                        return Ok(s);
                    }
                    Err(e) => last = Some(e),
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(last.expect("tried")).context(format!("RTSP server on port {port}"))
        })
        .collect()
}

struct Watch {
    child: Child,
    metrics: String,
}

impl Watch {
    fn start(o: &SoakOptions, ports: &[u16]) -> anyhow::Result<Watch> {
        let metrics = format!("127.0.0.1:{}", free_port()?);
        let mut cmd = Command::new(&o.watch_bin);
        cmd.arg("watch");
        for (i, p) in ports.iter().enumerate() {
            cmd.arg(format!("cam{i}=rtsp://127.0.0.1:{p}/cam"));
        }
        cmd.args(["--metrics-addr", &metrics])
            .args(&o.watch_args)
            .env("NO_COLOR", "1")
            .stdout(std::fs::File::create(o.out.join("events.jsonl"))?)
            .stderr(std::fs::File::create(o.out.join("watch.log"))?)
            .stdin(Stdio::null());
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", o.watch_bin.display()))?;
        Ok(Watch { child, metrics })
    }

    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    fn scrape(&self) -> Option<Scrape> {
        http_get(&self.metrics, "/metrics").map(|t| Scrape::parse(&t))
    }

    /// SIGTERM, then SIGKILL after 20 s.
    fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(20) {
            if !self.alive() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The interval's p99 age from two cumulative bucket snapshots (bucket upper bound, ms).
fn p99_ms(prev: &Scrape, now: &Scrape) -> f64 {
    let delta: Vec<(u64, f64)> = now
        .age_buckets
        .iter()
        .map(|(le, c)| (*le, c - prev.age_buckets.get(le).copied().unwrap_or(0.0)))
        .collect();
    let total = delta.last().map_or(0.0, |d| d.1);
    if total <= 0.0 {
        return f64::NAN;
    }
    for (le, c) in &delta {
        if *c >= 0.99 * total {
            return if *le == u64::MAX {
                f64::INFINITY
            } else {
                *le as f64 / 1e3
            };
        }
    }
    f64::INFINITY
}

fn sample(t_s: f64, pid: u32, prev: &Scrape, now: &Scrape) -> Sample {
    let d = |k: &str| (now.get(k) - prev.get(k)).max(0.0);
    let n = d("advguard_frame_age_seconds_count");
    Sample {
        t_s,
        rss_mib: rss_mib(pid).unwrap_or(f64::NAN),
        age_mean_ms: if n > 0.0 {
            d("advguard_frame_age_seconds_sum") / n * 1e3
        } else {
            f64::NAN
        },
        age_p99_ms: p99_ms(prev, now),
        received: d("advguard_frames_received_total") as u64,
        processed: d("advguard_frames_processed_total") as u64,
        dropped: d("advguard_frames_dropped_total") as u64,
        reconnects: d("advguard_source_reconnects_total") as u64,
        cameras_up: now.get("advguard_camera_up") as u64,
    }
}

/// Runs the soak; writes soak.csv, reconnects.csv, soak.png and summary.json under `out`.
pub fn run(o: &SoakOptions, progress: &dyn Fn(f64, &Sample)) -> anyhow::Result<SoakReport> {
    anyhow::ensure!(!o.clips.is_empty(), "soak: no clips");
    for c in &o.clips {
        anyhow::ensure!(c.is_file(), "soak: no clip {}", c.display());
    }
    std::fs::create_dir_all(&o.out).with_context(|| format!("creating {}", o.out.display()))?;
    gstreamer::init()?;
    let ports: Vec<u16> = (0..o.clips.len())
        .map(|_| free_port())
        .collect::<anyhow::Result<_>>()?;
    let mut servers = serve(&o.clips, &ports)?;
    let mut watch = Watch::start(o, &ports)?;
    let pid = watch.child.id();
    let ncams = o.clips.len() as u64;
    let t0 = Instant::now();
    let mut samples = Vec::new();
    let mut reconnects = Vec::new();
    let mut prev = Scrape::default();
    let mut next_sample = o.sample_every;
    let mut next_kill = o.restart_every;
    let first_frame = Duration::from_secs(5);
    let mut survived = true;
    while t0.elapsed() < o.duration {
        if !watch.alive() {
            survived = false;
            tracing::error!("soak: the watch process died; see watch.log");
            break;
        }
        let now = t0.elapsed();
        if now >= next_sample {
            if let Some(s) = watch.scrape() {
                let row = sample(now.as_secs_f64(), pid, &prev, &s);
                progress(now.as_secs_f64() / o.duration.as_secs_f64(), &row);
                samples.push(row);
                prev = s;
            }
            next_sample += o.sample_every;
        }
        if now >= next_kill && now + o.outage + first_frame < o.duration {
            let killed_at = now.as_secs_f64();
            drop(servers);
            let down_t = Instant::now();
            let mut noticed = false;
            while down_t.elapsed() < o.outage {
                if watch
                    .scrape()
                    .is_some_and(|s| (s.get("advguard_camera_up") as u64) < ncams)
                {
                    noticed = true;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            servers = serve(&o.clips, &ports)?;
            let up_t = Instant::now();
            let bound = reconnect_bound(o.outage, first_frame);
            let mut back = f64::NAN;
            while up_t.elapsed() < bound + Duration::from_secs(30) {
                if watch
                    .scrape()
                    .is_some_and(|s| s.get("advguard_camera_up") as u64 == ncams)
                {
                    back = up_t.elapsed().as_secs_f64();
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let r = Reconnect {
                killed_at_s: killed_at,
                noticed,
                back_after_s: back,
                bound_s: bound.as_secs_f64(),
                within_backoff: back <= bound.as_secs_f64(),
            };
            tracing::info!(?r, "soak: RTSP server restarted");
            reconnects.push(r);
            next_kill += o.restart_every;
            continue;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let duration_s = t0.elapsed().as_secs_f64();
    watch.stop();
    drop(servers);
    let report = judge(o, &samples, &reconnects, duration_s, survived);
    write(o, &samples, &reconnects, &report)?;
    Ok(report)
}

fn judge(
    o: &SoakOptions,
    samples: &[Sample],
    reconnects: &[Reconnect],
    duration_s: f64,
    survived: bool,
) -> SoakReport {
    let warm = o.warmup.as_secs_f64();
    let mut rss: Vec<f64> = samples
        .iter()
        .filter(|s| s.t_s >= warm && s.rss_mib.is_finite())
        .map(|s| s.rss_mib)
        .collect();
    rss.sort_by(f64::total_cmp);
    let median = rss.get(rss.len() / 2).copied().unwrap_or(f64::NAN);
    let pct = |v: Option<&f64>| v.map_or(f64::NAN, |v| (v / median - 1.0) * 100.0);
    let band = (pct(rss.first()), pct(rss.last()));
    let kills_ok = reconnects.iter().filter(|r| r.within_backoff).count();
    SoakReport {
        duration_s,
        cameras: o.clips.len(),
        rss_median_mib: median,
        rss_band_pct: band,
        age_p99_max_ms: samples
            .iter()
            .map(|s| s.age_p99_ms)
            .filter(|v| !v.is_nan())
            .fold(0.0, f64::max),
        processed: samples.iter().map(|s| s.processed).sum(),
        dropped: samples.iter().map(|s| s.dropped).sum(),
        received: samples.iter().map(|s| s.received).sum(),
        kills: reconnects.len(),
        kills_within_backoff: kills_ok,
        rss_flat: !rss.is_empty() && band.0 >= -5.0 && band.1 <= 5.0,
        reconnects_ok: kills_ok == reconnects.len(),
        survived,
    }
}

fn write(
    o: &SoakOptions,
    samples: &[Sample],
    reconnects: &[Reconnect],
    report: &SoakReport,
) -> anyhow::Result<()> {
    let mut w = csv::Writer::from_path(o.out.join("soak.csv"))?;
    for s in samples {
        w.serialize(s)?;
    }
    w.flush()?;
    let mut w = csv::Writer::from_path(o.out.join("reconnects.csv"))?;
    for r in reconnects {
        w.serialize(r)?;
    }
    w.flush()?;
    std::fs::write(
        o.out.join("summary.json"),
        serde_json::to_string_pretty(report)?,
    )?;
    plot(&o.out.join("soak.png"), samples, reconnects)
}

/// Four panels over time: RSS, frame age (mean, p99), drops and reconnects per interval;
/// server kills as vertical lines.
fn plot(path: &Path, samples: &[Sample], reconnects: &[Reconnect]) -> anyhow::Result<()> {
    let (w, h) = (900u32, 820u32);
    let text = crate::viz::font_available();
    let mut buf = vec![255u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        root.fill(&WHITE)?;
        let panels = root.split_evenly((4, 1));
        let tmax = samples.last().map_or(1.0, |s| s.t_s / 60.0).max(0.1);
        type Pick = fn(&Sample) -> f64;
        let rows: [(&str, Vec<(Pick, RGBColor)>); 4] = [
            ("RSS (MiB)", vec![(|s| s.rss_mib, BLUE)]),
            (
                "frame age at decision (ms): mean, p99",
                vec![(|s| s.age_mean_ms, BLUE), (|s| s.age_p99_ms, RED)],
            ),
            (
                "frames dropped per interval",
                vec![(|s| s.dropped as f64, RED)],
            ),
            (
                "reconnects per interval",
                vec![(|s| s.reconnects as f64, BLUE)],
            ),
        ];
        for (area, (title, series)) in panels.iter().zip(rows) {
            let vals: Vec<f64> = series
                .iter()
                .flat_map(|(f, _)| samples.iter().map(f))
                .filter(|v| v.is_finite())
                .collect();
            let ymax = vals.iter().copied().fold(0.0, f64::max) * 1.15 + 1e-9;
            let ymin = if title.starts_with("RSS") {
                vals.iter().copied().fold(f64::INFINITY, f64::min) * 0.9
            } else {
                0.0
            };
            let ymin = if ymin.is_finite() && ymin < ymax {
                ymin
            } else {
                0.0
            };
            let mut b = ChartBuilder::on(area);
            b.margin(8);
            if text {
                b.caption(title, ("sans-serif", 15))
                    .x_label_area_size(24)
                    .y_label_area_size(52);
            }
            let mut ch = b.build_cartesian_2d(0f64..tmax, ymin..ymax.max(ymin + 1.0))?;
            if text {
                ch.configure_mesh().x_desc("minutes").draw()?;
            }
            for r in reconnects {
                let x = r.killed_at_s / 60.0;
                ch.draw_series(LineSeries::new(
                    [(x, ymin), (x, ymax)],
                    RGBColor(190, 190, 190),
                ))?;
            }
            for (f, c) in series {
                ch.draw_series(LineSeries::new(
                    samples
                        .iter()
                        .map(|s| (s.t_s / 60.0, f(s)))
                        .filter(|p| p.1.is_finite()),
                    &c,
                ))?;
            }
        }
        root.present()?;
    }
    let img = image::RgbImage::from_raw(w, h, buf).context("plot buffer")?;
    img.save(path)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrape_sums_cameras_and_reads_buckets() {
        let t = "# HELP x\n\
                 advguard_frames_processed_total{camera=\"a\"} 3\n\
                 advguard_frames_processed_total{camera=\"b\"} 4\n\
                 advguard_frame_age_seconds_bucket{camera=\"a\",le=\"0.001\"} 1\n\
                 advguard_frame_age_seconds_bucket{camera=\"a\",le=\"0.002\"} 10\n\
                 advguard_frame_age_seconds_bucket{camera=\"a\",le=\"+Inf\"} 10\n";
        let s = Scrape::parse(t);
        assert_eq!(s.get("advguard_frames_processed_total"), 7.0);
        assert_eq!(p99_ms(&Scrape::default(), &s), 2.0);
    }

    #[test]
    fn the_bound_covers_the_pending_attempt() {
        // A 3 s outage: attempts at ≤ 0.375, 1.125, 2.625, 5.625 s cumulative (shortest
        // jitter), so the pending step is 4 s, at most 5 s with jitter.
        let b = reconnect_bound(Duration::from_secs(3), Duration::ZERO);
        assert!((b.as_secs_f64() - 5.0).abs() < 1e-9, "{b:?}");
        assert!(
            reconnect_bound(Duration::from_secs(3600), Duration::ZERO) <= Duration::from_secs(30)
        );
    }
}
