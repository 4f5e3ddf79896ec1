//! Pointwise nonlinearities. Guided mode is defined at Relu and Clip (the ReLU
//! family the method traces); every other nonlinearity passes the plain
//! derivative in both modes, as captum's GuidedBackprop does.

use super::{Grads, OpRule, Out, UpgradeCx};
use crate::engine::compile::Mode;
use crate::engine::compile::ctx::{Ctx, R, clip_bound};
use crate::onnx::{self, pb::NodeProto};

pub const RULES: &[OpRule] = &[
    OpRule::new("Relu", relu),
    OpRule::upgraded("Clip", clip_upgrade, clip),
    OpRule::upgraded("Dropout", dropout_upgrade, pass),
    OpRule::new("Sigmoid", sigmoid),
    OpRule::new("Tanh", tanh),
    OpRule::new("LeakyRelu", leaky_relu),
    OpRule::new("HardSigmoid", hard_sigmoid),
    OpRule::new("HardSwish", hard_swish),
];

/// Guided mode keeps only positive gradients at Relu/Clip.
fn gate(cx: &mut Ctx, gy: &str) -> String {
    match cx.mode {
        Mode::Guided => cx.op("Relu", &[gy], vec![]),
        Mode::Plain => gy.to_string(),
    }
}

fn relu(cx: &mut Ctx, n: &NodeProto, g: &Grads, _: &dyn Fn(&str) -> bool) -> Out {
    // [x > 0] = [y > 0] for y = Relu(x) ≥ 0: exact, and much faster than
    // Cast(Greater(x, 0)) on both engines.
    let mask = cx
        .between_mask(&n.output[0], 0.0, f32::INFINITY)
        .expect("a finite bound");
    let gg = gate(cx, g.first()?);
    Ok(vec![(
        n.input[0].clone(),
        cx.op("Mul", &[&gg, &mask], vec![]),
    )])
}

fn clip(cx: &mut Ctx, n: &NodeProto, g: &Grads, _: &dyn Fn(&str) -> bool) -> Out {
    // y = clip(x, lo, hi) ∈ [lo, hi], so [lo < x < hi] = [lo < y < hi].
    let lo = clip_bound(cx, n, 1, f32::NEG_INFINITY)?;
    let hi = clip_bound(cx, n, 2, f32::INFINITY)?;
    let mut gg = gate(cx, g.first()?);
    if let Some(m) = cx.between_mask(&n.output[0], lo, hi) {
        gg = cx.op("Mul", &[&gg, &m], vec![]);
    }
    Ok(vec![(n.input[0].clone(), gg)])
}

fn clip_upgrade(u: &mut UpgradeCx, n: &mut NodeProto) -> R<()> {
    if u.from >= 11 {
        return Ok(());
    }
    let lo = onnx::get_float(n, "min").unwrap_or(f32::NEG_INFINITY);
    let hi = onnx::get_float(n, "max").unwrap_or(f32::INFINITY);
    let lo_n = u.fresh(&format!("{}_min", n.name));
    let hi_n = u.fresh(&format!("{}_max", n.name));
    u.inits.push(onnx::tensor_f32(&lo_n, &[], vec![lo]));
    u.inits.push(onnx::tensor_f32(&hi_n, &[], vec![hi]));
    n.input.truncate(1);
    n.input.push(lo_n);
    n.input.push(hi_n);
    n.attribute.clear();
    Ok(())
}

/// Dropout runs in inference mode: the identity, whose adjoint is the identity
/// (onnxruntime-training's DropoutGrad rescales, which is wrong here).
fn dropout_upgrade(u: &mut UpgradeCx, n: &mut NodeProto) -> R<()> {
    if let Some(extra) = n.output.iter().skip(1).find(|o| u.used.contains(*o)) {
        return Err(crate::engine::compile::CompileError::Unsupported {
            op: "Dropout".into(),
            node: n.name.clone(),
            msg: format!("its mask output {extra:?} is used"),
        });
    }
    n.op_type = "Identity".into();
    n.input.truncate(1);
    n.output.truncate(1);
    n.attribute.clear();
    Ok(())
}

