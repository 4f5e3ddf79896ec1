//! A small, direct f64 reference interpreter for the ops the guard-graph compiler
//! differentiates, with a naive (guided or plain) backward pass. Written from the
//! op definitions, independent of the compiler: loops, no ONNX tricks.
//!
//! MaxPool ties: every position equal to the window maximum gets the window's
//! full gradient (the compiler's documented rule).

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
}

fn ints(n: &NodeProto, name: &str, def: Vec<i64>) -> Vec<usize> {
    onnx::get_ints(n, name)
        .unwrap_or(def)
        .into_iter()
        .map(|v| v as usize)
        .collect()
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
}

impl Ref {
    pub fn new(model: &ModelProto) -> Ref {
        let g = model.graph.as_ref().unwrap();
        let mut consts = HashMap::new();
        for t in &g.initializer {
            if t.data_type == onnx::INT64 {
                let (s, d) = onnx::tensor_to_i64(t).unwrap();
                consts.insert(
                    t.name.clone(),
                    T::new(s, d.into_iter().map(|v| v as f64).collect()),
                );
            } else {
                let (s, d) = onnx::tensor_to_f32(t).unwrap();
                consts.insert(t.name.clone(), T::from_f32(&s, &d));
            }
        }
        Ref {
            nodes: g.node.clone(),
            consts,
        }
    }

