//! The guard-graph compiler: classifier ONNX → ONNX with forward + (guided) backward.
//!
//! The backward pass is written as ordinary forward ONNX ops (see `docs/COMPILER.md`
//! and DESIGN.md's adjoint table), so any backend (tract, ONNX Runtime, TensorRT)
//! runs a whole guard frame in one call. Outputs: the model's own outputs,
//! [`LOGITS`](crate::engine::LOGITS) and [`RESPONSE`](crate::engine::RESPONSE).

mod adjoint;
mod ctx;
mod ops;
mod prepare;

use crate::onnx::{OnnxError, pb::ModelProto};
use std::fmt;
use std::str::FromStr;

/// How ReLU-like nodes pass gradients back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Guided backpropagation (Springenberg et al.): at each ReLU, g·(x>0)·(g>0).
    #[default]
    Guided,
    /// The true gradient: g·(x>0).
    Plain,
}

/// Where the backward pass starts, and with which gradient.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Seed {
    /// The last spatial Conv's output (after its Relu/Clip, if that is its only
    /// consumer), seeded with its own values: the gradient of ½‖a‖². The paper's choice.
    #[default]
    LastConv,
    /// A named tensor, seeded with its own values (gradient of ½‖t‖²).
    Tensor(String),
    /// Some channels (axis 1) of a named tensor, seeded with their own values
    /// (gradient of ½‖t[:, c]‖² summed over them), e.g. the person channel of a heat map;
    /// empty: every channel.
    Channel(String, Vec<usize>),
    /// The detected peaks of some channels of an N×C×H×W heat map: the gradient of their sum.
    ///
    /// A peak is a cell equal to the maximum of its `window`×`window` neighbourhood (max-pool
    /// NMS, as a detector decodes) and at least `threshold`. Where no cell of the channels
    /// reaches it, the strongest cell is the peak, so the response is never empty. The graph
    /// also outputs [`crate::engine::SEED_CELLS`]: 1 at the seeded cells, N×(channels)×H×W.
    Peaks {
        /// The heat-map tensor.
        tensor: String,
        /// Channels whose peaks are summed; empty: every channel.
        channels: Vec<usize>,
        /// Side of the NMS window; odd.
        window: usize,
        /// Lowest score a peak keeps.
        threshold: f32,
    },
    /// One-hot at the arg-max of the logits, computed in the graph.
    Top1,
    /// Constant one-hot at this class.
    Class(usize),
    /// An extra graph input `seed` (shape of `logits`); the backward pass starts at `logits`.
    Input,
}

/// The engine a guard graph is written for: each gets the exact form of the
/// ReLU masks that it runs fastest (both are exact and TensorRT-parsable).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Target {
    /// tract: masks as `Sign(y)` (its comparisons and `Ceil` are slow).
    #[default]
    Tract,
    /// ONNX Runtime (CPU, CUDA, TensorRT provider): masks as `Cast(Greater(y, lo))`
    /// (its `Sign` kernel is not vectorised).
    OnnxRuntime,
}

/// Options of [`compile`].
#[derive(Debug, Clone, Default)]
pub struct CompileOptions {
    /// Guided or plain backward.
    pub mode: Mode,
    /// Where the backward pass starts.
    pub seed: Seed,
    /// N×C×H×W input shape (N is pinned to 1); `None` takes the model's declared shape.
    pub input_shape: Option<[usize; 4]>,
    /// The engine the graph is written for.
    pub target: Target,
}

/// Ops whose adjoint the compiler can write (only ops on the input → seed path
/// need one), sorted: the keys of the op table in `ops/`.
pub fn supported_ops() -> Vec<&'static str> {
    ops::supported()
}

