//! Judging scored sessions: per-clip calibration by false-alarm budget, the fused detector
//! replayed on the test sessions, and the operator's numbers.

use super::Part;
use super::attacks::{StretchKind, iou};
use super::score::{FrameRec, SessionRec};
use crate::detector::budget::{self, Sample};
use crate::detector::cascade::{Cascade, CascadeCounts, GuardEvery, Plan};
use crate::detector::event::{Event, Phase};
use crate::detector::fused::{FusedConfig, FusedDetector};
use crate::detector::state::CameraState;
use crate::eval::table::Table;
use plotters::prelude::*;
use std::collections::BTreeMap;
use std::path::Path;

/// Samples of a scored session, as the calibration sees them.
pub fn samples(s: &SessionRec) -> Vec<Sample> {
    s.frames
        .iter()
        .zip(&s.probs)
        .map(|(f, p)| Sample {
            pts_ms: f.pts_ms,
            probs: p.clone(),
            entropy: f.entropy,
            concentration: f.concentration,
            box_texture: f.box_texture,
            pixel_change: Some(f.pixel_change),
            // Sessions of classifiers: no tracked objects.
            vanish: None,
        })
        .collect()
}

/// One frame's verdict in a replay.
#[derive(Debug, Clone)]
pub struct Trace {
    /// Stream time, ms.
    pub pts_ms: u64,
    /// Per signal: score / threshold.
    pub ratios: Vec<(String, f64)>,
    /// An event is open.
    pub in_event: bool,
}

/// Replays the detector over one session: its events (start and end messages) and trace.
pub fn replay(s: &SessionRec, cfg: &FusedConfig) -> (Vec<Event>, Vec<Trace>) {
    replay_cascade(s, cfg, GuardEvery::Every(1)).0
}

/// The replay as a camera running the cascade at `every` would see the session: frames the
/// cascade leaves to the forward pass carry the last guard frame's response statistics,
/// marked stale (the stored class distributions are the forward pass's, the same model's).
/// Also returns the frames by pass.
pub fn replay_cascade(
    s: &SessionRec,
    cfg: &FusedConfig,
    every: GuardEvery,
) -> ((Vec<Event>, Vec<Trace>), CascadeCounts) {
    let mut d = FusedDetector::new("eval", "", cfg.clone());
    let mut cascade = Cascade::new(every, d.response_need(), 1);
    let mut events = Vec::new();
    let mut trace = Vec::new();
    // The last guarded frame: its response statistics hold on the cascade's forward-only ones.
    let mut last: Option<&FrameRec> = None;
    for (i, (f, p)) in s.frames.iter().zip(&s.probs).enumerate() {
        let watching = d.wants_response();
        let (guarded, forwarded) = match cascade.plan(i as u64, f.pts_ms, watching) {
            Plan::Guard(_) => (true, false),
            Plan::Forward => (cascade.escalate(p).is_some(), true),
        };
        // Costs are not replayed: a fixed k needs none.
        cascade.record(p, guarded.then_some(0.0), forwarded.then_some(0.0));
        if guarded || last.is_none() {
            last = Some(f);
        }
        let g = last.unwrap_or(f);
        let sample = Sample {
            pts_ms: f.pts_ms,
            probs: p.clone(),
            entropy: g.entropy,
            concentration: g.concentration,
            box_texture: g.box_texture,
            pixel_change: Some(f.pixel_change),
            vanish: None,
        };
        let mut st = sample.stats();
        st.bbox = g.bbox;
        let mut input = budget::input(&sample, &st);
        input.bbox = Some(g.bbox);
        input.fresh = guarded;
        let o = d.observe(&input, &mut || (None, None));
        let ratios = cfg
            .signals
            .iter()
            .map(|(k, c)| {
                (
                    k.name().to_string(),
                    k.score(&o.scores) / c.threshold.max(1e-12),
                )
            })
            .collect();
        trace.push(Trace {
            pts_ms: f.pts_ms,
            ratios,
            in_event: o.in_event,
        });
        events.extend(o.events.into_iter().filter(|e| e.phase != Phase::Update));
    }
    events.extend(d.finish());
    ((events, trace), cascade.counts())
}

