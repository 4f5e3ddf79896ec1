//! A small builder for ONNX graphs: unique names, initializers, nodes with attributes.
//!
//! ```
//! use advguard::onnx::{GraphBuilder, attr_ints};
//! let mut b = GraphBuilder::new(13);
//! let x = b.input("x", &[1, 3, 8, 8]);
//! let w = b.init_f32("w", &[4, 3, 3, 3], vec![0.1; 4 * 27]);
//! let y = b.node("Conv", &[&x, &w], vec![attr_ints("pads", &[1, 1, 1, 1])]);
//! let y = b.node("Relu", &[&y], vec![]);
//! b.output(&y, Some(&[1, 4, 8, 8]));
//! let model = b.build();
//! assert_eq!(model.graph.unwrap().node.len(), 2);
//! ```
//!
//! Names: [`GraphBuilder::fresh`] returns a name no other tensor or node of the
//! graph has, so builders can be started from an existing model
//! ([`GraphBuilder::from_model`]) and extended safely.

use super::pb::{self, AttributeProto, GraphProto, ModelProto, NodeProto, TensorProto};
use super::{FLOAT, tensor_f32, tensor_i64, value_info};
use std::collections::HashSet;

/// Builds an ONNX graph. See the module docs for an example.
#[derive(Debug, Clone)]
pub struct GraphBuilder {
    /// Nodes, in insertion (topological) order.
    pub nodes: Vec<NodeProto>,
    /// Initializers (constants).
    pub initializers: Vec<TensorProto>,
    /// Graph inputs.
    pub inputs: Vec<pb::ValueInfoProto>,
    /// Graph outputs.
    pub outputs: Vec<pb::ValueInfoProto>,
    /// Operator set version of the default domain.
    pub opset: i64,
    names: HashSet<String>,
    counter: usize,
    base: ModelProto,
}

impl GraphBuilder {
    /// An empty graph for this default-domain opset version (13 is a good choice).
    pub fn new(opset: i64) -> Self {
        let base = ModelProto {
            ir_version: 8,
            producer_name: "advguard".into(),
            opset_import: vec![pb::OperatorSetIdProto {
                domain: String::new(),
                version: opset,
            }],
            ..Default::default()
        };
        GraphBuilder {
            nodes: vec![],
            initializers: vec![],
            inputs: vec![],
            outputs: vec![],
            opset,
            names: HashSet::new(),
            counter: 0,
            base,
        }
    }

    /// Starts from an existing model: its nodes, initializers, inputs, outputs and
    /// metadata are kept, and all its names are reserved. `value_info` is dropped.
    pub fn from_model(model: &ModelProto) -> Self {
        let mut base = model.clone();
        let g = base.graph.take().unwrap_or_default();
        let opset = super::opset_version(model);
        let mut b = GraphBuilder {
            nodes: g.node,
            initializers: g.initializer,
            inputs: g.input,
            outputs: g.output,
            opset,
            names: HashSet::new(),
            counter: 0,
            base,
        };
        let mut names = HashSet::new();
        for n in &b.nodes {
            names.insert(n.name.clone());
            names.extend(n.input.iter().cloned());
            names.extend(n.output.iter().cloned());
        }
        names.extend(b.initializers.iter().map(|t| t.name.clone()));
        names.extend(b.inputs.iter().map(|t| t.name.clone()));
        names.extend(b.outputs.iter().map(|t| t.name.clone()));
        b.names = names;
        b.base.graph = Some(GraphProto {
            name: g.name,
            doc_string: g.doc_string,
            ..Default::default()
        });
        b
    }

    /// Reserves a name exactly as given; panics if it is taken.
    pub fn reserve(&mut self, name: &str) -> String {
        assert!(
            self.names.insert(name.to_string()),
            "name {name:?} is already used in the graph"
        );
        name.to_string()
    }

    /// Whether a tensor or node of the graph already has this name.
    pub fn is_used(&self, name: &str) -> bool {
        self.names.contains(name)
    }

