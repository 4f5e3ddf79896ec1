//! ONNX Runtime backend (CPU / CUDA / TensorRT providers), loaded at run time.
//!
//! The library is opened with `ort::init_from` (never at build time, never a download):
//! `$ORT_DYLIB_PATH`, else the `onnxruntime` Python wheel's `capi/libonnxruntime.so*`, else
//! the system loader. A requested GPU provider that fails to register is an error, never a
//! silent fallback to CPU. TensorRT is reached through ORT's TensorRT provider (engine and
//! timing caches under the advguard cache dir), since no maintained Rust crate links TensorRT 10.

use super::guard::BackendKind;
use super::{Engine, EngineError, GuardOutput, LOGITS, RESPONSE, SEED};
use crate::onnx::ModelProto;
use ndarray::{ArrayView2, ArrayView4};
use ort::session::Session;
use std::path::PathBuf;
use std::sync::OnceLock;

/// Environment variable naming the ONNX Runtime shared library.
pub const ORT_DYLIB_ENV: &str = "ORT_DYLIB_PATH";

fn err(backend: &'static str, e: impl std::fmt::Display) -> EngineError {
    EngineError::Backend {
        backend,
        msg: e.to_string(),
    }
}

/// Candidate paths of libonnxruntime, most specific first.
pub fn library_candidates() -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(p) = std::env::var_os(ORT_DYLIB_ENV) {
        out.push(PathBuf::from(p));
    }
    // The PyPI wheel ships the library; ask the interpreter where it lives.
    if let Ok(o) = std::process::Command::new("python3")
        .args(["-c", "import onnxruntime, os; print(os.path.join(os.path.dirname(onnxruntime.__file__), 'capi'))"])
        .stderr(std::process::Stdio::null())
        .output()
        && o.status.success()
    {
        let dir = PathBuf::from(String::from_utf8_lossy(&o.stdout).trim());
        if let Ok(rd) = std::fs::read_dir(&dir) {
            let mut libs: Vec<PathBuf> = rd
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.file_name().is_some_and(|f| f.to_string_lossy().starts_with("libonnxruntime.so")))
                .collect();
            libs.sort();
            out.extend(libs.into_iter().rev());
        }
    }
    out.push(PathBuf::from("libonnxruntime.so"));
    out
}

/// Intra-op threads of each ONNX Runtime session created from now on (see [`set_intra_threads`]).
static INTRA_THREADS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(1);

/// Sets the intra-op threads of sessions created from now on: `watch` gives each of its `n`
/// engine workers `cores / n`, so that workers × threads fits the cores (one camera on two
/// cores gets both). Default 1: one engine per worker thread.
pub fn set_intra_threads(n: usize) {
    INTRA_THREADS.store(n.max(1), std::sync::atomic::Ordering::Relaxed);
}

type Loaded = Result<(ort::environment::Environment, String), String>;

/// The process-wide ORT environment and the library it came from; loaded once only.
fn loaded() -> &'static Loaded {
    static ENV: OnceLock<Loaded> = OnceLock::new();
    ENV.get_or_init(|| {
        let mut tried = Vec::new();
        for p in library_candidates() {
            if p.components().count() > 1 && !p.exists() {
                tried.push(format!("{} (missing)", p.display()));
                continue;
            }
            match ort::init_from(&p) {
                Ok(b) => {
                    tracing::debug!(lib = %p.display(), "loaded ONNX Runtime");
                    return b
                        .with_name("advguard")
                        .build()
                        .map(|env| (env, p.display().to_string()))
                        .map_err(|e| e.to_string());
                }
                Err(e) => tried.push(format!("{}: {e}", p.display())),
            }
        }
        Err(format!(
            "ONNX Runtime library not found (set {ORT_DYLIB_ENV}, or `pip install onnxruntime`); tried {}",
            tried.join("; ")
        ))
    })
}

fn environment() -> Result<&'static ort::environment::Environment, EngineError> {
    loaded()
        .as_ref()
        .map(|(env, _)| env)
        .map_err(|e| err("ort", e))
}

/// Loads ONNX Runtime if it can be, and says from where (or why not).
pub fn library() -> Result<&'static str, String> {
    loaded()
        .as_ref()
        .map(|(_, p)| p.as_str())
        .map_err(|e| e.clone())
}

/// Whether ONNX Runtime can be loaded on this machine (tests and benches skip ORT otherwise).
pub fn available() -> bool {
    environment().is_ok()
}

/// A guard graph on ONNX Runtime.
pub struct OrtEngine {
    session: Session,
    name: &'static str,
    input: String,
    shape: [usize; 4],
    has_seed: bool,
    has_response: bool,
    logits: String,
    extras: Vec<String>,
}

