//! Model manifests (`engines/*.toml`) and model lookup: explicit path, `$ADVGUARD_MODELS`,
//! the cache dir, then a download checked against its sha256.

use super::preprocess::{Preprocess, Resize};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// Folder searched for model and label files before the cache.
pub const MODELS_ENV: &str = "ADVGUARD_MODELS";
/// Overrides the cache dir (default: the platform cache dir + `advguard/models`).
pub const CACHE_ENV: &str = "ADVGUARD_CACHE";

/// Manifests shipped inside the binary, so `--model-name squeezenet1.1` works from anywhere.
const BUILTIN: &[(&str, &str)] = &[
    (
        "squeezenet1.1",
        include_str!("../../engines/squeezenet1.1.toml"),
    ),
    (
        "efficientnet_lite0",
        include_str!("../../engines/efficientnet_lite0.toml"),
    ),
    (
        "mobilenet_v2",
        include_str!("../../engines/mobilenet_v2.toml"),
    ),
    (
        "centernet_mobilenetv3_coco",
        include_str!("../../engines/centernet_mobilenetv3_coco.toml"),
    ),
];

/// The default model: small, fast on 2 CPU cores, and the one the paper-style tables use.
pub const DEFAULT_MODEL: &str = "squeezenet1.1";

/// Whether the model's own output is already a Softmax.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputKind {
    /// Softmax probabilities.
    Probabilities,
    /// Raw class scores.
    Logits,
}

/// Where a file can be downloaded from.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Download {
    /// HTTP(S) URL.
    pub url: String,
    /// File name in the cache.
    pub file: String,
    /// Expected sha256 of the downloaded bytes, hex.
    pub sha256: String,
}

/// The model file entry of a manifest.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelFile {
    /// File name looked up under `$ADVGUARD_MODELS` and the cache.
    pub file: String,
    /// Expected sha256 of `file`, hex; checked when present.
    pub sha256: Option<String>,
    /// Fallback download when the file is nowhere local.
    pub download: Option<Download>,
}

/// What a model's outputs mean, and so how a frame's result is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelKind {
    /// One score per class (ImageNet classifiers); the default, so older manifests stay valid.
    #[default]
    Classifier,
    /// A CenterNet-style object detector: a per-class centre heat map plus box sizes.
    Detector,
}

/// How a CenterNet-style detector's outputs are decoded (the `[detector]` table).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetectorSpec {
    /// Graph output holding the per-class centre heat map, 1×classes×H×W, already in [0, 1].
    pub heatmap: String,
    /// Graph output holding, per cell, the distances from the centre to the box's left, top,
    /// right and bottom edges (1×4×H×W, model-input pixels).
    pub boxes: String,
    /// Side of the window a peak must be the maximum of (max-pool NMS); odd.
    #[serde(default = "default_nms")]
    pub nms: usize,
    /// At most this many peaks over all classes and cells are kept.
    #[serde(default = "default_top_k")]
    pub top_k: usize,
    /// Peaks scoring below this are not detections.
    #[serde(default = "default_threshold")]
    pub threshold: f32,
    /// Heat-map channels that seed the backward pass by default (`seed_class = 0` or
    /// `[0, 2]`); absent: every channel.
    #[serde(default, deserialize_with = "one_or_many")]
    pub seed_class: Option<Vec<usize>>,
    /// What of those channels seeds it: their detected peaks (the default) or the whole map.
    #[serde(default)]
    pub seed: DetectorSeed,
}

/// What of a detector's heat map seeds the backward pass (`detector.seed`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DetectorSeed {
    /// The sum of the detected peaks: the response explains the objects the detector reports.
    #[default]
    Peaks,
    /// ½‖heat map‖² of the channels: every cell, detected or not.
    Heatmap,
}

/// `0` or `[0, 2]`.
fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Vec<usize>>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(usize),
        Many(Vec<usize>),
    }
    Ok(Some(match OneOrMany::deserialize(d)? {
        OneOrMany::One(c) => vec![c],
        OneOrMany::Many(v) => v,
    }))
}

fn default_nms() -> usize {
    3
}
fn default_top_k() -> usize {
    100
}
fn default_threshold() -> f32 {
    0.3
}

