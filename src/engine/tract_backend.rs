//! tract backend: pure-Rust CPU inference, the default engine (no system libraries).

use super::{Engine, EngineError, GuardOutput, LOGITS, RESPONSE, SEED};
use crate::onnx::ModelProto;
use ndarray::{Array3, ArrayView2, ArrayView4, Ix4};
use tract_onnx::prelude::*;

const NAME: &str = "tract";

/// A guard graph (or a plain classifier) optimised and planned by tract.
pub struct TractEngine {
    plan: std::sync::Arc<TypedRunnableModel>,
    shape: [usize; 4],
    has_seed: bool,
    has_response: bool,
    /// Extra outputs by name and their index among the plan's outputs.
    extras: Vec<(String, usize)>,
}

fn err(e: impl std::fmt::Display) -> EngineError {
    EngineError::Backend {
        backend: NAME,
        msg: format!("{e:#}"),
    }
}

impl TractEngine {
    /// Plans `model` with the image input `input` pinned to `shape` (symbolic shapes are
    /// several times slower in tract). Outputs `logits` and, when present, `response`;
    /// a graph without `logits` (a plain classifier) uses its first output as logits.
    pub fn new(model: &ModelProto, input: &str, shape: [usize; 4]) -> Result<Self, EngineError> {
        let graph = model
            .graph
            .as_ref()
            .ok_or_else(|| err("model has no graph"))?;
        let outputs: Vec<&str> = graph.output.iter().map(|o| o.name.as_str()).collect();
        let has_response = outputs.contains(&RESPONSE);
        let init: std::collections::HashSet<&str> =
            graph.initializer.iter().map(|t| t.name.as_str()).collect();
        let has_seed = graph
            .input
            .iter()
            .any(|i| i.name == SEED && !init.contains(SEED));
        let logits = if outputs.contains(&LOGITS) {
            LOGITS.to_string()
        } else {
            outputs
                .first()
                .ok_or_else(|| err("model has no outputs"))?
                .to_string()
        };
        let mut out_names = vec![logits];
        if has_response {
            out_names.push(RESPONSE.into());
        }
        // A plain model's logits output is also an extra: share its plan output.
        let mut extras = Vec::new();
        for name in super::extra_outputs(graph) {
            let k = match out_names.iter().position(|n| *n == name) {
                Some(k) => k,
                None => {
                    out_names.push(name.clone());
                    out_names.len() - 1
                }
            };
            extras.push((name, k));
        }
        let mut in_names = vec![input.to_string()];
        if has_seed {
            in_names.push(SEED.into());
        }
        // tract 0.23 panics on some malformed graphs instead of erring (found by fuzzing), so
        // planning is contained: a bad model is an error, never a crash.
        let plan = crate::contain::contain(|| -> Result<_, EngineError> {
            let mut m = tract_onnx::onnx()
                .model_for_proto_model(model)
                .map_err(err)?;
            m = m
                .with_input_names(&in_names)
                .map_err(err)?
                .with_outputs_by_name(&out_names)
                .map_err(err)?;
            m = m.with_input_fact(0, f32::fact(shape).into()).map_err(err)?;
            if has_seed {
                // The seed has the logits' shape; let inference find it from the graph.
                let fact = m.input_fact(1).map_err(err)?.clone();
                m = m.with_input_fact(1, fact).map_err(err)?;
            }
            let plan = m
                .into_optimized()
                .map_err(err)?
                .into_runnable()
                .map_err(err)?;
            Ok(plan)
        })
        .map_err(|panic| err(format!("tract failed planning the model: {panic}")))??;
        Ok(TractEngine {
            plan,
            shape,
            has_seed,
            has_response,
            extras,
        })
    }
}

impl Engine for TractEngine {
    fn backend(&self) -> &str {
        NAME
    }

    fn input_shape(&self) -> [usize; 4] {
        self.shape
    }

    fn run(
        &mut self,
        input: ArrayView4<f32>,
        seed: Option<ArrayView2<f32>>,
    ) -> Result<GuardOutput, EngineError> {
        if input.shape() != self.shape {
            return Err(EngineError::Shape {
                got: input.shape().to_vec(),
                want: self.shape.to_vec(),
            });
        }
        let mut inputs: TVec<TValue> = tvec!(Tensor::from(input.to_owned()).into_tvalue());
        match (self.has_seed, seed) {
            (true, Some(s)) => inputs.push(Tensor::from(s.to_owned()).into_tvalue()),
            (true, None) => return Err(err("this guard graph takes a seed input; none was given")),
            (false, Some(_)) => {
                return Err(err(
                    "a seed was given, but the graph was not compiled with --seed input",
                ));
            }
            (false, None) => {}
        }
        let out = self.plan.run(inputs).map_err(err)?;
        let logits: Vec<f32> = out[0]
            .to_plain_array_view::<f32>()
            .map_err(err)?
            .iter()
            .copied()
            .collect();
        let response = if self.has_response {
            let r = out[1].to_plain_array_view::<f32>().map_err(err)?;
            let r = r.into_dimensionality::<Ix4>().map_err(err)?;
            r.index_axis(ndarray::Axis(0), 0).to_owned()
        } else {
            Array3::zeros((0, 0, 0))
        };
        let mut outputs = Vec::with_capacity(self.extras.len());
        // An output that is not f32 after all is left out; whoever needs it names it missing.
        for (name, k) in &self.extras {
            if let Ok(a) = out[*k].to_plain_array_view::<f32>() {
                outputs.push((name.clone(), a.to_owned()));
            }
        }
        Ok(GuardOutput {
            logits,
            response,
            outputs,
        })
    }
}