    /// All tensor values for this input.
    pub fn forward(&self, input: &str, x: &T) -> HashMap<String, T> {
        let mut v: HashMap<String, T> = self.consts.clone();
        v.insert(input.to_string(), x.clone());
        for n in &self.nodes {
            let ins: Vec<&T> = n
                .input
                .iter()
                .filter(|i| !i.is_empty())
                .map(|i| &v[i])
                .collect();
            let y = fwd_node(n, &ins);
            v.insert(n.output[0].clone(), y);
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
        let mut g: HashMap<String, T> = HashMap::new();
        g.insert(seed_t.to_string(), seed_g);
        for n in self.nodes.iter().rev() {
            let Some(gy) = g.get(&n.output[0]).cloned() else {
                continue;
            };
            let ins: Vec<&T> = n
                .input
                .iter()
                .filter(|i| !i.is_empty())
                .map(|i| &vals[i])
                .collect();
            let y = &vals[&n.output[0]];
            let gins = bwd_node(n, &ins, y, &gy, guided);
            for (i, gi) in gins.into_iter().enumerate().take(n.input.len()) {
                let name = &n.input[i];
                if self.consts.contains_key(name) {
                    continue;
                }
                if let Some(gi) = gi {
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

fn fwd_node(n: &NodeProto, ins: &[&T]) -> T {
    let x = ins[0];
    match n.op_type.as_str() {
        "Identity" | "Dropout" => x.clone(),
        "Relu" => T::new(
            x.shape.clone(),
            x.data.iter().map(|&v| v.max(0.0)).collect(),
        ),
        "Clip" => {
            let lo = ins.get(1).map_or(f64::NEG_INFINITY, |t| t.data[0]);
            let hi = ins.get(2).map_or(f64::INFINITY, |t| t.data[0]);
            T::new(
                x.shape.clone(),
                x.data.iter().map(|&v| v.max(lo).min(hi)).collect(),
            )
        }
        "Conv" => conv(n, x, ins[1], ins.get(2).copied()),
        "MaxPool" | "AveragePool" => pool(n, x, None, None).0,
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
            let eps = onnx::get_float(n, "epsilon").unwrap_or(1e-5) as f64;
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
            let alpha = onnx::get_float(n, "alpha").unwrap_or(1.0) as f64;
            let beta = onnx::get_float(n, "beta").unwrap_or(1.0) as f64;
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
            if let Some(c) = ins.get(2) {
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
            let axis = onnx::get_int(n, "axis").unwrap() as usize;
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
        "Reshape" => {
            let mut s: Vec<i64> = ins[1].data.iter().map(|&v| v as i64).collect();
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
            let axis = onnx::get_int(n, "axis").unwrap_or(1) as usize;
            let a: usize = x.shape[..axis].iter().product();
            T::new(vec![a, x.data.len() / a], x.data.clone())
        }
        "Softmax" => {
            let last = *x.shape.last().unwrap();
            let mut y = x.clone();
            for row in y.data.chunks_mut(last) {
                let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let s: f64 = row.iter().map(|v| (v - m).exp()).sum();
                row.iter_mut().for_each(|v| *v = (*v - m).exp() / s);
            }
            y
        }
        o => panic!("reference interpreter: op {o} not implemented"),
    }
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

/// Max or average pooling; with `gy`, also returns the input gradient.
fn pool(n: &NodeProto, x: &T, gy: Option<&T>, _y: Option<&T>) -> (T, Option<T>) {
    let (_, c, h, w) = x.d4();
    let k = ints(n, "kernel_shape", vec![]);
    let g = geo(n, [k[0], k[1]]);
    let ceil = onnx::get_int(n, "ceil_mode") == Some(1);
    let ho = pool_out(h, 0, &g, ceil);
    let wo = pool_out(w, 1, &g, ceil);
    let is_max = n.op_type == "MaxPool";
    let include = onnx::get_int(n, "count_include_pad") == Some(1);
    let mut y = T::zeros(&[1, c, ho, wo]);
    let mut gx = gy.map(|_| T::zeros(&[1, c, h, w]));
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
                let oi = (ci * ho + oh) * wo + ow;
                if is_max {
                    let m = cells
                        .iter()
                        .map(|&q| x.data[q])
                        .fold(f64::NEG_INFINITY, f64::max);
                    y.data[oi] = m;
                    if let (Some(gx), Some(gy)) = (gx.as_mut(), gy) {
                        for &q in &cells {
                            if x.data[q] == m {
                                gx.data[q] += gy.data[oi];
                            }
                        }
                    }
                } else {
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
                        for &q in &cells {
                            gx.data[q] += gy.data[oi] / count;
                        }
                    }
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

fn bwd_node(n: &NodeProto, ins: &[&T], _y: &T, gy: &T, guided: bool) -> Vec<Option<T>> {
    let x = ins[0];
    let gate = |g: f64| if guided { g.max(0.0) } else { g };
    match n.op_type.as_str() {
        "Identity" | "Dropout" => vec![Some(gy.clone())],
        "Relu" => vec![Some(T::new(
            x.shape.clone(),
            x.data
                .iter()
                .zip(&gy.data)
                .map(|(&xv, &g)| if xv > 0.0 { gate(g) } else { 0.0 })
                .collect(),
        ))],
        "Clip" => {
            let lo = ins.get(1).map_or(f64::NEG_INFINITY, |t| t.data[0]);
            let hi = ins.get(2).map_or(f64::INFINITY, |t| t.data[0]);
            vec![Some(T::new(
                x.shape.clone(),
                x.data
                    .iter()
                    .zip(&gy.data)
                    .map(|(&xv, &g)| if xv > lo && xv < hi { gate(g) } else { 0.0 })
                    .collect(),
            ))]
        }
        "Conv" => vec![Some(conv_bwd(n, x, ins[1], gy))],
        "MaxPool" | "AveragePool" => vec![pool(n, x, Some(gy), None).1],
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
            let eps = onnx::get_float(n, "epsilon").unwrap_or(1e-5) as f64;
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
            let alpha = onnx::get_float(n, "alpha").unwrap_or(1.0) as f64;
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
            let mut out = vec![];
            for i in 0..2 {
                let mut g = gy.clone();
                let other = ins[1 - i];
                let s = gy.shape.clone();
                for q in 0..g.data.len() {
                    let o = other.data[bcast_index(&s, &other.shape, q)];
                    match n.op_type.as_str() {
                        "Sub" if i == 1 => g.data[q] = -g.data[q],
                        "Mul" => g.data[q] *= o,
                        "Div" if i == 0 => g.data[q] /= o,
                        _ => {}
                    }
                }
                out.push(Some(reduce_to(&g, &ins[i].shape)));
            }
            out
        }
        "Concat" => {
            let axis = onnx::get_int(n, "axis").unwrap() as usize;
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
        "Reshape" | "Flatten" => vec![Some(T::new(x.shape.clone(), gy.data.clone())), None],
        o => panic!("reference backward: op {o} not implemented"),
    }
}
