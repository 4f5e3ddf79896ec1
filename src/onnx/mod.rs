//! The ONNX model IR: prost types from `tract_onnx::pb`, plus loading and saving.
