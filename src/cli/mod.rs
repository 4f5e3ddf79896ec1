//! One module per subcommand; each has `Args` (clap) and `run`.

pub mod alert;
pub mod attack;
pub mod bench;
pub mod calibrate;
pub mod compile;
pub mod eval;
pub mod explain;
pub mod score;
pub mod watch;

/// Logs go to stderr so stdout stays machine-readable (events, tables).
pub fn init_tracing(filter: Option<&str>) {
    use tracing_subscriber::EnvFilter;
    let filter = match filter {
        Some(f) => EnvFilter::new(f),
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
