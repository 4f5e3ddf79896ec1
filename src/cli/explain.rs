//! `advguard explain` (skeleton: filled in by its owner).

/// Arguments of `advguard explain`.
#[derive(clap::Args)]
pub struct Args {}

/// Runs `advguard explain`.
pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("advguard explain is not built yet")
}
