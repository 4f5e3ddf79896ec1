//! The element's only contact with the advguard library's engine and detector API: turning
//! the element's properties into a plan, opening the guard(s), scoring one model-size frame
//! and ending the open event. Kept in one module so library refactors touch one file.

use advguard::alert::AlertHub;
use advguard::detector::event::{ClassGuess, Event};
use advguard::detector::{CameraDetector, DetectorConfig, DetectorKind, FrameScores, Profile};
use advguard::engine::compile::{CompileOptions, Mode, Seed};
use advguard::engine::manifest::Manifest;
use advguard::engine::{BackendKind, Guard, GuardOptions, top_k};
use advguard::response::{self, ResponseConfig};
use advguard::watch::config::WatchFile;
use advguard::watch::inject::InjectSpec;
use image::RgbImage;
use std::path::{Path, PathBuf};

/// The element's properties as set by the user (validated by [`plan`]).
#[derive(Debug, Clone)]
pub struct Settings {
    /// Built-in model name or a manifest TOML.
    pub model_name: String,
    /// Explicit ONNX file.
    pub model: Option<String>,
    /// tract | ort | ort-cuda | tensorrt.
    pub backend: String,
    /// Calibration profile TOML (`advguard calibrate`).
    pub profile: Option<String>,
    /// onset | entropy | concentration; default: the profile's, else onset.
    pub detector: Option<String>,
    /// Score every k-th frame.
    pub every_nth: u32,
    /// Draw the explain overlay on the outgoing video.
    pub overlay: bool,
    /// Cameras TOML whose `[[sink]]`, `[spool]` and `[alerts]` receive the events.
    pub config: Option<String>,
    /// Test/demo attacker: `fgsm:eps=4:from=8:to=12[:target=N]`.
    pub inject: Option<String>,
    /// Camera name for events and the profile lookup; default: the element's name.
    pub camera: Option<String>,
    /// Drop frames the worker cannot take (true) or make the streaming thread wait (false).
    pub leaky: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            model_name: "squeezenet1.1".into(),
            model: None,
            backend: "tract".into(),
            profile: None,
            detector: None,
            every_nth: 1,
            overlay: false,
            config: None,
            inject: None,
            camera: None,
            leaky: true,
        }
    }
}

/// Everything needed to open the guard and the detector, checked.
pub struct Plan {
    /// Camera name.
    pub camera: String,
    manifest: Manifest,
    guard: GuardOptions,
    /// Detector configuration in force (thresholds from the profile or the defaults).
    pub detector: DetectorConfig,
    inject: Option<InjectSpec>,
    /// The config file's alert tables, when `config` is set.
    pub alerts: Option<WatchFile>,
    /// Things the user should know that are not errors (logged as warnings).
    pub warnings: Vec<String>,
}

