//! Guard-graph compiler. (placeholder: the compiler branch replaces this file)

use crate::onnx::ModelProto;

/// Backward mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Guided backpropagation.
    #[default]
    Guided,
    /// True gradient.
    Plain,
}

/// Where the backward pass starts.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Seed {
    /// Last conv activations.
    #[default]
    LastConv,
    /// A named tensor's activations.
    Tensor(String),
    /// The top-1 logit.
    Top1,
    /// A fixed class logit.
    Class(usize),
    /// An external `seed` input on the logits.
    Input,
}

/// Compiler options.
#[derive(Debug, Clone, Default)]
pub struct CompileOptions {
    /// Backward mode.
    pub mode: Mode,
    /// Seed.
    pub seed: Seed,
    /// Input shape override.
    pub input_shape: Option<[usize; 4]>,
}

/// Compiler errors.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CompileError(pub String);

/// Compiles a guard graph.
pub fn compile(_model: &ModelProto, _opts: &CompileOptions) -> Result<ModelProto, CompileError> {
    Err(CompileError("compiler not merged yet".into()))
}