    /// A fresh, unused name starting with `prefix`.
    pub fn fresh(&mut self, prefix: &str) -> String {
        if !self.names.contains(prefix) {
            self.names.insert(prefix.to_string());
            return prefix.to_string();
        }
        loop {
            self.counter += 1;
            let n = format!("{prefix}_{}", self.counter);
            if self.names.insert(n.clone()) {
                return n;
            }
        }
    }

    /// Adds a float32 graph input with static dims; returns its name (exactly `name`).
    pub fn input(&mut self, name: &str, dims: &[usize]) -> String {
        let n = self.reserve(name);
        self.inputs.push(value_info(&n, FLOAT, Some(dims)));
        n
    }

    /// Marks a tensor as a float32 graph output (dims optional).
    pub fn output(&mut self, name: &str, dims: Option<&[usize]>) {
        self.outputs.push(value_info(name, FLOAT, dims));
    }

    /// Adds a float32 initializer with a fresh name based on `prefix`; returns its name.
    pub fn init_f32(&mut self, prefix: &str, dims: &[usize], data: Vec<f32>) -> String {
        let n = self.fresh(prefix);
        self.initializers.push(tensor_f32(&n, dims, data));
        n
    }

    /// Adds an int64 initializer with a fresh name based on `prefix`; returns its name.
    pub fn init_i64(&mut self, prefix: &str, dims: &[usize], data: Vec<i64>) -> String {
        let n = self.fresh(prefix);
        self.initializers.push(tensor_i64(&n, dims, data));
        n
    }

    /// A float32 scalar initializer (rank 0).
    pub fn scalar_f32(&mut self, prefix: &str, v: f32) -> String {
        self.init_f32(prefix, &[], vec![v])
    }

    /// Adds a node with one output; returns the output's (fresh) name.
    /// An empty string in `inputs` is an omitted optional input.
    pub fn node(&mut self, op: &str, inputs: &[&str], attrs: Vec<AttributeProto>) -> String {
        self.node_n(op, inputs, 1, attrs).pop().unwrap()
    }

    /// Adds a node with `n_out` outputs; returns their (fresh) names.
    pub fn node_n(
        &mut self,
        op: &str,
        inputs: &[&str],
        n_out: usize,
        attrs: Vec<AttributeProto>,
    ) -> Vec<String> {
        let name = self.fresh(op);
        let outputs: Vec<String> = (0..n_out)
            .map(|i| self.fresh(&format!("{name}_out{i}")))
            .collect();
        self.push_node(op, &name, inputs, &outputs, attrs);
        outputs
    }

    /// Adds a node with explicit output names (reserved if not already used); returns the node name.
    pub fn node_named(
        &mut self,
        op: &str,
        inputs: &[&str],
        outputs: &[&str],
        attrs: Vec<AttributeProto>,
    ) -> String {
        let name = self.fresh(op);
        for o in outputs {
            self.names.insert(o.to_string());
        }
        let outs: Vec<String> = outputs.iter().map(|s| s.to_string()).collect();
        self.push_node(op, &name, inputs, &outs, attrs);
        name
    }

    fn push_node(
        &mut self,
        op: &str,
        name: &str,
        inputs: &[&str],
        outputs: &[String],
        attrs: Vec<AttributeProto>,
    ) {
        self.nodes.push(NodeProto {
            name: name.to_string(),
            op_type: op.to_string(),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: outputs.to_vec(),
            attribute: attrs,
            ..Default::default()
        });
    }

    /// Finishes the model.
    pub fn build(self) -> ModelProto {
        let mut m = self.base;
        let mut g = m.graph.take().unwrap_or_default();
        if g.name.is_empty() {
            g.name = "advguard".into();
        }
        g.node = self.nodes;
        g.initializer = self.initializers;
        g.input = self.inputs;
        g.output = self.outputs;
        m.graph = Some(g);
        if let Some(o) = m
            .opset_import
            .iter_mut()
            .find(|o| o.domain.is_empty() || o.domain == "ai.onnx")
        {
            o.version = self.opset;
        } else {
            m.opset_import.push(pb::OperatorSetIdProto {
                domain: String::new(),
                version: self.opset,
            });
        }
        m
    }
}
