//! A graph exported for one image, rewritten to take a batch of `n`: the input's and outputs'
//! first dimension, and every constant Reshape target that spells the batch as 1.
//!
//! Exporters bake the batch of 1 into Reshape targets (`[1, 1000]`, `[1, -1]`); ONNX Runtime
//! then fails or, worse, folds several images into one row. The rewrite is checked, not
//! trusted: [`check_batch`] runs the batched graph and compares every item's class scores and
//! the first item's response with the single-image graph.

use crate::onnx::pb::{ModelProto, TensorProto, tensor_shape_proto::dimension::Value as Dim};
use ndarray::Array4;

/// Why a graph could not be batched.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    /// The model has no graph or no such input.
    #[error("batch: {0}")]
    Graph(String),
    /// The batched graph does not run, or gives other results than one image at a time.
    #[error("batch {n}: {msg}")]
    Mismatch {
        /// Batch size.
        n: usize,
        /// What differed.
        msg: String,
    },
}

/// `model` with batch `n` on `input`; returns the graph and the Reshape targets rewritten.
pub fn with_batch(
    model: &ModelProto,
    input: &str,
    n: usize,
) -> Result<(ModelProto, usize), BatchError> {
    let mut m = model.clone();
    let g = m
        .graph
        .as_mut()
        .ok_or_else(|| BatchError::Graph("model has no graph".into()))?;
    let set_first = |vi: &mut crate::onnx::pb::ValueInfoProto| -> bool {
        use crate::onnx::pb::type_proto::Value;
        if let Some(Value::TensorType(t)) = vi.r#type.as_mut().and_then(|t| t.value.as_mut())
            && let Some(d) = t.shape.as_mut().and_then(|s| s.dim.first_mut())
        {
            d.value = Some(Dim::DimValue(n as i64));
            return true;
        }
        false
    };
    let inp = g
        .input
        .iter_mut()
        .find(|i| i.name == input)
        .ok_or_else(|| BatchError::Graph(format!("no input {input:?}")))?;
    if !set_first(inp) {
        return Err(BatchError::Graph(format!("input {input:?} has no shape")));
    }
    for o in g.output.iter_mut() {
        set_first(o);
    }
    // Intermediate shapes were inferred for one image; the backend infers them again.
    g.value_info.clear();
    let targets: std::collections::HashSet<String> = g
        .node
        .iter()
        .filter(|nd| nd.op_type == "Reshape")
        .filter_map(|nd| nd.input.get(1).cloned())
        .collect();
    let mut rewritten = 0;
    let mut fix = |t: &mut TensorProto| {
        if let Ok((_, mut v)) = crate::onnx::tensor_to_i64(t)
            && v.first() == Some(&1)
            && v.len() >= 2
        {
            v[0] = n as i64;
            *t = crate::onnx::tensor_i64(&t.name, &[v.len()], v);
            rewritten += 1;
        }
    };
    for t in g
        .initializer
        .iter_mut()
        .filter(|t| targets.contains(&t.name))
    {
        fix(t);
    }
    for nd in g.node.iter_mut().filter(|nd| nd.op_type == "Constant") {
        if nd.output.first().is_some_and(|o| targets.contains(o)) {
            for a in nd.attribute.iter_mut().filter(|a| a.name == "value") {
                if let Some(t) = a.t.as_mut() {
                    fix(t);
                }
            }
        }
    }
    Ok((m, rewritten))
}

/// `n` different items made from a 1×C×H×W tensor: item i is it shifted right by 17·i
/// columns (wrapping), so an item mixed with another gives other scores than its own.
pub fn stack(one: &Array4<f32>, n: usize) -> Array4<f32> {
    let w = one.shape()[3].max(1);
    let mut out = Array4::zeros((n, one.shape()[1], one.shape()[2], one.shape()[3]));
    for i in 0..n {
        let shift = (17 * i) % w;
        for ((_, c, y, x), v) in one.indexed_iter() {
            out[[i, c, y, (x + shift) % w]] = *v;
        }
    }
    out
}

/// Runs `batched` (batch `n`) on [`stack`] of `one` and compares with `single` one item at a
/// time: every item's class scores, and the first item's response (the engines return only
/// the first item's). Tolerance: 1e-3 relative to the largest magnitude.
pub fn check_batch(
    single: &mut dyn super::Engine,
    batched: &mut dyn super::Engine,
    one: &Array4<f32>,
    n: usize,
) -> Result<(), BatchError> {
    let mismatch = |msg: String| BatchError::Mismatch { n, msg };
    let x = stack(one, n);
    let out = batched
        .run(x.view(), None)
        .map_err(|e| mismatch(e.to_string()))?;
    let classes = out.logits.len() / n.max(1);
    if classes == 0 || out.logits.len() != classes * n {
        return Err(mismatch(format!(
            "{} class scores for {n} items",
            out.logits.len()
        )));
    }
    let close = |a: &[f32], b: &[f32]| {
        let scale = b.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() <= 1e-3 * scale)
    };
    for i in 0..n {
        let item = x.slice(ndarray::s![i..i + 1, .., .., ..]).to_owned();
        let want = single
            .run(item.view(), None)
            .map_err(|e| mismatch(e.to_string()))?;
        if !close(&out.logits[i * classes..(i + 1) * classes], &want.logits) {
            return Err(mismatch(format!(
                "item {i}'s class scores differ from a single-image run"
            )));
        }
        if i == 0
            && !close(
                out.response.as_slice().unwrap_or(&[]),
                want.response.as_slice().unwrap_or(&[]),
            )
        {
            return Err(mismatch(
                "item 0's response differs from a single-image run".into(),
            ));
        }
    }
    Ok(())
}
