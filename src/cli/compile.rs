//! `advguard compile` (skeleton: filled in by its owner).

/// Arguments of `advguard compile`.
#[derive(clap::Args)]
pub struct Args {}

/// Runs `advguard compile`.
pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("advguard compile is not built yet")
}