/// Every op a guard graph of a supported model may contain; all are in TensorRT's
/// ONNX parser op set (no MaxPool `Indices`, MaxUnpool, Scatter*, ArgMax, OneHot,
/// com.microsoft ops).
pub const TENSORRT_SAFE_OPS: &[&str] = &[
    "Add",
    "And",
    "AveragePool",
    "BatchNormalization",
    "Cast",
    "Clip",
    "Concat",
    "Constant",
    "Conv",
    "ConvTranspose",
    "Div",
    "Equal",
    "Expand",
    "Flatten",
    "Gather",
    "Gemm",
    "GlobalAveragePool",
    "Greater",
    "HardSigmoid",
    "HardSwish",
    "Identity",
    "LeakyRelu",
    "Less",
    "MatMul",
    "MaxPool",
    "Min",
    "Mul",
    "Neg",
    "Not",
    "Pad",
    "ReduceMax",
    "ReduceSum",
    "Relu",
    "Reshape",
    "Resize",
    "Sigmoid",
    "Sign",
    "Slice",
    "Softmax",
    "SpaceToDepth",
    "Split",
    "Squeeze",
    "Sub",
    "Sum",
    "Tanh",
    "Transpose",
    "Unsqueeze",
];

/// Errors of [`compile`].
#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    /// An op on the input → seed path has no adjoint.
    #[error("unsupported op {op:?} at node {node:?} (supported: {})", supported_ops().join(", "))]
    UnsupportedOp { op: String, node: String },
    /// A supported op with attributes or inputs the compiler cannot differentiate.
    #[error("node {node:?} ({op}): {msg}")]
    Unsupported {
        op: String,
        node: String,
        msg: String,
    },
    /// The model's structure is not usable (no graph, no input, several inputs, ...).
    #[error("invalid model: {0}")]
    Invalid(String),
    /// Static shapes could not be inferred.
    #[error("shape inference: {0}")]
    Shape(String),
    /// The seed could not be placed.
    #[error("seed: {0}")]
    Seed(String),
    /// Reading the model IR failed.
    #[error(transparent)]
    Onnx(#[from] OnnxError),
}

impl FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "guided" => Ok(Mode::Guided),
            "plain" => Ok(Mode::Plain),
            o => Err(format!("unknown mode {o:?} (expected guided or plain)")),
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Guided => "guided",
            Mode::Plain => "plain",
        })
    }
}

impl FromStr for Target {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "tract" => Ok(Target::Tract),
            "ort" | "onnxruntime" | "tensorrt" => Ok(Target::OnnxRuntime),
            o => Err(format!("unknown target {o:?} (expected tract or ort)")),
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Target::Tract => "tract",
            Target::OnnxRuntime => "ort",
        })
    }
}

impl FromStr for Seed {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        match t {
            "last-conv" | "lastconv" => return Ok(Seed::LastConv),
            "top1" => return Ok(Seed::Top1),
            "input" => return Ok(Seed::Input),
            _ => {}
        }
        if let Some(n) = t.strip_prefix("class:") {
            return n
                .trim()
                .parse::<usize>()
                .map(Seed::Class)
                .map_err(|_| format!("bad class index in seed {t:?} (expected class:N)"));
        }
        if let Some(n) = t.strip_prefix("peaks:") {
            return parse_peaks(n).map_err(|m| {
                format!(
                    "{m} in seed {t:?} (expected peaks:NAME[C,...], then @THRESHOLD, then /WINDOW)"
                )
            });
        }
        if let Some(n) = t.strip_prefix("tensor:") {
            if n.is_empty() {
                return Err("empty tensor name in seed (expected tensor:NAME)".into());
            }
            if let Some(body) = n.strip_suffix(']')
                && let Some((name, c)) = body.rsplit_once('[')
            {
                let c = channel_list(c).map_err(|_| {
                    format!("bad channel in seed {t:?} (expected tensor:NAME[C,...])")
                })?;
                if name.is_empty() {
                    return Err("empty tensor name in seed (expected tensor:NAME[C])".into());
                }
                return Ok(Seed::Channel(name.to_string(), c));
            }
            return Ok(Seed::Tensor(n.to_string()));
        }
        Err(format!(
            "unknown seed {t:?} (expected last-conv, top1, class:N, tensor:NAME, tensor:NAME[C], peaks:NAME[C] or input)"
        ))
    }
}

