//! A small, direct f64 reference interpreter for the ops the guard-graph compiler
//! differentiates, with a naive (guided or plain) backward pass. Written from the
//! op definitions (ONNX spec, opset 13+ unless noted), independent of the compiler:
//! loops, no ONNX tricks.
//!
//! Backward conventions:
//! - MaxPool: each window's gradient goes to ONE position, the first maximum in
//!   row-major scan order over the window's (kernel-row, kernel-col) offsets; only
//!   in-bounds positions count (padding is -inf). This is the rule of PyTorch,
//!   TensorFlow and ONNX's `Indices` output.
//! - Guided mode gates (g > 0) only at Relu and Clip. Every other nonlinearity
//!   (Sigmoid, LeakyRelu, HardSigmoid, HardSwish, products) passes its plain
//!   derivative in both modes, as captum does.
//! - Kinks: Relu and Clip pass where lo < x < hi strictly; LeakyRelu has slope 1
//!   where x > 0, else alpha; HardSigmoid has slope alpha where 0 < alpha·x+beta < 1
//!   strictly, else 0; HardSwish is x·HardSigmoid(x; 1/6, 1/2) differentiated by the
//!   product rule with that HardSigmoid convention.
//! - Multi-output nodes (Split) gather each output's gradient, zero where none
//!   reached it. Omitted optional inputs ("") keep their position.

#![allow(dead_code)]

use advguard::onnx::{self, pb::ModelProto, pb::NodeProto};
use std::collections::HashMap;

/// A dense f64 tensor, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct T {
    pub shape: Vec<usize>,
    pub data: Vec<f64>,
}

impl T {
    pub fn new(shape: Vec<usize>, data: Vec<f64>) -> T {
        assert_eq!(shape.iter().product::<usize>(), data.len());
        T { shape, data }
    }
    pub fn zeros(shape: &[usize]) -> T {
        T {
            shape: shape.to_vec(),
            data: vec![0.0; shape.iter().product()],
        }
    }
    pub fn from_f32(shape: &[usize], d: &[f32]) -> T {
        T::new(shape.to_vec(), d.iter().map(|&v| v as f64).collect())
    }
    fn d4(&self) -> (usize, usize, usize, usize) {
        assert_eq!(
            self.shape.len(),
            4,
            "4-D tensor expected, got {:?}",
            self.shape
        );
        (self.shape[0], self.shape[1], self.shape[2], self.shape[3])
    }
    fn map(&self, f: impl Fn(f64) -> f64) -> T {
        T::new(
            self.shape.clone(),
            self.data.iter().map(|&v| f(v)).collect(),
        )
    }
}

/// Stand-in for an omitted optional input (""), so inputs keep their positions.
static ABSENT: T = T {
    shape: Vec::new(),
    data: Vec::new(),
};

/// Input `i` if it is given and not empty (an empty tensor counts as omitted, as in
/// Resize's `scales` of opset 11).
fn opt<'a>(ins: &[&'a T], i: usize) -> Option<&'a T> {
    ins.get(i).copied().filter(|t| !t.data.is_empty())
}

fn ints(n: &NodeProto, name: &str, def: Vec<i64>) -> Vec<usize> {
    onnx::get_ints(n, name)
        .unwrap_or(def)
        .into_iter()
        .map(|v| v as usize)
        .collect()
}

fn float(n: &NodeProto, name: &str, def: f64) -> f64 {
    onnx::get_float(n, name).map_or(def, |v| v as f64)
}

fn string(n: &NodeProto, name: &str, def: &str) -> String {
    onnx::get_string(n, name).unwrap_or_else(|| def.to_string())
}

fn axis_of(a: i64, rank: usize) -> usize {
    let r = if a < 0 { a + rank as i64 } else { a };
    assert!((0..rank as i64).contains(&r), "axis {a} out of rank {rank}");
    r as usize
}

fn to_i64(t: &T) -> Vec<i64> {
    // `as` saturates, so INT64_MAX/MIN (stored as f64) come back as themselves.
    t.data.iter().map(|&v| v as i64).collect()
}

/// Pool/conv geometry.
struct Geo {
    k: [usize; 2],
    s: [usize; 2],
    d: [usize; 2],
    pb: [usize; 2],
    pe: [usize; 2],
}

fn geo(n: &NodeProto, k: [usize; 2]) -> Geo {
    let s = ints(n, "strides", vec![1, 1]);
    let d = ints(n, "dilations", vec![1, 1]);
    let p = ints(n, "pads", vec![0, 0, 0, 0]);
    Geo {
        k,
        s: [s[0], s[1]],
        d: [d[0], d[1]],
        pb: [p[0], p[1]],
        pe: [p[2], p[3]],
    }
}

fn pool_out(h: usize, a: usize, g: &Geo, ceil: bool) -> usize {
    let eff = (g.k[a] - 1) * g.d[a] + 1;
    let num = h + g.pb[a] + g.pe[a] - eff;
    let mut o = if ceil {
        num.div_ceil(g.s[a]) + 1
    } else {
        num / g.s[a] + 1
    };
    // The last window must start inside the input or the left padding.
    if ceil && (o - 1) * g.s[a] >= h + g.pb[a] {
        o -= 1;
    }
    o
}