/// A model manifest: how to find, feed and trace one classifier or detector.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// Short name.
    pub name: String,
    /// One-line description with provenance and licence.
    pub description: String,
    /// Classifier or detector.
    pub kind: ModelKind,
    /// Name of the image input of the ONNX graph.
    pub input: String,
    /// Tensor whose activations seed the guided backprop (the paper's last conv layer).
    pub trace: Option<String>,
    /// Whether the model output is probabilities or logits (detectors: `Logits`, nothing to undo).
    pub output: OutputKind,
    /// Labels file (`index,names` per line), looked up like the model.
    pub labels: Option<String>,
    /// Input preprocessing.
    pub preprocess: Preprocess,
    /// Decoding of a detector's outputs; `Some` exactly when `kind` is `Detector`.
    pub detector: Option<DetectorSpec>,
    /// The model file.
    pub model: ModelFile,
}

/// The manifest as written; [`Manifest::parse`] checks that its keys fit together.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    name: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    kind: ModelKind,
    input: String,
    trace: Option<String>,
    output: Option<OutputKind>,
    labels: Option<String>,
    preprocess: Preprocess,
    detector: Option<DetectorSpec>,
    model: ModelFile,
}

impl RawManifest {
    fn check(self) -> Result<Manifest, String> {
        let output = match (self.kind, self.output, &self.detector) {
            (ModelKind::Classifier, _, Some(_)) => {
                return Err("a [detector] table needs kind = \"detector\"".into());
            }
            (ModelKind::Classifier, None, None) => {
                return Err("missing key `output` (probabilities or logits)".into());
            }
            (ModelKind::Classifier, Some(o), None) => o,
            (ModelKind::Detector, _, None) => {
                return Err("kind = \"detector\" needs a [detector] table (heatmap, boxes)".into());
            }
            (ModelKind::Detector, Some(_), Some(_)) => {
                return Err(
                    "key `output` is for classifiers; a detector names its outputs in [detector]"
                        .into(),
                );
            }
            (ModelKind::Detector, None, Some(d)) => {
                if d.nms == 0 || d.nms % 2 == 0 {
                    return Err(format!("detector.nms = {} must be odd (3 for 3×3)", d.nms));
                }
                if d.top_k == 0 {
                    return Err("detector.top_k must be at least 1".into());
                }
                if !(0.0..=1.0).contains(&d.threshold) {
                    return Err(format!(
                        "detector.threshold = {} is outside [0, 1] (heat-map scores)",
                        d.threshold
                    ));
                }
                if d.heatmap == d.boxes {
                    return Err(format!(
                        "detector.heatmap and detector.boxes are both {:?}",
                        d.heatmap
                    ));
                }
                // Boxes are mapped back to the frame by scaling; a crop would need an offset.
                if self.preprocess.resize != Resize::Squash {
                    return Err("a detector needs preprocess.resize = \"squash\" (boxes are scaled back to the frame)".into());
                }
                if self.trace.is_some() {
                    return Err(
                        "key `trace` is for classifiers; a detector seeds at detector.seed and detector.seed_class"
                            .into(),
                    );
                }
                OutputKind::Logits
            }
        };
        Ok(Manifest {
            name: self.name,
            description: self.description,
            kind: self.kind,
            input: self.input,
            trace: self.trace,
            output,
            labels: self.labels,
            preprocess: self.preprocess,
            detector: self.detector,
            model: self.model,
        })
    }
}

/// Errors while finding or checking a model.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// No such built-in manifest and no such file.
    #[error("unknown model {0:?}: not a built-in manifest ({1}) and not a manifest file")]
    Unknown(String, String),
    /// The manifest TOML is malformed or has an unknown key.
    #[error("manifest {path}: {msg}")]
    Parse { path: String, msg: String },
    /// The model file is nowhere to be found and cannot be downloaded.
    #[error(
        "model file {file:?} not found (looked in: {looked}); set {MODELS_ENV} or pass --model PATH"
    )]
    NotFound { file: String, looked: String },
    /// A file's checksum does not match the manifest.
    #[error("{path}: sha256 {got} does not match the manifest's {want}")]
    Checksum {
        path: String,
        got: String,
        want: String,
    },
    /// The download failed.
    #[error("download {url}: {msg}")]
    Download { url: String, msg: String },
    /// A local I/O error.
    #[error("{path}: {msg}")]
    Io { path: String, msg: String },
}

