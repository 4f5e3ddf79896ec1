//! `advguard attack` (skeleton: filled in by its owner).

/// Arguments of `advguard attack`.
#[derive(clap::Args)]
pub struct Args {}

/// Runs `advguard attack`.
pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("advguard attack is not built yet")
}
