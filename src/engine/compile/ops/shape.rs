//! Layout ops: reshapes, transposes, concatenation, padding, slicing, splitting.

use super::{Grads, OpRule, Out, UpgradeCx};
use crate::engine::compile::ctx::{Ctx, R, unsup};
use crate::onnx::{self, attr_int, attr_ints, pb::NodeProto};

pub const RULES: &[OpRule] = &[
    OpRule::new("Reshape", reshape),
    OpRule::new("Flatten", reshape),
    OpRule::upgraded("Squeeze", axes_upgrade, reshape),
    OpRule::upgraded("Unsqueeze", axes_upgrade, reshape),
    OpRule::new("Transpose", transpose),
    OpRule::new("Concat", concat),
    OpRule::upgraded("Pad", pad_upgrade, pad),
    OpRule::upgraded("Slice", slice_upgrade, slice),
    OpRule::upgraded("Split", split_upgrade, split),
];

fn reshape(cx: &mut Ctx, n: &NodeProto, g: &Grads, _: &dyn Fn(&str) -> bool) -> Out {
    let gy = g.first()?;
    let x = n.input[0].clone();
    let mut out = vec![];
    let xs = cx.shape(&x)?;
    out.push((x, cx.reshape(gy, &xs)));
    Ok(out)
}

fn transpose(cx: &mut Ctx, n: &NodeProto, g: &Grads, _: &dyn Fn(&str) -> bool) -> Out {
    let gy = g.first()?;
    let x = n.input[0].clone();
    let mut out = vec![];
    let xs = cx.shape(&x)?;
    let perm: Vec<i64> =
        onnx::get_ints(n, "perm").unwrap_or_else(|| (0..xs.len() as i64).rev().collect());
    let mut inv = vec![0i64; perm.len()];
    for (i, &p) in perm.iter().enumerate() {
        inv[p as usize] = i as i64;
    }
    out.push((x, cx.op("Transpose", &[gy], vec![attr_ints("perm", &inv)])));
    Ok(out)
}

fn concat(cx: &mut Ctx, n: &NodeProto, g: &Grads, on_path: &dyn Fn(&str) -> bool) -> Out {
    let gy = g.first()?;
    let y = n.output[0].clone();
    let mut out = vec![];
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
    Ok(out)
}

fn pad(cx: &mut Ctx, n: &NodeProto, g: &Grads, _: &dyn Fn(&str) -> bool) -> Out {
    let gy = g.first()?;
    let x = n.input[0].clone();
    let mut out = vec![];
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
    Ok(out)
}

/// Before opset 13, Squeeze, Unsqueeze and ReduceSum took `axes` as an attribute.
pub(super) fn axes_upgrade(u: &mut UpgradeCx, n: &mut NodeProto) -> R<()> {
    if u.from < 13 {
        u.ints_to_input(n, "axes");
    }
    Ok(())
}

fn split_upgrade(u: &mut UpgradeCx, n: &mut NodeProto) -> R<()> {
    if u.from < 13 {
        u.ints_to_input(n, "split");
    }
    Ok(())
}

fn pad_upgrade(u: &mut UpgradeCx, n: &mut NodeProto) -> R<()> {
    if u.from >= 11 {
        return Ok(());
    }
    let pads = onnx::get_ints(n, "pads").unwrap_or_default();
    let value = onnx::get_float(n, "value").unwrap_or(0.0);
    let pn = u.fresh(&format!("{}_pads", n.name));
    let vn = u.fresh(&format!("{}_value", n.name));
    u.inits.push(onnx::tensor_i64(&pn, &[pads.len()], pads));
    u.inits.push(onnx::tensor_f32(&vn, &[], vec![value]));
    n.input.truncate(1);
    n.input.push(pn);
    n.input.push(vn);
    n.attribute.retain(|a| a.name == "mode");
    Ok(())
}

fn slice_upgrade(u: &mut UpgradeCx, n: &mut NodeProto) -> R<()> {
    if u.from >= 10 {
        return Ok(());
    }
    let starts = onnx::get_ints(n, "starts").unwrap_or_default();
    let ends = onnx::get_ints(n, "ends").unwrap_or_default();
    let axes = onnx::get_ints(n, "axes").unwrap_or_else(|| (0..starts.len() as i64).collect());
    n.input.truncate(1);
    for (suffix, v) in [("starts", starts), ("ends", ends), ("axes", axes)] {
        let an = u.fresh(&format!("{}_{suffix}", n.name));
        u.inits.push(onnx::tensor_i64(&an, &[v.len()], v));
        n.input.push(an);
    }
    n.attribute.clear();
    Ok(())
}

/// The input indices a Slice keeps along one axis of length `dim` (ONNX clamping rules).
pub(crate) fn slice_indices(dim: usize, start: i64, end: i64, step: i64) -> Vec<usize> {
    let d = dim as i64;
    let norm = |v: i64| if v < 0 { v + d } else { v };
    let (s, e) = if step > 0 {
        (norm(start).clamp(0, d), norm(end).clamp(0, d))
    } else {
        (norm(start).clamp(0, d - 1), norm(end).clamp(-1, d - 1))
    };
    let mut v = vec![];
    let mut i = s;
    while (step > 0 && i < e) || (step < 0 && i > e) {
        v.push(i as usize);
        i += step;
    }
    v
}

