//! Engines: the guard-graph compiler and the backends that run its output.
//!
//! A guard graph is the classifier plus its backward pass written as ordinary
//! forward ONNX ops, so every backend runs forward + (guided) backward in one call.
//! Backends only see ONNX bytes; the compiler only sees the ONNX IR (`crate::onnx`).

pub mod batch;
pub mod compile;
pub mod detect;
pub mod guard;
pub mod manifest;
pub mod ort_backend;
pub mod preprocess;
pub mod tract_backend;

use ndarray::{Array3, ArrayD, ArrayView2, ArrayView4, ArrayViewD};

/// Name of the guard graph's class-score output (pre-Softmax logits).
pub const LOGITS: &str = "logits";
/// Name of the guard graph's feature-response output (N×C×H×W at input resolution).
pub const RESPONSE: &str = "response";
/// Name of the optional seed input (same shape as `logits`) of a graph compiled with `Seed::Input`.
pub const SEED: &str = "seed";
/// Name of the extra output of a graph seeded at heat-map peaks (`Seed::Peaks`): 1 at the cells
/// the backward pass starts from, N×(seeded channels)×H×W.
pub const SEED_CELLS: &str = "seed_cells";

/// What one guard frame returns.
#[derive(Debug, Clone)]
pub struct GuardOutput {
    /// Pre-Softmax class scores.
    pub logits: Vec<f32>,
    /// Feature response for the first batch item, C×H×W in model-input space.
    pub response: Array3<f32>,
    /// The graph's other float outputs by name, shapes as the graph gives them (batch axis
    /// kept): a detector's heat map and boxes come back in the same call as the response.
    pub outputs: Vec<(String, ArrayD<f32>)>,
}

impl GuardOutput {
    /// A named output of [`GuardOutput::outputs`].
    pub fn output(&self, name: &str) -> Option<ArrayViewD<'_, f32>> {
        self.outputs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, a)| a.view())
    }

    /// Softmax of the logits.
    pub fn probs(&self) -> Vec<f32> {
        softmax(&self.logits)
    }
}

/// Numerically stable softmax.
pub fn softmax(x: &[f32]) -> Vec<f32> {
    let m = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let e: Vec<f32> = x.iter().map(|v| (v - m).exp()).collect();
    let s: f32 = e.iter().sum();
    e.into_iter().map(|v| v / s).collect()
}

/// Indices of the k largest values, largest first.
pub fn top_k(x: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..x.len()).collect();
    idx.sort_by(|&a, &b| x[b].total_cmp(&x[a]));
    idx.truncate(k);
    idx
}

/// The outputs a backend returns besides `logits` and `response`: every other graph output of
/// float type (or undeclared type), in graph order. The one a plain model's logits come from is
/// included too, so a detector's heat map has its own name whichever graph runs.
pub(crate) fn extra_outputs(graph: &crate::onnx::pb::GraphProto) -> Vec<String> {
    use crate::onnx::pb::type_proto::Value;
    graph
        .output
        .iter()
        .filter(|o| o.name != LOGITS && o.name != RESPONSE)
        .filter(|o| match o.r#type.as_ref().and_then(|t| t.value.as_ref()) {
            Some(Value::TensorType(tt)) => tt.elem_type == crate::onnx::FLOAT || tt.elem_type == 0,
            _ => true,
        })
        .map(|o| o.name.clone())
        .collect()
}

/// Errors from loading or running an engine.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The model file could not be read or parsed.
    #[error("model {path}: {msg}")]
    Model { path: String, msg: String },
    /// The backend refused the graph or failed while running it.
    #[error("{backend}: {msg}")]
    Backend { backend: &'static str, msg: String },
    /// An input had the wrong shape.
    #[error("input shape {got:?} does not match the model's {want:?}")]
    Shape { got: Vec<usize>, want: Vec<usize> },
}

/// A backend that runs a guard graph: forward + backward in one call.
pub trait Engine: Send {
    /// Short backend name for logs and benchmarks ("tract", "ort-cpu", ...).
    fn backend(&self) -> &str;
    /// The model input shape, N×C×H×W.
    fn input_shape(&self) -> [usize; 4];
    /// Runs one preprocessed input (N as in [`Engine::input_shape`]). `seed` is required iff the graph
    /// was compiled with `Seed::Input`, and has the shape of `logits` (1×classes).
    fn run(
        &mut self,
        input: ArrayView4<f32>,
        seed: Option<ArrayView2<f32>>,
    ) -> Result<GuardOutput, EngineError>;
}
pub use guard::{BackendKind, Guard, GuardError, GuardOptions};
