//! Broadcasting arithmetic: gradients are summed back to each operand's shape.
//! Mul and Div follow the product and quotient rules, so gates that multiply two
//! image-dependent tensors (squeeze-excite, hard-swish, SiLU) are exact.

use super::{Grads, OpRule, Out};
use crate::engine::compile::ctx::Ctx;
use crate::onnx::pb::NodeProto;

pub const RULES: &[OpRule] = &[
    OpRule::new("Identity", identity),
    OpRule::new("Neg", neg),
    OpRule::new("Add", add_sub_sum).inputs(2),
    OpRule::new("Sub", add_sub_sum).inputs(2),
    OpRule::new("Sum", add_sub_sum),
    OpRule::new("Mul", mul).inputs(2),
    OpRule::new("Div", div).inputs(2),
];

fn identity(_: &mut Ctx, n: &NodeProto, g: &Grads, _: &dyn Fn(&str) -> bool) -> Out {
    Ok(vec![(n.input[0].clone(), g.first()?.to_string())])
}

fn neg(cx: &mut Ctx, n: &NodeProto, g: &Grads, _: &dyn Fn(&str) -> bool) -> Out {
    Ok(vec![(
        n.input[0].clone(),
        cx.op("Neg", &[g.first()?], vec![]),
    )])
}

fn add_sub_sum(cx: &mut Ctx, n: &NodeProto, g: &Grads, on_path: &dyn Fn(&str) -> bool) -> Out {
    let gy = g.first()?;
    let ys = cx.shape(&n.output[0])?;
    let mut out = vec![];
    for (i, t) in n.input.iter().enumerate() {
        if !on_path(t) {
            continue;
        }
        let ts = cx.shape(t)?;
        let mut gi = cx.reduce_to(gy, &ys, &ts);
        if n.op_type == "Sub" && i == 1 {
            gi = cx.op("Neg", &[&gi], vec![]);
        }
        out.push((t.clone(), gi));
    }
    Ok(out)
}

fn mul(cx: &mut Ctx, n: &NodeProto, g: &Grads, on_path: &dyn Fn(&str) -> bool) -> Out {
    let gy = g.first()?;
    let ys = cx.shape(&n.output[0])?;
    let mut out = vec![];
    for i in 0..2 {
        let t = &n.input[i];
        if !on_path(t) {
            continue;
        }
        let other = &n.input[1 - i];
        let ts = cx.shape(t)?;
        let gi = cx.op("Mul", &[gy, other], vec![]);
        out.push((t.clone(), cx.reduce_to(&gi, &ys, &ts)));
    }
    Ok(out)
}

fn div(cx: &mut Ctx, n: &NodeProto, g: &Grads, on_path: &dyn Fn(&str) -> bool) -> Out {
    let gy = g.first()?;
    let (a, b, y) = (&n.input[0], &n.input[1], &n.output[0]);
    let ys = cx.shape(y)?;
    let mut out = vec![];
    let g_over_b = cx.op("Div", &[gy, b], vec![]);
    if on_path(a) {
        let s = cx.shape(a)?;
        out.push((a.clone(), cx.reduce_to(&g_over_b, &ys, &s)));
    }
    if on_path(b) {
        // d(a/b)/db = −a/b² = −y/b
        let t = cx.op("Mul", &[&g_over_b, y], vec![]);
        let t = cx.op("Neg", &[&t], vec![]);
        let s = cx.shape(b)?;
        out.push((b.clone(), cx.reduce_to(&t, &ys, &s)));
    }
    Ok(out)
}
