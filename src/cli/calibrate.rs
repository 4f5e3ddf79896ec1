//! `advguard calibrate` (skeleton: filled in by its owner).

/// Arguments of `advguard calibrate`.
#[derive(clap::Args)]
pub struct Args {}

/// Runs `advguard calibrate`.
pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("advguard calibrate is not built yet")
}