/// Per kind and clip.
#[derive(Debug, Clone, Default)]
pub struct KindStats {
    /// Stretches.
    pub n: usize,
    /// Detected (an event starts inside the stretch).
    pub detected: usize,
    /// Detected by the signal meant for the kind.
    pub by_intended: usize,
    /// Frames from the stretch's first frame to the alert (the start message's frame).
    pub latency_frames: Vec<f64>,
    /// The detecting event ended within 1 s of the attack's end.
    pub ended_in_1s: usize,
    /// Event starts during the stretch (and 1 s after).
    pub events: usize,
    /// Box IoU with the pasted patch at the alert (patch kinds).
    pub iou: Vec<f64>,
}

/// The whole judgement of one model.
#[derive(Debug, Clone, Default)]
pub struct Judgement {
    /// Clean test stream time, hours.
    pub clean_hours: f64,
    /// False events on clean test time.
    pub false_alarms: usize,
    /// Per (clip, kind).
    pub kinds: BTreeMap<(String, StretchKind), KindStats>,
    /// Calibration notes per clip.
    pub notes: BTreeMap<String, Vec<String>>,
    /// Thresholds per clip.
    pub thresholds: BTreeMap<String, String>,
    /// Test frames by pass (the cascade).
    pub cascade: CascadeCounts,
    /// Per clip: where the false alarms come from.
    pub clean_by_clip: BTreeMap<String, CleanStats>,
}

/// One clip's clean test time and the false alarms on it, by the signal that fired.
#[derive(Debug, Clone, Default)]
pub struct CleanStats {
    /// Clean test stream time, hours.
    pub hours: f64,
    /// False events.
    pub alarms: usize,
    /// False events by the signal that opened them.
    pub by_signal: BTreeMap<String, usize>,
}

impl Judgement {
    /// False alarms per clean camera-hour, all clips.
    pub fn false_alarms_per_hour(&self) -> f64 {
        self.false_alarms as f64 / self.clean_hours.max(1e-9)
    }

    /// The per-clip false-alarm table: rate and the signals behind it.
    pub fn clean_table(&self) -> Table {
        let signals: Vec<String> = self
            .clean_by_clip
            .values()
            .flat_map(|c| c.by_signal.keys().cloned())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        let mut head = vec!["clip", "clean hours", "false alarms", "per camera-hour"];
        head.extend(signals.iter().map(String::as_str));
        let mut t = Table::new(&head);
        for (clip, c) in &self.clean_by_clip {
            let mut row = vec![
                clip.clone(),
                format!("{:.2}", c.hours),
                c.alarms.to_string(),
                format!("{:.1}", c.alarms as f64 / c.hours.max(1e-9)),
            ];
            row.extend(
                signals
                    .iter()
                    .map(|k| c.by_signal.get(k).copied().unwrap_or(0).to_string()),
            );
            t.rows.push(row);
        }
        t
    }
}

/// Calibrates per clip on its calibration sessions.
pub fn calibrate(
    sessions: &[SessionRec],
    base: &FusedConfig,
    budget: f64,
) -> BTreeMap<String, (FusedConfig, Vec<String>)> {
    let mut by_clip: BTreeMap<String, Vec<Vec<Sample>>> = BTreeMap::new();
    for s in sessions.iter().filter(|s| s.plan.part == Part::Calibration) {
        by_clip.entry(s.clip.clone()).or_default().push(samples(s));
    }
    by_clip
        .into_iter()
        .map(|(clip, ss)| {
            let c = budget::calibrate(&ss, base, budget);
            (clip, (c.config, c.notes))
        })
        .collect()
}

