//! ONNX model IR helpers on top of `tract_onnx::pb` (prost types).
//!
//! - [`load`] / [`decode`] read a model and convert FP16 models to FP32 ([`fp16_to_fp32`]).
//! - [`save`] / [`encode`] write one.
//! - [`builder::GraphBuilder`] builds graphs (tests, attack tests, the compiler).
//! - small helpers to read and write attributes and tensors.
//!
//! Protobuf is never hand-rolled: everything goes through `prost::Message`.

pub mod builder;

pub use builder::GraphBuilder;
pub use tract_onnx::pb;

pub use pb::ModelProto;
use pb::attribute_proto::AttributeType;
use pb::tensor_proto::DataType;
use pb::{AttributeProto, GraphProto, NodeProto, TensorProto, ValueInfoProto};
use prost::Message;
use std::path::Path;

/// ONNX element type code of float32.
pub const FLOAT: i32 = DataType::Float as i32;
/// ONNX element type code of float16.
pub const FLOAT16: i32 = DataType::Float16 as i32;
/// ONNX element type code of int64.
pub const INT64: i32 = DataType::Int64 as i32;
/// ONNX element type code of bool.
pub const BOOL: i32 = DataType::Bool as i32;

/// Errors from reading, writing or interpreting ONNX models.
#[derive(Debug, thiserror::Error)]
pub enum OnnxError {
    /// The file could not be read.
    #[error("{path}: cannot read: {err}")]
    Read { path: String, err: std::io::Error },
    /// The file could not be written.
    #[error("{path}: cannot write: {err}")]
    Write { path: String, err: std::io::Error },
    /// The bytes are not a protobuf ModelProto.
    #[error("{origin}: not an ONNX model: protobuf decode failed ({msg})")]
    Decode { origin: String, msg: String },
    /// The protobuf decoded but holds no graph.
    #[error("{origin}: not an ONNX model: it has no graph")]
    NoGraph { origin: String },
    /// The graph is malformed (found by fuzzing: tract panics on these instead of erring).
    #[error("{origin}: malformed ONNX graph: {msg}")]
    Graph { origin: String, msg: String },
    /// A tensor could not be read (type, size or external data).
    #[error("tensor {name:?}: {msg}")]
    Tensor { name: String, msg: String },
}

/// Reads an ONNX model from a file and converts FP16 models to FP32.
pub fn load(path: &Path) -> Result<ModelProto, OnnxError> {
    let bytes = std::fs::read(path).map_err(|err| OnnxError::Read {
        path: path.display().to_string(),
        err,
    })?;
    decode_from(&bytes, &path.display().to_string())
}

/// Decodes an ONNX model from bytes and converts FP16 models to FP32.
pub fn decode(bytes: &[u8]) -> Result<ModelProto, OnnxError> {
    decode_from(bytes, "<bytes>")
}

fn decode_from(bytes: &[u8], origin: &str) -> Result<ModelProto, OnnxError> {
    let mut model = ModelProto::decode(bytes).map_err(|e| OnnxError::Decode {
        origin: origin.to_string(),
        msg: e.to_string(),
    })?;
    match &model.graph {
        Some(g) if !g.node.is_empty() || !g.output.is_empty() => {}
        _ => {
            return Err(OnnxError::NoGraph {
                origin: origin.to_string(),
            });
        }
    }
    check_graph(&model, origin)?;
    fp16_to_fp32(&mut model)?;
    Ok(model)
}

