//! `posbridge bench`: arguments, the progress bar and the report's output. The load generator
//! itself is [`crate::bench`].

use crate::bench::{self, BenchOptions, Bound, Progress, Target};
use anyhow::Context;
use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use posbridge::infra::config;
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// `posbridge bench` arguments.
#[derive(Debug, Args)]
#[command(after_long_help = "\
Drives complete cardless QR sales (order request, wallet resolve, pay with PIN, result query \
held until paid) from simulated terminals and phones, and reports sales/s, errors by response \
code and latency percentiles of every step.

Against a running gateway (--terminal and --wallet) it uses the demo's identities: seed them \
with `posbridge admin seed-demo --config FILE`. With --spawn it opens a gateway in this process \
on the journal and security module of --config (or the embedded defaults) and registers one \
merchant, terminal and payer per simulated terminal itself.

With --five-roles (and --spawn) the sales go upstream: a simulated UnionPay host (`posbridge \
sim host`) starts in this process with the payers' accounts, and the gateway forwards every paid \
order to it (five-role deployment).")]
pub struct BenchArgs {
    /// Start this many `posbridge serve` processes on the --config file's journal (PostgreSQL)
    /// and spread the load over them: each terminal held on one process, its phone paying
    /// through the next.
    #[arg(long, conflicts_with_all = ["spawn", "terminal", "wallet"], requires = "config")]
    pub processes: Option<usize>,
    /// Open the gateway in this process (journal and security module from --config).
    #[arg(long, conflicts_with_all = ["terminal", "wallet", "gateway_pid"])]
    pub spawn: bool,
    /// Configuration file: the spawned gateway's, or the running gateway's (for --ceiling,
    /// which needs its journal).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// A running gateway's terminal address (ISO 8583, cups-pos).
    #[arg(long, requires = "wallet")]
    pub terminal: Option<SocketAddr>,
    /// A running gateway's wallet API URL.
    #[arg(long, requires = "terminal")]
    pub wallet: Option<String>,
    /// A running gateway's process id, to read its memory for --idle-connections.
    #[arg(long)]
    pub gateway_pid: Option<u32>,
    /// Simulated terminals, each with its own connection (and, with --spawn, its own TID,
    /// merchant and payer).
    #[arg(long, default_value_t = 4)]
    pub terminals: usize,
    /// Sales per second over all terminals; without it, as fast as they go.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Run for this long (`20s`, `500ms`, `2m`); the default when --count is not given.
    #[arg(long, value_parser = parse_duration, conflicts_with = "count")]
    pub duration: Option<Duration>,
    /// Run this many sales.
    #[arg(long)]
    pub count: Option<u64>,
    /// Amount of each sale, minor units (CNY fen).
    #[arg(long, default_value_t = 1)]
    pub amount_minor: i64,
    /// Also measure the database's own ceiling for a sale's durable writes (2 commits) and
    /// print the ratio. Meaningful with PostgreSQL.
    #[arg(long)]
    pub ceiling: bool,
    /// Hold this many idle terminal connections open during the run and report the gateway's
    /// memory per connection.
    #[arg(long, default_value_t = 0)]
    pub idle_connections: usize,
    /// Print one JSON object on standard output instead of the table (no progress bar).
    #[arg(long)]
    pub json: bool,
    /// With --spawn: route the sales through a simulated UnionPay host (five roles).
    #[arg(long, requires = "spawn")]
    pub five_roles: bool,
    /// Key file of the simulated terminals and phones (default: the demo keys); for a gateway
    /// whose wallet PIN key differs from the demo's (a TDES one on a payShield).
    #[arg(long)]
    pub device_keys: Option<PathBuf>,
}

/// Parses `20s`, `1500ms`, `2m` or a plain number of seconds.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(at) => text.split_at(at),
        None => (text, "s"),
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?}: expected a duration such as 20s, 500ms or 2m"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        _ => return Err(format!("{text:?}: unit must be ms, s or m")),
    };
    Duration::try_from_secs_f64(seconds)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| format!("{text:?}: must be a positive duration"))
}

/// Runs `posbridge bench`.
pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    let (config, _) = config::load(args.config.as_deref())?;
    posbridge::app::logging::init(&config.log);
    let target = if let Some(count) = args.processes {
        Target::Processes {
            config: Box::new(config),
            path: args.config.clone().context("--processes needs --config")?,
            count,
        }
    } else if args.spawn {
        Target::Spawn(Box::new(config))
    } else {
        let (Some(terminal), Some(wallet_url)) = (args.terminal, args.wallet.clone()) else {
            anyhow::bail!("give --spawn, or the running gateway's --terminal and --wallet");
        };
        Target::Running {
            terminal,
            wallet_url,
            gateway_pid: args.gateway_pid,
            journal: args.config.is_some().then(|| config.journal.clone()),
        }
    };
    let bound = match (args.count, args.duration) {
        (Some(count), _) => Bound::Count(count),
        (None, Some(duration)) => Bound::Duration(duration),
        (None, None) => Bound::Duration(Duration::from_secs(20)),
    };
    let options = BenchOptions {
        target,
        terminals: args.terminals,
        rate: args.rate,
        bound,
        amount_minor: args.amount_minor,
        ceiling: args.ceiling,
        idle_connections: args.idle_connections,
        five_roles: args.five_roles,
        device_keys: args.device_keys.clone(),
    };
    let show_bar = !args.json && std::io::stderr().is_terminal();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let report = runtime.block_on(async move {
        let progress = Arc::new(Progress::default());
        let bar = show_bar.then(|| progress_bar(bound));
        let ticker = bar.clone().map(|bar| {
            let progress = Arc::clone(&progress);
            tokio::spawn(async move {
                let started = std::time::Instant::now();
                loop {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    let finished = progress.finished.load(Ordering::Relaxed);
                    let failed = progress.failed.load(Ordering::Relaxed);
                    match bound {
                        Bound::Count(_) => bar.set_position(finished),
                        Bound::Duration(_) => bar.set_position(started.elapsed().as_secs()),
                    }
                    bar.set_message(format!("{finished} sales, {failed} failed"));
                }
            })
        });
        let report = bench::run(options, progress).await;
        if let Some(ticker) = ticker {
            ticker.abort();
        }
        if let Some(bar) = bar {
            bar.finish_and_clear();
        }
        report
    })?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string(&report).context("encoding the report")?
        );
    } else {
        print!("{}", report.table());
    }
    Ok(())
}

fn progress_bar(bound: Bound) -> ProgressBar {
    let (length, template) = match bound {
        Bound::Count(n) => (
            n,
            "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} {msg}",
        ),
        Bound::Duration(d) => (
            d.as_secs().max(1),
            "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} s {msg}",
        ),
    };
    let bar = ProgressBar::with_draw_target(Some(length), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style);
    }
    bar
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn durations_parse_with_units_and_refuse_nonsense() {
        assert_eq!(parse_duration("20s").unwrap(), Duration::from_secs(20));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        for bad in ["", "0s", "-1s", "5h", "s", "1e999s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
