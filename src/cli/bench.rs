//! `advguard bench` (skeleton: filled in by its owner).

/// Arguments of `advguard bench`.
#[derive(clap::Args)]
pub struct Args {}

/// Runs `advguard bench`.
pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("advguard bench is not built yet")
}