fn bcast_index(out_shape: &[usize], in_shape: &[usize], flat: usize) -> usize {
    let r = out_shape.len();
    let off = r - in_shape.len();
    let mut rem = flat;
    let mut idx = vec![0usize; r];
    for i in (0..r).rev() {
        idx[i] = rem % out_shape[i];
        rem /= out_shape[i];
    }
    let mut k = 0;
    for i in 0..in_shape.len() {
        let v = if in_shape[i] == 1 { 0 } else { idx[i + off] };
        k = k * in_shape[i] + v;
    }
    k
}

fn bcast_shape(a: &[usize], b: &[usize]) -> Vec<usize> {
    let r = a.len().max(b.len());
    (0..r)
        .map(|i| {
            let x = if i + a.len() >= r {
                a[i + a.len() - r]
            } else {
                1
            };
            let y = if i + b.len() >= r {
                b[i + b.len() - r]
            } else {
                1
            };
            x.max(y)
        })
        .collect()
}

/// The reference interpreter over a model's graph (nodes must be in topological order).
pub struct Ref {
    pub nodes: Vec<NodeProto>,
    pub consts: HashMap<String, T>,
    /// Default-domain opset (Softmax, Clip, Split and Slice changed form over versions).
    pub opset: i64,
}

fn tensor_to_t(t: &onnx::pb::TensorProto) -> T {
    if t.data_type == onnx::INT64 {
        let (s, d) = onnx::tensor_to_i64(t).unwrap();
        T::new(s, d.into_iter().map(|v| v as f64).collect())
    } else {
        let (s, d) = onnx::tensor_to_f32(t).unwrap();
        T::from_f32(&s, &d)
    }
}

impl Ref {
    pub fn new(model: &ModelProto) -> Ref {
        let g = model.graph.as_ref().unwrap();
        let consts = g
            .initializer
            .iter()
            .map(|t| (t.name.clone(), tensor_to_t(t)))
            .collect();
        Ref {
            nodes: g.node.clone(),
            consts,
            opset: onnx::opset_version(model),
        }
    }

    /// All tensor values for this input.
    pub fn forward(&self, input: &str, x: &T) -> HashMap<String, T> {
        let mut v: HashMap<String, T> = self.consts.clone();
        v.insert(input.to_string(), x.clone());
        for n in &self.nodes {
            let ys = {
                let ins: Vec<&T> = n
                    .input
                    .iter()
                    .map(|i| if i.is_empty() { &ABSENT } else { &v[i] })
                    .collect();
                fwd_node(n, &ins, self.opset)
            };
            for (name, y) in n.output.iter().zip(ys) {
                if !name.is_empty() {
                    v.insert(name.clone(), y);
                }
            }
        }
        v
    }

    /// Gradient at `input` of a backward pass started at `seed_t` with gradient `seed_g`.
    pub fn backward(
        &self,
        vals: &HashMap<String, T>,
        input: &str,
        seed_t: &str,
        seed_g: T,
        guided: bool,
    ) -> T {
        assert_eq!(vals[seed_t].shape, seed_g.shape, "seed gradient shape");
        let mut g: HashMap<String, T> = HashMap::new();
        g.insert(seed_t.to_string(), seed_g);
        for n in self.nodes.iter().rev() {
            if !n.output.iter().any(|o| g.contains_key(o)) {
                continue;
            }
            // Each output's gradient; zero for outputs no gradient reached.
            let gys: Vec<T> = n
                .output
                .iter()
                .map(|o| match (g.get(o), vals.get(o)) {
                    (Some(t), _) => t.clone(),
                    (None, Some(y)) => T::zeros(&y.shape),
                    (None, None) => ABSENT.clone(),
                })
                .collect();
            let ys: Vec<&T> = n
                .output
                .iter()
                .map(|o| vals.get(o).unwrap_or(&ABSENT))
                .collect();
            let ins: Vec<&T> = n
                .input
                .iter()
                .map(|i| if i.is_empty() { &ABSENT } else { &vals[i] })
                .collect();
            let gins = bwd_node(n, &ins, &ys, &gys, guided, self.opset);
            for (i, gi) in gins.into_iter().enumerate().take(n.input.len()) {
                let name = &n.input[i];
                if name.is_empty() || self.consts.contains_key(name) {
                    continue;
                }
                if let Some(gi) = gi {
                    assert_eq!(gi.shape, vals[name].shape, "{}: gradient shape", n.op_type);
                    match g.get_mut(name) {
                        Some(acc) => acc.data.iter_mut().zip(&gi.data).for_each(|(a, b)| *a += b),
                        None => {
                            g.insert(name.clone(), gi);
                        }
                    }
                }
            }
        }
        g.remove(input).expect("no gradient reached the input")
    }
}

fn sigmoid(v: f64) -> f64 {
    1.0 / (1.0 + (-v).exp())
}

fn hard_sigmoid(v: f64, alpha: f64, beta: f64) -> f64 {
    (alpha * v + beta).clamp(0.0, 1.0)
}

fn clip_bounds(ins: &[&T], n: &NodeProto, opset: i64) -> (f64, f64) {
    if opset < 11 {
        (
            float(n, "min", f64::NEG_INFINITY),
            float(n, "max", f64::INFINITY),
        )
    } else {
        (
            opt(ins, 1).map_or(f64::NEG_INFINITY, |t| t.data[0]),
            opt(ins, 2).map_or(f64::INFINITY, |t| t.data[0]),
        )
    }
}