impl Manifest {
    /// Names of the built-in manifests.
    pub fn builtin_names() -> Vec<&'static str> {
        BUILTIN.iter().map(|(n, _)| *n).collect()
    }

    /// A built-in manifest by name, or a manifest TOML file by path.
    pub fn load(name_or_path: &str) -> Result<Manifest, ManifestError> {
        if let Some((_, text)) = BUILTIN.iter().find(|(n, _)| *n == name_or_path) {
            return Self::parse(text, name_or_path);
        }
        let p = Path::new(name_or_path);
        if p.extension().is_some_and(|e| e == "toml") && p.exists() {
            let text = std::fs::read_to_string(p).map_err(|e| io_err(p, e))?;
            return Self::parse(&text, name_or_path);
        }
        Err(ManifestError::Unknown(
            name_or_path.into(),
            Self::builtin_names().join(", "),
        ))
    }

    /// Parses manifest TOML; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Manifest, ManifestError> {
        // toml's own Display draws the source line under the message; one line is kept instead.
        let raw: RawManifest = toml::from_str(text).map_err(|e| ManifestError::Parse {
            path: origin.into(),
            msg: match e.span() {
                Some(sp) => format!(
                    "line {}: {}",
                    text[..sp.start.min(text.len())].matches('\n').count() + 1,
                    e.message().trim().replace('\n', " ")
                ),
                None => e.message().trim().replace('\n', " "),
            },
        })?;
        raw.check().map_err(|msg| ManifestError::Parse {
            path: origin.into(),
            msg,
        })
    }

    /// The seed a guard uses when asked for the default (`last-conv`): the trace layer of a
    /// classifier, the seed channel (or the whole) heat map of a detector; `None`: the compiler's own.
    pub fn default_seed(&self) -> Option<crate::engine::compile::Seed> {
        use crate::engine::compile::Seed;
        match &self.detector {
            Some(d) => Some(match (d.seed, &d.seed_class) {
                (DetectorSeed::Peaks, c) => Seed::Peaks {
                    tensor: d.heatmap.clone(),
                    // Every channel when none is named (the classes come from the model).
                    channels: c.clone().unwrap_or_default(),
                    window: d.nms,
                    threshold: d.threshold,
                },
                (DetectorSeed::Heatmap, Some(c)) => Seed::Channel(d.heatmap.clone(), c.clone()),
                (DetectorSeed::Heatmap, None) => Seed::Tensor(d.heatmap.clone()),
            }),
            None => self.trace.clone().map(Seed::Tensor),
        }
    }

    /// Finds the model file: `explicit`, then `$ADVGUARD_MODELS`, then the cache, then the download.
    pub fn resolve_model(&self, explicit: Option<&Path>) -> Result<PathBuf, ManifestError> {
        if let Some(p) = explicit {
            if !p.exists() {
                return Err(ManifestError::NotFound {
                    file: p.display().to_string(),
                    looked: "--model".into(),
                });
            }
            return Ok(p.to_path_buf());
        }
        let mut names = vec![(self.model.file.as_str(), self.model.sha256.as_deref())];
        if let Some(d) = &self.model.download {
            names.push((d.file.as_str(), Some(d.sha256.as_str())));
        }
        resolve_file(&names, self.model.download.as_ref())
    }

    /// Finds the labels file the same way (no download); `None` if the manifest names none.
    pub fn resolve_labels(&self) -> Option<PathBuf> {
        let f = self.labels.as_deref()?;
        resolve_file(&[(f, None)], None).ok()
    }

    /// Number of `index,name` lines in the labels file (0 when there is none).
    pub fn label_count(&self) -> usize {
        self.resolve_labels()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .map_or(0, |t| t.lines().filter(|l| l.contains(',')).count())
    }

    /// Class names, one per class index; falls back to `class N` when no labels file is found.
    pub fn labels(&self, classes: usize) -> Vec<String> {
        let mut out: Vec<String> = (0..classes).map(|i| format!("class {i}")).collect();
        match self.resolve_labels() {
            Some(p) => match std::fs::read_to_string(&p) {
                Ok(text) => {
                    for line in text.lines() {
                        if let Some((i, name)) = line.split_once(',')
                            && let Ok(i) = i.trim().parse::<usize>()
                            && i < classes
                        {
                            out[i] = name.split(',').next().unwrap_or(name).trim().to_string();
                        }
                    }
                }
                Err(e) => tracing::warn!(path = %p.display(), error = %e, "cannot read labels"),
            },
            None => tracing::warn!(model = %self.name, "no labels file found; using class numbers"),
        }
        out
    }
}