/// Checks what tract-onnx 0.23 panics on instead of erring (both found by fuzzing): a graph
/// output that nothing produces (it indexes its name map with it), and a zero or negative
/// stride, dilation, kernel size or group (it divides by them).
fn check_graph(model: &ModelProto, origin: &str) -> Result<(), OnnxError> {
    let Some(g) = &model.graph else {
        return Ok(());
    };
    if let Some(msg) = unloadable_raw_tensor(g) {
        return Err(OnnxError::Graph {
            origin: origin.to_string(),
            msg,
        });
    }
    for n in &g.node {
        for a in ["strides", "dilations", "kernel_shape"] {
            if let Some(v) = get_ints(n, a)
                && v.iter().any(|&x| x <= 0)
            {
                return Err(OnnxError::Graph {
                    origin: origin.to_string(),
                    msg: format!(
                        "node {:?} ({}): {a} {v:?} must be positive",
                        n.name, n.op_type
                    ),
                });
            }
        }
        if let Some(msg) = window_rank_mismatch(g, n) {
            return Err(OnnxError::Graph {
                origin: origin.to_string(),
                msg: format!("node {:?} ({}): {msg}", n.name, n.op_type),
            });
        }
        if get_int(n, "group").is_some_and(|x| x <= 0) {
            return Err(OnnxError::Graph {
                origin: origin.to_string(),
                msg: format!("node {:?} ({}): group must be positive", n.name, n.op_type),
            });
        }
    }
    let produced = |name: &str| {
        g.node.iter().any(|n| n.output.iter().any(|o| o == name))
            || g.input.iter().any(|i| i.name == name)
            || g.initializer.iter().any(|t| t.name == name)
    };
    match g.output.iter().find(|o| !produced(&o.name)) {
        Some(o) => Err(OnnxError::Graph {
            origin: origin.to_string(),
            msg: format!("graph output {:?} is not produced by any node", o.name),
        }),
        None => Ok(()),
    }
}

/// A tensor stored as raw bytes in a type tract-onnx 0.23 cannot load that way (strings,
/// complex, bfloat16, float8: it panics with `not implemented`; found by fuzzing), in the
/// initializers or node attributes of `g` or of its subgraphs.
fn unloadable_raw_tensor(g: &GraphProto) -> Option<String> {
    // FLOAT, UINT8, INT8, UINT16, INT16, INT32, INT64, BOOL, FLOAT16, DOUBLE, UINT32, UINT64.
    const RAW_OK: [i32; 12] = [1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13];
    let bad = |t: &TensorProto| !t.raw_data.is_empty() && !RAW_OK.contains(&t.data_type);
    let describe = |t: &TensorProto| {
        let ty = DataType::try_from(t.data_type)
            .map(|d| d.as_str_name().to_string())
            .unwrap_or_else(|_| t.data_type.to_string());
        format!(
            "tensor {:?}: raw data of type {ty} is not supported",
            t.name
        )
    };
    if let Some(t) = g.initializer.iter().find(|t| bad(t)) {
        return Some(describe(t));
    }
    for n in &g.node {
        for a in &n.attribute {
            if let Some(t) = a.t.iter().chain(&a.tensors).find(|t| bad(t)) {
                return Some(format!(
                    "node {:?} ({}): {}",
                    n.name,
                    n.op_type,
                    describe(t)
                ));
            }
            if let Some(m) = a.g.iter().chain(&a.graphs).find_map(unloadable_raw_tensor) {
                return Some(m);
            }
        }
    }
    None
}

/// A window attribute whose length disagrees with the node's spatial rank (tract-onnx 0.23
/// indexes past the shorter one and panics; found by fuzzing): `kernel_shape`, `strides` and
/// `dilations` need one value per spatial axis, `pads` two. The rank comes from a Conv's
/// weight initializer when there is one, else from the first of those attributes present.
fn window_rank_mismatch(g: &GraphProto, n: &NodeProto) -> Option<String> {
    let attrs: Vec<(&str, usize)> = ["kernel_shape", "strides", "dilations"]
        .into_iter()
        .filter_map(|a| get_ints(n, a).map(|v| (a, v.len())))
        .collect();
    let pads = get_ints(n, "pads").map(|v| v.len());
    if attrs.is_empty() && pads.is_none() {
        return None;
    }
    let weight_rank = matches!(n.op_type.as_str(), "Conv" | "ConvTranspose")
        .then(|| n.input.get(1))
        .flatten()
        .and_then(|w| g.initializer.iter().find(|t| &t.name == w))
        .and_then(|t| t.dims.len().checked_sub(2));
    let (rank, from) = match (weight_rank, attrs.first()) {
        (Some(r), _) => (r, "the weights"),
        (None, Some((a, l))) => (*l, *a),
        (None, None) => {
            return pads
                .filter(|p| p % 2 != 0)
                .map(|p| format!("pads has {p} values, not two per axis"));
        }
    };
    for (a, l) in &attrs {
        if *l != rank {
            return Some(format!(
                "{a} has {l} values for {rank} spatial axes (from {from})"
            ));
        }
    }
    match pads {
        Some(p) if p != 2 * rank => Some(format!(
            "pads has {p} values for {rank} spatial axes (from {from}; two values each)"
        )),
        _ => None,
    }
}

