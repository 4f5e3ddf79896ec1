//! Reverse-mode differentiation written as forward ONNX ops: picks the seed,
//! walks the nodes between the image input and the seed backwards, and asks the
//! op table (`ops`) for each node's adjoint.

use super::ctx::{Ctx, R};
use super::ops::{self, Grads};
use super::prepare::Prepared;
use super::{CompileError, CompileOptions, Seed};
use crate::engine::{LOGITS, RESPONSE, SEED, SEED_CELLS};
use crate::onnx::{
    self, GraphBuilder, attr_int, attr_ints, pb::ModelProto, pb::NodeProto, pb::TensorProto,
};
use std::collections::{HashMap, HashSet};

pub(super) fn build(p: Prepared, opts: &CompileOptions) -> R<ModelProto> {
    let Prepared {
        model,
        input,
        input_shape,
        mut shapes,
        shape_note,
        pre_logits,
    } = p;
    let g0 = model.graph.as_ref().unwrap();
    let n_ops_in = g0.node.len();
    let mut consts: HashMap<String, TensorProto> = g0
        .initializer
        .iter()
        .map(|t| (t.name.clone(), t.clone()))
        .collect();
    for n in &g0.node {
        if n.op_type == "Constant"
            && let Some(t) = onnx::get_attr(n, "value").and_then(|a| a.t.clone())
        {
            consts.insert(n.output[0].clone(), t);
        }
    }
    let opset = onnx::opset_version(&model);
    let orig_outputs = g0.output.clone();
    let mut b = GraphBuilder::from_model(&model);

    // logits
    let pre_shape = shapes.get(&pre_logits).cloned().ok_or_else(|| {
        CompileError::Shape(format!(
            "no static shape for the logits tensor {pre_logits:?}{}",
            shape_note
                .as_ref()
                .map(|n| format!(" ({n})"))
                .unwrap_or_default()
        ))
    })?;
    let classes: usize = pre_shape[1..].iter().product();
    if pre_logits != LOGITS {
        let op = if pre_shape.len() == 2 {
            "Identity"
        } else {
            "Flatten"
        };
        let attrs = if op == "Flatten" {
            vec![attr_int("axis", 1)]
        } else {
            vec![]
        };
        b.node_named(op, &[&pre_logits], &[LOGITS], attrs);
        shapes.insert(LOGITS.into(), vec![1, classes]);
    }
    let mut cx = Ctx {
        b,
        shapes,
        shape_note,
        consts,
        mode: opts.mode,
        target: opts.target,
        opset,
        cache: HashMap::new(),
    };

    // Forward nodes (before any seed node is added), in topological order.
    let fwd_nodes: Vec<NodeProto> = cx.b.nodes.clone();
    let mut fwd: HashSet<String> = HashSet::from([input.clone()]);
    for n in &fwd_nodes {
        if n.input.iter().any(|i| fwd.contains(i)) {
            fwd.extend(n.output.iter().cloned());
        }
    }

    // Seed tensor and its gradient.
    let mut seed_cells: Option<(String, Vec<usize>)> = None;
    let (seed_t, seed_g) = match &opts.seed {
        Seed::LastConv => {
            let conv_out = |n: &NodeProto| -> bool {
                n.op_type == "Conv"
                    && n.input.first().is_some_and(|i| fwd.contains(i))
                    && cx
                        .shapes
                        .get(&n.output[0])
                        .is_some_and(|s| s.len() == 4 && s[2] * s[3] > 1)
            };
            let conv = fwd_nodes
                .iter()
                .rev()
                .find(|n| conv_out(n))
                .or_else(|| fwd_nodes.iter().rev().find(|n| n.op_type == "Conv" && fwd.contains(&n.output[0])))
                .ok_or_else(|| {
                    CompileError::Seed("the model has no Conv on the input path; use --seed top1, class:N, tensor:NAME or input".into())
                })?;
            let out = conv.output[0].clone();
            let consumers: Vec<&NodeProto> = fwd_nodes
                .iter()
                .filter(|n| n.input.contains(&out))
                .collect();
            let is_output = orig_outputs.iter().any(|o| o.name == out);
            let t = match consumers.as_slice() {
                [c] if !is_output && (c.op_type == "Relu" || c.op_type == "Clip") => {
                    c.output[0].clone()
                }
                _ => out,
            };
            (t.clone(), t)
        }
        Seed::Tensor(name) | Seed::Channel(name, _) | Seed::Peaks { tensor: name, .. } => {
            if !fwd.contains(name) {
                let known = cx.shapes.contains_key(name)
                    || fwd_nodes.iter().any(|n| n.output.contains(name));
                return Err(CompileError::Seed(if known {
                    format!("tensor {name:?} does not depend on the input {input:?}")
                } else {
                    format!("no tensor named {name:?} in the model")
                }));
            }
            match &opts.seed {
                Seed::Channel(_, c) => {
                    // ½‖t[:, c]‖²: the tensor's own values, masked to the channels.
                    let mask = channel_mask(&mut cx, name, c)?;
                    let g = cx.op("Mul", &[name, &mask], vec![]);
                    (name.clone(), g)
                }
                Seed::Peaks {
                    channels,
                    window,
                    threshold,
                    ..
                } => {
                    let (g, cells) = peak_seed(&mut cx, name, channels, *window, *threshold)?;
                    seed_cells = Some(cells);
                    (name.clone(), g)
                }
                _ => (name.clone(), name.clone()),
            }
        }
        Seed::Top1 => {
            let m = if opset >= 18 {
                let a = cx.ci64("axes", &[1]);
                cx.op("ReduceMax", &[LOGITS, &a], vec![attr_int("keepdims", 1)])
            } else {
                cx.op(
                    "ReduceMax",
                    &[LOGITS],
                    vec![attr_ints("axes", &[1]), attr_int("keepdims", 1)],
                )
            };
            let eq = cx.op("Equal", &[LOGITS, &m], vec![]);
            let oh = cx.cast_float(&eq);
            (LOGITS.to_string(), oh)
        }
        Seed::Class(c) => {
            if *c >= classes {
                return Err(CompileError::Seed(format!(
                    "class {c} is out of range: the model has {classes} classes"
                )));
            }
            let mut v = vec![0f32; classes];
            v[*c] = 1.0;
            let t = cx.cf32("onehot", &[1, classes], v);
            (LOGITS.to_string(), t)
        }
        Seed::Input => {
            cx.b.input(SEED, &[1, classes]);
            (LOGITS.to_string(), SEED.to_string())
        }
    };

    // Ancestors of the seed.
    let mut back: HashSet<String> = HashSet::from([seed_t.clone()]);
    for n in fwd_nodes.iter().rev() {
        if n.output.iter().any(|o| back.contains(o)) {
            back.extend(n.input.iter().cloned());
        }
    }
    let on_path = |t: &String| fwd.contains(t) && back.contains(t);
    let active: Vec<&NodeProto> = fwd_nodes
        .iter()
        .filter(|n| n.output.iter().any(on_path))
        .collect();
    let mut rules = Vec::with_capacity(active.len());
    for n in &active {
        match ops::rule(&n.op_type).and_then(|r| r.adjoint) {
            Some(a) => rules.push(a),
            None => {
                return Err(CompileError::UnsupportedOp {
                    op: n.op_type.clone(),
                    node: n.name.clone(),
                });
            }
        }
    }

    let mut grads: HashMap<String, Vec<String>> = HashMap::new();
    grads.insert(seed_t.clone(), vec![seed_g]);
    for (n, adjoint) in active.iter().zip(rules).rev() {
        let gys: Vec<Option<String>> = n
            .output
            .iter()
            .map(|o| {
                let parts = grads.remove(o).unwrap_or_default();
                cx.accumulate(&parts)
            })
            .collect();
        if gys.iter().all(Option::is_none) {
            continue;
        }
        let contribs = adjoint(&mut cx, n, &Grads(&gys), &|t: &str| on_path(&t.to_string()))?;
        for (t, g) in contribs {
            grads.entry(t).or_default().push(g);
        }
    }
    let parts = grads.remove(&input).unwrap_or_default();
    let gx = cx.accumulate(&parts).ok_or_else(|| {
        CompileError::Seed(format!("the seed {seed_t:?} does not depend on the input"))
    })?;
    cx.b.node_named("Identity", &[&gx], &[RESPONSE], vec![]);

    // Outputs: the model's own, logits, response.
    let mut outs = vec![];
    for o in &orig_outputs {
        let et = match o.r#type.as_ref().and_then(|t| t.value.as_ref()) {
            Some(onnx::pb::type_proto::Value::TensorType(tt)) => tt.elem_type,
            _ => onnx::FLOAT,
        };
        outs.push(onnx::value_info(
            &o.name,
            et,
            cx.shapes.get(&o.name).map(|v| v.as_slice()),
        ));
    }
    if !outs.iter().any(|o| o.name == LOGITS) {
        outs.push(onnx::value_info(LOGITS, onnx::FLOAT, Some(&[1, classes])));
    }
    outs.push(onnx::value_info(RESPONSE, onnx::FLOAT, Some(&input_shape)));
    if let Some((cells, dims)) = &seed_cells {
        cx.b.node_named("Identity", &[cells], &[SEED_CELLS], vec![]);
        outs.push(onnx::value_info(SEED_CELLS, onnx::FLOAT, Some(dims)));
    }
    cx.b.outputs = outs;
    let added = cx.b.nodes.len() - n_ops_in;
    tracing::debug!("guard graph: {n_ops_in} nodes in, {added} added");
    let mut m = cx.b.build();
    if let Some(g) = m.graph.as_mut() {
        g.name = format!("{} (advguard guard graph)", g.name);
    }
    m.producer_name = "advguard".into();
    m.doc_string = format!(
        "advguard guard graph: mode={}, seed={}",
        opts.mode, opts.seed
    );
    Ok(m)
}