/// Replays the test sessions with per-clip configurations, the cascade at `every`.
pub fn judge(
    sessions: &[SessionRec],
    cfgs: &BTreeMap<String, (FusedConfig, Vec<String>)>,
    every: GuardEvery,
) -> Judgement {
    let mut j = Judgement::default();
    for (clip, (c, notes)) in cfgs {
        j.notes.insert(clip.clone(), notes.clone());
        j.thresholds.insert(clip.clone(), c.describe());
    }
    for s in sessions.iter().filter(|s| s.plan.part == Part::Test) {
        let Some((cfg, _)) = cfgs.get(&s.clip) else {
            continue;
        };
        let f_ms = s.frames.get(1).map_or(100, |f| f.pts_ms.max(1));
        let dur = s.frames.last().map_or(0, |f| f.pts_ms + f_ms);
        let ((events, _), counts) = replay_cascade(s, cfg, every);
        j.cascade.guard += counts.guard;
        j.cascade.forward += counts.forward;
        j.cascade.escalated += counts.escalated;
        let starts: Vec<&Event> = events.iter().filter(|e| e.phase == Phase::Start).collect();
        let (attack_lo, attack_hi) = s
            .plan
            .stretch
            .map_or((u64::MAX, u64::MAX), |st| (st.start_ms, st.end_ms + 1000));
        let hours = dur.saturating_sub(attack_hi.saturating_sub(attack_lo).min(dur)) as f64 / 3.6e6;
        j.clean_hours += hours;
        let clean = j.clean_by_clip.entry(s.clip.clone()).or_default();
        clean.hours += hours;
        for e in &starts {
            // The start message is sent at the frame it fired; its pts_ms is that frame.
            if !(attack_lo..attack_hi).contains(&e.pts_ms) {
                j.false_alarms += 1;
                clean.alarms += 1;
                *clean.by_signal.entry(e.detector.clone()).or_default() += 1;
            }
        }
        let Some(st) = s.plan.stretch else {
            continue;
        };
        let k = j.kinds.entry((s.clip.clone(), st.kind)).or_default();
        k.n += 1;
        let inside: Vec<&&Event> = starts
            .iter()
            .filter(|e| (st.start_ms..st.end_ms).contains(&e.pts_ms))
            .collect();
        k.events += starts
            .iter()
            .filter(|e| (st.start_ms..st.end_ms + 1000).contains(&e.pts_ms))
            .count();
        if let Some(first) = inside.first() {
            k.detected += 1;
            if first.detector == st.kind.intended_signal()
                || first
                    .signals
                    .iter()
                    .any(|n| n.signal == st.kind.intended_signal())
            {
                k.by_intended += 1;
            }
            k.latency_frames
                .push((first.pts_ms - st.start_ms) as f64 / f_ms as f64);
            let end = events
                .iter()
                .find(|e| e.phase == Phase::End && e.event_id == first.event_id);
            if let Some(end) = end
                && end.pts_ms + 1 >= st.end_ms.saturating_sub(f_ms)
                && end.pts_ms <= st.end_ms + 1000
            {
                k.ended_in_1s += 1;
            }
            if st.kind.in_scene() {
                let frame = s.frames.iter().find(|f| f.pts_ms == first.pts_ms);
                if let (Some(f), Some(b)) = (frame, first.bbox)
                    && let Some(pb) = f.patch_box
                {
                    k.iou.push(iou(b, pb));
                }
            }
        }
    }
    j
}

