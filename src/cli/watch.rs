//! `advguard watch` (skeleton: filled in by its owner).

/// Arguments of `advguard watch`.
#[derive(clap::Args)]
pub struct Args {}

/// Runs `advguard watch`.
pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("advguard watch is not built yet")
}