/// The channels a seed names (empty: all of `name`'s), checked against its shape, in order.
fn seed_channels(cx: &Ctx, name: &str, channels: &[usize]) -> R<Vec<usize>> {
    let s = cx.shape(name)?;
    let c_max = s.get(1).copied().unwrap_or(0);
    if let Some(c) = channels.iter().find(|&&c| s.len() < 2 || c >= c_max) {
        return Err(CompileError::Seed(format!(
            "channel {c} is out of range for {name:?} of shape {s:?}"
        )));
    }
    if s.len() < 2 {
        return Err(CompileError::Seed(format!(
            "{name:?} of shape {s:?} has no channel axis"
        )));
    }
    let mut v = if channels.is_empty() {
        (0..c_max).collect()
    } else {
        channels.to_vec()
    };
    v.sort_unstable();
    v.dedup();
    Ok(v)
}

/// A 1×C×1×… constant that is 1 on `channels` of `name` (axis 1), 0 elsewhere.
fn channel_mask(cx: &mut Ctx, name: &str, channels: &[usize]) -> R<String> {
    let channels = seed_channels(cx, name, channels)?;
    let s = cx.shape(name)?;
    let c_max = s[1];
    let mut dims = vec![1usize; s.len()];
    dims[1] = c_max;
    let mut m = vec![0f32; c_max];
    for &c in &channels {
        m[c] = 1.0;
    }
    Ok(cx.cf32("seed_channel", &dims, m))
}