/// Encodes a model to protobuf bytes.
pub fn encode(model: &ModelProto) -> Vec<u8> {
    model.encode_to_vec()
}

/// Writes a model to a file.
pub fn save(model: &ModelProto, path: &Path) -> Result<(), OnnxError> {
    std::fs::write(path, encode(model)).map_err(|err| OnnxError::Write {
        path: path.display().to_string(),
        err,
    })
}

/// Converts every FP16 element of the model to FP32: initializers, graph
/// input/output/value_info element types, `Cast(to=FLOAT16)` and tensor
/// attributes (Constant, ConstantOfShape, ...). Returns how many items changed.
pub fn fp16_to_fp32(model: &mut ModelProto) -> Result<usize, OnnxError> {
    let Some(g) = model.graph.as_mut() else {
        return Ok(0);
    };
    let mut n = 0;
    for t in g.initializer.iter_mut() {
        n += tensor_fp16_to_fp32(t)? as usize;
    }
    for vi in g
        .input
        .iter_mut()
        .chain(g.output.iter_mut())
        .chain(g.value_info.iter_mut())
    {
        if let Some(pb::type_proto::Value::TensorType(tt)) =
            vi.r#type.as_mut().and_then(|t| t.value.as_mut())
            && tt.elem_type == FLOAT16
        {
            tt.elem_type = FLOAT;
            n += 1;
        }
    }
    for node in g.node.iter_mut() {
        for a in node.attribute.iter_mut() {
            if node.op_type == "Cast" && a.name == "to" && a.i == FLOAT16 as i64 {
                a.i = FLOAT as i64;
                n += 1;
            }
            if let Some(t) = a.t.as_mut() {
                n += tensor_fp16_to_fp32(t)? as usize;
            }
            for t in a.tensors.iter_mut() {
                n += tensor_fp16_to_fp32(t)? as usize;
            }
        }
    }
    Ok(n)
}

fn tensor_fp16_to_fp32(t: &mut TensorProto) -> Result<bool, OnnxError> {
    if t.data_type != FLOAT16 {
        return Ok(false);
    }
    let bits: Vec<u16> = if !t.raw_data.is_empty() {
        if !t.raw_data.len().is_multiple_of(2) {
            return Err(OnnxError::Tensor {
                name: t.name.clone(),
                msg: "odd FP16 raw_data length".into(),
            });
        }
        t.raw_data
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect()
    } else {
        // FP16 values are stored as their bit patterns in int32_data.
        t.int32_data.iter().map(|&v| v as u16).collect()
    };
    let vals: Vec<f32> = bits
        .into_iter()
        .map(|b| half::f16::from_bits(b).to_f32())
        .collect();
    t.data_type = FLOAT;
    t.int32_data.clear();
    t.raw_data.clear();
    t.float_data = vals;
    Ok(true)
}

/// Number of elements of a tensor with these dims.
pub fn numel(dims: &[i64]) -> usize {
    dims.iter().map(|&d| d.max(0) as usize).product()
}

