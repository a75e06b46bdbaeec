//! The `posbridge` command line: the gateway's commands ([`posbridge::cli::Command`], flattened)
//! plus the ones that need this crate: `demo`, `sim`, `bench`, and `admin seed-demo`. One
//! sub-module per command family; this file only parses and dispatches.
//!
//! `admin` belongs to the gateway, but `seed-demo` registers the demo's identities, which the
//! library must not know. So [`command`] grafts `seed-demo` onto the gateway's `admin` (it shows
//! in `posbridge admin --help` like its siblings) and [`try_parse_from`] takes it out before
//! handing everything else to the derived parser.

mod bench;
mod demo;
mod seed_demo;
mod sim;
mod sim_host;
mod sim_payshield;

pub use seed_demo::SeedDemoArgs;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use std::ffi::OsString;

/// posbridge: ISO 8583 gateway for cardless QR payments on existing POS networks.
#[derive(Debug, Parser)]
#[command(
    name = "posbridge",
    version,
    about = "ISO 8583 gateway that lets existing POS networks take cardless QR payments",
    long_about = None
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The command families: the gateway's, then the simulators'.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// The production gateway's commands (serve, admin, hsm, iso8583, qr, crypto, config).
    #[command(flatten)]
    Gateway(posbridge::cli::Command),
    /// The whole QR payment on this machine with nothing installed: gateway, terminal, phone.
    Demo(demo::DemoArgs),
    /// Drive a running gateway by hand: a simulated terminal or wallet app.
    #[command(subcommand)]
    Sim(sim::SimCommand),
    /// Load generator: simulated terminals and phones doing complete QR sales; throughput,
    /// errors and latency percentiles (optionally the database's ceiling and idle connections).
    Bench(bench::BenchArgs),
    /// `posbridge admin seed-demo`: not a top-level command; [`command`] puts it under `admin`
    /// and [`try_parse_from`] produces this variant for it.
    #[command(skip)]
    SeedDemo(SeedDemoArgs),
}

/// The whole `posbridge` command: [`Cli`] with `seed-demo` added under `admin`.
pub fn command() -> clap::Command {
    Cli::command().mut_subcommand("admin", |admin| {
        // `about` after `augment_args`, which would otherwise put the struct's doc there.
        admin.subcommand(
            SeedDemoArgs::augment_args(clap::Command::new(seed_demo::NAME)).about(seed_demo::ABOUT),
        )
    })
}

/// Parses the process's arguments; prints help, version or the error and exits as clap does.
pub fn parse() -> Command {
    try_parse_from(std::env::args_os()).unwrap_or_else(|error| error.exit())
}

/// Parses a command line (the first item is the program name).
pub fn try_parse_from<I, T>(args: I) -> Result<Command, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let mut command = command();
    let matches = command.try_get_matches_from_mut(args)?;
    if let Some(("admin", admin)) = matches.subcommand()
        && let Some((seed_demo::NAME, seed)) = admin.subcommand()
    {
        return SeedDemoArgs::from_arg_matches(seed)
            .map(Command::SeedDemo)
            .map_err(|error| error.format(&mut command));
    }
    Cli::from_arg_matches(&matches)
        .map(|cli| cli.command)
        .map_err(|error| error.format(&mut command))
}

/// Runs one parsed command line.
pub fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Gateway(command) => posbridge::cli::run(command),
        Command::Demo(args) => demo::run(args),
        Command::Sim(command) => sim::run(command),
        Command::Bench(args) => bench::run(args),
        Command::SeedDemo(args) => seed_demo::run(args),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]

    use super::*;

    fn parse(line: &str) -> Command {
        try_parse_from(line.split_whitespace()).unwrap()
    }

    #[test]
    fn the_command_is_well_formed() {
        command().debug_assert();
    }

    #[test]
    fn seed_demo_is_taken_out_of_admin_and_the_rest_of_admin_is_the_gateways() {
        match parse("posbridge admin seed-demo --config x.toml") {
            Command::SeedDemo(args) => {
                assert_eq!(args.config.config, Some("x.toml".into()));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            parse("posbridge admin void --rrn 000000000001"),
            Command::Gateway(posbridge::cli::Command::Admin(_))
        ));
    }

    #[test]
    fn every_command_is_listed_in_the_help() {
        let help = command().render_help().to_string();
        for name in [
            "iso8583", "crypto", "hsm", "qr", "serve", "admin", "config", "demo", "sim", "bench",
        ] {
            assert!(
                help.contains(&format!("\n  {name} ")),
                "{name} missing:\n{help}"
            );
        }
        let mut command = command();
        let admin = command.find_subcommand_mut("admin").unwrap();
        let help = admin.render_help().to_string();
        assert!(
            help.lines()
                .any(|line| line.trim_start().starts_with("seed-demo")
                    && line.contains("Register the demo merchant")),
            "{help}"
        );
    }
}
