//! Pooling. MaxPool routes each window's gradient to its first maximum in
//! row-major scan order (PyTorch's, TensorFlow's and ONNX `Indices`' rule), with
//! ops TensorRT's parser takes: no `Indices`, no Scatter.

use super::{Grads, OpRule, Out};
use crate::engine::compile::Target;
use crate::engine::compile::ctx::{Ctx, R, unsup, window};
use crate::onnx::{self, attr_int, attr_ints, pb::NodeProto};

pub const RULES: &[OpRule] = &[
    OpRule::new("MaxPool", max_pool),
    OpRule::new("AveragePool", average_pool),
    OpRule::new("GlobalAveragePool", global_average_pool),
];

/// Input and output shapes and the window of a 2-D pooling node.
fn pool_window(
    cx: &Ctx,
    n: &NodeProto,
) -> R<(Vec<usize>, Vec<usize>, crate::engine::compile::ctx::Window)> {
    let xs = cx.shape(&n.input[0])?;
    let ys = cx.shape(&n.output[0])?;
    let k = onnx::get_ints(n, "kernel_shape").unwrap_or_default();
    if xs.len() != 4 || k.len() != 2 {
        return Err(unsup(n, "only 2-D pooling is supported"));
    }
    let w = window(n, [k[0] as usize, k[1] as usize], &xs, &ys)?;
    Ok((xs, ys, w))
}

fn max_pool(cx: &mut Ctx, n: &NodeProto, g: &Grads, _: &dyn Fn(&str) -> bool) -> Out {
    let gy = g.first()?;
    let (x, y) = (n.input[0].clone(), n.output[0].clone());
    let (xs, ys, w) = pool_window(cx, n)?;
    let (ho, wo) = (ys[2], ys[3]);
    let (s0, s1) = (w.s[0], w.s[1]);
    let eff = [(w.k[0] - 1) * w.d[0] + 1, (w.k[1] - 1) * w.d[1] + 1];
    let full = [(ho - 1) * s0 + eff[0], (wo - 1) * s1 + eff[1]];
    // The padded map is cut into s×s phases (offset·d mod s), each hq×wq.
    let (hq, wq) = (full[0].div_ceil(s0), full[1].div_ceil(s1));
    let geo = PoolGeo {
        c: xs[1],
        s: [s0, s1],
        hq,
        wq,
    };
    // ONNX Runtime's strided Slice is a slow element-wise copy: there, one
    // SpaceToDepth makes each phase a contiguous channel block (9 strided slices of
    // SqueezeNet's first pool: 9.2 ms; SpaceToDepth + 9 contiguous slices: 2.6 ms).
    let s2d = cx.target == Target::OnnxRuntime && s0 == s1 && s0 > 1;
    // Pad with -inf so every window is in bounds (and, for SpaceToDepth, to whole phases).
    let to = if s2d { [hq * s0, wq * s1] } else { full };
    let pe = [
        to[0].saturating_sub(xs[2] + w.pb[0]) as i64,
        to[1].saturating_sub(xs[3] + w.pb[1]) as i64,
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
    let blocks = if s2d {
        Some(cx.op(
            "SpaceToDepth",
            &[&xp],
            vec![attr_int("blocksize", s0 as i64)],
        ))
    } else {
        None
    };
    // Per kernel offset, in row-major order: the window's value at that offset ==
    // pooled → mask · the gradient not yet routed. `rem` holds, per pooled cell,
    // the gradient still to place: it becomes exactly 0 at the first maximum, so
    // later tied maxima get nothing (each step is a product with 0/1 and an exact
    // subtraction). Each contribution is shifted by offset·d div s into its phase.
    let mut rem = gy.to_string();
    let last = (w.k[0] - 1, w.k[1] - 1);
    let mut phases: Vec<Vec<Vec<String>>> = vec![vec![vec![]; s1]; s0];
    for i in 0..w.k[0] {
        for j in 0..w.k[1] {
            let (oi, oj) = (i * w.d[0], j * w.d[1]);
            let (qi, qj) = (oi / s0, oj / s1);
            let view = match &blocks {
                Some(b) => {
                    let ph = ((oi % s0) * s1 + oj % s1) * geo.c;
                    cx.slice(
                        b,
                        &[ph as i64, qi as i64, qj as i64],
                        &[(ph + geo.c) as i64, (qi + ho) as i64, (qj + wo) as i64],
                        &[1, 2, 3],
                        None,
                    )
                }
                None => cx.slice(
                    &xp,
                    &[oi as i64, oj as i64],
                    &[
                        (oi + (ho - 1) * s0) as i64 + 1,
                        (oj + (wo - 1) * s1) as i64 + 1,
                    ],
                    &[2, 3],
                    Some(&[s0 as i64, s1 as i64]),
                ),
            };
            let eq = cx.op("Equal", &[&view, &y], vec![]);
            let mask = cx.cast_float(&eq);
            let r = cx.op("Mul", &[&mask, &rem], vec![]);
            if (i, j) != last {
                rem = cx.op("Sub", &[&rem, &r], vec![]);
            }
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
    let g = interleave(cx, phases, &geo);
    let g = cx.crop(&g, [hq * s0, wq * s1], w.pb, [xs[2], xs[3]]);
    Ok(vec![(x, g)])
}

/// Shapes of a max-pool adjoint: channels, strides and the size of one phase.
struct PoolGeo {
    c: usize,
    s: [usize; 2],
    hq: usize,
    wq: usize,
}

/// Sums each phase's parts and interleaves the s×s phases into one 1×C×(hq·s)×(wq·s)
/// map (depth-to-space) with Concat + Reshape: ONNX Runtime's DepthToSpace is 4× slower
/// (6.7 against 1.7 ms for four 64×56×56 phases, 1 thread).
fn interleave(cx: &mut Ctx, phases: Vec<Vec<Vec<String>>>, p: &PoolGeo) -> String {
    let (c, hq, wq, [s0, s1]) = (p.c, p.hq, p.wq, p.s);
    let mut sums: Vec<Vec<String>> = vec![];
    for ph in phases {
        let mut row = vec![];
        for parts in ph {
            row.push(match cx.accumulate(&parts) {
                Some(t) => t,
                None => cx.cf32("zeros", &[1, c, hq, wq], vec![0.0; c * hq * wq]),
            });
        }
        sums.push(row);
    }
    let mut rows = vec![];
    for cols in sums {
        let row = if s1 > 1 {
            let cols: Vec<String> = cols
                .iter()
                .map(|t| cx.reshape(t, &[1, c, hq, wq, 1]))
                .collect();
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
        rows.pop().unwrap_or_default()
    };
    cx.reshape(&g, &[1, c, hq * s0, wq * s1])
}

fn average_pool(cx: &mut Ctx, n: &NodeProto, g: &Grads, _: &dyn Fn(&str) -> bool) -> Out {
    let gy = g.first()?;
    let x = n.input[0].clone();
    let mut out = vec![];
    let (xs, ys, w) = pool_window(cx, n)?;
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
    Ok(out)
}

fn global_average_pool(cx: &mut Ctx, n: &NodeProto, g: &Grads, _: &dyn Fn(&str) -> bool) -> Out {
    let gy = g.first()?;
    let x = n.input[0].clone();
    let mut out = vec![];
    let xs = cx.shape(&x)?;
    let area: usize = xs[2..].iter().product();
    let s = cx.scalar(1.0 / area as f32);
    let scaled = cx.op("Mul", &[gy, &s], vec![]);
    let sh = cx.shape_const(&xs);
    out.push((x, cx.op("Expand", &[&scaled, &sh], vec![])));
    Ok(out)
}