/// What the cascade costs in detection: per k, the share of test frames that got the guard
/// pass, the escalations and false alarms per hour; per k and stretch kind (all clips), the
/// share detected, detected within 5 frames, and the median frames to alert.
pub fn cascade_table(
    sessions: &[SessionRec],
    cfgs: &BTreeMap<String, (FusedConfig, Vec<String>)>,
    ks: &[u32],
) -> Table {
    let mut t = Table::new(&[
        "k",
        "kind",
        "guard frames",
        "escalated (of guard frames)",
        "false alarms / h",
        "detected",
        "detected ≤ 5 frames",
        "frames to alert (median)",
    ]);
    for &k in ks {
        let j = judge(sessions, cfgs, GuardEvery::Every(k.max(1)));
        let c = j.cascade;
        let all = (c.guard + c.forward).max(1) as f64;
        let mut by_kind: BTreeMap<StretchKind, (usize, usize, usize, Vec<f64>)> = BTreeMap::new();
        for ((_, kind), s) in &j.kinds {
            let e = by_kind.entry(*kind).or_default();
            e.0 += s.n;
            e.1 += s.detected;
            e.2 += s.latency_frames.iter().filter(|&&l| l <= 5.0).count();
            e.3.extend(&s.latency_frames);
        }
        let mut first = true;
        for (kind, (n, det, fast, lat)) in by_kind {
            let (guard, esc, fa) = if first {
                (
                    format!("{:.2}", c.guard as f64 / all),
                    format!("{:.2}", c.escalated as f64 / c.guard.max(1) as f64),
                    format!("{:.2}", j.false_alarms_per_hour()),
                )
            } else {
                Default::default()
            };
            first = false;
            t.rows.push(vec![
                k.to_string(),
                kind.to_string(),
                guard,
                esc,
                fa,
                format!("{:.2}", det as f64 / n.max(1) as f64),
                format!("{:.2}", fast as f64 / n.max(1) as f64),
                if lat.is_empty() {
                    "-".into()
                } else {
                    format!("{:.1}", quantile(&lat, 0.5))
                },
            ]);
        }
    }
    t
}

fn quantile(v: &[f64], q: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    crate::detector::calibrate::quantile_sorted(&s, q)
}

/// The operator's table: one row per clip and kind, and the false-alarm row.
pub fn table(j: &Judgement) -> Table {
    let mut t = Table::new(&[
        "clip",
        "kind",
        "stretches",
        "detected",
        "by intended signal",
        "frames to alert (median / p95)",
        "ends ≤ 1 s after",
        "events per stretch",
        "patch IoU (median)",
    ]);
    let mut totals: BTreeMap<StretchKind, KindStats> = BTreeMap::new();
    for ((clip, kind), k) in &j.kinds {
        row(&mut t, clip, *kind, k);
        let a = totals.entry(*kind).or_default();
        a.n += k.n;
        a.detected += k.detected;
        a.by_intended += k.by_intended;
        a.latency_frames.extend(&k.latency_frames);
        a.ended_in_1s += k.ended_in_1s;
        a.events += k.events;
        a.iou.extend(&k.iou);
    }
    for (kind, k) in &totals {
        row(&mut t, "**all**", *kind, k);
    }
    t
}

fn row(t: &mut Table, clip: &str, kind: StretchKind, k: &KindStats) {
    let share = |a: usize| format!("{:.2} ({a}/{})", a as f64 / k.n.max(1) as f64, k.n);
    t.rows.push(vec![
        clip.to_string(),
        kind.name().to_string(),
        k.n.to_string(),
        share(k.detected),
        share(k.by_intended),
        if k.latency_frames.is_empty() {
            "-".into()
        } else {
            format!(
                "{:.0} / {:.0}",
                quantile(&k.latency_frames, 0.5),
                quantile(&k.latency_frames, 0.95)
            )
        },
        if k.detected == 0 {
            "-".into()
        } else {
            format!("{:.2}", k.ended_in_1s as f64 / k.detected as f64)
        },
        format!("{:.2}", k.events as f64 / k.n.max(1) as f64),
        if k.iou.is_empty() {
            "-".into()
        } else {
            format!("{:.2}", quantile(&k.iou, 0.5))
        },
    ]);
}

