//! `advguard eval` (skeleton: filled in by its owner).

/// Arguments of `advguard eval`.
#[derive(clap::Args)]
pub struct Args {}

/// Runs `advguard eval`.
pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("advguard eval is not built yet")
}
