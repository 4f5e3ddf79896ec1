//! Normalising a classifier before differentiation: FP32, named nodes, one pinned
//! input, reserved names freed, operator set ≥ 13, topological order, static shapes.

use super::ops::UpgradeCx;
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

    // The rules index their inputs and first output; a node short of them (found by fuzzing: a
    // Softmax without inputs) is refused here, naming it, rather than panicking later.
    for n in &g.node {
        let need = super::ops::rule(&n.op_type).map_or(0, |r| r.min_inputs);
        let given = n.input.iter().take_while(|i| !i.is_empty()).count();
        if n.output.first().is_none_or(|o| o.is_empty()) || given < need {
            return Err(CompileError::Invalid(format!(
                "node {:?} ({}) has {} input(s) and {} output(s); it needs at least {need} and 1",
                n.name,
                n.op_type,
                n.input.len(),
                n.output.len()
            )));
        }
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
    // A mutated model can make tract infer absurd sizes (found by fuzzing: a product of dims
    // overflowed in the seed search); no classifier tensor comes near MAX_ELEMENTS.
    const MAX_ELEMENTS: usize = 1 << 28;
    let too_big = |s: &Vec<usize>| {
        s.iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .is_none_or(|n| n > MAX_ELEMENTS)
    };
    if let Some((name, s)) = shapes.iter().find(|(_, s)| too_big(s)) {
        return Err(CompileError::Shape(format!(
            "tensor {name:?} would have shape {s:?}: more than {MAX_ELEMENTS} elements"
        )));
    }

    // Inputs that do not broadcast make the model invalid (ONNX Runtime refuses it at load);
    // left in, they made tract's planning of the guard graph spin for minutes (found by
    // fuzzing: a Conv's asymmetric pads gave a 3×1 gate for an 8×8 map).
    if let Some(g) = m.graph.as_ref() {
        for n in &g.node {
            if !BROADCASTING.contains(&n.op_type.as_str()) {
                continue;
            }
            let known: Vec<&Vec<usize>> = n.input.iter().filter_map(|i| shapes.get(i)).collect();
            if known.len() == n.input.len()
                && let Some((a, b)) = first_mismatch(&known)
            {
                return Err(CompileError::Shape(format!(
                    "node {:?} ({}): inputs of shapes {a:?} and {b:?} do not broadcast",
                    n.name, n.op_type
                )));
            }
        }
    }

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
    // tract-hir 0.23 panics on some malformed graphs instead of erring (found by fuzzing: a
    // Flatten axis past its input's rank indexes out of range), so its analysis is contained.
    let parsed = crate::contain::contain(|| {
        let mut pr = tract_onnx::onnx().parse(m, None)?;
        let note = pr.model.analyse(false).err().map(|e| format!("{e:#}"));
        Ok::<_, tract_onnx::prelude::TractError>((pr, note))
    });
    let (pr, note) = match parsed {
        Ok(Ok(p)) => p,
        Ok(Err(e)) => return (out, Some(format!("tract could not load the model: {e:#}"))),
        Err(panic) => {
            return (
                out,
                Some(format!("tract failed analysing the model: {panic}")),
            );
        }
    };
    for (name, outlet) in &pr.outlets_by_name {
        if let Ok(f) = pr.model.outlet_fact(*outlet)
            && let Ok(Some(s)) = f.shape.as_concrete_finite()
        {
            out.insert(name.clone(), s.to_vec());
        }
    }
    (out, note)
}

/// Moves the default-domain opset to ≥ 13: each op's upgrade rule (in `ops/`)
/// rewrites its node. Dropout (inference) becomes Identity at any version.
fn upgrade_opset(
    m: &mut ModelProto,
    shapes: &mut HashMap<String, Vec<usize>>,
) -> Result<(), CompileError> {
    let from = onnx::opset_version(m);
    let target = from.max(MIN_OPSET);
    let g = m.graph.as_mut().unwrap();
    let taken = tensor_names(g);
    let used: HashSet<String> = g
        .node
        .iter()
        .flat_map(|n| n.input.iter().cloned())
        .chain(g.output.iter().map(|o| o.name.clone()))
        .collect();
    let mut u = UpgradeCx::new(from, shapes, &used, &taken);
    for n in g.node.iter_mut() {
        if let Some(up) = super::ops::rule(&n.op_type).and_then(|r| r.upgrade) {
            up(&mut u, n)?;
        }
    }
    // New nodes go last; topo_sort restores the order.
    g.node.append(&mut u.nodes);
    g.initializer.append(&mut u.inits);
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

/// Elementwise ops whose inputs broadcast (numpy rules).
const BROADCASTING: &[&str] = &[
    "Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "Equal", "Greater", "Less",
    "And", "Or", "Where",
];

/// The first pair of shapes that do not broadcast together (right-aligned, equal or 1).
fn first_mismatch<'a>(shapes: &[&'a Vec<usize>]) -> Option<(&'a Vec<usize>, &'a Vec<usize>)> {
    for (i, a) in shapes.iter().enumerate() {
        for b in &shapes[i + 1..] {
            let ok = a
                .iter()
                .rev()
                .zip(b.iter().rev())
                .all(|(&x, &y)| x == y || x == 1 || y == 1);
            if !ok {
                return Some((a, b));
            }
        }
    }
    None
}
