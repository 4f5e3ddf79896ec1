//! advguard: a streaming video guard that detects adversarial attacks on CNNs
//! from their feature-response maps (Amirian, Schwenker & Stadelmann, ANNPR 2018).
//!
//! Data flows one way through the stages, and no module reaches back up:
//! `source` → `engine` → `response` → `detector` → `alert`.
//! `onnx` is the model IR shared by the compiler and the backends; `attack` and
//! `eval` are offline tools on top of the engine; `viz` draws maps and plots;
//! `watch` wires the live stages together.

pub mod alert;
pub mod attack;
pub mod contain;
pub mod detector;
pub mod engine;
pub mod eval;
pub mod onnx;
pub mod response;
pub mod source;
pub mod viz;
pub mod watch;

/// Environment variable naming the folder with the shared test data (`../shared/data` by default).
pub const DATA_ENV: &str = "ADVGUARD_DATA";

/// Path of the shared data folder: `$ADVGUARD_DATA`, else `../shared/data` relative to the crate.
pub fn data_dir() -> std::path::PathBuf {
    match std::env::var_os(DATA_ENV) {
        Some(p) => p.into(),
        None => std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data"),
    }
}