fn fwd_node(n: &NodeProto, ins: &[&T], opset: i64) -> Vec<T> {
    let x = ins.first().copied().unwrap_or(&ABSENT);
    let one = match n.op_type.as_str() {
        "Split" => {
            return split_parts(n, ins, opset)
                .into_iter()
                .map(|(_, y)| y)
                .collect();
        }
        "Constant" => {
            let t = onnx::get_attr(n, "value")
                .and_then(|a| a.t.as_ref())
                .expect("Constant with a tensor `value`");
            tensor_to_t(t)
        }
        "Identity" | "Dropout" => x.clone(),
        "Neg" => x.map(|v| -v),
        "Relu" => x.map(|v| v.max(0.0)),
        "Sigmoid" => x.map(sigmoid),
        "LeakyRelu" => {
            let a = float(n, "alpha", 0.01);
            x.map(|v| if v >= 0.0 { v } else { a * v })
        }
        "HardSigmoid" => {
            let (a, b) = (float(n, "alpha", 0.2), float(n, "beta", 0.5));
            x.map(|v| hard_sigmoid(v, a, b))
        }
        "HardSwish" => x.map(|v| v * hard_sigmoid(v, 1.0 / 6.0, 0.5)),
        "Clip" => {
            let (lo, hi) = clip_bounds(ins, n, opset);
            x.map(|v| v.max(lo).min(hi))
        }
        "Conv" => conv(n, x, ins[1], opt(ins, 2)),
        "MaxPool" | "AveragePool" => pool(n, x, None).0,
        "GlobalAveragePool" => {
            let (nn, c, h, w) = x.d4();
            let mut o = T::zeros(&[nn, c, 1, 1]);
            for ci in 0..c {
                o.data[ci] =
                    x.data[ci * h * w..(ci + 1) * h * w].iter().sum::<f64>() / (h * w) as f64;
            }
            o
        }
        "BatchNormalization" => {
            let (_, c, h, w) = x.d4();
            let eps = float(n, "epsilon", 1e-5);
            let mut o = x.clone();
            for ci in 0..c {
                let f = ins[1].data[ci] / (ins[4].data[ci] + eps).sqrt();
                for k in 0..h * w {
                    let i = ci * h * w + k;
                    o.data[i] = (x.data[i] - ins[3].data[ci]) * f + ins[2].data[ci];
                }
            }
            o
        }
        "Gemm" => {
            let alpha = float(n, "alpha", 1.0);
            let beta = float(n, "beta", 1.0);
            let a = if onnx::get_int(n, "transA") == Some(1) {
                transpose(x)
            } else {
                x.clone()
            };
            let b = if onnx::get_int(n, "transB") == Some(1) {
                transpose(ins[1])
            } else {
                ins[1].clone()
            };
            let mut y = matmul(&a, &b);
            y.data.iter_mut().for_each(|v| *v *= alpha);
            if let Some(c) = opt(ins, 2) {
                let s = y.shape.clone();
                for i in 0..y.data.len() {
                    y.data[i] += beta * c.data[bcast_index(&s, &c.shape, i)];
                }
            }
            y
        }
        "MatMul" => matmul(x, ins[1]),
        "Add" | "Sub" | "Mul" | "Div" => {
            let s = bcast_shape(&x.shape, &ins[1].shape);
            let mut y = T::zeros(&s);
            for i in 0..y.data.len() {
                let a = x.data[bcast_index(&s, &x.shape, i)];
                let b = ins[1].data[bcast_index(&s, &ins[1].shape, i)];
                y.data[i] = match n.op_type.as_str() {
                    "Add" => a + b,
                    "Sub" => a - b,
                    "Mul" => a * b,
                    _ => a / b,
                };
            }
            y
        }
        "Concat" => {
            let axis = axis_of(onnx::get_int(n, "axis").unwrap(), x.shape.len());
            let mut shape = x.shape.clone();
            shape[axis] = ins.iter().map(|t| t.shape[axis]).sum();
            let outer: usize = shape[..axis].iter().product();
            let mut data = vec![];
            for o in 0..outer {
                for t in ins {
                    let inner: usize = t.shape[axis..].iter().product();
                    data.extend_from_slice(&t.data[o * inner..(o + 1) * inner]);
                }
            }
            T::new(shape, data)
        }
        "Slice" => {
            let sel = slice_sel(n, ins, &x.shape, opset);
            gather(x, &sel)
        }
        "Resize" => {
            let taps = resize_taps(n, ins, &x.shape, opset);
            let mut y = x.clone();
            for (a, t) in taps.iter().enumerate() {
                y = resample(&y, a, t);
            }
            y
        }
        "Reshape" => {
            let mut s: Vec<i64> = to_i64(ins[1]);
            for (i, d) in s.iter_mut().enumerate() {
                if *d == 0 {
                    *d = x.shape[i] as i64;
                }
            }
            let known: i64 = s.iter().filter(|&&d| d > 0).product();
            let shape: Vec<usize> = s
                .iter()
                .map(|&d| {
                    if d < 0 {
                        x.data.len() / known as usize
                    } else {
                        d as usize
                    }
                })
                .collect();
            T::new(shape, x.data.clone())
        }
        "Flatten" => {
            let a = onnx::get_int(n, "axis").unwrap_or(1);
            let axis = if a < 0 { a + x.shape.len() as i64 } else { a } as usize;
            let a: usize = x.shape[..axis].iter().product();
            T::new(vec![a, x.data.len() / a], x.data.clone())
        }
        "Softmax" => {
            // Opset < 13: coerced to 2-D at `axis` (default 1); 13+: along `axis` (default -1).
            let r = x.shape.len();
            let def = if opset < 13 { 1 } else { -1 };
            let axis = axis_of(onnx::get_int(n, "axis").unwrap_or(def), r);
            let outer: usize = x.shape[..axis].iter().product();
            let (len, inner) = if opset < 13 {
                (x.shape[axis..].iter().product::<usize>(), 1)
            } else {
                (x.shape[axis], x.shape[axis + 1..].iter().product::<usize>())
            };
            let mut y = x.clone();
            for o in 0..outer {
                for i in 0..inner {
                    let at = |k: usize| (o * len + k) * inner + i;
                    let m = (0..len)
                        .map(|k| x.data[at(k)])
                        .fold(f64::NEG_INFINITY, f64::max);
                    let s: f64 = (0..len).map(|k| (x.data[at(k)] - m).exp()).sum();
                    for k in 0..len {
                        y.data[at(k)] = (x.data[at(k)] - m).exp() / s;
                    }
                }
            }
            y
        }
        o => panic!("reference interpreter: op {o} not implemented"),
    };
    vec![one]
}

