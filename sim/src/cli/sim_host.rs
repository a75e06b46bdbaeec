//! `posbridge sim host`: a simulated ISO 8583 host (acquirer, UnionPay or issuer) to point
//! posbridge's upstream links at; see [`crate::host`] and docs/host-interface.md.

use crate::host::{Condition, DeclineRule, RandomFaults, SimHost, SimHostConfig};
use anyhow::Context;
use clap::Args;
use figment::providers::Format as _;
use std::path::PathBuf;

/// Options of `posbridge sim host`; flags override the `--config` file.
#[derive(Debug, Args)]
pub struct HostArgs {
    /// Dialect: cups-host, iso87ascii, iso87binary or a spec file.
    #[arg(long)]
    pub dialect: Option<String>,
    /// Listen address.
    #[arg(long, default_value = "127.0.0.1:7001")]
    pub listen: String,
    /// TOML file with the whole configuration (accounts, decline rules, fault rules).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Key file of the host's software security module (default: the demo keys).
    #[arg(long)]
    pub key_file: Option<PathBuf>,
    /// Delay before every answer, in milliseconds.
    #[arg(long)]
    pub latency_ms: Option<u64>,
    /// Delay of a late answer, in milliseconds.
    #[arg(long)]
    pub late_response_ms: Option<u64>,
    /// Decline (61) sales above this amount in minor units.
    #[arg(long)]
    pub decline_above_minor: Option<u64>,
    /// Seed of the random faults (printed, so a run reproduces).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Probability of processing a request and never answering.
    #[arg(long, default_value_t = 0.0)]
    pub no_response: f64,
    /// Probability of answering after --late-response-ms.
    #[arg(long, default_value_t = 0.0)]
    pub late_response: f64,
    /// Probability of answering twice.
    #[arg(long, default_value_t = 0.0)]
    pub duplicate_response: f64,
    /// Probability of processing a request and then closing the connection.
    #[arg(long, default_value_t = 0.0)]
    pub disconnect: f64,
    /// Probability of answering with a corrupted MAC.
    #[arg(long, default_value_t = 0.0)]
    pub wrong_mac: f64,
}

fn config(args: &HostArgs) -> anyhow::Result<SimHostConfig> {
    let mut config: SimHostConfig = match &args.config {
        Some(path) => figment::Figment::new()
            .merge(figment::providers::Toml::file_exact(path))
            .extract()
            .with_context(|| format!("reading {}", path.display()))?,
        None => SimHostConfig::default(),
    };
    config.listen = args.listen.clone();
    if let Some(dialect) = &args.dialect {
        config.dialect = dialect.clone();
    }
    if args.key_file.is_some() {
        config.key_file = args.key_file.clone();
    }
    if let Some(latency) = args.latency_ms {
        config.latency_ms = latency;
    }
    if let Some(late) = args.late_response_ms {
        config.late_response_ms = late;
    }
    if let Some(limit) = args.decline_above_minor {
        config.decline.push(DeclineRule {
            when: Condition {
                amount_above_minor: Some(limit),
                ..Condition::default()
            },
            code: "61".into(),
        });
    }
    let probabilities = [
        args.no_response,
        args.late_response,
        args.duplicate_response,
        args.disconnect,
        args.wrong_mac,
    ];
    if probabilities.iter().any(|p| !(0.0..=1.0).contains(p))
        || probabilities.iter().sum::<f64>() > 1.0
    {
        anyhow::bail!("fault probabilities must each be 0..=1 and sum to at most 1");
    }
    if args.seed.is_some() || probabilities.iter().any(|p| *p > 0.0) {
        config.random_faults = Some(RandomFaults {
            seed: args.seed.unwrap_or_else(rand::random),
            no_response: args.no_response,
            late_response: args.late_response,
            duplicate_response: args.duplicate_response,
            disconnect: args.disconnect,
            wrong_mac: args.wrong_mac,
        });
    }
    Ok(config)
}

/// Runs the simulated host until Ctrl-C, then prints its ledger totals.
pub async fn host(args: HostArgs) -> anyhow::Result<()> {
    let config = config(&args)?;
    let dialect = config.dialect.clone();
    let seed = config.random_faults.as_ref().map(|r| r.seed);
    let (addr, handle) = SimHost::start(config).await?;
    match seed {
        Some(seed) => {
            println!("sim host ({dialect}) listening on {addr}; random fault seed {seed}")
        }
        None => println!("sim host ({dialect}) listening on {addr}"),
    }
    tokio::signal::ctrl_c().await?;
    handle.stop().await;
    let ledger = handle.ledger();
    let approved = ledger
        .iter()
        .filter(|e| e.state == crate::host::LedgerState::Approved)
        .count();
    println!(
        "sim host stopped: {} ledger entries, {approved} approved and not reversed",
        ledger.len()
    );
    Ok(())
}