/// The cache dir for downloaded models.
pub fn cache_dir() -> PathBuf {
    match std::env::var_os(CACHE_ENV) {
        Some(p) => p.into(),
        None => dirs::cache_dir()
            .unwrap_or_else(std::env::temp_dir)
            .join("advguard")
            .join("models"),
    }
}

fn io_err(p: &Path, e: impl std::fmt::Display) -> ManifestError {
    ManifestError::Io {
        path: p.display().to_string(),
        msg: e.to_string(),
    }
}

fn resolve_file(
    names: &[(&str, Option<&str>)],
    download: Option<&Download>,
) -> Result<PathBuf, ManifestError> {
    let mut dirs_: Vec<PathBuf> = Vec::new();
    if let Some(d) = std::env::var_os(MODELS_ENV) {
        dirs_.push(d.into());
    }
    dirs_.push(cache_dir());
    for dir in &dirs_ {
        for (name, sha) in names {
            let p = dir.join(name);
            if p.is_file() {
                if let Some(want) = sha {
                    verify(&p, want)?;
                }
                return Ok(p);
            }
        }
    }
    if let Some(d) = download {
        let dest = cache_dir().join(&d.file);
        fetch(&d.url, &dest, &d.sha256)?;
        return Ok(dest);
    }
    let looked = dirs_
        .iter()
        .map(|d| d.display().to_string())
        .collect::<Vec<_>>()
        .join(", ");
    Err(ManifestError::NotFound {
        file: names[0].0.into(),
        looked,
    })
}

/// sha256 of a file, hex.
pub fn sha256_file(p: &Path) -> Result<String, ManifestError> {
    let mut f = std::fs::File::open(p).map_err(|e| io_err(p, e))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).map_err(|e| io_err(p, e))?;
    Ok(hex::encode(h.finalize()))
}

fn verify(p: &Path, want: &str) -> Result<(), ManifestError> {
    let got = sha256_file(p)?;
    if !got.eq_ignore_ascii_case(want) {
        return Err(ManifestError::Checksum {
            path: p.display().to_string(),
            got,
            want: want.into(),
        });
    }
    Ok(())
}

/// Downloads `url` to `dest` through a temporary file, with a progress bar, and checks its sha256
/// before the file appears under its final name (so a broken download is never used).
pub fn fetch(url: &str, dest: &Path, sha256: &str) -> Result<(), ManifestError> {
    let derr = |msg: String| ManifestError::Download {
        url: url.into(),
        msg,
    };
    if let Some(dir) = dest.parent() {
        std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
    }
    tracing::info!(%url, dest = %dest.display(), "downloading");
    let resp = ureq::get(url)
        .timeout(std::time::Duration::from_secs(120))
        .call()
        .map_err(|e| derr(e.to_string()))?;
    let len = resp
        .header("content-length")
        .and_then(|v| v.parse::<u64>().ok());
    let bar = match len {
        Some(n) => indicatif::ProgressBar::new(n),
        None => indicatif::ProgressBar::new_spinner(),
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} ({eta})")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_message(
        dest.file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default(),
    );
    let tmp = dest.with_extension("part");
    let mut out = std::fs::File::create(&tmp).map_err(|e| io_err(&tmp, e))?;
    let mut hasher = Sha256::new();
    let mut reader = resp.into_reader();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = reader.read(&mut buf).map_err(|e| derr(e.to_string()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n]).map_err(|e| io_err(&tmp, e))?;
        bar.inc(n as u64);
    }
    bar.finish_and_clear();
    out.sync_all().map_err(|e| io_err(&tmp, e))?;
    let got = hex::encode(hasher.finalize());
    if !got.eq_ignore_ascii_case(sha256) {
        let _ = std::fs::remove_file(&tmp);
        return Err(ManifestError::Checksum {
            path: url.into(),
            got,
            want: sha256.into(),
        });
    }
    std::fs::rename(&tmp, dest).map_err(|e| io_err(dest, e))?;
    Ok(())
}
