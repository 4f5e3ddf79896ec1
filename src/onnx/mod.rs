//! The ONNX model IR: prost types from `tract_onnx::pb`, plus loading and saving.
//! (placeholder: the compiler branch replaces this file)

pub use tract_onnx::pb::ModelProto;

/// Errors while reading an ONNX file.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct OnnxError(pub String);

/// Loads an ONNX file.
pub fn load(path: &std::path::Path) -> Result<ModelProto, OnnxError> {
    let bytes = std::fs::read(path).map_err(|e| OnnxError(format!("{}: {e}", path.display())))?;
    decode(&bytes)
}

/// Decodes ONNX bytes.
pub fn decode(bytes: &[u8]) -> Result<ModelProto, OnnxError> {
    use prost::Message;
    ModelProto::decode(bytes).map_err(|e| OnnxError(format!("not an ONNX model: {e}")))
}
