//! `advguard score` (skeleton: filled in by its owner).

/// Arguments of `advguard score`.
#[derive(clap::Args)]
pub struct Args {}

/// Runs `advguard score`.
pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("advguard score is not built yet")
}