/// The gradient of the sum of the detected peaks of `channels` of the heat map `name`, built
/// in the graph (so it follows each frame), and those channels' seeded cells.
///
/// peak = (h == MaxPool_w(h)) ∧ (h ≥ min(threshold, max over the channels)): the same cells as
/// the decode's peaks (`engine::detect::peaks`), with the strongest cell standing in when
/// nothing is detected. Equal neighbours are all peaks, as in the decode. Only the chosen
/// channels are pooled (the person channel is 1/80 of CenterNet's heat map); their cells are
/// zero-padded back into place along the channel axis.
fn peak_seed(
    cx: &mut Ctx,
    name: &str,
    channels: &[usize],
    window: usize,
    threshold: f32,
) -> R<(String, (String, Vec<usize>))> {
    let s = cx.shape(name)?;
    if s.len() != 4 {
        return Err(CompileError::Seed(format!(
            "a peaks seed needs an N×C×H×W heat map; {name:?} has shape {s:?}"
        )));
    }
    if window == 0 || window.is_multiple_of(2) {
        return Err(CompileError::Seed(format!(
            "the peak window must be odd, not {window}"
        )));
    }
    let channels = seed_channels(cx, name, channels)?;
    let all = channels.len() == s[1] && channels.iter().enumerate().all(|(i, &c)| i == c);
    let chosen = if all {
        name.to_string()
    } else {
        let idx: Vec<i64> = channels.iter().map(|&c| c as i64).collect();
        let idx = cx.ci64("seed_channels", &idx);
        cx.op("Gather", &[name, &idx], vec![attr_int("axis", 1)])
    };
    let p = (window / 2) as i64;
    let w = window as i64;
    let pool = cx.op(
        "MaxPool",
        &[&chosen],
        vec![
            attr_ints("kernel_shape", &[w, w]),
            attr_ints("pads", &[p, p, p, p]),
            attr_ints("strides", &[1, 1]),
        ],
    );
    let is_max = cx.op("Equal", &[&chosen, &pool], vec![]);
    // No axes: the maximum over every cell of the chosen channels (1×1×1×1).
    let top = cx.op("ReduceMax", &[&chosen], vec![attr_int("keepdims", 1)]);
    let thr = cx.scalar(threshold);
    let floor = cx.op("Min", &[&top, &thr], vec![]);
    let below = cx.op("Less", &[&chosen, &floor], vec![]);
    let high = cx.op("Not", &[&below], vec![]);
    let peak = cx.op("And", &[&is_max, &high], vec![]);
    let cells = cx.cast_float(&peak);
    let dims = vec![s[0], channels.len(), s[2], s[3]];
    if all {
        return Ok((cells.clone(), (cells, dims)));
    }
    let mut parts = Vec::with_capacity(channels.len());
    for (j, &c) in channels.iter().enumerate() {
        let one = if channels.len() == 1 {
            cells.clone()
        } else {
            cx.slice(&cells, &[j as i64], &[j as i64 + 1], &[1], None)
        };
        let after = (s[1] - 1 - c) as i64;
        let pads = cx.ci64("seed_pads", &[0, c as i64, 0, 0, 0, after, 0, 0]);
        parts.push(cx.op("Pad", &[&one, &pads], vec![]));
    }
    let g = cx.accumulate(&parts).expect("at least one channel");
    Ok((g, (cells, dims)))
}
