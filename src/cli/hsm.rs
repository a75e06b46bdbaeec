//! `posbridge hsm`: placeholder until its issue lands.

use clap::Subcommand;

/// `posbridge hsm` sub-commands.
#[derive(Debug, Subcommand)]
pub enum HsmCommand {
    /// Placeholder.
    Placeholder,
}

/// Runs a `posbridge hsm` command.
pub fn run(_command: HsmCommand) -> anyhow::Result<()> {
    anyhow::bail!("not available yet")
}
