//! `advguard alert` (skeleton: filled in by its owner).

/// Arguments of `advguard alert`.
#[derive(clap::Args)]
pub struct Args {}

/// Runs `advguard alert`.
pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("advguard alert is not built yet")
}
