//! Normalising a classifier before differentiation: FP32, named nodes, one pinned
//! input, reserved names freed, operator set ≥ 13, topological order, static shapes.

use super::{CompileError, CompileOptions};
use crate::engine::{LOGITS, RESPONSE, SEED};
use crate::onnx::{self, pb, pb::ModelProto, pb::NodeProto};
use std::collections::{HashMap, HashSet};

/// The opset the guard graph is written in (at least).
pub(super) const MIN_OPSET: i64 = 13;

pub(super) struct Prepared {
    pub model: ModelProto,
    pub input: String,
    pub input_shape: Vec<usize>,
    pub shapes: HashMap<String, Vec<usize>>,
    /// Error text of tract's analysis, if it failed part-way.
    pub shape_note: Option<String>,
    /// The pre-Softmax tensor that `logits` is made from (may already be `logits`).
    pub pre_logits: String,
}

pub(super) fn prepare(model: &ModelProto, opts: &CompileOptions) -> Result<Prepared, CompileError> {
    let mut m = model.clone();
    onnx::fp16_to_fp32(&mut m)?;
    let (input, declared) = super::image_input(&m)?;
    let input_shape: Vec<usize> = match opts.input_shape {
        Some(s) => {
            let mut s = s.to_vec();
            s[0] = 1;
            s
        }
        None => {
            if declared.len() != 4 {
                return Err(CompileError::Invalid(format!(
                    "input {input:?} has rank {} (N×C×H×W expected)",
                    declared.len()
                )));
            }
            let mut s = Vec::new();
            for (i, d) in declared.iter().enumerate() {
                match (i, d) {
                    (0, _) => s.push(1),
                    (_, Some(v)) => s.push(*v),
                    (_, None) => {
                        return Err(CompileError::Invalid(format!(
                            "input {input:?} has symbolic dims {declared:?}; give an input size"
                        )));
                    }
                }
            }
            s
        }
    };
    let g = m
        .graph
        .as_mut()
        .ok_or_else(|| CompileError::Invalid("no graph".into()))?;

    // Unique node names, so errors can name nodes.
    let mut used: HashSet<String> = HashSet::new();
    for (i, n) in g.node.iter_mut().enumerate() {
        if n.name.is_empty() || used.contains(&n.name) {
            let base = if n.name.is_empty() {
                format!("{}_{i}", n.op_type)
            } else {
                format!("{}_{i}", n.name)
            };
            n.name = base;
        }
        used.insert(n.name.clone());
    }
    if let Some(d) = g
        .node
        .iter()
        .find(|n| !n.domain.is_empty() && n.domain != "ai.onnx")
    {
        return Err(CompileError::UnsupportedOp {
            op: format!("{}:{}", d.domain, d.op_type),
            node: d.name.clone(),
        });
    }

    // Pin the input; drop value_info (it may carry symbolic or stale shapes).
    let elem = onnx::FLOAT;
    for vi in g.input.iter_mut().filter(|vi| vi.name == input) {
        *vi = onnx::value_info(&input, elem, Some(&input_shape));
    }
    g.value_info.clear();
    // Initializers listed as graph inputs (old exporters) would be overridable
    // inputs to ONNX Runtime/TensorRT and block constant folding: drop them.
    let inits: HashSet<String> = g.initializer.iter().map(|t| t.name.clone()).collect();
    g.input.retain(|vi| !inits.contains(&vi.name));
    for o in g.output.iter_mut() {
        let et = match o.r#type.as_ref().and_then(|t| t.value.as_ref()) {
            Some(pb::type_proto::Value::TensorType(tt)) => tt.elem_type,
            _ => elem,
        };
        *o = onnx::value_info(&o.name, et, None);
    }
    if g.output.is_empty() {
        return Err(CompileError::Invalid("the graph has no output".into()));
    }

    // Static shapes from tract (names of the original opset graph).
    let (mut shapes, shape_note) = infer_shapes(&m);

    // The logits: the input of a final Softmax, else the first output.
    let g = m.graph.as_mut().unwrap();
    let out0 = g.output[0].name.clone();
    let producer = g.node.iter().find(|n| n.output.contains(&out0));
    let mut pre_logits = match producer {
        Some(p) if p.op_type == "Softmax" || p.op_type == "LogSoftmax" => p.input[0].clone(),
        _ => out0.clone(),
    };
    let keep_logits = pre_logits == LOGITS && shapes.get(LOGITS).is_some_and(|s| s.len() == 2);
    let mut reserved = vec![RESPONSE, SEED];
    if !keep_logits {
        reserved.push(LOGITS);
    }
    let all_names = tensor_names(g);
    for r in reserved {
        if all_names.contains(r) {
            let mut k = 1;
            let new = loop {
                let cand = format!(
                    "{r}_orig{}",
                    if k == 1 { String::new() } else { k.to_string() }
                );
                if !all_names.contains(&cand) {
                    break cand;
                }
                k += 1;
            };
            rename(g, r, &new);
            if let Some(s) = shapes.remove(r) {
                shapes.insert(new.clone(), s);
            }
            if pre_logits == r {
                pre_logits = new.clone();
            }
            tracing::warn!(
                "tensor {r:?} renamed to {new:?}: the name is reserved for the guard graph"
            );
        }
    }

    upgrade_opset(&mut m, &mut shapes)?;
    topo_sort(m.graph.as_mut().unwrap())?;
    Ok(Prepared {
        model: m,
        input,
        input_shape,
        shapes,
        shape_note,
        pre_logits,
    })
}

