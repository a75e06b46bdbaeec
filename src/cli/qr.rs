//! `posbridge qr`: placeholder until its issue lands.

use clap::Subcommand;

/// `posbridge qr` sub-commands.
#[derive(Debug, Subcommand)]
pub enum QrCommand {
    /// Placeholder.
    Placeholder,
}

/// Runs a `posbridge qr` command.
pub fn run(_command: QrCommand) -> anyhow::Result<()> {
    anyhow::bail!("not available yet")
}