/// A float32 tensor (float_data).
pub fn tensor_f32(name: &str, dims: &[usize], data: Vec<f32>) -> TensorProto {
    assert_eq!(
        dims.iter().product::<usize>(),
        data.len(),
        "tensor {name}: dims and data disagree"
    );
    TensorProto {
        name: name.to_string(),
        dims: dims.iter().map(|&d| d as i64).collect(),
        data_type: FLOAT,
        float_data: data,
        ..Default::default()
    }
}

/// An int64 tensor (int64_data).
pub fn tensor_i64(name: &str, dims: &[usize], data: Vec<i64>) -> TensorProto {
    assert_eq!(
        dims.iter().product::<usize>(),
        data.len(),
        "tensor {name}: dims and data disagree"
    );
    TensorProto {
        name: name.to_string(),
        dims: dims.iter().map(|&d| d as i64).collect(),
        data_type: INT64,
        int64_data: data,
        ..Default::default()
    }
}

/// Reads a float tensor (float32 from float_data or raw_data, float16, double) as f32.
pub fn tensor_to_f32(t: &TensorProto) -> Result<(Vec<usize>, Vec<f32>), OnnxError> {
    let dims: Vec<usize> = t.dims.iter().map(|&d| d as usize).collect();
    let n = numel(&t.dims);
    let err = |msg: &str| OnnxError::Tensor {
        name: t.name.clone(),
        msg: msg.to_string(),
    };
    if t.data_location == Some(pb::tensor_proto::DataLocation::External as i32) {
        return Err(err("external data is not supported"));
    }
    let data: Vec<f32> = match t.data_type {
        x if x == FLOAT => {
            if !t.raw_data.is_empty() {
                t.raw_data
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect()
            } else {
                t.float_data.clone()
            }
        }
        x if x == FLOAT16 => {
            let mut c = t.clone();
            tensor_fp16_to_fp32(&mut c)?;
            c.float_data
        }
        x if x == DataType::Double as i32 => {
            if !t.raw_data.is_empty() {
                t.raw_data
                    .chunks_exact(8)
                    .map(|c| f64::from_le_bytes(c.try_into().unwrap()) as f32)
                    .collect()
            } else {
                t.double_data.iter().map(|&v| v as f32).collect()
            }
        }
        x if x == INT64 => tensor_to_i64(t)?.1.into_iter().map(|v| v as f32).collect(),
        other => return Err(err(&format!("element type {other} is not a float type"))),
    };
    if data.len() != n {
        return Err(err(&format!(
            "holds {} values but its dims {:?} need {n}",
            data.len(),
            t.dims
        )));
    }
    Ok((dims, data))
}

/// Reads an integer tensor (int64 or int32) as i64.
pub fn tensor_to_i64(t: &TensorProto) -> Result<(Vec<usize>, Vec<i64>), OnnxError> {
    let dims: Vec<usize> = t.dims.iter().map(|&d| d as usize).collect();
    let err = |msg: String| OnnxError::Tensor {
        name: t.name.clone(),
        msg,
    };
    let data: Vec<i64> = match t.data_type {
        x if x == INT64 => {
            if !t.raw_data.is_empty() {
                t.raw_data
                    .chunks_exact(8)
                    .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
                    .collect()
            } else {
                t.int64_data.clone()
            }
        }
        x if x == DataType::Int32 as i32 => {
            if !t.raw_data.is_empty() {
                t.raw_data
                    .chunks_exact(4)
                    .map(|c| i32::from_le_bytes(c.try_into().unwrap()) as i64)
                    .collect()
            } else {
                t.int32_data.iter().map(|&v| v as i64).collect()
            }
        }
        other => return Err(err(format!("element type {other} is not an integer type"))),
    };
    if data.len() != numel(&t.dims) {
        return Err(err(format!(
            "holds {} values but its dims {:?} need more or less",
            data.len(),
            t.dims
        )));
    }
    Ok((dims, data))
}

