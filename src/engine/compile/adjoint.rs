//! Reverse-mode differentiation written as forward ONNX ops.

use super::prepare::Prepared;
use super::{CompileError, CompileOptions, Mode, SUPPORTED_OPS, Seed};
use crate::engine::{LOGITS, RESPONSE, SEED};
use crate::onnx::{
    self, GraphBuilder, attr_int, attr_ints, pb::ModelProto, pb::NodeProto, pb::TensorProto,
};
use std::collections::{HashMap, HashSet};

struct Ctx {
    b: GraphBuilder,
    shapes: HashMap<String, Vec<usize>>,
    shape_note: Option<String>,
    consts: HashMap<String, TensorProto>,
    mode: Mode,
    opset: i64,
    cache: HashMap<String, String>,
}

type R<T> = Result<T, CompileError>;

fn unsup(n: &NodeProto, msg: impl Into<String>) -> CompileError {
    CompileError::Unsupported {
        op: n.op_type.clone(),
        node: n.name.clone(),
        msg: msg.into(),
    }
}

impl Ctx {
    fn shape(&self, t: &str) -> R<Vec<usize>> {
        self.shapes.get(t).cloned().ok_or_else(|| {
            CompileError::Shape(format!(
                "no static shape for tensor {t:?}{}",
                self.shape_note
                    .as_ref()
                    .map(|n| format!(" ({n})"))
                    .unwrap_or_default()
            ))
        })
    }

    fn const_f32(&self, t: &str) -> Option<(Vec<usize>, Vec<f32>)> {
        self.consts.get(t).and_then(|c| onnx::tensor_to_f32(c).ok())
    }

    fn op(&mut self, op: &str, inputs: &[&str], attrs: Vec<onnx::pb::AttributeProto>) -> String {
        let name = self.b.fresh(&format!("bw/{op}"));
        let out = self.b.fresh(&format!("{name}_out"));
        self.b.node_named(op, inputs, &[&out], attrs);
        // node_named picks its own node name; rename it to ours for readability.
        if let Some(n) = self.b.nodes.last_mut() {
            n.name = name;
        }
        out
    }

    fn cf32(&mut self, prefix: &str, dims: &[usize], data: Vec<f32>) -> String {
        self.b.init_f32(&format!("bw/{prefix}"), dims, data)
    }

    fn ci64(&mut self, prefix: &str, data: &[i64]) -> String {
        self.b
            .init_i64(&format!("bw/{prefix}"), &[data.len()], data.to_vec())
    }

    fn scalar(&mut self, v: f32) -> String {
        let key = format!("scalar:{}", v.to_bits());
        if let Some(n) = self.cache.get(&key) {
            return n.clone();
        }
        let n = self.cf32("c", &[], vec![v]);
        self.cache.insert(key, n.clone());
        n
    }

    fn shape_const(&mut self, s: &[usize]) -> String {
        let key = format!("shape:{s:?}");
        if let Some(n) = self.cache.get(&key) {
            return n.clone();
        }
        let v: Vec<i64> = s.iter().map(|&d| d as i64).collect();
        let n = self.ci64("shape", &v);
        self.cache.insert(key, n.clone());
        n
    }

    fn reshape(&mut self, x: &str, s: &[usize]) -> String {
        let c = self.shape_const(s);
        self.op("Reshape", &[x, &c], vec![])
    }

    fn slice(
        &mut self,
        x: &str,
        starts: &[i64],
        ends: &[i64],
        axes: &[i64],
        steps: Option<&[i64]>,
    ) -> String {
        let s = self.ci64("starts", starts);
        let e = self.ci64("ends", ends);
        let a = self.ci64("axes", axes);
        match steps {
            Some(st) => {
                let st = self.ci64("steps", st);
                self.op("Slice", &[x, &s, &e, &a, &st], vec![])
            }
            None => self.op("Slice", &[x, &s, &e, &a], vec![]),
        }
    }

    fn cast_float(&mut self, x: &str) -> String {
        self.op("Cast", &[x], vec![attr_int("to", onnx::FLOAT as i64)])
    }

