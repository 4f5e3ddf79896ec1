//! `Guard`: one model, its preprocessing, its compiled guard graph and a backend, behind
//! one call per frame. This is what `explain`, `score`, `watch` and the attacks use.

use super::compile::{self, CompileOptions};
use super::manifest::{Manifest, ManifestError, OutputKind};
use super::preprocess::{ImageError, Preprocess};
use super::{Engine, EngineError, GuardOutput};
use ndarray::{Array2, ArrayView3};
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// Which backend runs the guard graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackendKind {
    /// tract, pure Rust, CPU (default).
    #[default]
    Tract,
    /// ONNX Runtime, CPU provider.
    OrtCpu,
    /// ONNX Runtime, CUDA provider (fails rather than falling back to CPU).
    OrtCuda,
    /// ONNX Runtime, TensorRT provider (fails rather than falling back).
    OrtTensorRt,
    /// ONNX Runtime's CPU provider when its library loads, tract otherwise (the CLI default).
    Auto,
}

impl BackendKind {
    /// The backend that will run: `Auto` becomes `OrtCpu` or `Tract`, the choice logged once.
    pub fn resolve(self) -> BackendKind {
        if self != BackendKind::Auto {
            return self;
        }
        static CHOSEN: std::sync::OnceLock<BackendKind> = std::sync::OnceLock::new();
        *CHOSEN.get_or_init(|| match super::ort_backend::library() {
            Ok(lib) => {
                tracing::info!(lib = %lib, "backend auto: ONNX Runtime (CPU)");
                BackendKind::OrtCpu
            }
            Err(e) => {
                tracing::info!(
                    "backend auto: tract ({e}; `pip install onnxruntime` for the faster engine)"
                );
                BackendKind::Tract
            }
        })
    }
}

impl FromStr for BackendKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "tract" => Self::Tract,
            "auto" => Self::Auto,
            "ort" | "ort-cpu" | "onnxruntime" => Self::OrtCpu,
            "ort-cuda" | "cuda" => Self::OrtCuda,
            "ort-tensorrt" | "tensorrt" | "trt" => Self::OrtTensorRt,
            _ => {
                return Err(format!(
                    "unknown backend {s:?} (auto, tract, ort, ort-cuda, tensorrt)"
                ));
            }
        })
    }
}

/// How to open a `Guard`.
#[derive(Debug, Clone, Default)]
pub struct GuardOptions {
    /// Explicit model file (`--model`); otherwise the manifest's lookup applies.
    pub model_path: Option<PathBuf>,
    /// Backend.
    pub backend: BackendKind,
    /// Guard-graph options; `None` runs the plain classifier (logits only, no response).
    pub compile: Option<CompileOptions>,
}

