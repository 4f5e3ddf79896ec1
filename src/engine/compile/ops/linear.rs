//! Convolution, batch normalisation and matrix products. Stride-1 convolutions go
//! back as a Conv with flipped, transposed weights (much faster than
//! ConvTranspose in tract); strided ones as ConvTranspose with `pads` +
//! `output_padding`, never `output_shape` (ONNX Runtime then ignores the pads).

use super::{Grads, OpRule, Out, UpgradeCx};
use crate::engine::compile::ctx::{Ctx, R, unsup, window};
use crate::onnx::{self, attr_int, attr_ints, pb::NodeProto};

pub const RULES: &[OpRule] = &[
    OpRule::new("Conv", conv).inputs(2),
    OpRule::upgraded("BatchNormalization", batchnorm_upgrade, batchnorm).inputs(5),
    OpRule::new("Gemm", gemm).inputs(2),
    OpRule::new("MatMul", matmul).inputs(2),
];

fn conv(cx: &mut Ctx, n: &NodeProto, g: &Grads, on_path: &dyn Fn(&str) -> bool) -> Out {
    let gy = g.first()?;
    let x = n.input[0].clone();
    let y = n.output[0].clone();
    let mut out = vec![];
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
    Ok(out)
}

fn batchnorm(cx: &mut Ctx, n: &NodeProto, g: &Grads, on_path: &dyn Fn(&str) -> bool) -> Out {
    let gy = g.first()?;
    let x = n.input[0].clone();
    let mut out = vec![];
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
    Ok(out)
}

fn batchnorm_upgrade(u: &mut UpgradeCx, n: &mut NodeProto) -> R<()> {
    if u.from < 9 {
        n.attribute
            .retain(|a| a.name == "epsilon" || a.name == "momentum");
        n.output.truncate(1);
    }
    Ok(())
}

fn gemm(cx: &mut Ctx, n: &NodeProto, g: &Grads, on_path: &dyn Fn(&str) -> bool) -> Out {
    let gy = g.first()?;
    let y = n.output[0].clone();
    let mut out = vec![];
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
    Ok(out)
}

fn matmul(cx: &mut Ctx, n: &NodeProto, g: &Grads, on_path: &dyn Fn(&str) -> bool) -> Out {
    let gy = g.first()?;
    let mut out = vec![];
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
    Ok(out)
}
