//! The state the adjoint rules write into: the graph builder, static shapes,
//! constants, and small emitters (Slice, Reshape, reductions, crops).

use super::{CompileError, Mode, Target};
use crate::onnx::{self, GraphBuilder, attr_int, attr_ints, pb::NodeProto, pb::TensorProto};
use std::collections::HashMap;

/// The guard graph under construction, with what the rules need to know about it.
pub struct Ctx {
    pub b: GraphBuilder,
    pub shapes: HashMap<String, Vec<usize>>,
    pub shape_note: Option<String>,
    pub consts: HashMap<String, TensorProto>,
    pub mode: Mode,
    pub target: Target,
    pub opset: i64,
    pub cache: HashMap<String, String>,
}

/// Result of the compiler's internals.
pub type R<T> = Result<T, CompileError>;

/// A supported op whose attributes or inputs cannot be differentiated.
pub fn unsup(n: &NodeProto, msg: impl Into<String>) -> CompileError {
    CompileError::Unsupported {
        op: n.op_type.clone(),
        node: n.name.clone(),
        msg: msg.into(),
    }
}

impl Ctx {
    pub fn shape(&self, t: &str) -> R<Vec<usize>> {
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

    pub fn const_f32(&self, t: &str) -> Option<(Vec<usize>, Vec<f32>)> {
        self.consts.get(t).and_then(|c| onnx::tensor_to_f32(c).ok())
    }

    pub fn op(
        &mut self,
        op: &str,
        inputs: &[&str],
        attrs: Vec<onnx::pb::AttributeProto>,
    ) -> String {
        let name = self.b.fresh(&format!("bw/{op}"));
        let out = self.b.fresh(&format!("{name}_out"));
        self.b.node_named(op, inputs, &[&out], attrs);
        // node_named picks its own node name; rename it to ours for readability.
        if let Some(n) = self.b.nodes.last_mut() {
            n.name = name;
        }
        out
    }

    pub fn cf32(&mut self, prefix: &str, dims: &[usize], data: Vec<f32>) -> String {
        self.b.init_f32(&format!("bw/{prefix}"), dims, data)
    }

    pub fn ci64(&mut self, prefix: &str, data: &[i64]) -> String {
        self.b
            .init_i64(&format!("bw/{prefix}"), &[data.len()], data.to_vec())
    }

    pub fn scalar(&mut self, v: f32) -> String {
        let key = format!("scalar:{}", v.to_bits());
        if let Some(n) = self.cache.get(&key) {
            return n.clone();
        }
        let n = self.cf32("c", &[], vec![v]);
        self.cache.insert(key, n.clone());
        n
    }

    pub fn shape_const(&mut self, s: &[usize]) -> String {
        let key = format!("shape:{s:?}");
        if let Some(n) = self.cache.get(&key) {
            return n.clone();
        }
        let v: Vec<i64> = s.iter().map(|&d| d as i64).collect();
        let n = self.ci64("shape", &v);
        self.cache.insert(key, n.clone());
        n
    }

    pub fn reshape(&mut self, x: &str, s: &[usize]) -> String {
        let c = self.shape_const(s);
        self.op("Reshape", &[x, &c], vec![])
    }

    pub fn slice(
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

    /// The exact 0/1 mask [lo < y < hi] of a tensor known to lie in [lo, hi]
    /// (a Relu or Clip output), `None` when both bounds are infinite. Written in the
    /// form the target runs fastest: tract multiplies `Sign(y − lo)` and
    /// `Sign(hi − y)` (its comparisons are slow; a float difference is 0 only for
    /// equal operands); ONNX Runtime casts `Greater`/`Less` (its `Sign` is not
    /// vectorised, and the comparisons beat `Min(Ceil(·), 1)` by a fifth).
    pub fn between_mask(&mut self, y: &str, lo: f32, hi: f32) -> Option<String> {
        match self.target {
            Target::Tract => {
                let mut masks = vec![];
                if lo.is_finite() {
                    let d = if lo == 0.0 {
                        y.to_string()
                    } else {
                        let c = self.scalar(lo);
                        self.op("Sub", &[y, &c], vec![])
                    };
                    masks.push(self.op("Sign", &[&d], vec![]));
                }
                if hi.is_finite() {
                    let c = self.scalar(hi);
                    let d = self.op("Sub", &[&c, y], vec![]);
                    masks.push(self.op("Sign", &[&d], vec![]));
                }
                let mut m = masks.pop()?;
                if let Some(other) = masks.pop() {
                    m = self.op("Mul", &[&other, &m], vec![]);
                }
                Some(m)
            }
            Target::OnnxRuntime => {
                let mut conds = vec![];
                if lo.is_finite() {
                    let c = self.scalar(lo);
                    conds.push(self.op("Greater", &[y, &c], vec![]));
                }
                if hi.is_finite() {
                    let c = self.scalar(hi);
                    conds.push(self.op("Less", &[y, &c], vec![]));
                }
                let mut b = conds.pop()?;
                if let Some(other) = conds.pop() {
                    b = self.op("And", &[&other, &b], vec![]);
                }
                Some(self.cast_float(&b))
            }
        }
    }

    pub fn cast_float(&mut self, x: &str) -> String {
        self.op("Cast", &[x], vec![attr_int("to", onnx::FLOAT as i64)])
    }

    pub fn reduce_sum(&mut self, x: &str, axes: &[i64]) -> String {
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
    pub fn reduce_to(&mut self, g: &str, gs: &[usize], target: &[usize]) -> String {
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
    pub fn crop(
        &mut self,
        x: &str,
        full: [usize; 2],
        begin: [usize; 2],
        target: [usize; 2],
    ) -> String {
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

    pub fn accumulate(&mut self, parts: &[String]) -> Option<String> {
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
pub struct Window {
    pub k: [usize; 2],
    pub s: [usize; 2],
    pub d: [usize; 2],
    pub pb: [usize; 2],
    pub pe: [usize; 2],
}

/// Kernel, stride, dilation and begin/end padding of a 2-D Conv or pooling node.
pub fn window(n: &NodeProto, k: [usize; 2], xs: &[usize], ys: &[usize]) -> R<Window> {
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

/// The constant bound `i` of a Clip node (`def` when absent).
pub fn clip_bound(cx: &Ctx, n: &NodeProto, i: usize, def: f32) -> R<f32> {
    match n.input.get(i) {
        None => Ok(def),
        Some(t) if t.is_empty() => Ok(def),
        Some(t) => cx
            .const_f32(t)
            .and_then(|(_, v)| v.first().copied())
            .ok_or_else(|| unsup(n, format!("bound {t:?} is not a constant"))),
    }
}