fn pass(_: &mut Ctx, n: &NodeProto, g: &Grads, _: &dyn Fn(&str) -> bool) -> Out {
    Ok(vec![(n.input[0].clone(), g.first()?.to_string())])
}

fn sigmoid(cx: &mut Ctx, n: &NodeProto, g: &Grads, _: &dyn Fn(&str) -> bool) -> Out {
    // σ' = y (1 − y)
    let y = &n.output[0];
    let one = cx.scalar(1.0);
    let omy = cx.op("Sub", &[&one, y], vec![]);
    let d = cx.op("Mul", &[y, &omy], vec![]);
    Ok(vec![(
        n.input[0].clone(),
        cx.op("Mul", &[g.first()?, &d], vec![]),
    )])
}

fn tanh(cx: &mut Ctx, n: &NodeProto, g: &Grads, _: &dyn Fn(&str) -> bool) -> Out {
    // tanh' = 1 − y²
    let y = &n.output[0];
    let y2 = cx.op("Mul", &[y, y], vec![]);
    let one = cx.scalar(1.0);
    let d = cx.op("Sub", &[&one, &y2], vec![]);
    Ok(vec![(
        n.input[0].clone(),
        cx.op("Mul", &[g.first()?, &d], vec![]),
    )])
}

fn leaky_relu(cx: &mut Ctx, n: &NodeProto, g: &Grads, _: &dyn Fn(&str) -> bool) -> Out {
    // d = α + (1 − α)·[x > 0]; [x > 0] = [Relu(y) > 0] since sign(y) = sign(x) for α > 0.
    let alpha = onnx::get_float(n, "alpha").unwrap_or(0.01);
    let gy = g.first()?;
    let r = cx.op("Relu", &[&n.output[0]], vec![]);
    let pos = cx.between_mask(&r, 0.0, f32::INFINITY).unwrap_or(r);
    let a = cx.scalar(1.0 - alpha);
    let scaled = cx.op("Mul", &[&pos, &a], vec![]);
    let b = cx.scalar(alpha);
    let d = cx.op("Add", &[&scaled, &b], vec![]);
    Ok(vec![(n.input[0].clone(), cx.op("Mul", &[gy, &d], vec![]))])
}

/// α·[0 < αx + β < 1] from h = HardSigmoid(x) ∈ [0, 1]: α · [h > 0] · [1 − h > 0].
fn hard_sigmoid_slope(cx: &mut Ctx, h: &str, alpha: f32) -> String {
    let m = cx
        .between_mask(h, 0.0, 1.0)
        .unwrap_or_else(|| h.to_string());
    let a = cx.scalar(alpha);
    cx.op("Mul", &[&m, &a], vec![])
}

fn hard_sigmoid(cx: &mut Ctx, n: &NodeProto, g: &Grads, _: &dyn Fn(&str) -> bool) -> Out {
    let alpha = onnx::get_float(n, "alpha").unwrap_or(0.2);
    let d = hard_sigmoid_slope(cx, &n.output[0], alpha);
    Ok(vec![(
        n.input[0].clone(),
        cx.op("Mul", &[g.first()?, &d], vec![]),
    )])
}

fn hard_swish(cx: &mut Ctx, n: &NodeProto, g: &Grads, _: &dyn Fn(&str) -> bool) -> Out {
    // y = x·h(x), h = HardSigmoid(α = 1/6, β = ½): y' = h + x·h'.
    let x = &n.input[0];
    let h = cx.op(
        "HardSigmoid",
        &[x],
        vec![
            onnx::attr_float("alpha", 1.0 / 6.0),
            onnx::attr_float("beta", 0.5),
        ],
    );
    let slope = hard_sigmoid_slope(cx, &h, 1.0 / 6.0);
    let xs = cx.op("Mul", &[x, &slope], vec![]);
    let d = cx.op("Add", &[&h, &xs], vec![]);
    Ok(vec![(x.clone(), cx.op("Mul", &[g.first()?, &d], vec![]))])
}
