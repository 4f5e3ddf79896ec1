//! `advguard compile`: classifier ONNX → guard ONNX (forward + backward as forward ops).

use advguard::engine::compile::{CompileOptions, Mode, Seed, Target, compile, image_input};
use anyhow::Context;
use std::path::PathBuf;

/// Arguments of `advguard compile`.
#[derive(clap::Args)]
pub struct Args {
    /// Classifier ONNX (FP16 models are converted to FP32).
    pub model: PathBuf,
    /// Where to write the guard graph.
    #[arg(short, long)]
    pub output: PathBuf,
    /// Backward mode: guided (guided backprop) or plain (true gradient).
    #[arg(long, default_value = "guided")]
    pub mode: Mode,
    /// Seed: last-conv, top1, class:N, tensor:NAME, tensor:NAME[C] (one channel) or input (extra `seed` graph input).
    #[arg(long, default_value = "last-conv")]
    pub seed: Seed,
    /// Square input size H=W (default: the model's declared size).
    #[arg(long)]
    pub input_size: Option<usize>,
    /// Engine the graph is written for: tract or ort (ONNX Runtime, incl. its TensorRT provider).
    #[arg(long, default_value = "tract")]
    pub target: Target,
}

/// Runs `advguard compile`.
pub fn run(args: Args) -> anyhow::Result<()> {
    let model = advguard::onnx::load(&args.model)?;
    let input_shape = match args.input_size {
        None => None,
        Some(s) => {
            let (_, dims) =
                image_input(&model).with_context(|| format!("{}", args.model.display()))?;
            let c = dims.get(1).copied().flatten().unwrap_or(3);
            Some([1, c, s, s])
        }
    };
    let opts = CompileOptions {
        mode: args.mode,
        seed: args.seed.clone(),
        input_shape,
        target: args.target,
    };
    let guard =
        compile(&model, &opts).with_context(|| format!("compiling {}", args.model.display()))?;
    advguard::onnx::save(&guard, &args.output)?;
    let n_in = model.graph.as_ref().map_or(0, |g| g.node.len());
    let g = guard.graph.as_ref().unwrap();
    let outs: Vec<&str> = g.output.iter().map(|o| o.name.as_str()).collect();
    println!(
        "{} -> {}: {} ops in, {} nodes added, mode {}, seed {}, target {}, outputs [{}]",
        args.model.display(),
        args.output.display(),
        n_in,
        g.node.len().saturating_sub(n_in),
        opts.mode,
        opts.seed,
        opts.target,
        outs.join(", ")
    );
    Ok(())
}
