//! The op table: one module per op family, each registering its rules here.
//!
//! A rule says how one op is brought up to the guard graph's opset (`upgrade`) and
//! how its gradient is written as forward ONNX ops (`adjoint`). The table's keys
//! with an adjoint are the supported list, so adding an op is one entry in one
//! family module (the habit of tract's `register_all_ops`).

mod activation;
mod elementwise;
mod forward_only;
mod linear;
mod pool;
mod resize;
mod shape;

use super::ctx::{Ctx, R};
use crate::onnx::pb::{NodeProto, TensorProto};
use std::collections::{HashMap, HashSet};
use std::sync::OnceLock;

/// The gradient of each output of a node (`None`: no gradient reaches it).
pub struct Grads<'a>(pub &'a [Option<String>]);

impl Grads<'_> {
    /// The gradient of the first (often only) output.
    pub fn first(&self) -> R<&str> {
        self.0
            .first()
            .and_then(|g| g.as_deref())
            .ok_or_else(|| super::CompileError::Invalid("adjoint called without a gradient".into()))
    }
}

/// What an adjoint returns: (input tensor, gradient contribution) pairs.
pub type Out = R<Vec<(String, String)>>;

/// Writes the adjoint of one node: (input tensor, gradient contribution) pairs.
/// `on_path` tells which tensors lie between the image input and the seed.
pub type Adjoint =
    fn(&mut Ctx, &NodeProto, &Grads, &dyn Fn(&str) -> bool) -> R<Vec<(String, String)>>;

/// Rewrites one node from the model's opset to the guard graph's (≥ 13).
pub type Upgrade = fn(&mut UpgradeCx, &mut NodeProto) -> R<()>;

/// One op's rules.
pub struct OpRule {
    /// The ONNX op type (default domain).
    pub op: &'static str,
    /// Opset upgrade, if the op's signature changed before opset 13.
    pub upgrade: Option<Upgrade>,
    /// The adjoint; `None` for ops that may only appear off the input → seed path.
    pub adjoint: Option<Adjoint>,
    /// Inputs the rules index (the lowest count any opset's schema allows).
    pub min_inputs: usize,
}

impl OpRule {
    /// An op whose signature is the same from opset 7 on.
    pub const fn new(op: &'static str, adjoint: Adjoint) -> Self {
        OpRule {
            op,
            upgrade: None,
            adjoint: Some(adjoint),
            min_inputs: 1,
        }
    }

    /// An op with an opset upgrade and an adjoint.
    pub const fn upgraded(op: &'static str, upgrade: Upgrade, adjoint: Adjoint) -> Self {
        OpRule {
            op,
            upgrade: Some(upgrade),
            adjoint: Some(adjoint),
            min_inputs: 1,
        }
    }

    /// An op that is upgraded but never differentiated.
    pub const fn forward_only(op: &'static str, upgrade: Upgrade) -> Self {
        OpRule {
            op,
            upgrade: Some(upgrade),
            adjoint: None,
            min_inputs: 1,
        }
    }

    /// The same rule for an op that needs at least `k` inputs.
    pub const fn inputs(self, k: usize) -> Self {
        OpRule {
            min_inputs: k,
            ..self
        }
    }
}

/// What an upgrade rule may read and add.
pub struct UpgradeCx<'a> {
    /// The model's original default-domain opset.
    pub from: i64,
    /// Static shapes by tensor name (upgrades may add the shapes of new tensors).
    pub shapes: &'a mut HashMap<String, Vec<usize>>,
    /// Tensors read by some node or graph output.
    pub used: &'a HashSet<String>,
    /// New initializers.
    pub inits: Vec<TensorProto>,
    /// New nodes (the graph is sorted topologically afterwards).
    pub nodes: Vec<NodeProto>,
    taken: &'a HashSet<String>,
    counter: usize,
}

impl<'a> UpgradeCx<'a> {
    /// A context for upgrading a graph whose tensor names are `taken`.
    pub fn new(
        from: i64,
        shapes: &'a mut HashMap<String, Vec<usize>>,
        used: &'a HashSet<String>,
        taken: &'a HashSet<String>,
    ) -> Self {
        UpgradeCx {
            from,
            shapes,
            used,
            inits: vec![],
            nodes: vec![],
            taken,
            counter: 0,
        }
    }

    /// A tensor name no other tensor has.
    pub fn fresh(&mut self, base: &str) -> String {
        loop {
            self.counter += 1;
            let n = format!("{base}__up{}", self.counter);
            if !self.taken.contains(&n) {
                return n;
            }
        }
    }

    /// Moves attribute `attr` (ints) of `n` into a new i64 initializer input.
    pub fn ints_to_input(&mut self, n: &mut NodeProto, attr: &str) {
        if let Some(v) = crate::onnx::get_ints(n, attr) {
            let name = self.fresh(&format!("{}_{attr}", n.name));
            self.inits
                .push(crate::onnx::tensor_i64(&name, &[v.len()], v));
            n.input.truncate(1);
            n.input.push(name);
            n.attribute.retain(|a| a.name != attr);
        }
    }
}

fn table() -> &'static HashMap<&'static str, &'static OpRule> {
    static TABLE: OnceLock<HashMap<&'static str, &'static OpRule>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let families: [&'static [OpRule]; 7] = [
            activation::RULES,
            elementwise::RULES,
            forward_only::RULES,
            linear::RULES,
            pool::RULES,
            resize::RULES,
            shape::RULES,
        ];
        let mut t = HashMap::new();
        for rule in families.into_iter().flatten() {
            let dup = t.insert(rule.op, rule);
            debug_assert!(dup.is_none(), "op {} registered twice", rule.op);
        }
        t
    })
}

/// The rules of `op`, if any family registered it.
pub fn rule(op: &str) -> Option<&'static OpRule> {
    table().get(op).copied()
}

/// Ops with an adjoint, sorted: the compiler's supported list.
pub fn supported() -> Vec<&'static str> {
    let mut v: Vec<&'static str> = table()
        .values()
        .filter(|r| r.adjoint.is_some())
        .map(|r| r.op)
        .collect();
    v.sort_unstable();
    v
}