fn transpose(x: &T) -> T {
    let (r, c) = (x.shape[0], x.shape[1]);
    let mut y = T::zeros(&[c, r]);
    for i in 0..r {
        for j in 0..c {
            y.data[j * r + i] = x.data[i * c + j];
        }
    }
    y
}

fn matmul(a: &T, b: &T) -> T {
    let (m, k) = (a.shape[0], a.shape[1]);
    let n = b.shape[1];
    assert_eq!(b.shape[0], k);
    let mut y = T::zeros(&[m, n]);
    for i in 0..m {
        for j in 0..n {
            y.data[i * n + j] = (0..k).map(|q| a.data[i * k + q] * b.data[q * n + j]).sum();
        }
    }
    y
}

// ---------------------------------------------------------------- index selections

/// Row-major flat indices into `shape` of the elements picked by per-axis index lists.
fn sel_flat(shape: &[usize], sel: &[Vec<usize>]) -> Vec<usize> {
    let mut flat = vec![0usize];
    for (a, idx) in sel.iter().enumerate() {
        let mut next = Vec::with_capacity(flat.len() * idx.len());
        for &f in &flat {
            for &i in idx {
                next.push(f * shape[a] + i);
            }
        }
        flat = next;
    }
    flat
}

fn gather(x: &T, sel: &[Vec<usize>]) -> T {
    let shape: Vec<usize> = sel.iter().map(|s| s.len()).collect();
    let data = sel_flat(&x.shape, sel)
        .into_iter()
        .map(|q| x.data[q])
        .collect();
    T::new(shape, data)
}

/// Adjoint of `gather`: adds `g` into a zero tensor of `shape` at the picked places.
fn scatter_add(g: &T, shape: &[usize], sel: &[Vec<usize>]) -> T {
    let mut o = T::zeros(shape);
    for (k, q) in sel_flat(shape, sel).into_iter().enumerate() {
        o.data[q] += g.data[k];
    }
    o
}

/// Slice: per-axis index lists (starts/ends/axes/steps inputs from opset 10,
/// attributes before). Negative starts/ends count from the end; then, for step > 0,
/// start and end are clamped to [0, dim]; for step < 0, start to [0, dim-1] and end
/// to [-1, dim-1]. Indices run start, start+step, ... while short of end.
fn slice_sel(n: &NodeProto, ins: &[&T], shape: &[usize], opset: i64) -> Vec<Vec<usize>> {
    let r = shape.len();
    let (starts, ends, axes, steps) = if opset < 10 {
        let g = |k: &str| onnx::get_ints(n, k);
        let starts = g("starts").unwrap();
        let k = starts.len();
        (
            starts,
            g("ends").unwrap(),
            g("axes").unwrap_or_else(|| (0..k as i64).collect()),
            vec![1; k],
        )
    } else {
        let starts = to_i64(ins[1]);
        let k = starts.len();
        (
            starts,
            to_i64(ins[2]),
            opt(ins, 3).map_or_else(|| (0..k as i64).collect(), to_i64),
            opt(ins, 4).map_or_else(|| vec![1; k], to_i64),
        )
    };
    let mut sel: Vec<Vec<usize>> = shape.iter().map(|&d| (0..d).collect()).collect();
    for i in 0..starts.len() {
        let a = axis_of(axes[i], r);
        let d = shape[a] as i64;
        let step = steps[i];
        assert!(step != 0, "Slice step 0");
        let fix = |v: i64| if v < 0 { v.saturating_add(d) } else { v };
        let (mut s, mut e) = (fix(starts[i]), fix(ends[i]));
        if step > 0 {
            s = s.clamp(0, d);
            e = e.clamp(0, d);
        } else {
            s = s.clamp(0, d - 1);
            e = e.clamp(-1, d - 1);
        }
        let mut idx = vec![];
        let mut k = s;
        while (step > 0 && k < e) || (step < 0 && k > e) {
            idx.push(k as usize);
            k += step;
        }
        sel[a] = idx;
    }
    sel
}

