//! The command line: one sub-module per command family. Each family exposes a clap `Subcommand`
//! (or `Args`) type and a `run` function; this file only dispatches.

mod admin;
mod bench;
mod crypto;
mod gateway;
mod hsm;
mod iso8583;
mod qr;
mod sim;
mod sim_host;

use clap::{Parser, Subcommand};

/// posbridge: ISO 8583 gateway for cardless QR payments on existing POS networks.
#[derive(Debug, Parser)]
#[command(name = "posbridge", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The command families.
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
    /// The whole QR payment on this machine with nothing installed: gateway, terminal, phone.
    Demo(gateway::DemoArgs),
    /// Drive a running gateway by hand: a simulated terminal or wallet app.
    #[command(subcommand)]
    Sim(sim::SimCommand),
    /// Register merchants, terminals, accounts, wallet apps; issue static codes.
    #[command(subcommand)]
    Admin(admin::AdminCommand),
    /// Check a configuration file.
    #[command(subcommand)]
    Config(gateway::ConfigCommand),
    /// Load generator: simulated terminals and phones doing complete QR sales; throughput,
    /// errors and latency percentiles (optionally the database's ceiling and idle connections).
    Bench(bench::BenchArgs),
}

/// Runs one parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Iso8583(command) => iso8583::run(command),
        Command::Crypto(command) => crypto::run(command),
        Command::Hsm(command) => hsm::run(command),
        Command::Qr(command) => qr::run(command),
        Command::Serve(args) => gateway::serve(args),
        Command::Demo(args) => gateway::demo(args),
        Command::Sim(command) => sim::run(command),
        Command::Admin(command) => admin::run(command),
        Command::Config(command) => gateway::config_command(command),
        Command::Bench(args) => bench::run(args),
    }
}