/// Errors while opening or running a guard.
#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    /// Finding the model failed.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// Reading the ONNX failed.
    #[error(transparent)]
    Onnx(#[from] crate::onnx::OnnxError),
    /// Compiling the guard graph failed.
    #[error(transparent)]
    Compile(#[from] compile::CompileError),
    /// The backend failed.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// An image could not be used.
    #[error(transparent)]
    Image(#[from] ImageError),
}

/// A model ready to score frames: preprocessing + guard graph + backend.
pub struct Guard {
    manifest: Manifest,
    model_path: PathBuf,
    engine: Box<dyn Engine>,
    labels: Vec<String>,
    calls: u64,
    forward: Forward,
}

/// The forward-only engine of a guard (the cascade's cheap pass): the model as loaded, planned
/// on the same backend on first use, so a guard that never needs it pays nothing.
enum Forward {
    /// The guard's own engine already is the plain classifier.
    Same,
    /// Not opened yet: the loaded model and the backend to plan it on.
    Pending(Box<crate::onnx::ModelProto>, BackendKind),
    /// Opened.
    Open(Box<dyn Engine>),
}

impl Guard {
    /// Resolves the model, compiles its guard graph and plans it on the chosen backend.
    pub fn open(manifest: &Manifest, opts: &GuardOptions) -> Result<Guard, GuardError> {
        let g = graphs(manifest, opts)?;
        let backend = opts.backend.resolve();
        let engine = open_engine(&g.guard, &manifest.input, g.shape, backend)?;
        let labels = manifest.labels(g.classes);
        let forward = if opts.compile.is_some() {
            Forward::Pending(Box::new(g.model), backend)
        } else {
            Forward::Same
        };
        Ok(Guard {
            manifest: manifest.clone(),
            model_path: g.model_path,
            engine,
            labels,
            calls: 0,
            forward,
        })
    }

    /// The manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Where the model was found.
    pub fn model_path(&self) -> &Path {
        &self.model_path
    }

    /// The preprocessing.
    pub fn preprocess(&self) -> &Preprocess {
        &self.manifest.preprocess
    }

    /// Square input size in pixels.
    pub fn size(&self) -> u32 {
        self.manifest.preprocess.size
    }

    /// Class names by index.
    pub fn labels(&self) -> &[String] {
        &self.labels
    }

    /// Backend name.
    pub fn backend(&self) -> &str {
        self.engine.backend()
    }

    /// Number of engine calls so far.
    pub fn calls(&self) -> u64 {
        self.calls
    }

    /// Runs one size × size, tightly packed RGB8 frame.
    pub fn run_rgb8(&mut self, rgb: &[u8], w: u32, h: u32) -> Result<GuardOutput, GuardError> {
        let t = self.manifest.preprocess.tensor_from_rgb8(rgb, w, h)?;
        self.calls += 1;
        let out = self.engine.run(t.view(), None)?;
        Ok(self.fix(out))
    }

    /// Plans the forward-only engine now (it is otherwise planned on the first
    /// [`Guard::forward_rgb8`]), so that a bad model fails at start-up, not mid-stream.
    pub fn prepare_forward(&mut self) -> Result<(), GuardError> {
        if let Forward::Pending(model, backend) = &self.forward {
            let s = self.manifest.preprocess.size as usize;
            let e = open_engine(model, &self.manifest.input, [1, 3, s, s], *backend)?;
            self.forward = Forward::Open(e);
        }
        Ok(())
    }

    /// The class scores of one frame without the response (`response` is empty): the plain
    /// model on the same backend and preprocessing, a fraction of a guard frame's cost.
    pub fn forward_rgb8(&mut self, rgb: &[u8], w: u32, h: u32) -> Result<GuardOutput, GuardError> {
        self.prepare_forward()?;
        let t = self.manifest.preprocess.tensor_from_rgb8(rgb, w, h)?;
        self.calls += 1;
        let out = match &mut self.forward {
            Forward::Open(e) => e.run(t.view(), None)?,
            _ => self.engine.run(t.view(), None)?,
        };
        let mut out = self.fix(out);
        // A guard graph always gives a response; the forward pass never does.
        out.response = ndarray::Array3::zeros((0, 0, 0));
        Ok(out)
    }

    /// Runs H×W×3 float RGB pixels (0–255).
    pub fn run_pixels(&mut self, px: ArrayView3<f32>) -> Result<GuardOutput, GuardError> {
        let t = self.manifest.preprocess.tensor(px);
        self.calls += 1;
        let out = self.engine.run(t.view(), None)?;
        Ok(self.fix(out))
    }

    /// Runs pixels with an external seed on the logits (graphs compiled with `Seed::Input`);
    /// `response` is then the gradient of `seed · logits` w.r.t. the model input.
    pub fn run_pixels_seeded(
        &mut self,
        px: ArrayView3<f32>,
        seed: &[f32],
    ) -> Result<GuardOutput, GuardError> {
        let t = self.manifest.preprocess.tensor(px);
        let s = Array2::from_shape_vec((1, seed.len()), seed.to_vec()).map_err(|e| {
            EngineError::Backend {
                backend: "guard",
                msg: e.to_string(),
            }
        })?;
        self.calls += 1;
        let out = self.engine.run(t.view(), Some(s.view()))?;
        Ok(self.fix(out))
    }

    /// A plain classifier graph returns probabilities when the model ends in Softmax;
    /// turn them back into log-probabilities so `logits` always means pre-Softmax scores.
    /// A detector's graph output is its whole heat map; its class scores are each class's
    /// strongest cell, as a logit, so onset, top-1 and margin see one score per class.
    fn fix(&self, mut out: GuardOutput) -> GuardOutput {
        if let Some(d) = &self.manifest.detector {
            let heat = out.output(&d.heatmap);
            if let Some(scores) = heat.and_then(|h| class_peaks(&d.heatmap, h)) {
                out.logits = scores
                    .into_iter()
                    .map(|p| {
                        let p = p.clamp(1e-6, 1.0 - 1e-6);
                        (p / (1.0 - p)).ln()
                    })
                    .collect();
            }
            return out;
        }
        if out.response.is_empty() && self.manifest.output == OutputKind::Probabilities {
            for v in out.logits.iter_mut() {
                *v = v.max(1e-30).ln();
            }
        }
        out
    }
}

/// The strongest cell of each channel of a 1×C×H×W (or C×H×W) heat map.
fn class_peaks(name: &str, heat: ndarray::ArrayViewD<f32>) -> Option<Vec<f32>> {
    let heat = super::detect::plane3(name, heat).ok()?;
    Some(
        heat.outer_iter()
            .map(|c| c.iter().copied().fold(f32::NEG_INFINITY, f32::max))
            .collect(),
    )
}

/// The manifest must match the model: the input name exists and fixed dims agree, so a wrong
/// manifest is one clear error instead of a shape failure deep inside a backend.
fn check_input(
    model: &crate::onnx::ModelProto,
    m: &Manifest,
    path: &Path,
    shape: [usize; 4],
) -> Result<(), GuardError> {
    let bad = |msg: String| {
        GuardError::Manifest(ManifestError::Parse {
            path: m.name.clone(),
            msg,
        })
    };
    let (name, dims) = compile::image_input(model)?;
    if name != m.input {
        return Err(bad(format!(
            "input {:?} is not the model's image input {name:?} ({})",
            m.input,
            path.display()
        )));
    }
    if dims.len() == 4 {
        for (k, (d, want)) in dims.iter().zip(shape).enumerate().skip(1) {
            if let Some(d) = d
                && *d != want
            {
                return Err(bad(format!(
                    "preprocess.size gives input {shape:?}, but {} declares {:?} (dim {k} is {d})",
                    path.display(),
                    dims.iter()
                        .map(|d| d.map_or(-1, |v| v as i64))
                        .collect::<Vec<_>>()
                )));
            }
        }
    }
    Ok(())
}

/// The graphs a guard runs, before any backend plans them.
pub struct GuardGraphs {
    /// Where the model was found.
    pub model_path: PathBuf,
    /// The model as loaded (the cascade's forward pass).
    pub model: crate::onnx::ModelProto,
    /// The guard graph (the model itself when nothing is compiled).
    pub guard: crate::onnx::ModelProto,
    /// The input shape, 1×3×size×size.
    pub shape: [usize; 4],
    /// Classes the model scores.
    pub classes: usize,
}

/// Resolves and checks the model and compiles its guard graph for the chosen backend.
pub fn graphs(manifest: &Manifest, opts: &GuardOptions) -> Result<GuardGraphs, GuardError> {
    let model_path = manifest.resolve_model(opts.model_path.as_deref())?;
    let model = crate::onnx::load(&model_path)?;
    let s = manifest.preprocess.size as usize;
    let shape = [1, 3, s, s];
    check_input(&model, manifest, &model_path, shape)?;
    let classes = super::detect::check_model(&model, manifest, &model_path)?;
    let guard = match &opts.compile {
        Some(c) => {
            let mut c = c.clone();
            c.input_shape.get_or_insert(shape);
            c.target = match opts.backend.resolve() {
                BackendKind::Tract => compile::Target::Tract,
                _ => compile::Target::OnnxRuntime,
            };
            if c.seed == compile::Seed::LastConv
                && let Some(seed) = manifest.default_seed()
            {
                c.seed = seed;
            }
            compile::compile(&model, &c)?
        }
        None => model.clone(),
    };
    Ok(GuardGraphs {
        model_path,
        model,
        guard,
        shape,
        classes,
    })
}

/// Plans a graph on a backend.
pub fn open_engine(
    graph: &crate::onnx::ModelProto,
    input: &str,
    shape: [usize; 4],
    backend: BackendKind,
) -> Result<Box<dyn Engine>, EngineError> {
    Ok(match backend.resolve() {
        BackendKind::Tract => {
            Box::new(super::tract_backend::TractEngine::new(graph, input, shape)?)
        }
        other => Box::new(super::ort_backend::OrtEngine::new(
            graph, input, shape, other,
        )?),
    })
}