/// `0` or `0, 2`: channel indices; empty: every channel.
fn channel_list(s: &str) -> Result<Vec<usize>, String> {
    if s.trim().is_empty() {
        return Ok(vec![]);
    }
    let v = s
        .split(',')
        .map(|c| {
            c.trim()
                .parse::<usize>()
                .map_err(|_| format!("bad channel {c:?}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(v)
}

/// The part after `peaks:`: `NAME[C,...]`, then optionally `@THRESHOLD` and `/WINDOW`. The
/// suffix is read after the last `]`, so tensor names may hold `/` and `@`.
fn parse_peaks(s: &str) -> Result<Seed, String> {
    let close = s.rfind(']').ok_or("no [channels]")?;
    let open = s[..close].rfind('[').ok_or("no [channels]")?;
    let name = &s[..open];
    if name.is_empty() {
        return Err("empty tensor name".into());
    }
    let channels = channel_list(&s[open + 1..close])?;
    let mut rest = &s[close + 1..];
    let mut window = 3;
    if let Some((a, w)) = rest.rsplit_once('/') {
        window = w
            .trim()
            .parse::<usize>()
            .ok()
            .filter(|w| w % 2 == 1)
            .ok_or_else(|| format!("window {w:?} is not an odd whole number"))?;
        rest = a;
    }
    let mut threshold = 0.3;
    if !rest.is_empty() {
        let v = rest
            .strip_prefix('@')
            .ok_or_else(|| format!("unexpected {rest:?}"))?;
        threshold = v
            .trim()
            .parse::<f32>()
            .ok()
            .filter(|t| t.is_finite())
            .ok_or_else(|| format!("threshold {v:?} is not a number"))?;
    }
    Ok(Seed::Peaks {
        tensor: name.to_string(),
        channels,
        window,
        threshold,
    })
}

fn join(c: &[usize]) -> String {
    c.iter()
        .map(|c| c.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

impl fmt::Display for Seed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Seed::LastConv => f.write_str("last-conv"),
            Seed::Tensor(n) => write!(f, "tensor:{n}"),
            Seed::Channel(n, c) => write!(f, "tensor:{n}[{}]", join(c)),
            Seed::Peaks {
                tensor,
                channels,
                window,
                threshold,
            } => {
                write!(f, "peaks:{tensor}[{}]@{threshold}", join(channels))?;
                if *window != 3 {
                    write!(f, "/{window}")?;
                }
                Ok(())
            }
            Seed::Top1 => f.write_str("top1"),
            Seed::Class(c) => write!(f, "class:{c}"),
            Seed::Input => f.write_str("input"),
        }
    }
}

/// Compiles a classifier into a guard graph.
///
/// The result has one image input (shape pinned to N=1 and the given or declared
/// size; plus `seed` for [`Seed::Input`]) and the outputs: the model's own outputs,
/// `logits` (the pre-Softmax scores, 1×classes) and `response` (the gradient at
/// the input, N×C×H×W). Only nodes on a path from the input to the seed get adjoints.
pub fn compile(model: &ModelProto, opts: &CompileOptions) -> Result<ModelProto, CompileError> {
    let prepared = prepare::prepare(model, opts)?;
    adjoint::build(prepared, opts)
}

/// Name and declared dims (`None` = symbolic) of the model's image input.
pub fn image_input(model: &ModelProto) -> Result<(String, Vec<Option<usize>>), CompileError> {
    let inputs = crate::onnx::real_inputs(model);
    match inputs.as_slice() {
        [one] => Ok((
            one.name.clone(),
            crate::onnx::declared_dims(one).unwrap_or_default(),
        )),
        [] => Err(CompileError::Invalid("the graph has no input".into())),
        many => Err(CompileError::Invalid(format!(
            "the graph has {} inputs ({}); a classifier with one image input is expected",
            many.len(),
            many.iter()
                .map(|i| i.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}