fn tensor_names(g: &pb::GraphProto) -> HashSet<String> {
    let mut s = HashSet::new();
    for n in &g.node {
        s.extend(n.input.iter().cloned());
        s.extend(n.output.iter().cloned());
    }
    s.extend(g.input.iter().map(|v| v.name.clone()));
    s.extend(g.output.iter().map(|v| v.name.clone()));
    s.extend(g.initializer.iter().map(|v| v.name.clone()));
    s
}

fn rename(g: &mut pb::GraphProto, from: &str, to: &str) {
    for n in g.node.iter_mut() {
        for t in n.input.iter_mut().chain(n.output.iter_mut()) {
            if t == from {
                *t = to.to_string();
            }
        }
    }
    for v in g.input.iter_mut().chain(g.output.iter_mut()) {
        if v.name == from {
            v.name = to.to_string();
        }
    }
    for t in g.initializer.iter_mut() {
        if t.name == from {
            t.name = to.to_string();
        }
    }
}

/// Static shapes of every tensor tract can infer, by tensor name.
pub(super) fn infer_shapes(m: &ModelProto) -> (HashMap<String, Vec<usize>>, Option<String>) {
    use tract_onnx::prelude::*;
    let mut out = HashMap::new();
    let mut pr = match tract_onnx::onnx().parse(m, None) {
        Ok(pr) => pr,
        Err(e) => return (out, Some(format!("tract could not load the model: {e:#}"))),
    };
    let note = pr.model.analyse(false).err().map(|e| format!("{e:#}"));
    for (name, outlet) in &pr.outlets_by_name {
        if let Ok(f) = pr.model.outlet_fact(*outlet)
            && let Ok(Some(s)) = f.shape.as_concrete_finite()
        {
            out.insert(name.clone(), s.to_vec());
        }
    }
    (out, note)
}

