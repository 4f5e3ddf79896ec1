//! Ops that may stand after the seed (or off the input path) but are never
//! differentiated: only their signatures are brought up to opset 13.

use super::{OpRule, UpgradeCx};
use crate::engine::compile::CompileError;
use crate::engine::compile::ctx::R;
use crate::onnx::{self, pb::NodeProto};

pub const RULES: &[OpRule] = &[
    OpRule::forward_only("ReduceSum", super::shape::axes_upgrade),
    OpRule::forward_only("Softmax", softmax_upgrade),
    OpRule::forward_only("LogSoftmax", softmax_upgrade),
    OpRule::forward_only("Hardmax", softmax_upgrade),
];

/// Before opset 13, Softmax flattened all dims from `axis` on; keep that meaning.
fn softmax_upgrade(u: &mut UpgradeCx, n: &mut NodeProto) -> R<()> {
    if u.from >= 13 {
        return Ok(());
    }
    let Some(shape) = u.shapes.get(&n.input[0]).cloned() else {
        return Err(CompileError::Shape(format!(
            "no static shape for the input of {}",
            n.name
        )));
    };
    let mut axis = onnx::get_int(n, "axis").unwrap_or(1);
    if axis < 0 {
        axis += shape.len() as i64;
    }
    let trailing_ones = shape[(axis as usize + 1).min(shape.len())..]
        .iter()
        .all(|&d| d == 1);
    n.attribute.retain(|a| a.name != "axis");
    if trailing_ones {
        n.attribute.push(onnx::attr_int("axis", axis));
        return Ok(());
    }
    let flat = u.fresh(&format!("{}_flat", n.name));
    let soft = u.fresh(&format!("{}_soft", n.name));
    let shp = u.fresh(&format!("{}_shape", n.name));
    let out = n.output[0].clone();
    u.inits.push(onnx::tensor_i64(
        &shp,
        &[shape.len()],
        shape.iter().map(|&d| d as i64).collect(),
    ));
    let flat_node = NodeProto {
        name: u.fresh(&format!("{}_flatten", n.name)),
        op_type: "Flatten".into(),
        input: vec![n.input[0].clone()],
        output: vec![flat.clone()],
        attribute: vec![onnx::attr_int("axis", axis)],
        ..Default::default()
    };
    let reshape = NodeProto {
        name: u.fresh(&format!("{}_reshape", n.name)),
        op_type: "Reshape".into(),
        input: vec![soft.clone(), shp],
        output: vec![out],
        ..Default::default()
    };
    let outer: usize = shape[..axis as usize].iter().product();
    let inner: usize = shape[axis as usize..].iter().product();
    u.shapes.insert(flat.clone(), vec![outer, inner]);
    u.shapes.insert(soft.clone(), vec![outer, inner]);
    n.input[0] = flat;
    n.output[0] = soft;
    n.attribute.push(onnx::attr_int("axis", 1));
    u.nodes.push(flat_node);
    u.nodes.push(reshape);
    Ok(())
}