/// Split: each output's per-axis index lists and value. Sizes from the `split`
/// input (opset 13+) or attribute (before), else `num_outputs` / the number of
/// outputs, in equal parts (the last one smaller if the axis does not divide).
fn split_parts(n: &NodeProto, ins: &[&T], opset: i64) -> Vec<(Vec<Vec<usize>>, T)> {
    let x = ins[0];
    let r = x.shape.len();
    let axis = axis_of(onnx::get_int(n, "axis").unwrap_or(0), r);
    let d = x.shape[axis];
    let sizes: Vec<usize> = if opset >= 13 && opt(ins, 1).is_some() {
        to_i64(ins[1]).into_iter().map(|v| v as usize).collect()
    } else if let (true, Some(s)) = (opset < 13, onnx::get_ints(n, "split")) {
        s.into_iter().map(|v| v as usize).collect()
    } else {
        let k = onnx::get_int(n, "num_outputs").map_or(n.output.len(), |v| v as usize);
        let c = d.div_ceil(k);
        (0..k).map(|i| c.min(d - (i * c).min(d))).collect()
    };
    assert_eq!(
        sizes.iter().sum::<usize>(),
        d,
        "Split sizes {sizes:?} vs dim {d}"
    );
    assert_eq!(sizes.len(), n.output.len(), "Split: one size per output");
    let mut off = 0;
    sizes
        .into_iter()
        .map(|s| {
            let mut sel: Vec<Vec<usize>> = x.shape.iter().map(|&d| (0..d).collect()).collect();
            sel[axis] = (off..off + s).collect();
            off += s;
            let y = gather(x, &sel);
            (sel, y)
        })
        .collect()
}

// ---------------------------------------------------------------- Resize

/// Resize as one 1-D resampling per axis: for each axis, the (input index, weight)
/// taps of every output index. Output length floor(in·scale) from `scales`, or
/// `sizes` (then scale = out/in). Input coordinate of output index i:
/// half_pixel (i+½)/s−½, asymmetric i/s, pytorch_half_pixel (out>1 ? (i+½)/s−½ : 0),
/// align_corners i·(in−1)/(out−1), tf_half_pixel_for_nn (i+½)/s.
/// nearest: floor / ceil / round_prefer_floor / round_prefer_ceil of it, clamped to
/// [0, in−1]; linear: (1−r)·x[⌊c⌋] + r·x[⌊c⌋+1], r = c−⌊c⌋, indices clamped to
/// [0, in−1] (the spec's edge padding).
fn resize_taps(
    n: &NodeProto,
    ins: &[&T],
    shape: &[usize],
    opset: i64,
) -> Vec<Vec<Vec<(usize, f64)>>> {
    let r = shape.len();
    let (scales, sizes) = if opset < 11 {
        (opt(ins, 1), None)
    } else {
        (opt(ins, 2), opt(ins, 3))
    };
    assert!(
        onnx::get_attr(n, "axes").is_none(),
        "Resize axes: not implemented"
    );
    assert!(
        onnx::get_int(n, "antialias").unwrap_or(0) == 0,
        "Resize antialias: not implemented"
    );
    let mode = string(n, "mode", "nearest");
    let ctm = string(
        n,
        "coordinate_transformation_mode",
        if opset < 11 {
            "asymmetric"
        } else {
            "half_pixel"
        },
    );
    let nearest = string(n, "nearest_mode", "round_prefer_floor");
    (0..r)
        .map(|a| {
            let len_in = shape[a];
            let (len_out, s) = match (scales, sizes) {
                (Some(sc), _) => ((len_in as f64 * sc.data[a]).floor() as usize, sc.data[a]),
                (None, Some(sz)) => {
                    let o = sz.data[a] as usize;
                    (o, o as f64 / len_in as f64)
                }
                _ => panic!("Resize needs scales or sizes"),
            };
            let last = len_in as i64 - 1;
            (0..len_out)
                .map(|i| {
                    let i = i as f64;
                    let c = match ctm.as_str() {
                        "half_pixel" => (i + 0.5) / s - 0.5,
                        "asymmetric" => i / s,
                        "pytorch_half_pixel" if len_out > 1 => (i + 0.5) / s - 0.5,
                        "pytorch_half_pixel" => 0.0,
                        "align_corners" if len_out > 1 => {
                            i * (len_in as f64 - 1.0) / (len_out as f64 - 1.0)
                        }
                        "align_corners" => 0.0,
                        "tf_half_pixel_for_nn" => (i + 0.5) / s,
                        o => panic!("Resize coordinate_transformation_mode {o}: not implemented"),
                    };
                    let clamp = |k: f64| (k as i64).clamp(0, last) as usize;
                    match mode.as_str() {
                        "nearest" => {
                            let f = c.floor();
                            let k = match nearest.as_str() {
                                "floor" => f,
                                "ceil" => c.ceil(),
                                "round_prefer_floor" => {
                                    if c - f <= 0.5 {
                                        f
                                    } else {
                                        f + 1.0
                                    }
                                }
                                "round_prefer_ceil" => {
                                    if c - f < 0.5 {
                                        f
                                    } else {
                                        f + 1.0
                                    }
                                }
                                o => panic!("Resize nearest_mode {o}: not implemented"),
                            };
                            vec![(clamp(k), 1.0)]
                        }
                        "linear" => {
                            let f = c.floor();
                            let w = c - f;
                            vec![(clamp(f), 1.0 - w), (clamp(f + 1.0), w)]
                        }
                        o => panic!("Resize mode {o}: not implemented"),
                    }
                })
                .collect()
        })
        .collect()
}

