//! The gateway's command line: one sub-module per command family. Each family exposes a clap
//! `Subcommand` (or `Args`) type and a `run` function; this file only dispatches.
//!
//! There is no binary here: the `posbridge` command is built by the `posbridge-sim` crate, which
//! flattens [`Command`] into its own and adds the commands that need simulators (`demo`, `sim`,
//! `bench`, `admin seed-demo`). This library never imports them.

mod admin;
mod crypto;
mod gateway;
mod hsm;
mod iso8583;
mod qr;

pub use admin::ConfigArg;

use clap::Subcommand;

/// The gateway's command families (what an operator of a production gateway needs).
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Decode and encode ISO 8583 messages with a dialect spec (the message inspector).
    #[command(subcommand)]
    Iso8583(iso8583::Iso8583Command),
    /// Operator's calculator: check values, PIN blocks, MACs, key components.
    #[command(subcommand)]
    Crypto(crypto::CryptoCommand),
    /// Inspect and manage the configured security module.
    #[command(subcommand)]
    Hsm(hsm::HsmCommand),
    /// Decode and render EMVCo merchant-presented QR payloads.
    #[command(subcommand)]
    Qr(qr::QrCommand),
    /// Run the gateway (terminal listener, wallet API, metrics).
    Serve(gateway::ServeArgs),
    /// Register merchants, terminals, accounts, wallet apps; issue static codes.
    #[command(subcommand)]
    Admin(admin::AdminCommand),
    /// Check a configuration file.
    #[command(subcommand)]
    Config(gateway::ConfigCommand),
}

/// Runs one parsed gateway command.
pub fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Iso8583(command) => iso8583::run(command),
        Command::Crypto(command) => crypto::run(command),
        Command::Hsm(command) => hsm::run(command),
        Command::Qr(command) => qr::run(command),
        Command::Serve(args) => gateway::serve(args),
        Command::Admin(command) => admin::run(command),
        Command::Config(command) => gateway::config_command(command),
    }
}
