//! One module per subcommand; each has `Args` (clap) and `run`.

pub mod alert;
pub mod attack;
pub mod bench;
pub mod calibrate;
pub mod compile;
pub mod eval;
pub mod eval_hide;
pub mod eval_patch;
pub mod eval_video;
pub mod explain;
pub mod fetch_clip;
pub mod fit;
pub mod score;
pub mod soak;
pub mod watch;

/// Logs go to stderr so stdout stays machine-readable (events, tables). tract warns about
/// old opsets on every load (SqueezeNet is opset 7) although it runs them: keep that quiet.
pub fn init_tracing(filter: Option<&str>) {
    use tracing_subscriber::EnvFilter;
    let filter = match filter {
        Some(f) => EnvFilter::new(f),
        None => EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| EnvFilter::new("info,tract_onnx=error")),
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

use advguard::engine::compile::{CompileOptions, Mode, Seed};
use advguard::engine::manifest::{DEFAULT_MODEL, Manifest};
use advguard::engine::{BackendKind, Guard, GuardOptions};
use advguard::response::{GrayMode, ResponseConfig};
use anyhow::Context;
use std::path::PathBuf;

/// Model, backend and response options shared by the image commands.
#[derive(clap::Args, Clone, Debug)]
pub struct ModelArgs {
    /// Built-in model name (squeezenet1.1, efficientnet_lite0, mobilenet_v2) or a manifest TOML.
    #[arg(long = "model-name", default_value = DEFAULT_MODEL)]
    pub model_name: String,
    /// Model file; otherwise $ADVGUARD_MODELS, the cache dir, then the manifest's download.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Backend: auto (ONNX Runtime when its library is found, else tract), tract (pure Rust
    /// CPU), ort, ort-cuda, tensorrt. The choice is logged.
    #[arg(long, default_value = "auto")]
    pub backend: BackendKind,
    /// Backward mode: guided (the paper) or plain (the true gradient).
    #[arg(long, default_value = "guided", value_parser = parse_mode)]
    pub mode: Mode,
    /// Response seed: last-conv (the paper; the manifest's trace layer, a detector's `[detector] seed`), top1, class:N, tensor:NAME[C,...], peaks:NAME[C,...]@THRESHOLD/WINDOW.
    #[arg(long, default_value = "last-conv", value_parser = parse_seed)]
    pub seed: Seed,
    /// Gray-map conversion of the response: signed, signed-p99, abs, abs-p99.
    #[arg(long, default_value = "signed")]
    pub gray: GrayMode,
    /// Histogram bins for the local entropy.
    #[arg(long, default_value_t = 16)]
    pub bins: usize,
}

fn parse_mode(s: &str) -> Result<Mode, String> {
    s.parse::<Mode>().map_err(|e| e.to_string())
}

fn parse_seed(s: &str) -> Result<Seed, String> {
    s.parse::<Seed>().map_err(|e| e.to_string())
}

impl ModelArgs {
    /// Loads the manifest and opens the guard.
    pub fn open(&self) -> anyhow::Result<Guard> {
        let manifest = Manifest::load(&self.model_name)?;
        let opts = GuardOptions {
            model_path: self.model.clone(),
            backend: self.backend,
            compile: Some(CompileOptions {
                mode: self.mode,
                seed: self.seed.clone(),
                input_shape: None,
                ..Default::default()
            }),
        };
        Guard::open(&manifest, &opts).with_context(|| format!("opening model {}", manifest.name))
    }

    /// Response statistics configuration.
    pub fn response(&self) -> ResponseConfig {
        ResponseConfig {
            gray: self.gray,
            bins: self.bins,
            ..ResponseConfig::default()
        }
    }
}