/// y[.., o, ..] = Σ w·x[.., i, ..] over the taps of output index o along `axis`.
fn resample(x: &T, axis: usize, taps: &[Vec<(usize, f64)>]) -> T {
    let outer: usize = x.shape[..axis].iter().product();
    let inner: usize = x.shape[axis + 1..].iter().product();
    let li = x.shape[axis];
    let lo = taps.len();
    let mut shape = x.shape.clone();
    shape[axis] = lo;
    let mut y = T::zeros(&shape);
    for o in 0..outer {
        for (k, tk) in taps.iter().enumerate() {
            for &(i, w) in tk {
                for q in 0..inner {
                    y.data[(o * lo + k) * inner + q] += w * x.data[(o * li + i) * inner + q];
                }
            }
        }
    }
    y
}

/// Adjoint of `resample`: g[.., i, ..] += w·gy[.., o, ..].
fn resample_t(gy: &T, axis: usize, taps: &[Vec<(usize, f64)>], li: usize) -> T {
    let outer: usize = gy.shape[..axis].iter().product();
    let inner: usize = gy.shape[axis + 1..].iter().product();
    let lo = taps.len();
    let mut shape = gy.shape.clone();
    shape[axis] = li;
    let mut g = T::zeros(&shape);
    for o in 0..outer {
        for (k, tk) in taps.iter().enumerate() {
            for &(i, w) in tk {
                for q in 0..inner {
                    g.data[(o * li + i) * inner + q] += w * gy.data[(o * lo + k) * inner + q];
                }
            }
        }
    }
    g
}

// ---------------------------------------------------------------- Conv and pools

fn conv(n: &NodeProto, x: &T, w: &T, b: Option<&T>) -> T {
    let (_, c, h, wd) = x.d4();
    let (m, cg, kh, kw) = w.d4();
    let group = onnx::get_int(n, "group").unwrap_or(1) as usize;
    let g = geo(n, [kh, kw]);
    let ho = pool_out(h, 0, &g, false);
    let wo = pool_out(wd, 1, &g, false);
    let mg = m / group;
    assert_eq!(cg * group, c);
    let mut y = T::zeros(&[1, m, ho, wo]);
    for mi in 0..m {
        let gi = mi / mg;
        for oh in 0..ho {
            for ow in 0..wo {
                let mut acc = b.map_or(0.0, |b| b.data[mi]);
                for cc in 0..cg {
                    let ci = gi * cg + cc;
                    for i in 0..kh {
                        let ih = (oh * g.s[0] + i * g.d[0]) as i64 - g.pb[0] as i64;
                        if ih < 0 || ih >= h as i64 {
                            continue;
                        }
                        for j in 0..kw {
                            let iw = (ow * g.s[1] + j * g.d[1]) as i64 - g.pb[1] as i64;
                            if iw < 0 || iw >= wd as i64 {
                                continue;
                            }
                            acc += x.data[(ci * h + ih as usize) * wd + iw as usize]
                                * w.data[((mi * cg + cc) * kh + i) * kw + j];
                        }
                    }
                }
                y.data[(mi * ho + oh) * wo + ow] = acc;
            }
        }
    }
    y
}

fn conv_bwd(n: &NodeProto, x: &T, w: &T, gy: &T) -> T {
    let (_, c, h, wd) = x.d4();
    let (m, cg, kh, kw) = w.d4();
    let group = onnx::get_int(n, "group").unwrap_or(1) as usize;
    let g = geo(n, [kh, kw]);
    let (_, _, ho, wo) = gy.d4();
    let mg = m / group;
    let mut gx = T::zeros(&[1, c, h, wd]);
    for mi in 0..m {
        let gi = mi / mg;
        for oh in 0..ho {
            for ow in 0..wo {
                let gv = gy.data[(mi * ho + oh) * wo + ow];
                for cc in 0..cg {
                    let ci = gi * cg + cc;
                    for i in 0..kh {
                        let ih = (oh * g.s[0] + i * g.d[0]) as i64 - g.pb[0] as i64;
                        if ih < 0 || ih >= h as i64 {
                            continue;
                        }
                        for j in 0..kw {
                            let iw = (ow * g.s[1] + j * g.d[1]) as i64 - g.pb[1] as i64;
                            if iw < 0 || iw >= wd as i64 {
                                continue;
                            }
                            gx.data[(ci * h + ih as usize) * wd + iw as usize] +=
                                gv * w.data[((mi * cg + cc) * kh + i) * kw + j];
                        }
                    }
                }
            }
        }
    }
    gx
}

