//! `posbridge crypto`: placeholder until its issue lands.

use clap::Subcommand;

/// `posbridge crypto` sub-commands.
#[derive(Debug, Subcommand)]
pub enum CryptoCommand {
    /// Placeholder.
    Placeholder,
}

/// Runs a `posbridge crypto` command.
pub fn run(_command: CryptoCommand) -> anyhow::Result<()> {
    anyhow::bail!("not available yet")
}