/// Checks the properties; each error is one line naming the property and the problem.
pub fn plan(s: &Settings, default_camera: &str) -> Result<Plan, String> {
    let camera = s
        .camera
        .clone()
        .unwrap_or_else(|| default_camera.to_string());
    let manifest =
        Manifest::load(&s.model_name).map_err(|e| format!("model-name={}: {e}", s.model_name))?;
    let backend: BackendKind = s
        .backend
        .parse()
        .map_err(|e| format!("backend={}: {e}", s.backend))?;
    let kind: Option<DetectorKind> = s
        .detector
        .as_deref()
        .map(|d| d.parse().map_err(|e| format!("detector={d}: {e}")))
        .transpose()?;
    let inject: Option<InjectSpec> = s
        .inject
        .as_deref()
        .map(|v| {
            v.parse().map_err(|e: String| {
                let why = e.strip_prefix(&format!("--inject {v:?}: ")).unwrap_or(&e);
                format!("inject={v}: {why}")
            })
        })
        .transpose()?;
    let mut warnings = Vec::new();
    let prof = match &s.profile {
        Some(p) => {
            let pr = Profile::load(Path::new(p)).map_err(|e| format!("profile={p}: {e}"))?;
            let found = pr.lookup(&camera, &manifest.name).cloned().or_else(|| {
                // A profile of one camera fits the one stream this element sees.
                let mine: Vec<_> = pr
                    .cameras
                    .iter()
                    .filter(|(_, c)| c.model == manifest.name)
                    .collect();
                match mine.as_slice() {
                    [(name, c)] => {
                        warnings.push(format!(
                            "profile {p}: no camera {camera:?}; using its only {} camera {name:?}",
                            manifest.name
                        ));
                        Some((*c).clone())
                    }
                    _ => None,
                }
            });
            if found.is_none() {
                warnings.push(format!(
                    "profile {p} has no calibration for camera {camera:?} and model {}: default thresholds",
                    manifest.name
                ));
            }
            found
        }
        None => None,
    };
    let kind = kind
        .or(prof.as_ref().map(|p| p.detector))
        .unwrap_or_default();
    let detector = match &prof {
        Some(p) => DetectorConfig::from_profile(kind, p),
        None => DetectorConfig::default_for(kind),
    };
    if let Some(p) = &prof
        && p.every_nth != s.every_nth
    {
        warnings.push(format!(
            "the profile was calibrated with every_nth = {}, this element scores every {} frame(s): onset jumps are not comparable",
            p.every_nth, s.every_nth
        ));
    }
    let alerts = s
        .config
        .as_deref()
        .map(|c| WatchFile::load(Path::new(c)).map_err(|e| format!("config={c}: {e}")))
        .transpose()?;
    let guard = GuardOptions {
        model_path: s.model.as_ref().map(PathBuf::from),
        backend,
        compile: Some(CompileOptions {
            mode: Mode::Guided,
            seed: Seed::LastConv,
            input_shape: None,
            ..Default::default()
        }),
    };
    Ok(Plan {
        camera,
        manifest,
        guard,
        detector,
        inject,
        alerts,
        warnings,
    })
}

/// Starts the alert hub of the config file (`None` without one).
pub fn start_alerts(plan: &Plan) -> Result<Option<AlertHub>, String> {
    match &plan.alerts {
        Some(f) => AlertHub::start(&f.sink, &f.spool, &f.alerts)
            .map(Some)
            .map_err(|e| format!("config: {e:#}")),
        None => Ok(None),
    }
}

/// What the worker learned about one frame.
#[derive(Debug, Clone)]
pub struct Scored {
    /// Stream time of the scored frame, ms.
    pub pts_ms: u64,
    /// All scores.
    pub scores: FrameScores,
    /// The driving score.
    pub score: f64,
    /// Start threshold in force.
    pub threshold: f64,
    /// Over the start threshold.
    pub over: bool,
    /// An event is open after this frame.
    pub in_event: bool,
    /// Top-1 class.
    pub top1: ClassGuess,
    /// Response box (x, y, w, h) in model pixels.
    pub bbox: [u32; 4],
    /// The frame was replaced by `inject`.
    pub injected: bool,
    /// Event messages this frame produced.
    pub events: Vec<Event>,
    /// Heat map of |response| (model size, inferno), when asked for.
    pub heat: Option<RgbImage>,
}

/// The guard, the optional plain-gradient guard of `inject`, and the camera's detector.
pub struct Scorer {
    guard: Guard,
    plain: Option<Guard>,
    detector: CameraDetector,
    inject: Option<InjectSpec>,
    response: ResponseConfig,
    camera: String,
}

impl Scorer {
    /// Opens (compiles) the guard graph; with `inject`, also the plain-gradient one.
    pub fn open(plan: &Plan) -> Result<Scorer, String> {
        let name = &plan.manifest.name;
        let guard = Guard::open(&plan.manifest, &plan.guard)
            .map_err(|e| format!("opening model {name}: {e}"))?;
        let plain =
            match &plan.inject {
                Some(_) => {
                    let mut o = plan.guard.clone();
                    o.compile = Some(CompileOptions {
                        mode: Mode::Plain,
                        seed: Seed::Input,
                        input_shape: None,
                        ..Default::default()
                    });
                    Some(Guard::open(&plan.manifest, &o).map_err(|e| {
                        format!("inject needs a plain-gradient guard of {name}: {e}")
                    })?)
                }
                None => None,
            };
        Ok(Scorer {
            guard,
            plain,
            detector: CameraDetector::new(&plan.camera, name, plan.detector.clone()),
            inject: plan.inject.clone(),
            response: ResponseConfig::default(),
            camera: plan.camera.clone(),
        })
    }