/// False alarms per hour and detection within 5 frames, as every threshold is scaled by
/// each factor: the operator's trade-off curve.
pub fn tradeoff(
    sessions: &[SessionRec],
    cfgs: &BTreeMap<String, (FusedConfig, Vec<String>)>,
    factors: &[f64],
) -> Vec<(f64, f64, f64)> {
    factors
        .iter()
        .map(|&a| {
            let scaled: BTreeMap<String, (FusedConfig, Vec<String>)> = cfgs
                .iter()
                .map(|(k, (c, n))| {
                    let mut c = c.clone();
                    for (_, s) in c.signals.iter_mut() {
                        s.threshold *= a;
                        s.end_threshold *= a;
                    }
                    (k.clone(), (c, n.clone()))
                })
                .collect();
            let j = judge(sessions, &scaled, GuardEvery::Every(1));
            let (mut n, mut fast) = (0usize, 0usize);
            for k in j.kinds.values() {
                n += k.n;
                fast += k.latency_frames.iter().filter(|&&l| l <= 5.0).count();
            }
            (a, j.false_alarms_per_hour(), fast as f64 / n.max(1) as f64)
        })
        .collect()
}

/// Plots: the trade-off curve, and score traces of a few attacked sessions with the stretch
/// shaded.
pub fn plots(
    dir: &Path,
    model: &str,
    sessions: &[SessionRec],
    cfgs: &BTreeMap<String, (FusedConfig, Vec<String>)>,
    curve: &[(f64, f64, f64)],
) -> anyhow::Result<()> {
    let text = crate::viz::font_available();
    {
        let path = dir.join("tradeoff.png");
        let mut buf = vec![255u8; 720 * 480 * 3];
        let root = BitMapBackend::with_buffer(&mut buf, (720, 480)).into_drawing_area();
        root.fill(&WHITE)?;
        let xmax = curve.iter().map(|c| c.1).fold(1.0, f64::max) * 1.1;
        let mut b = ChartBuilder::on(&root);
        b.margin(12);
        if text {
            b.caption(
                format!("{model}: false alarms vs detection ≤ 5 frames"),
                ("sans-serif", 18),
            )
            .x_label_area_size(36)
            .y_label_area_size(44);
        }
        let mut ch = b.build_cartesian_2d(0f64..xmax, 0f64..1.02f64)?;
        if text {
            ch.configure_mesh()
                .x_desc("false alarms per camera-hour")
                .y_desc("stretches detected within 5 frames")
                .draw()?;
        }
        ch.draw_series(LineSeries::new(curve.iter().map(|c| (c.1, c.2)), &BLUE))?;
        ch.draw_series(
            curve
                .iter()
                .map(|c| Circle::new((c.1, c.2), 3, BLUE.filled())),
        )?;
        root.present()?;
        drop(ch);
        drop(root);
        save_png(&path, buf, 720, 480)?;
    }
    let mut shown = 0;
    for s in sessions.iter().filter(|s| s.plan.stretch.is_some()) {
        if shown >= 4 {
            break;
        }
        let Some(st) = s.plan.stretch else { continue };
        if shown > 0 && s.plan.stretch.map(|x| x.kind) == sessions[0].plan.stretch.map(|x| x.kind) {
            continue;
        }
        let Some((cfg, _)) = cfgs.get(&s.clip) else {
            continue;
        };
        let (_, trace) = replay(s, cfg);
        let path = dir.join(format!("trace-{}-{}.png", st.kind.name(), s.plan.id));
        let mut buf = vec![255u8; 900 * 320 * 3];
        let root = BitMapBackend::with_buffer(&mut buf, (900, 320)).into_drawing_area();
        root.fill(&WHITE)?;
        let tmax = trace.last().map_or(1.0, |t| t.pts_ms as f64 / 1000.0);
        let ymax = trace
            .iter()
            .flat_map(|t| t.ratios.iter().map(|r| r.1))
            .fold(1.5, f64::max)
            .min(20.0);
        let mut b = ChartBuilder::on(&root);
        b.margin(10);
        if text {
            b.caption(
                format!(
                    "{model} · {} · {} (shaded: attack; y = score / threshold)",
                    s.clip, st.kind
                ),
                ("sans-serif", 16),
            )
            .x_label_area_size(30)
            .y_label_area_size(40);
        }
        let mut ch = b.build_cartesian_2d(0f64..tmax, 0f64..ymax)?;
        if text {
            ch.configure_mesh().x_desc("stream time, s").draw()?;
        }
        ch.draw_series(std::iter::once(Rectangle::new(
            [
                (st.start_ms as f64 / 1000.0, 0.0),
                (st.end_ms as f64 / 1000.0, ymax),
            ],
            RGBColor(255, 200, 200).filled(),
        )))?;
        ch.draw_series(std::iter::once(PathElement::new(
            vec![(0.0, 1.0), (tmax, 1.0)],
            BLACK,
        )))?;
        let colors = [BLUE, GREEN, MAGENTA];
        let names: Vec<String> = trace
            .first()
            .map_or(vec![], |t| t.ratios.iter().map(|r| r.0.clone()).collect());
        for (i, name) in names.iter().enumerate() {
            let c = colors[i % colors.len()];
            let s = ch.draw_series(LineSeries::new(
                trace
                    .iter()
                    .map(|t| (t.pts_ms as f64 / 1000.0, t.ratios[i].1.min(ymax))),
                c,
            ))?;
            if text {
                s.label(name.clone())
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], c));
            }
        }
        ch.draw_series(
            trace
                .iter()
                .filter(|t| t.in_event)
                .map(|t| Circle::new((t.pts_ms as f64 / 1000.0, ymax * 0.97), 2, RED.filled())),
        )?;
        if text {
            ch.configure_series_labels().border_style(BLACK).draw()?;
        }
        root.present()?;
        drop(ch);
        drop(root);
        save_png(&path, buf, 900, 320)?;
        shown += 1;
    }
    Ok(())
}

