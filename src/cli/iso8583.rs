//! `posbridge iso8583`: placeholder until its issue lands.

use clap::Subcommand;

/// `posbridge iso8583` sub-commands.
#[derive(Debug, Subcommand)]
pub enum Iso8583Command {
    /// Placeholder.
    Placeholder,
}

/// Runs a `posbridge iso8583` command.
pub fn run(_command: Iso8583Command) -> anyhow::Result<()> {
    anyhow::bail!("not available yet")
}