    /// Model input side in pixels: frames are squashed to size × size.
    pub fn size(&self) -> u32 {
        self.guard.size()
    }

    /// Backend name, for logs.
    pub fn backend(&self) -> String {
        self.guard.backend().to_string()
    }

    /// Scores one tight size × size RGB8 frame. `resumed`: it follows a discontinuity, so
    /// the onset jump restarts from it. `media` asks for the peak snapshot and heat map PNG of
    /// events (alert sinks carry them); `heat` for the overlay's heat map.
    pub fn score(
        &mut self,
        rgb: Vec<u8>,
        pts_ms: u64,
        resumed: bool,
        media: bool,
        heat: bool,
    ) -> Result<Scored, String> {
        if resumed {
            self.detector.stream_gap();
        }
        let s = self.size();
        let mut rgb = rgb;
        let mut injected = false;
        if let (Some(spec), Some(pg)) = (&self.inject, self.plain.as_mut())
            && spec.covers(pts_ms)
        {
            rgb = spec
                .apply(pg, &rgb, s, s)
                .map_err(|e| format!("inject: {e:#}"))?;
            injected = true;
        }
        let out = self.guard.run_rgb8(&rgb, s, s).map_err(|e| e.to_string())?;
        let probs = out.probs();
        let k = top_k(&probs, 1).first().copied().unwrap_or(0);
        let mut stats = response::analyze(out.response.view(), &self.response);
        stats.measure_texture(&rgb, s, s);
        let top1 = ClassGuess {
            index: k,
            label: self.guard.labels().get(k).cloned().unwrap_or_default(),
            prob: probs.get(k).copied().unwrap_or(0.0),
        };
        let mag = response::gray::magnitude(out.response.view());
        let frame_img = RgbImage::from_raw(s, s, rgb).unwrap_or_else(|| RgbImage::new(s, s));
        let bbox = stats.bbox;
        let caption = format!(
            "{} {} peak  {} ({:.2})",
            self.camera,
            self.detector.config().kind,
            top1.label.split(',').next().unwrap_or(""),
            top1.prob
        );
        let mut render = || {
            if !media {
                return (None, None);
            }
            let h = advguard::watch::overlay::render(
                &frame_img,
                mag.view(),
                Some(bbox),
                &caption,
                true,
            );
            (
                Some(advguard::viz::jpeg_bytes(&frame_img)),
                Some(advguard::viz::png_bytes(&h)),
            )
        };
        let input = advguard::detector::FrameInput {
            pts_ms,
            probs: &probs,
            stats: &stats,
            top1: top1.clone(),
            bbox: Some(bbox),
            // Only the fused detector reads scene cuts; CameraDetector does not.
            pixel_change: None,
            vanish: None,
            fresh: true,
        };
        let obs = self.detector.observe(&input, &mut render);
        let heat = heat.then(|| {
            // Square root, as the watch overlay does: faint responses stay visible.
            let max = mag.iter().fold(0f32, |a, &v| a.max(v));
            let norm = mag.mapv(|v| if max > 0.0 { (v / max).sqrt() } else { 0.0 });
            advguard::viz::heat_rgb(norm.view(), 0.0, 1.0)
        });
        Ok(Scored {
            pts_ms,
            scores: obs.scores,
            score: obs.score,
            threshold: self.detector.config().rule.threshold,
            over: obs.over,
            in_event: obs.in_event,
            top1,
            bbox,
            injected,
            events: obs.events,
            heat,
        })
    }

    /// The driving detector's name.
    pub fn detector_name(&self) -> &'static str {
        self.detector.config().kind.name()
    }

    /// Ends an open event (end of stream, stop); `None` when none is open.
    pub fn finish(&mut self) -> Option<Event> {
        self.detector.finish()
    }
}