    fn reduce_sum(&mut self, x: &str, axes: &[i64]) -> String {
        if self.opset >= 13 {
            let a = self.ci64("axes", axes);
            self.op("ReduceSum", &[x, &a], vec![attr_int("keepdims", 1)])
        } else {
            self.op(
                "ReduceSum",
                &[x],
                vec![attr_ints("axes", axes), attr_int("keepdims", 1)],
            )
        }
    }

    /// Sums a broadcast gradient `g` (shape `gs`) down to shape `target`.
    fn reduce_to(&mut self, g: &str, gs: &[usize], target: &[usize]) -> String {
        if gs == target {
            return g.to_string();
        }
        let r = gs.len();
        let mut t = vec![1usize; r.saturating_sub(target.len())];
        t.extend_from_slice(target);
        let axes: Vec<i64> = (0..r)
            .filter(|&i| t[i] == 1 && gs[i] != 1)
            .map(|i| i as i64)
            .collect();
        let mut out = g.to_string();
        if !axes.is_empty() {
            out = self.reduce_sum(&out, &axes);
        }
        if t.len() != target.len() || axes.is_empty() && gs != target {
            out = self.reshape(&out, target);
        }
        out
    }

    /// Zero-pads (end) and crops a N×C×Hf×Wf tensor to the window [begin, begin+target).
    fn crop(&mut self, x: &str, full: [usize; 2], begin: [usize; 2], target: [usize; 2]) -> String {
        let mut cur = x.to_string();
        let need = [begin[0] + target[0], begin[1] + target[1]];
        if need[0] > full[0] || need[1] > full[1] {
            let ph = need[0].saturating_sub(full[0]) as i64;
            let pw = need[1].saturating_sub(full[1]) as i64;
            let p = self.ci64("pads", &[0, 0, 0, 0, 0, 0, ph, pw]);
            cur = self.op("Pad", &[&cur, &p], vec![]);
        }
        let fullp = [full[0].max(need[0]), full[1].max(need[1])];
        if begin != [0, 0] || fullp != target {
            cur = self.slice(
                &cur,
                &[begin[0] as i64, begin[1] as i64],
                &[need[0] as i64, need[1] as i64],
                &[2, 3],
                None,
            );
        }
        cur
    }

    fn accumulate(&mut self, parts: &[String]) -> Option<String> {
        match parts {
            [] => None,
            [one] => Some(one.clone()),
            [a, b] => Some(self.op("Add", &[a, b], vec![])),
            many => {
                let refs: Vec<&str> = many.iter().map(|s| s.as_str()).collect();
                Some(self.op("Sum", &refs, vec![]))
            }
        }
    }
}

/// Spatial attributes of Conv / pooling nodes (2-D only).
struct Window {
    k: [usize; 2],
    s: [usize; 2],
    d: [usize; 2],
    pb: [usize; 2],
    pe: [usize; 2],
}