/// An INT attribute.
pub fn attr_int(name: &str, v: i64) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::Int as i32,
        i: v,
        ..Default::default()
    }
}
/// An INTS attribute.
pub fn attr_ints(name: &str, v: &[i64]) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::Ints as i32,
        ints: v.to_vec(),
        ..Default::default()
    }
}
/// A FLOAT attribute.
pub fn attr_float(name: &str, v: f32) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::Float as i32,
        f: v,
        ..Default::default()
    }
}
/// A FLOATS attribute.
pub fn attr_floats(name: &str, v: &[f32]) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::Floats as i32,
        floats: v.to_vec(),
        ..Default::default()
    }
}
/// A STRING attribute.
pub fn attr_string(name: &str, v: &str) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::String as i32,
        s: v.as_bytes().to_vec(),
        ..Default::default()
    }
}
/// A TENSOR attribute (e.g. `value` of Constant).
pub fn attr_tensor(name: &str, t: TensorProto) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::Tensor as i32,
        t: Some(t),
        ..Default::default()
    }
}

/// The attribute of a node with this name.
pub fn get_attr<'a>(node: &'a NodeProto, name: &str) -> Option<&'a AttributeProto> {
    node.attribute.iter().find(|a| a.name == name)
}
/// An INT attribute's value.
pub fn get_int(node: &NodeProto, name: &str) -> Option<i64> {
    get_attr(node, name).map(|a| a.i)
}
/// An INTS attribute's values.
pub fn get_ints(node: &NodeProto, name: &str) -> Option<Vec<i64>> {
    get_attr(node, name).map(|a| a.ints.clone())
}
/// A FLOAT attribute's value.
pub fn get_float(node: &NodeProto, name: &str) -> Option<f32> {
    get_attr(node, name).map(|a| a.f)
}
/// A STRING attribute's value.
pub fn get_string(node: &NodeProto, name: &str) -> Option<String> {
    get_attr(node, name).map(|a| String::from_utf8_lossy(&a.s).into_owned())
}

/// A tensor value info with a static shape (`None` dims become symbolic "N").
pub fn value_info(name: &str, elem_type: i32, dims: Option<&[usize]>) -> ValueInfoProto {
    use pb::tensor_shape_proto::{Dimension, dimension::Value};
    let shape = dims.map(|d| pb::TensorShapeProto {
        dim: d
            .iter()
            .map(|&v| Dimension {
                value: Some(Value::DimValue(v as i64)),
                ..Default::default()
            })
            .collect(),
    });
    ValueInfoProto {
        name: name.into(),
        r#type: Some(pb::TypeProto {
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type,
                shape,
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Declared dims of a value info: `Some(v)` for fixed dims, `None` for symbolic or missing ones.
/// Returns `None` if it has no tensor shape at all.
pub fn declared_dims(vi: &ValueInfoProto) -> Option<Vec<Option<usize>>> {
    use pb::tensor_shape_proto::dimension::Value;
    let pb::type_proto::Value::TensorType(tt) = vi.r#type.as_ref()?.value.as_ref()?;
    let shape = tt.shape.as_ref()?;
    Some(
        shape
            .dim
            .iter()
            .map(|d| match d.value {
                Some(Value::DimValue(v)) if v > 0 => Some(v as usize),
                _ => None,
            })
            .collect(),
    )
}

/// The default ONNX operator set version of a model (0 if none is declared).
pub fn opset_version(model: &ModelProto) -> i64 {
    model
        .opset_import
        .iter()
        .find(|o| o.domain.is_empty() || o.domain == "ai.onnx")
        .map(|o| o.version)
        .unwrap_or(0)
}

/// The model's graph inputs that are not initializers (the real inputs).
pub fn real_inputs(model: &ModelProto) -> Vec<&ValueInfoProto> {
    let Some(g) = model.graph.as_ref() else {
        return vec![];
    };
    let inits: std::collections::HashSet<&str> =
        g.initializer.iter().map(|t| t.name.as_str()).collect();
    g.input
        .iter()
        .filter(|i| !inits.contains(i.name.as_str()))
        .collect()
}