/// Moves the default-domain opset to ≥ 13, rewriting the version-sensitive ops
/// the compiler may meet. Dropout (inference) becomes Identity at any version.
fn upgrade_opset(
    m: &mut ModelProto,
    shapes: &mut HashMap<String, Vec<usize>>,
) -> Result<(), CompileError> {
    let from = onnx::opset_version(m);
    let target = from.max(MIN_OPSET);
    let g = m.graph.as_mut().unwrap();
    let mut b_inits: Vec<pb::TensorProto> = vec![];
    let mut extra_nodes: Vec<(usize, NodeProto)> = vec![];
    let mut counter = 0usize;
    let taken = tensor_names(g);
    let mut fresh = |base: &str| loop {
        counter += 1;
        let n = format!("{base}__up{counter}");
        if !taken.contains(&n) {
            break n;
        }
    };
    let used_inputs: HashSet<String> = g
        .node
        .iter()
        .flat_map(|n| n.input.iter().cloned())
        .chain(g.output.iter().map(|o| o.name.clone()))
        .collect();
    for (idx, n) in g.node.iter_mut().enumerate() {
        let op = n.op_type.as_str();
        match op {
            "Dropout" => {
                if let Some(extra) = n.output.iter().skip(1).find(|o| used_inputs.contains(*o)) {
                    return Err(CompileError::Unsupported {
                        op: "Dropout".into(),
                        node: n.name.clone(),
                        msg: format!("its mask output {extra:?} is used"),
                    });
                }
                n.op_type = "Identity".into();
                n.input.truncate(1);
                n.output.truncate(1);
                n.attribute.clear();
            }
            "Clip" if from < 11 => {
                let lo = onnx::get_float(n, "min").unwrap_or(f32::NEG_INFINITY);
                let hi = onnx::get_float(n, "max").unwrap_or(f32::INFINITY);
                let lo_n = fresh(&format!("{}_min", n.name));
                let hi_n = fresh(&format!("{}_max", n.name));
                b_inits.push(onnx::tensor_f32(&lo_n, &[], vec![lo]));
                b_inits.push(onnx::tensor_f32(&hi_n, &[], vec![hi]));
                n.input.truncate(1);
                n.input.push(lo_n);
                n.input.push(hi_n);
                n.attribute.clear();
            }
            "BatchNormalization" if from < 9 => {
                n.attribute
                    .retain(|a| a.name == "epsilon" || a.name == "momentum");
                n.output.truncate(1);
            }
            "Squeeze" | "Unsqueeze" | "ReduceSum" if from < 13 => {
                if let Some(axes) = onnx::get_ints(n, "axes") {
                    let an = fresh(&format!("{}_axes", n.name));
                    b_inits.push(onnx::tensor_i64(&an, &[axes.len()], axes));
                    n.input.truncate(1);
                    n.input.push(an);
                    n.attribute.retain(|a| a.name != "axes");
                }
            }
            "Split" if from < 13 => {
                if let Some(split) = onnx::get_ints(n, "split") {
                    let an = fresh(&format!("{}_split", n.name));
                    b_inits.push(onnx::tensor_i64(&an, &[split.len()], split));
                    n.input.truncate(1);
                    n.input.push(an);
                    n.attribute.retain(|a| a.name != "split");
                }
            }
            "Pad" if from < 11 => {
                let pads = onnx::get_ints(n, "pads").unwrap_or_default();
                let value = onnx::get_float(n, "value").unwrap_or(0.0);
                let pn = fresh(&format!("{}_pads", n.name));
                let vn = fresh(&format!("{}_value", n.name));
                b_inits.push(onnx::tensor_i64(&pn, &[pads.len()], pads));
                b_inits.push(onnx::tensor_f32(&vn, &[], vec![value]));
                n.input.truncate(1);
                n.input.push(pn);
                n.input.push(vn);
                n.attribute.retain(|a| a.name == "mode");
            }
            "Slice" if from < 10 => {
                let starts = onnx::get_ints(n, "starts").unwrap_or_default();
                let ends = onnx::get_ints(n, "ends").unwrap_or_default();
                let axes =
                    onnx::get_ints(n, "axes").unwrap_or_else(|| (0..starts.len() as i64).collect());
                for (suffix, v) in [("starts", starts), ("ends", ends), ("axes", axes)] {
                    let an = fresh(&format!("{}_{suffix}", n.name));
                    b_inits.push(onnx::tensor_i64(&an, &[v.len()], v));
                    if suffix == "starts" {
                        n.input.truncate(1);
                    }
                    n.input.push(an);
                }
                n.attribute.clear();
            }
            "Softmax" | "LogSoftmax" | "Hardmax" if from < 13 => {
                let shape = shapes.get(&n.input[0]).cloned();
                let rank = shape.as_ref().map(|s| s.len() as i64);
                let mut axis = onnx::get_int(n, "axis").unwrap_or(1);
                if let Some(r) = rank
                    && axis < 0
                {
                    axis += r;
                }
                let Some(shape) = shape else {
                    return Err(CompileError::Shape(format!(
                        "no static shape for the input of {}",
                        n.name
                    )));
                };
                let trailing_ones = shape[(axis as usize + 1).min(shape.len())..]
                    .iter()
                    .all(|&d| d == 1);
                n.attribute.retain(|a| a.name != "axis");
                if trailing_ones {
                    n.attribute.push(onnx::attr_int("axis", axis));
                } else {
                    // Old semantics: softmax over the flattened trailing dims.
                    let flat = fresh(&format!("{}_flat", n.name));
                    let soft = fresh(&format!("{}_soft", n.name));
                    let shp = fresh(&format!("{}_shape", n.name));
                    let out = n.output[0].clone();
                    b_inits.push(onnx::tensor_i64(
                        &shp,
                        &[shape.len()],
                        shape.iter().map(|&d| d as i64).collect(),
                    ));
                    let flat_node = NodeProto {
                        name: fresh(&format!("{}_flatten", n.name)),
                        op_type: "Flatten".into(),
                        input: vec![n.input[0].clone()],
                        output: vec![flat.clone()],
                        attribute: vec![onnx::attr_int("axis", axis)],
                        ..Default::default()
                    };
                    let reshape = NodeProto {
                        name: fresh(&format!("{}_reshape", n.name)),
                        op_type: "Reshape".into(),
                        input: vec![soft.clone(), shp],
                        output: vec![out.clone()],
                        ..Default::default()
                    };
                    let outer: usize = shape[..axis as usize].iter().product();
                    shapes.insert(
                        flat.clone(),
                        vec![outer, shape[axis as usize..].iter().product()],
                    );
                    shapes.insert(
                        soft.clone(),
                        vec![outer, shape[axis as usize..].iter().product()],
                    );
                    n.input[0] = flat;
                    n.output[0] = soft;
                    n.attribute.push(onnx::attr_int("axis", 1));
                    extra_nodes.push((idx, flat_node));
                    extra_nodes.push((idx + 1, reshape));
                }
            }
            _ => {}
        }
    }
    // Insert extra nodes (topological order is restored by topo_sort anyway).
    for (_, n) in extra_nodes.into_iter().rev() {
        g.node.push(n);
    }
    g.initializer.extend(b_inits);
    if let Some(o) = m
        .opset_import
        .iter_mut()
        .find(|o| o.domain.is_empty() || o.domain == "ai.onnx")
    {
        o.version = target;
    } else {
        m.opset_import.push(pb::OperatorSetIdProto {
            domain: String::new(),
            version: target,
        });
    }
    m.ir_version = m.ir_version.max(8);
    Ok(())
}

/// Stable topological sort of the graph's nodes.
pub(super) fn topo_sort(g: &mut pb::GraphProto) -> Result<(), CompileError> {
    let mut avail: HashSet<String> = g.input.iter().map(|v| v.name.clone()).collect();
    avail.extend(g.initializer.iter().map(|t| t.name.clone()));
    avail.insert(String::new());
    let mut pending: Vec<NodeProto> = std::mem::take(&mut g.node);
    let mut out = Vec::with_capacity(pending.len());
    while !pending.is_empty() {
        let before = pending.len();
        let mut rest = Vec::new();
        for n in pending {
            if n.input.iter().all(|i| avail.contains(i)) {
                avail.extend(n.output.iter().cloned());
                out.push(n);
            } else {
                rest.push(n);
            }
        }
        if rest.len() == before {
            let n = &rest[0];
            let missing = n
                .input
                .iter()
                .find(|i| !avail.contains(*i))
                .cloned()
                .unwrap_or_default();
            return Err(CompileError::Invalid(format!(
                "node {:?} ({}) reads {missing:?}, which no node, input or initializer produces (or the graph has a cycle)",
                n.name, n.op_type
            )));
        }
        pending = rest;
    }
    g.node = out;
    Ok(())
}