fn slice(cx: &mut Ctx, n: &NodeProto, g: &Grads, _: &dyn Fn(&str) -> bool) -> Out {
    let gy = g.first()?;
    let x = n.input[0].clone();
    let xs = cx.shape(&x)?;
    let ys = cx.shape(&n.output[0])?;
    let r = xs.len() as i64;
    let konst = |i: usize| -> R<Option<Vec<i64>>> {
        match n.input.get(i).filter(|t| !t.is_empty()) {
            None => Ok(None),
            Some(t) => cx
                .consts
                .get(t)
                .and_then(|c| onnx::tensor_to_i64(c).ok())
                .map(|(_, v)| Some(v))
                .ok_or_else(|| unsup(n, format!("input {i} ({t:?}) is not a constant"))),
        }
    };
    let starts = konst(1)?.ok_or_else(|| unsup(n, "no starts"))?;
    let ends = konst(2)?.ok_or_else(|| unsup(n, "no ends"))?;
    let axes = konst(3)?.unwrap_or_else(|| (0..starts.len() as i64).collect());
    let steps = konst(4)?.unwrap_or_else(|| vec![1; starts.len()]);
    if ends.len() != starts.len() || axes.len() != starts.len() || steps.len() != starts.len() {
        return Err(unsup(n, "starts, ends, axes and steps differ in length"));
    }
    // Per axis: the kept input indices (all of them where the axis is not sliced).
    let mut keep: Vec<Vec<usize>> = xs.iter().map(|&d| (0..d).collect()).collect();
    for k in 0..starts.len() {
        let a = if axes[k] < 0 { axes[k] + r } else { axes[k] };
        if a < 0 || a >= r || steps[k] == 0 {
            return Err(unsup(n, format!("axis {} / step {}", axes[k], steps[k])));
        }
        keep[a as usize] = slice_indices(xs[a as usize], starts[k], ends[k], steps[k]);
    }
    if keep.iter().map(|v| v.len()).collect::<Vec<_>>() != ys {
        return Err(unsup(
            n,
            format!("slice of {xs:?} does not give the inferred {ys:?}"),
        ));
    }
    let contiguous = |v: &[usize]| v.windows(2).all(|w| w[1] == w[0] + 1);
    if keep.iter().all(|v| contiguous(v)) {
        // Unit steps: zero-pad the gradient back into place.
        let mut pads = vec![0i64; 2 * xs.len()];
        for (a, v) in keep.iter().enumerate() {
            let first = v.first().copied().unwrap_or(0);
            pads[a] = first as i64;
            pads[xs.len() + a] = (xs[a] - first - v.len()) as i64;
        }
        if pads.iter().all(|&p| p == 0) {
            return Ok(vec![(x, gy.to_string())]);
        }
        let p = cx.ci64("pads", &pads);
        return Ok(vec![(x, cx.op("Pad", &[gy, &p], vec![]))]);
    }
    // Strided or reversed axes: scatter along each with a constant 0/1 matrix
    // (MatMul on the last axis, the axis moved there and back by Transpose).
    let mut cur = gy.to_string();
    let mut cur_shape = ys.clone();
    for a in 0..xs.len() {
        let v = &keep[a];
        if v.len() == xs[a] && contiguous(v) {
            continue;
        }
        let (o, i) = (v.len(), xs[a]);
        let mut m = vec![0f32; o * i];
        for (row, &src) in v.iter().enumerate() {
            m[row * i + src] = 1.0;
        }
        let mt = cx.cf32("slice_scatter", &[o, i], m);
        let last = xs.len() - 1;
        if a == last {
            cur = cx.op("MatMul", &[&cur, &mt], vec![]);
        } else {
            let mut perm: Vec<i64> = (0..xs.len() as i64).collect();
            perm.swap(a, last);
            let t = cx.op("Transpose", &[&cur], vec![attr_ints("perm", &perm)]);
            let t = cx.op("MatMul", &[&t, &mt], vec![]);
            cur = cx.op("Transpose", &[&t], vec![attr_ints("perm", &perm)]);
        }
        cur_shape[a] = i;
    }
    debug_assert_eq!(cur_shape, xs);
    Ok(vec![(x, cur)])
}

fn split(cx: &mut Ctx, n: &NodeProto, g: &Grads, _: &dyn Fn(&str) -> bool) -> Out {
    // The adjoint of Split is the Concat of the outputs' gradients, zeros where
    // an output gets none.
    let x = n.input[0].clone();
    let xs = cx.shape(&x)?;
    let mut axis = onnx::get_int(n, "axis").unwrap_or(0);
    if axis < 0 {
        axis += xs.len() as i64;
    }
    let mut parts = vec![];
    for (k, o) in n.output.iter().enumerate() {
        match g.0.get(k).and_then(|v| v.as_ref()) {
            Some(gk) => parts.push(gk.clone()),
            None => {
                let s = cx.shape(o)?;
                let z = cx.cf32("zeros", &s, vec![0.0; s.iter().product()]);
                parts.push(z);
            }
        }
    }
    let g = if parts.len() == 1 {
        parts.pop().unwrap()
    } else {
        let refs: Vec<&str> = parts.iter().map(|s| s.as_str()).collect();
        cx.op("Concat", &refs, vec![attr_int("axis", axis)])
    };
    Ok(vec![(x, g)])
}