/// For a MaxPool/AveragePool node on an input of this (N=1) shape: every output
/// element's window (channel, out-row, out-col order), as the flat input indices of
/// its in-bounds cells in row-major scan order of the (kernel-row, kernel-col) offsets.
pub fn pool_windows(n: &NodeProto, shape: &[usize]) -> Vec<Vec<usize>> {
    let (c, h, w) = (shape[1], shape[2], shape[3]);
    let k = ints(n, "kernel_shape", vec![]);
    let g = geo(n, [k[0], k[1]]);
    let ceil = onnx::get_int(n, "ceil_mode") == Some(1);
    let ho = pool_out(h, 0, &g, ceil);
    let wo = pool_out(w, 1, &g, ceil);
    let mut out = Vec::with_capacity(c * ho * wo);
    for ci in 0..c {
        for oh in 0..ho {
            for ow in 0..wo {
                let h0 = (oh * g.s[0]) as i64 - g.pb[0] as i64;
                let w0 = (ow * g.s[1]) as i64 - g.pb[1] as i64;
                let mut cells = vec![];
                for i in 0..g.k[0] {
                    for j in 0..g.k[1] {
                        let ih = h0 + (i * g.d[0]) as i64;
                        let iw = w0 + (j * g.d[1]) as i64;
                        if ih >= 0 && ih < h as i64 && iw >= 0 && iw < w as i64 {
                            cells.push((ci * h + ih as usize) * w + iw as usize);
                        }
                    }
                }
                out.push(cells);
            }
        }
    }
    out
}

/// Max or average pooling; with `gy`, also returns the input gradient.
fn pool(n: &NodeProto, x: &T, gy: Option<&T>) -> (T, Option<T>) {
    let (_, c, h, w) = x.d4();
    let k = ints(n, "kernel_shape", vec![]);
    let g = geo(n, [k[0], k[1]]);
    let ceil = onnx::get_int(n, "ceil_mode") == Some(1);
    let ho = pool_out(h, 0, &g, ceil);
    let wo = pool_out(w, 1, &g, ceil);
    let is_max = n.op_type == "MaxPool";
    let include = onnx::get_int(n, "count_include_pad") == Some(1);
    let windows = pool_windows(n, &x.shape);
    assert_eq!(windows.len(), c * ho * wo);
    let mut y = T::zeros(&[1, c, ho, wo]);
    let mut gx = gy.map(|_| T::zeros(&[1, c, h, w]));
    for (oi, cells) in windows.iter().enumerate() {
        let (oh, ow) = ((oi / wo) % ho, oi % wo);
        if is_max {
            // The first maximum in scan order: a later cell must be strictly larger.
            let mut best: Option<usize> = None;
            for &q in cells {
                if best.is_none_or(|b| x.data[q] > x.data[b]) {
                    best = Some(q);
                }
            }
            let best = best.expect("MaxPool window with no in-bounds cell");
            y.data[oi] = x.data[best];
            if let (Some(gx), Some(gy)) = (gx.as_mut(), gy) {
                gx.data[best] += gy.data[oi];
            }
        } else {
            let h0 = (oh * g.s[0]) as i64 - g.pb[0] as i64;
            let w0 = (ow * g.s[1]) as i64 - g.pb[1] as i64;
            let cnt = |start: i64, a: usize, len: usize| -> i64 {
                let end = start + g.k[a] as i64;
                let (lo, hi) = if include {
                    (-(g.pb[a] as i64), (len + g.pe[a]) as i64)
                } else {
                    (0, len as i64)
                };
                end.min(hi) - start.max(lo)
            };
            let count = (cnt(h0, 0, h) * cnt(w0, 1, w)) as f64;
            y.data[oi] = cells.iter().map(|&q| x.data[q]).sum::<f64>() / count;
            if let (Some(gx), Some(gy)) = (gx.as_mut(), gy) {
                for &q in cells {
                    gx.data[q] += gy.data[oi] / count;
                }
            }
        }
    }
    (y, gx)
}

fn reduce_to(g: &T, target: &[usize]) -> T {
    let mut o = T::zeros(target);
    for i in 0..g.data.len() {
        o.data[bcast_index(&g.shape, target, i)] += g.data[i];
    }
    o
}

/// Elementwise gy·f'(x).
fn times(x: &T, gy: &T, d: impl Fn(f64, f64) -> f64) -> T {
    T::new(
        x.shape.clone(),
        x.data
            .iter()
            .zip(&gy.data)
            .map(|(&xv, &g)| d(xv, g))
            .collect(),
    )
}