/// An event message as the fields of a `GstStructure`: every key of the JSON event (nested
/// `top1` flattened to `top1_index`, `top1_label`, `top1_prob`; `bbox` an array), plus the
/// JSON line itself in `json`.
pub fn event_fields(ev: &Event) -> Vec<(String, FieldValue)> {
    let mut out = Vec::new();
    let json = serde_json::to_string(ev).unwrap_or_default();
    if let Ok(serde_json::Value::Object(map)) = serde_json::to_value(ev) {
        for (k, v) in map {
            flatten(&k, &v, &mut out);
        }
    }
    out.push(("json".into(), FieldValue::Str(json)));
    out
}

/// A value for one structure field.
#[derive(Debug, Clone, PartialEq)]
pub enum FieldValue {
    /// A string.
    Str(String),
    /// An unsigned integer.
    U64(u64),
    /// A signed integer.
    I64(i64),
    /// A float.
    F64(f64),
    /// A boolean.
    Bool(bool),
    /// A list of unsigned integers.
    U32s(Vec<u32>),
}

fn flatten(key: &str, v: &serde_json::Value, out: &mut Vec<(String, FieldValue)>) {
    use serde_json::Value;
    match v {
        Value::Null => {}
        Value::Bool(b) => out.push((key.into(), FieldValue::Bool(*b))),
        Value::Number(n) => {
            let f = if let Some(u) = n.as_u64() {
                FieldValue::U64(u)
            } else if let Some(i) = n.as_i64() {
                FieldValue::I64(i)
            } else {
                FieldValue::F64(n.as_f64().unwrap_or(f64::NAN))
            };
            out.push((key.into(), f));
        }
        Value::String(s) => out.push((key.into(), FieldValue::Str(s.clone()))),
        Value::Array(a) => out.push((
            key.into(),
            FieldValue::U32s(
                a.iter()
                    .map(|x| x.as_u64().unwrap_or(0).min(u32::MAX as u64) as u32)
                    .collect(),
            ),
        )),
        Value::Object(m) => {
            for (k, v) in m {
                flatten(&format!("{key}_{k}"), v, out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_properties_are_one_line_naming_the_property() {
        type Case = (&'static str, fn(&mut Settings));
        let cases: [Case; 4] = [
            ("backend=gpu", |s| s.backend = "gpu".into()),
            ("detector=psychic", |s| s.detector = Some("psychic".into())),
            ("inject=fgsm:eps=40", |s| {
                s.inject = Some("fgsm:eps=40:from=1:to=2".into())
            }),
            ("model-name=nosuchnet", |s| {
                s.model_name = "nosuchnet".into()
            }),
        ];
        for (want, set) in cases {
            let mut s = Settings::default();
            set(&mut s);
            let e = plan(&s, "cam").err().unwrap_or_default();
            assert!(e.starts_with(want), "{want}: {e}");
            assert!(!e.contains('\n'), "{e}");
        }
    }

    #[test]
    fn event_fields_carry_every_json_key() {
        // Built from JSON so that optional fields added to Event later keep their defaults.
        let ev: Event = serde_json::from_value(serde_json::json!({
            "id": "e-0", "event_id": "e", "phase": "start", "seq": 0, "camera": "cam",
            "model": "m", "detector": "onset", "time": "t", "start_time": "t",
            "start_pts_ms": 8000, "pts_ms": 8000, "score": 3.5, "peak_score": 3.5,
            "peak_pts_ms": 8000, "threshold": 2.9, "frames_over": 1,
            "top1": {"index": 904, "label": "window screen", "prob": 0.5},
            "bbox": [1, 2, 56, 56]
        }))
        .unwrap();
        let f = event_fields(&ev);
        let get = |k: &str| f.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        assert_eq!(get("phase"), Some(FieldValue::Str("start".into())));
        assert_eq!(get("start_pts_ms"), Some(FieldValue::U64(8000)));
        assert_eq!(get("score"), Some(FieldValue::F64(3.5)));
        assert_eq!(get("top1_index"), Some(FieldValue::U64(904)));
        assert_eq!(get("bbox"), Some(FieldValue::U32s(vec![1, 2, 56, 56])));
        let json = serde_json::to_value(&ev).unwrap();
        let keys = json.as_object().unwrap().len();
        // Every top-level key but `top1` (three flattened fields) is one field, plus `json`.
        assert_eq!(f.len(), keys - 1 + 3 + 1);
    }
}