fn window(n: &NodeProto, k: [usize; 2], xs: &[usize], ys: &[usize]) -> R<Window> {
    let two = |name: &str, def: usize| -> R<[usize; 2]> {
        match onnx::get_ints(n, name) {
            None => Ok([def, def]),
            Some(v) if v.len() == 2 => Ok([v[0] as usize, v[1] as usize]),
            Some(v) => Err(unsup(
                n,
                format!("{name}={v:?}: only 2-D windows are supported"),
            )),
        }
    };
    let s = two("strides", 1)?;
    let d = two("dilations", 1)?;
    let auto = onnx::get_string(n, "auto_pad").unwrap_or_default();
    let (mut pb, mut pe) = ([0usize; 2], [0usize; 2]);
    match auto.as_str() {
        "" | "NOTSET" => {
            if let Some(p) = onnx::get_ints(n, "pads") {
                if p.len() != 4 || p.iter().any(|&v| v < 0) {
                    return Err(unsup(n, format!("pads={p:?}")));
                }
                pb = [p[0] as usize, p[1] as usize];
                pe = [p[2] as usize, p[3] as usize];
            }
        }
        "VALID" => {}
        "SAME_UPPER" | "SAME_LOWER" => {
            for i in 0..2 {
                let eff = (k[i] - 1) * d[i] + 1;
                let total = ((ys[2 + i] - 1) * s[i] + eff).saturating_sub(xs[2 + i]);
                let small = total / 2;
                if auto == "SAME_UPPER" {
                    pb[i] = small;
                    pe[i] = total - small;
                } else {
                    pb[i] = total - small;
                    pe[i] = small;
                }
            }
        }
        o => return Err(unsup(n, format!("auto_pad={o}"))),
    }
    Ok(Window { k, s, d, pb, pe })
}

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
        Seed::Tensor(name) => {
            if !fwd.contains(name) {
                let known = cx.shapes.contains_key(name)
                    || fwd_nodes.iter().any(|n| n.output.contains(name));
                return Err(CompileError::Seed(if known {
                    format!("tensor {name:?} does not depend on the input {input:?}")
                } else {
                    format!("no tensor named {name:?} in the model")
                }));
            }
            (name.clone(), name.clone())
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
    for n in &active {
        if !SUPPORTED_OPS.contains(&n.op_type.as_str()) {
            return Err(CompileError::UnsupportedOp {
                op: n.op_type.clone(),
                node: n.name.clone(),
            });
        }
    }

    let mut grads: HashMap<String, Vec<String>> = HashMap::new();
    grads.insert(seed_t.clone(), vec![seed_g]);
    for n in active.iter().rev() {
        let parts = grads.remove(&n.output[0]).unwrap_or_default();
        let Some(gy) = cx.accumulate(&parts) else {
            continue;
        };
        let contribs = adjoint(&mut cx, n, &gy, &|t: &str| on_path(&t.to_string()))?;
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

/// Emits the adjoint of one node; returns (input tensor, gradient contribution) pairs.
fn adjoint(
    cx: &mut Ctx,
    n: &NodeProto,
    gy: &str,
    on_path: &dyn Fn(&str) -> bool,
) -> R<Vec<(String, String)>> {
    let x = n.input[0].clone();
    let y = n.output[0].clone();
    let mut out = vec![];
    match n.op_type.as_str() {
        "Identity" | "Dropout" => out.push((x, gy.to_string())),
        "Neg" => out.push((x, cx.op("Neg", &[gy], vec![]))),
        "Relu" => {
            // [x > 0] = Sign(y) for y = Relu(x) ≥ 0: exact, and much faster in tract
            // than Cast(Greater(x, 0)).
            let mask = cx.op("Sign", &[&y], vec![]);
            let g = match cx.mode {
                Mode::Guided => cx.op("Relu", &[gy], vec![]),
                Mode::Plain => gy.to_string(),
            };
            out.push((x, cx.op("Mul", &[&g, &mask], vec![])));
        }
        "Clip" => {
            // y = clip(x, lo, hi) ∈ [lo, hi]; [lo < x < hi] = Sign(y − lo) · Sign(hi − y)
            // (a float difference is 0 exactly when the operands are equal).
            let lo = clip_bound(cx, n, 1, f32::NEG_INFINITY)?;
            let hi = clip_bound(cx, n, 2, f32::INFINITY)?;
            let mut masks = vec![];
            if lo.is_finite() {
                let d = if lo == 0.0 {
                    y.clone()
                } else {
                    let c = cx.scalar(lo);
                    cx.op("Sub", &[&y, &c], vec![])
                };
                masks.push(cx.op("Sign", &[&d], vec![]));
            }
            if hi.is_finite() {
                let c = cx.scalar(hi);
                let d = cx.op("Sub", &[&c, &y], vec![]);
                masks.push(cx.op("Sign", &[&d], vec![]));
            }
            let mut g = match cx.mode {
                Mode::Guided => cx.op("Relu", &[gy], vec![]),
                Mode::Plain => gy.to_string(),
            };
            for m in masks {
                g = cx.op("Mul", &[&g, &m], vec![]);
            }
            out.push((x, g));
        }
        "Conv" => {
            if n.input.get(1).is_some_and(|w| on_path(w)) {
                return Err(unsup(n, "the weights depend on the input"));
            }
            let xs = cx.shape(&x)?;
            let ys = cx.shape(&y)?;
            let wn = n.input[1].clone();
            let ws = cx.shape(&wn).or_else(|_| {
                cx.const_f32(&wn)
                    .map(|c| c.0)
                    .ok_or_else(|| unsup(n, "no shape for the weights"))
            })?;
            if xs.len() != 4 || ws.len() != 4 {
                return Err(unsup(n, "only 2-D convolutions (N×C×H×W) are supported"));
            }
            let group = onnx::get_int(n, "group").unwrap_or(1) as usize;
            let w = window(n, [ws[2], ws[3]], &xs, &ys)?;
            let eff = [(w.k[0] - 1) * w.d[0] + 1, (w.k[1] - 1) * w.d[1] + 1];
            let konst = cx.const_f32(&wn);
            let stride1_ok = w.s == [1, 1] && (0..2).all(|i| w.pb[i] < eff[i] && w.pe[i] < eff[i]);
            let g = if let (true, Some((_, wdata))) = (stride1_ok, konst) {
                // Stride 1: a Conv with flipped, transposed weights.
                let (m, cg, kh, kw) = (ws[0], ws[1], ws[2], ws[3]);
                let c = cg * group;
                let mg = m / group;
                let mut wt = vec![0f32; c * mg * kh * kw];
                for gi in 0..group {
                    for cc in 0..cg {
                        for mm in 0..mg {
                            for i in 0..kh {
                                for j in 0..kw {
                                    let src = (((gi * mg + mm) * cg + cc) * kh + (kh - 1 - i)) * kw
                                        + (kw - 1 - j);
                                    let dst = (((gi * cg + cc) * mg + mm) * kh + i) * kw + j;
                                    wt[dst] = wdata[src];
                                }
                            }
                        }
                    }
                }
                let wt = cx.cf32("wT", &[c, mg, kh, kw], wt);
                let pads: Vec<i64> = vec![
                    (eff[0] - 1 - w.pb[0]) as i64,
                    (eff[1] - 1 - w.pb[1]) as i64,
                    (eff[0] - 1 - w.pe[0]) as i64,
                    (eff[1] - 1 - w.pe[1]) as i64,
                ];
                cx.op(
                    "Conv",
                    &[gy, &wt],
                    vec![
                        attr_ints("kernel_shape", &[kh as i64, kw as i64]),
                        attr_ints("pads", &pads),
                        attr_ints("dilations", &[w.d[0] as i64, w.d[1] as i64]),
                        attr_int("group", group as i64),
                    ],
                )
            } else {
                let mut op_pad = [0i64; 2];
                for i in 0..2 {
                    let base = (ys[2 + i] as i64 - 1) * w.s[i] as i64 + eff[i] as i64
                        - w.pb[i] as i64
                        - w.pe[i] as i64;
                    op_pad[i] = xs[2 + i] as i64 - base;
                    if op_pad[i] < 0 || op_pad[i] >= (w.s[i].max(w.d[i])) as i64 {
                        return Err(unsup(
                            n,
                            format!("cannot match shapes with output_padding {op_pad:?}"),
                        ));
                    }
                }
                cx.op(
                    "ConvTranspose",
                    &[gy, &wn],
                    vec![
                        attr_ints("kernel_shape", &[ws[2] as i64, ws[3] as i64]),
                        attr_ints("strides", &[w.s[0] as i64, w.s[1] as i64]),
                        attr_ints("dilations", &[w.d[0] as i64, w.d[1] as i64]),
                        attr_ints(
                            "pads",
                            &[
                                w.pb[0] as i64,
                                w.pb[1] as i64,
                                w.pe[0] as i64,
                                w.pe[1] as i64,
                            ],
                        ),
                        attr_ints("output_padding", &op_pad),
                        attr_int("group", group as i64),
                    ],
                )
            };
            out.push((x, g));
        }
        "MaxPool" => {
            let xs = cx.shape(&x)?;
            let ys = cx.shape(&y)?;
            let k = onnx::get_ints(n, "kernel_shape").unwrap_or_default();
            if xs.len() != 4 || k.len() != 2 {
                return Err(unsup(n, "only 2-D pooling is supported"));
            }
            let w = window(n, [k[0] as usize, k[1] as usize], &xs, &ys)?;
            let (c, ho, wo) = (xs[1], ys[2], ys[3]);
            let eff = [(w.k[0] - 1) * w.d[0] + 1, (w.k[1] - 1) * w.d[1] + 1];
            let full = [(ho - 1) * w.s[0] + eff[0], (wo - 1) * w.s[1] + eff[1]];
            // Pad with -inf so every window is in bounds.
            let pe = [
                full[0].saturating_sub(xs[2] + w.pb[0]) as i64,
                full[1].saturating_sub(xs[3] + w.pb[1]) as i64,
            ];
            let xp = if w.pb == [0, 0] && pe == [0, 0] {
                x.clone()
            } else {
                let p = cx.ci64(
                    "pads",
                    &[0, 0, w.pb[0] as i64, w.pb[1] as i64, 0, 0, pe[0], pe[1]],
                );
                let v = cx.scalar(f32::NEG_INFINITY);
                cx.op("Pad", &[&x, &p, &v], vec![])
            };
            // Per kernel offset: strided slice == pooled → mask · grad, placed by
            // phase (offset·d mod s) and shift (offset·d div s), then the s×s phases
            // are interleaved (depth-to-space with Concat + Reshape).
            let (s0, s1) = (w.s[0], w.s[1]);
            let hq = full[0].div_ceil(s0);
            let wq = full[1].div_ceil(s1);
            let mut phases: Vec<Vec<Vec<String>>> = vec![vec![vec![]; s1]; s0];
            for i in 0..w.k[0] {
                for j in 0..w.k[1] {
                    let (oi, oj) = (i * w.d[0], j * w.d[1]);
                    let s = cx.slice(
                        &xp,
                        &[oi as i64, oj as i64],
                        &[
                            (oi + (ho - 1) * s0) as i64 + 1,
                            (oj + (wo - 1) * s1) as i64 + 1,
                        ],
                        &[2, 3],
                        Some(&[s0 as i64, s1 as i64]),
                    );
                    let eq = cx.op("Equal", &[&s, &y], vec![]);
                    let mask = cx.cast_float(&eq);
                    let r = cx.op("Mul", &[&mask, gy], vec![]);
                    let (qi, qj) = (oi / s0, oj / s1);
                    let pads = [qi, qj, hq - ho - qi, wq - wo - qj];
                    let r = if pads.iter().all(|&p| p == 0) {
                        r
                    } else {
                        let p = cx.ci64(
                            "pads",
                            &[
                                0,
                                0,
                                pads[0] as i64,
                                pads[1] as i64,
                                0,
                                0,
                                pads[2] as i64,
                                pads[3] as i64,
                            ],
                        );
                        cx.op("Pad", &[&r, &p], vec![])
                    };
                    phases[oi % s0][oj % s1].push(r);
                }
            }
            let mut rows = vec![];
            for ph in phases {
                let mut cols = vec![];
                for parts in ph {
                    let t = match cx.accumulate(&parts) {
                        Some(t) => t,
                        None => cx.cf32("zeros", &[1, c, hq, wq], vec![0.0; c * hq * wq]),
                    };
                    cols.push(if s1 > 1 {
                        cx.reshape(&t, &[1, c, hq, wq, 1])
                    } else {
                        t
                    });
                }
                let row = if s1 > 1 {
                    let refs: Vec<&str> = cols.iter().map(|s| s.as_str()).collect();
                    let cat = cx.op("Concat", &refs, vec![attr_int("axis", 4)]);
                    cx.reshape(&cat, &[1, c, hq, 1, wq * s1])
                } else {
                    cx.reshape(&cols[0], &[1, c, hq, 1, wq])
                };
                rows.push(row);
            }
            let g = if s0 > 1 {
                let refs: Vec<&str> = rows.iter().map(|s| s.as_str()).collect();
                cx.op("Concat", &refs, vec![attr_int("axis", 3)])
            } else {
                rows.pop().unwrap()
            };
            let g = cx.reshape(&g, &[1, c, hq * s0, wq * s1]);
            let g = cx.crop(&g, [hq * s0, wq * s1], w.pb, [xs[2], xs[3]]);
            out.push((x, g));
        }
        "AveragePool" => {
            let xs = cx.shape(&x)?;
            let ys = cx.shape(&y)?;
            let k = onnx::get_ints(n, "kernel_shape").unwrap_or_default();
            if xs.len() != 4 || k.len() != 2 {
                return Err(unsup(n, "only 2-D pooling is supported"));
            }
            let w = window(n, [k[0] as usize, k[1] as usize], &xs, &ys)?;
            if w.d != [1, 1] {
                return Err(unsup(n, "dilated AveragePool"));
            }
            let include = onnx::get_int(n, "count_include_pad").unwrap_or(0) == 1;
            let (c, ho, wo) = (xs[1], ys[2], ys[3]);
            let count = |o: usize, a: usize| -> usize {
                let start = (o * w.s[a]) as i64 - w.pb[a] as i64;
                let end = start + w.k[a] as i64;
                let (lo, hi) = if include {
                    (-(w.pb[a] as i64), (xs[2 + a] + w.pe[a]) as i64)
                } else {
                    (0, xs[2 + a] as i64)
                };
                (end.min(hi) - start.max(lo)).max(0) as usize
            };
            let mut inv = Vec::with_capacity(ho * wo);
            for oh in 0..ho {
                for ow in 0..wo {
                    let cnt = count(oh, 0) * count(ow, 1);
                    inv.push(if cnt == 0 { 0.0 } else { 1.0 / cnt as f32 });
                }
            }
            let scaled = if inv.iter().all(|&v| v == inv[0]) {
                let s = cx.scalar(inv[0]);
                cx.op("Mul", &[gy, &s], vec![])
            } else {
                let t = cx.cf32("inv_count", &[1, 1, ho, wo], inv);
                cx.op("Mul", &[gy, &t], vec![])
            };
            let full = [(ho - 1) * w.s[0] + w.k[0], (wo - 1) * w.s[1] + w.k[1]];
            let g = if ho == 1 && wo == 1 && full == [xs[2], xs[3]] && w.pb == [0, 0] {
                // Global pooling in disguise: broadcast.
                let s = cx.shape_const(&xs);
                cx.op("Expand", &[&scaled, &s], vec![])
            } else {
                let ones = cx.cf32(
                    "ones_kernel",
                    &[c, 1, w.k[0], w.k[1]],
                    vec![1.0; c * w.k[0] * w.k[1]],
                );
                let scat = cx.op(
                    "ConvTranspose",
                    &[&scaled, &ones],
                    vec![
                        attr_ints("kernel_shape", &[w.k[0] as i64, w.k[1] as i64]),
                        attr_ints("strides", &[w.s[0] as i64, w.s[1] as i64]),
                        attr_int("group", c as i64),
                    ],
                );
                cx.crop(&scat, full, w.pb, [xs[2], xs[3]])
            };
            out.push((x, g));
        }
        "GlobalAveragePool" => {
            let xs = cx.shape(&x)?;
            let area: usize = xs[2..].iter().product();
            let s = cx.scalar(1.0 / area as f32);
            let scaled = cx.op("Mul", &[gy, &s], vec![]);
            let sh = cx.shape_const(&xs);
            out.push((x, cx.op("Expand", &[&scaled, &sh], vec![])));
        }
        "BatchNormalization" => {
            for i in 1..n.input.len() {
                if on_path(&n.input[i]) {
                    return Err(unsup(n, "its parameters depend on the input"));
                }
            }
            let get = |i: usize| -> R<Vec<f32>> {
                cx.const_f32(&n.input[i])
                    .map(|c| c.1)
                    .ok_or_else(|| unsup(n, format!("input {i} is not a constant")))
            };
            let (gamma, var) = (get(1)?, get(4)?);
            let eps = onnx::get_float(n, "epsilon").unwrap_or(1e-5);
            let xs = cx.shape(&x)?;
            let f: Vec<f32> = gamma
                .iter()
                .zip(&var)
                .map(|(g, v)| g / (v + eps).sqrt())
                .collect();
            let mut dims = vec![f.len()];
            dims.extend(std::iter::repeat_n(1, xs.len().saturating_sub(2)));
            let t = cx.cf32("bn_scale", &dims, f);
            out.push((x, cx.op("Mul", &[gy, &t], vec![])));
        }
        "Gemm" => {
            let alpha = onnx::get_float(n, "alpha").unwrap_or(1.0);
            let beta = onnx::get_float(n, "beta").unwrap_or(1.0);
            let ta = onnx::get_int(n, "transA").unwrap_or(0) == 1;
            let tb = onnx::get_int(n, "transB").unwrap_or(0) == 1;
            let (a, bn) = (n.input[0].clone(), n.input[1].clone());
            if on_path(&a) {
                // dA' = alpha · gY · op(B)ᵀ; op(B)ᵀ = B if transB else Bᵀ.
                let ga = match cx.const_f32(&bn) {
                    Some((bs, bd)) if bs.len() == 2 => {
                        let (r, c) = (bs[0], bs[1]);
                        let m: Vec<f32> = if tb {
                            bd.iter().map(|v| v * alpha).collect()
                        } else {
                            let mut t = vec![0f32; r * c];
                            for i in 0..r {
                                for j in 0..c {
                                    t[j * r + i] = bd[i * c + j] * alpha;
                                }
                            }
                            t
                        };
                        let dims = if tb { [r, c] } else { [c, r] };
                        let mt = cx.cf32("gemm_wT", &dims, m);
                        cx.op("MatMul", &[gy, &mt], vec![])
                    }
                    _ => cx.op(
                        "Gemm",
                        &[gy, &bn],
                        vec![
                            onnx::attr_float("alpha", alpha),
                            attr_int("transB", if tb { 0 } else { 1 }),
                        ],
                    ),
                };
                let ga = if ta {
                    cx.op("Transpose", &[&ga], vec![attr_ints("perm", &[1, 0])])
                } else {
                    ga
                };
                out.push((a.clone(), ga));
            }
            if on_path(&bn) {
                // dB' = alpha · op(A)ᵀ · gY.
                let gb = cx.op(
                    "Gemm",
                    &[&a, gy],
                    vec![
                        onnx::attr_float("alpha", alpha),
                        attr_int("transA", if ta { 0 } else { 1 }),
                    ],
                );
                let gb = if tb {
                    cx.op("Transpose", &[&gb], vec![attr_ints("perm", &[1, 0])])
                } else {
                    gb
                };
                out.push((bn, gb));
            }
            if let Some(cn) = n.input.get(2).filter(|c| !c.is_empty() && on_path(c)) {
                let ys = cx.shape(&y)?;
                let cs = cx.shape(cn)?;
                let s = cx.scalar(beta);
                let g = cx.op("Mul", &[gy, &s], vec![]);
                out.push((cn.clone(), cx.reduce_to(&g, &ys, &cs)));
            }
        }
        "MatMul" => {
            let (a, bn) = (n.input[0].clone(), n.input[1].clone());
            let bs = cx.shape(&bn)?;
            if on_path(&a) {
                if bs.len() != 2 {
                    return Err(unsup(n, "only a 2-D right operand is supported"));
                }
                let bt = match cx.const_f32(&bn) {
                    Some((_, bd)) => {
                        let (r, c) = (bs[0], bs[1]);
                        let mut t = vec![0f32; r * c];
                        for i in 0..r {
                            for j in 0..c {
                                t[j * r + i] = bd[i * c + j];
                            }
                        }
                        cx.cf32("matmul_wT", &[c, r], t)
                    }
                    None => cx.op("Transpose", &[&bn], vec![attr_ints("perm", &[1, 0])]),
                };
                out.push((a.clone(), cx.op("MatMul", &[gy, &bt], vec![])));
            }
            if on_path(&bn) {
                let as_ = cx.shape(&a)?;
                if as_.len() != 2 || bs.len() != 2 {
                    return Err(unsup(n, "gradient to the right operand needs 2-D operands"));
                }
                let at = cx.op("Transpose", &[&a], vec![attr_ints("perm", &[1, 0])]);
                out.push((bn, cx.op("MatMul", &[&at, gy], vec![])));
            }
        }
        "Add" | "Sub" | "Sum" => {
            let ys = cx.shape(&y)?;
            for (i, t) in n.input.iter().enumerate() {
                if !on_path(t) {
                    continue;
                }
                let ts = cx.shape(t)?;
                let mut g = cx.reduce_to(gy, &ys, &ts);
                if n.op_type == "Sub" && i == 1 {
                    g = cx.op("Neg", &[&g], vec![]);
                }
                out.push((t.clone(), g));
            }
        }
        "Mul" => {
            let ys = cx.shape(&y)?;
            for i in 0..2 {
                let t = &n.input[i];
                if !on_path(t) {
                    continue;
                }
                let other = &n.input[1 - i];
                let ts = cx.shape(t)?;
                let g = cx.op("Mul", &[gy, other], vec![]);
                out.push((t.clone(), cx.reduce_to(&g, &ys, &ts)));
            }
        }
        "Div" => {
            if on_path(&n.input[1]) {
                return Err(unsup(n, "the divisor depends on the input"));
            }
            let ys = cx.shape(&y)?;
            let xs = cx.shape(&x)?;
            let g = cx.op("Div", &[gy, &n.input[1]], vec![]);
            out.push((x, cx.reduce_to(&g, &ys, &xs)));
        }
        "Concat" => {
            let ys = cx.shape(&y)?;
            let mut axis = onnx::get_int(n, "axis").unwrap_or(0);
            if axis < 0 {
                axis += ys.len() as i64;
            }
            let mut off = 0usize;
            for t in &n.input {
                let ts = cx.shape(t)?;
                let len = ts[axis as usize];
                if on_path(t) {
                    let g = if len == ys[axis as usize] {
                        gy.to_string()
                    } else {
                        cx.slice(gy, &[off as i64], &[(off + len) as i64], &[axis], None)
                    };
                    out.push((t.clone(), g));
                }
                off += len;
            }
        }
        "Reshape" | "Flatten" | "Squeeze" | "Unsqueeze" => {
            let xs = cx.shape(&x)?;
            out.push((x, cx.reshape(gy, &xs)));
        }
        "Transpose" => {
            let xs = cx.shape(&x)?;
            let perm: Vec<i64> =
                onnx::get_ints(n, "perm").unwrap_or_else(|| (0..xs.len() as i64).rev().collect());
            let mut inv = vec![0i64; perm.len()];
            for (i, &p) in perm.iter().enumerate() {
                inv[p as usize] = i as i64;
            }
            out.push((x, cx.op("Transpose", &[gy], vec![attr_ints("perm", &inv)])));
        }
        "Pad" => {
            let mode = onnx::get_string(n, "mode").unwrap_or_else(|| "constant".into());
            let pads = n
                .input
                .get(1)
                .and_then(|p| cx.consts.get(p))
                .and_then(|t| onnx::tensor_to_i64(t).ok());
            let Some((_, pads)) = pads else {
                return Err(unsup(n, "pads must be a constant"));
            };
            if mode != "constant"
                || pads.iter().any(|&p| p < 0)
                || n.input.get(3).is_some_and(|a| !a.is_empty())
            {
                return Err(unsup(
                    n,
                    "only constant-mode, non-negative padding is supported",
                ));
            }
            let xs = cx.shape(&x)?;
            let r = xs.len();
            let starts: Vec<i64> = pads[..r].to_vec();
            let ends: Vec<i64> = (0..r).map(|i| pads[i] + xs[i] as i64).collect();
            let axes: Vec<i64> = (0..r as i64).collect();
            out.push((x, cx.slice(gy, &starts, &ends, &axes, None)));
        }
        other => {
            return Err(CompileError::UnsupportedOp {
                op: other.to_string(),
                node: n.name.clone(),
            });
        }
    }
    Ok(out)
}

fn clip_bound(cx: &Ctx, n: &NodeProto, i: usize, def: f32) -> R<f32> {
    match n.input.get(i) {
        None => Ok(def),
        Some(t) if t.is_empty() => Ok(def),
        Some(t) => cx
            .const_f32(t)
            .and_then(|(_, v)| v.first().copied())
            .ok_or_else(|| unsup(n, format!("bound {t:?} is not a constant"))),
    }
}