impl OrtEngine {
    /// Creates a session for `model` on the given provider, with [`set_intra_threads`]
    /// intra-op threads (1 unless set: advguard runs one engine per worker thread).
    pub fn new(
        model: &ModelProto,
        input: &str,
        shape: [usize; 4],
        kind: BackendKind,
    ) -> Result<Self, EngineError> {
        let name: &'static str = match kind {
            BackendKind::OrtCuda => "ort-cuda",
            BackendKind::OrtTensorRt => "ort-tensorrt",
            _ => "ort-cpu",
        };
        let env = environment()?;
        let graph = model
            .graph
            .as_ref()
            .ok_or_else(|| err(name, "model has no graph"))?;
        let outputs: Vec<&str> = graph.output.iter().map(|o| o.name.as_str()).collect();
        let init: std::collections::HashSet<&str> =
            graph.initializer.iter().map(|t| t.name.as_str()).collect();
        let has_seed = graph
            .input
            .iter()
            .any(|i| i.name == SEED && !init.contains(SEED));
        let has_response = outputs.contains(&RESPONSE);
        let logits = if outputs.contains(&LOGITS) {
            LOGITS.to_string()
        } else {
            outputs
                .first()
                .ok_or_else(|| err(name, "no outputs"))?
                .to_string()
        };
        let extras = super::extra_outputs(graph);
        let bytes = crate::onnx::encode(model);
        let b = Session::builder(env).map_err(|e| err(name, e))?;
        let threads = INTRA_THREADS.load(std::sync::atomic::Ordering::Relaxed);
        let b = b.with_intra_threads(threads).map_err(|e| err(name, e))?;
        let b = match kind {
            BackendKind::OrtCuda => b
                .with_execution_providers([ort::ep::CUDA::default().build().error_on_failure()])
                .map_err(|e| err(name, e))?,
            BackendKind::OrtTensorRt => {
                let cache = super::manifest::cache_dir().join("tensorrt");
                let _ = std::fs::create_dir_all(&cache);
                let c = cache.display().to_string();
                b.with_execution_providers([ort::ep::TensorRT::default()
                    .with_engine_cache(true)
                    .with_engine_cache_path(&c)
                    .with_timing_cache(true)
                    .with_timing_cache_path(&c)
                    .build()
                    .error_on_failure()])
                    .map_err(|e| err(name, e))?
            }
            _ => b,
        };
        let mut b = b;
        let session = b.commit_from_memory(&bytes).map_err(|e| err(name, e))?;
        Ok(OrtEngine {
            session,
            name,
            input: input.to_string(),
            shape,
            has_seed,
            has_response,
            logits,
            extras,
        })
    }
}

impl Engine for OrtEngine {
    fn backend(&self) -> &str {
        self.name
    }

    fn input_shape(&self) -> [usize; 4] {
        self.shape
    }

    fn run(
        &mut self,
        input: ArrayView4<f32>,
        seed: Option<ArrayView2<f32>>,
    ) -> Result<GuardOutput, EngineError> {
        let name = self.name;
        if input.shape() != self.shape {
            return Err(EngineError::Shape {
                got: input.shape().to_vec(),
                want: self.shape.to_vec(),
            });
        }
        let x = ort::value::Tensor::from_array(input.to_owned()).map_err(|e| err(name, e))?;
        let mut inputs: Vec<(
            std::borrow::Cow<'_, str>,
            ort::session::SessionInputValue<'_>,
        )> = vec![(self.input.clone().into(), x.into())];
        match (self.has_seed, seed) {
            (true, Some(s)) => {
                let s = ort::value::Tensor::from_array(s.to_owned()).map_err(|e| err(name, e))?;
                inputs.push((SEED.into(), s.into()));
            }
            (true, None) => {
                return Err(err(
                    name,
                    "this guard graph takes a seed input; none was given",
                ));
            }
            (false, Some(_)) => {
                return Err(err(
                    name,
                    "a seed was given, but the graph was not compiled with --seed input",
                ));
            }
            (false, None) => {}
        }
        let out = self.session.run(inputs).map_err(|e| err(name, e))?;
        let lv = out
            .get(&self.logits)
            .ok_or_else(|| err(name, "no logits output"))?;
        let logits: Vec<f32> = lv
            .try_extract_array::<f32>()
            .map_err(|e| err(name, e))?
            .iter()
            .copied()
            .collect();
        let response = if self.has_response {
            let r = out
                .get(RESPONSE)
                .ok_or_else(|| err(name, "no response output"))?;
            let r = r.try_extract_array::<f32>().map_err(|e| err(name, e))?;
            let r = r
                .into_dimensionality::<ndarray::Ix4>()
                .map_err(|e| err(name, e))?;
            r.index_axis(ndarray::Axis(0), 0).to_owned()
        } else {
            ndarray::Array3::zeros((0, 0, 0))
        };
        let mut outputs = Vec::with_capacity(self.extras.len());
        // An output that is not f32 after all is left out; whoever needs it names it missing.
        for n in &self.extras {
            if let Some(a) = out
                .get(n.as_str())
                .and_then(|v| v.try_extract_array::<f32>().ok())
            {
                outputs.push((n.clone(), a.to_owned()));
            }
        }
        Ok(GuardOutput {
            logits,
            response,
            outputs,
        })
    }
}