fn save_png(path: &Path, buf: Vec<u8>, w: u32, h: u32) -> anyhow::Result<()> {
    let img = image::RgbImage::from_raw(w, h, buf).ok_or_else(|| anyhow::anyhow!("plot buffer"))?;
    img.save(path)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// The onset margin: per stretch kind, the median over stretches of the largest onset score in
/// the first 5 frames of the stretch, divided by the largest onset score on the clean test
/// footage of the same clip. Above 1 the onset stands out from every clean jump. `cfgs` are the
/// clips' calibrations: each clip's motion scale comes from there.
pub fn onset_margins(
    sessions: &[SessionRec],
    base: &FusedConfig,
    cfgs: &BTreeMap<String, (FusedConfig, Vec<String>)>,
) -> BTreeMap<StretchKind, f64> {
    let mut clean_max: BTreeMap<String, f64> = BTreeMap::new();
    let mut peaks: Vec<(String, StretchKind, f64)> = Vec::new();
    for s in sessions.iter().filter(|s| s.plan.part == Part::Test) {
        let mut cfg = base.clone();
        if let Some((c, _)) = cfgs.get(&s.clip) {
            cfg.motion_scale = c.motion_scale;
        }
        let scores = budget::signal_scores(&samples(s), &cfg, crate::detector::SignalKind::Onset);
        let (lo, hi) = s
            .plan
            .stretch
            .map_or((u64::MAX, u64::MAX), |st| (st.start_ms, st.end_ms + 1000));
        let mut onset_peak: f64 = 0.0;
        for (f, v) in s.frames.iter().zip(&scores) {
            if (lo..hi).contains(&f.pts_ms) {
                if f.pts_ms < lo + 5 * s.frames.get(1).map_or(100, |g| g.pts_ms) {
                    onset_peak = onset_peak.max(*v);
                }
            } else {
                let m = clean_max.entry(s.clip.clone()).or_insert(0.0);
                *m = m.max(*v);
            }
        }
        if let Some(st) = s.plan.stretch
            && st.kind.has_onset()
        {
            peaks.push((s.clip.clone(), st.kind, onset_peak));
        }
    }
    let mut by: BTreeMap<StretchKind, Vec<f64>> = BTreeMap::new();
    for (clip, kind, p) in peaks {
        let c = clean_max.get(&clip).copied().unwrap_or(0.0).max(1e-9);
        by.entry(kind).or_default().push(p / c);
    }
    by.into_iter()
        .map(|(k, v)| (k, quantile(&v, 0.5)))
        .collect()
}
