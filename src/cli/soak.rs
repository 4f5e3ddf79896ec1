//! `advguard soak`: live RTSP cameras for a long time, the server killed on a schedule; RSS,
//! frame age, drops and reconnects sampled into a CSV and a plot (`advguard::watch::soak`).

use advguard::watch::soak::{self, SoakOptions};
use anyhow::Context;
use std::path::PathBuf;
use std::time::Duration;

/// Arguments of `advguard soak`.
#[derive(clap::Args)]
pub struct Args {
    /// Clips to serve, one RTSP camera each (default: two of $ADVGUARD_DATA/videos).
    pub clips: Vec<PathBuf>,
    /// Total run time (`1h`, `2m`, `90s`).
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Kill and restart the RTSP server this often.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    pub restart_every: Duration,
    /// How long the server stays down at each kill.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    pub outage: Duration,
    /// One CSV row per interval.
    #[arg(long, default_value = "1m", value_parser = humantime::parse_duration)]
    pub sample_every: Duration,
    /// Excluded from the RSS band (caches, allocator arenas fill first).
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    pub warmup: Duration,
    /// Output folder (soak.csv, reconnects.csv, soak.png, summary.json, watch.log).
    #[arg(short, long, default_value = "out/soak")]
    pub out: PathBuf,
    /// Exit 1 unless every goal holds (RSS flat, reconnects within backoff, no crash).
    #[arg(long)]
    pub check: bool,
    /// Arguments passed on to `advguard watch` (after `--`), e.g. `-- --every-nth 2`.
    #[arg(last = true)]
    pub watch_args: Vec<String>,
}

/// Runs the soak and prints its summary.
pub fn run(a: Args) -> anyhow::Result<()> {
    let clips = if a.clips.is_empty() {
        let v = advguard::data_dir().join("videos");
        vec![
            v.join("car-detection.mp4"),
            v.join("one-by-one-person-detection.mp4"),
        ]
    } else {
        a.clips
    };
    let o = SoakOptions {
        duration: a.duration,
        restart_every: a.restart_every,
        outage: a.outage,
        sample_every: a.sample_every,
        warmup: a.warmup,
        clips,
        watch_bin: std::env::current_exe().context("locating the advguard binary")?,
        watch_args: a.watch_args,
        out: a.out.clone(),
    };
    let bar = indicatif::ProgressBar::new(1000);
    bar.set_style(
        indicatif::ProgressStyle::with_template("soak {bar:40} {elapsed}/{duration} {msg}")
            .expect("template"),
    );
    let r = soak::run(&o, &|f, s| {
        bar.set_position((f * 1000.0) as u64);
        bar.set_message(format!(
            "rss {:.0} MiB, age p99 {:.0} ms, dropped {}",
            s.rss_mib, s.age_p99_ms, s.dropped
        ));
    })?;
    bar.finish_and_clear();
    println!("{}", serde_json::to_string_pretty(&r)?);
    eprintln!(
        "soak: wrote {}/{{soak.csv,reconnects.csv,soak.png,summary.json}}",
        a.out.display()
    );
    if a.check {
        anyhow::ensure!(
            r.survived,
            "soak: the watch process died (see {}/watch.log)",
            a.out.display()
        );
        anyhow::ensure!(
            r.reconnects_ok,
            "soak: {} of {} server restarts were not followed by a reconnect within the backoff",
            r.kills - r.kills_within_backoff,
            r.kills
        );
        anyhow::ensure!(
            r.rss_flat,
            "soak: RSS left the ±5 % band after warm-up: {:+.1} % .. {:+.1} % of {:.0} MiB",
            r.rss_band_pct.0,
            r.rss_band_pct.1,
            r.rss_median_mib
        );
    }
    Ok(())
}
