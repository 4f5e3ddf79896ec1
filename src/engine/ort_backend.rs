//! ONNX Runtime backend (CPU / CUDA / TensorRT providers), loaded at run time.

use super::guard::BackendKind;
use super::{Engine, EngineError, GuardOutput};
use crate::onnx::ModelProto;
use ndarray::{ArrayView2, ArrayView4};

/// A guard graph on ONNX Runtime.
pub struct OrtEngine {
    shape: [usize; 4],
}

impl OrtEngine {
    /// Creates a session for `model` on the given provider.
    pub fn new(
        _model: &ModelProto,
        _input: &str,
        shape: [usize; 4],
        _kind: BackendKind,
    ) -> Result<Self, EngineError> {
        let _ = shape;
        Err(EngineError::Backend {
            backend: "ort",
            msg: "not built yet".into(),
        })
    }
}

impl Engine for OrtEngine {
    fn backend(&self) -> &str {
        "ort"
    }
    fn input_shape(&self) -> [usize; 4] {
        self.shape
    }
    fn run(
        &mut self,
        _input: ArrayView4<f32>,
        _seed: Option<ArrayView2<f32>>,
    ) -> Result<GuardOutput, EngineError> {
        Err(EngineError::Backend {
            backend: "ort",
            msg: "not built yet".into(),
        })
    }
}