fn bwd_node(
    n: &NodeProto,
    ins: &[&T],
    ys: &[&T],
    gys: &[T],
    guided: bool,
    opset: i64,
) -> Vec<Option<T>> {
    let x = ins.first().copied().unwrap_or(&ABSENT);
    let gy = &gys[0];
    let gate = |g: f64| if guided { g.max(0.0) } else { g };
    match n.op_type.as_str() {
        "Constant" => vec![],
        "Identity" | "Dropout" => vec![Some(gy.clone())],
        "Neg" => vec![Some(gy.map(|g| -g))],
        "Relu" => vec![Some(times(
            x,
            gy,
            |xv, g| if xv > 0.0 { gate(g) } else { 0.0 },
        ))],
        "Clip" => {
            let (lo, hi) = clip_bounds(ins, n, opset);
            vec![Some(times(x, gy, |xv, g| {
                if xv > lo && xv < hi { gate(g) } else { 0.0 }
            }))]
        }
        // Not gated in guided mode: plain derivatives.
        "Sigmoid" => vec![Some(times(ys[0], gy, |yv, g| g * yv * (1.0 - yv)))],
        "LeakyRelu" => {
            let a = float(n, "alpha", 0.01);
            vec![Some(times(x, gy, |xv, g| if xv > 0.0 { g } else { a * g }))]
        }
        "HardSigmoid" => {
            let (a, b) = (float(n, "alpha", 0.2), float(n, "beta", 0.5));
            vec![Some(times(x, gy, |xv, g| {
                let t = a * xv + b;
                if t > 0.0 && t < 1.0 { a * g } else { 0.0 }
            }))]
        }
        "HardSwish" => {
            let (a, b) = (1.0 / 6.0, 0.5);
            vec![Some(times(x, gy, |xv, g| {
                let t = a * xv + b;
                let dh = if t > 0.0 && t < 1.0 { a } else { 0.0 };
                g * (hard_sigmoid(xv, a, b) + xv * dh)
            }))]
        }
        "Conv" => vec![Some(conv_bwd(n, x, ins[1], gy))],
        "MaxPool" | "AveragePool" => vec![pool(n, x, Some(gy)).1],
        "GlobalAveragePool" => {
            let (_, c, h, w) = x.d4();
            let mut gx = T::zeros(&x.shape);
            for ci in 0..c {
                for k in 0..h * w {
                    gx.data[ci * h * w + k] = gy.data[ci] / (h * w) as f64;
                }
            }
            vec![Some(gx)]
        }
        "BatchNormalization" => {
            let (_, c, h, w) = x.d4();
            let eps = float(n, "epsilon", 1e-5);
            let mut gx = gy.clone();
            for ci in 0..c {
                let f = ins[1].data[ci] / (ins[4].data[ci] + eps).sqrt();
                for k in 0..h * w {
                    gx.data[ci * h * w + k] *= f;
                }
            }
            vec![Some(gx)]
        }
        "Gemm" => {
            let alpha = float(n, "alpha", 1.0);
            let b = if onnx::get_int(n, "transB") == Some(1) {
                transpose(ins[1])
            } else {
                ins[1].clone()
            };
            let mut ga = matmul(gy, &transpose(&b));
            ga.data.iter_mut().for_each(|v| *v *= alpha);
            if onnx::get_int(n, "transA") == Some(1) {
                ga = transpose(&ga);
            }
            vec![Some(ga), None, None]
        }
        "MatMul" => vec![Some(matmul(gy, &transpose(ins[1]))), None],
        "Add" | "Sub" | "Mul" | "Div" => {
            // Both operands get their partial derivative, so a product or quotient of
            // two input-dependent tensors follows the product / quotient rule.
            let s = gy.shape.clone();
            let mut out = vec![];
            for i in 0..2 {
                let mut g = gy.clone();
                for q in 0..g.data.len() {
                    let a = ins[0].data[bcast_index(&s, &ins[0].shape, q)];
                    let b = ins[1].data[bcast_index(&s, &ins[1].shape, q)];
                    let d = match (n.op_type.as_str(), i) {
                        ("Add", _) | ("Sub", 0) => 1.0,
                        ("Sub", _) => -1.0,
                        ("Mul", 0) => b,
                        ("Mul", _) => a,
                        ("Div", 0) => 1.0 / b,
                        _ => -a / (b * b),
                    };
                    g.data[q] *= d;
                }
                out.push(Some(reduce_to(&g, &ins[i].shape)));
            }
            out
        }
        "Concat" => {
            let axis = axis_of(onnx::get_int(n, "axis").unwrap(), gy.shape.len());
            let outer: usize = gy.shape[..axis].iter().product();
            let total_inner: usize = gy.shape[axis..].iter().product();
            let mut off = 0;
            let mut out = vec![];
            for t in ins {
                let inner: usize = t.shape[axis..].iter().product();
                let mut data = vec![];
                for o in 0..outer {
                    data.extend_from_slice(
                        &gy.data[o * total_inner + off..o * total_inner + off + inner],
                    );
                }
                off += inner;
                out.push(Some(T::new(t.shape.clone(), data)));
            }
            out
        }
        "Split" => {
            let mut gx = T::zeros(&x.shape);
            for ((sel, _), g) in split_parts(n, ins, opset).iter().zip(gys) {
                let part = scatter_add(g, &x.shape, sel);
                gx.data
                    .iter_mut()
                    .zip(&part.data)
                    .for_each(|(a, b)| *a += b);
            }
            vec![Some(gx), None]
        }
        "Slice" => {
            let sel = slice_sel(n, ins, &x.shape, opset);
            vec![Some(scatter_add(gy, &x.shape, &sel))]
        }
        "Resize" => {
            let taps = resize_taps(n, ins, &x.shape, opset);
            let mut g = gy.clone();
            for a in (0..taps.len()).rev() {
                g = resample_t(&g, a, &taps[a], x.shape[a]);
            }
            vec![Some(g)]
        }
        "Reshape" | "Flatten" => vec![Some(T::new(x.shape.clone(), gy.data.clone())), None],
        o => panic!("reference backward: op {o} not implemented"),
    }
}
