//! `posbridge bench`: the load generator. Simulated terminals (each its own TCP connection and
//! TID) and phones do complete cardless QR sales against a gateway (order request, wallet
//! resolve, pay with PIN, result query held until paid), at a fixed rate or as fast as they
//! can, for a duration or a count, and the step latencies go into HdrHistograms.
//!
//! The gateway is either one already running (its terminal address and wallet API URL) or one
//! this process opens on the configured journal and security module and seeds itself
//! ([`Target::Spawn`]). Optional extras measured in the same run: the database's own ceiling
//! for the durable writes a sale needs ([`ceiling`]), and the memory idle terminal connections
//! cost ([`idle`]).
//!
//! With `five_roles` (spawn mode), the sales go upstream: the bench starts a simulated UnionPay
//! host (`posbridge sim host`) holding the payers' accounts, and the gateway forwards every
//! paid order to it as a 0200 with the PIN block translated to the host's zone key.

pub mod ceiling;
pub mod idle;
mod load;
pub mod pgbench;
pub mod report;
pub mod seed;

use crate::terminal::TerminalIdentity;
use anyhow::Context;
use posbridge::domain::money::Money;
use posbridge::infra::config::Config;
use posbridge::store::journal::JournalConfig;
use report::Report;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

/// Which gateway the bench drives.
#[derive(Debug, Clone)]
pub enum Target {
    /// A gateway already serving, seeded with the demo's identities (`posbridge admin
    /// seed-demo`): merchant, terminal, payer and wallet app.
    Running {
        /// Its terminal (ISO 8583) address.
        terminal: SocketAddr,
        /// Its wallet API base URL.
        wallet_url: String,
        /// Its process id, to read its memory for `--idle-connections` (optional).
        gateway_pid: Option<u32>,
        /// Its journal, for `--ceiling` (optional; taken from `--config`).
        journal: Option<JournalConfig>,
    },
    /// A gateway opened in this process with this configuration (listen addresses are
    /// replaced by loopback port 0), seeded with one merchant, terminal and payer per simulated
    /// terminal.
    Spawn(Box<Config>),
    /// Several `posbridge serve` processes on the journal of this configuration file
    /// (PostgreSQL), seeded as [`Target::Spawn`]: lane `i`'s terminal on process `i % n`, its
    /// phone paying through the next process.
    Processes {
        /// The configuration.
        config: Box<Config>,
        /// Its file, given to each process.
        path: std::path::PathBuf,
        /// How many processes.
        count: usize,
    },
}

/// The steady part of a duration starts after its first 1/STEADY_AFTER: `sales_per_s` counts
/// the sales completed in it, and only the sales (and, with a rate, pgbench's scripts) started
/// in it are timed.
pub(crate) const STEADY_AFTER: u32 = 5;

/// How long the load runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bound {
    /// Until this many sales were started (and finished).
    Count(u64),
    /// Until this much time passed (sales in flight then finish).
    Duration(Duration),
}

/// What to run.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// The gateway.
    pub target: Target,
    /// Simulated terminals (one connection and TID each, one phone each).
    pub terminals: usize,
    /// Sales per second over all terminals; `None`: as fast as possible.
    pub rate: Option<f64>,
    /// How long.
    pub bound: Bound,
    /// Amount of each sale (minor units, CNY).
    pub amount_minor: i64,
    /// Also measure the database's own ceiling for a sale's durable writes.
    pub ceiling: bool,
    /// Idle terminal connections to hold open during the run (0: none).
    pub idle_connections: usize,
    /// Spawn mode: route the sales through a simulated UnionPay host started in this process
    /// (the five-role deployment) instead of the local ledger.
    pub five_roles: bool,
    /// Key file of the simulated terminals and phones (default: the demo keys).
    pub device_keys: Option<std::path::PathBuf>,
}

/// Counts what the run has done so far, for a progress display.
#[derive(Debug, Default)]
pub struct Progress {
    /// Sales finished (approved or not).
    pub finished: AtomicU64,
    /// Sales finished with an error.
    pub failed: AtomicU64,
}

/// One simulated terminal and the phone that pays its orders.
#[derive(Debug, Clone)]
pub(crate) struct Lane {
    pub identity: TerminalIdentity,
    pub pan: String,
    pub pin: String,
    pub app_id: String,
    pub app_key: String,
}

/// Where the sales go and who makes them. With several gateways, lane `i`'s terminal is held on
/// gateway `i % n` and its phone pays through the next one (as a load balancer would send it).
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    pub terminals: Vec<SocketAddr>,
    pub wallet_urls: Vec<String>,
    pub lanes: Vec<Lane>,
    /// Distinct payer accounts (and merchant accounts) the lanes use, mirrored by the ceiling.
    pub accounts: usize,
}

/// Runs the bench and returns its report.
pub async fn run(options: BenchOptions, progress: Arc<Progress>) -> anyhow::Result<Report> {
    anyhow::ensure!(options.terminals > 0, "--terminals must be at least 1");
    anyhow::ensure!(options.amount_minor > 0, "--amount-minor must be positive");
    if let Some(rate) = options.rate {
        anyhow::ensure!(
            rate.is_finite() && rate > 0.0,
            "--rate must be a positive number"
        );
    }
    if let Bound::Count(0) = options.bound {
        anyhow::bail!("--count must be at least 1");
    }
    let batch = run_batch();
    match &options.target {
        Target::Spawn(config) => {
            let mut config = (**config).clone();
            let host = if options.five_roles {
                Some(start_host(&mut config, options.terminals).await?)
            } else {
                None
            };
            let spawned = seed::spawn(config, options.terminals, &batch).await?;
            if let Some(host) = &host {
                wait_signed_on(host).await?;
            }
            let journal = spawned.gateway.config.journal.clone();
            let backend = spawned.gateway.orders.security().module().capabilities();
            let outcome = measure_with(
                &options,
                &spawned.plan,
                Some(std::process::id()),
                &[],
                Some(&journal),
                progress,
            )
            .await;
            spawned.stop().await?;
            if let Some(host) = host {
                host.stop().await;
            }
            let mut report = outcome?;
            report.mode = if options.five_roles {
                "spawn-five-roles"
            } else {
                "spawn"
            }
            .into();
            report.security_module = Some(backend.backend.to_string());
            Ok(report)
        }
        Target::Processes {
            config,
            path,
            count,
        } => {
            anyhow::ensure!(*count >= 1, "--processes must be at least 1");
            anyhow::ensure!(!options.five_roles, "--processes runs the local deployment");
            let journal = config.journal.clone();
            let processes =
                seed::spawn_processes((**config).clone(), path, *count, options.terminals, &batch)
                    .await?;
            let outcome = measure_with(
                &options,
                &processes.plan,
                processes.pids.first().copied(),
                &processes.pids,
                Some(&journal),
                progress,
            )
            .await;
            processes.stop();
            let mut report = outcome?;
            report.mode = format!("processes-{count}");
            Ok(report)
        }
        Target::Running {
            terminal,
            wallet_url,
            gateway_pid,
            journal,
        } => {
            let plan = seed::demo_plan(*terminal, wallet_url, options.terminals, &batch);
            let pids: Vec<u32> = gateway_pid.iter().copied().collect();
            let mut report = measure_with(
                &options,
                &plan,
                *gateway_pid,
                &pids,
                journal.as_ref(),
                progress,
            )
            .await?;
            report.mode = "running".into();
            Ok(report)
        }
    }
}

/// The database's cumulative counters (`pg_stat_database`) of the journal's database.
async fn db_counters(journal: &JournalConfig) -> anyhow::Result<[i64; 4]> {
    let url = journal.url.as_deref().context("no PostgreSQL journal")?;
    let store = posbridge::store::journal::db::PgStore::connect(
        url,
        &JournalConfig {
            pool_size: 1,
            ..journal.clone()
        },
    )
    .await?;
    let row = posbridge::store::journal::Store::Postgres(store)
        .read_opt(
            "SELECT CAST(xact_commit + xact_rollback AS BIGINT), CAST(tup_inserted AS BIGINT), \
             CAST(tup_updated AS BIGINT), CAST(tup_fetched AS BIGINT) FROM pg_stat_database \
             WHERE datname = current_database()",
            &[],
        )
        .await?
        .context("no pg_stat_database row")?;
    Ok([row.i64(0)?, row.i64(1)?, row.i64(2)?, row.i64(3)?])
}

/// Backends flush their statistics when idle at the latest after this (PostgreSQL 15's
/// PGSTAT_IDLE_INTERVAL, 10 s): the counters are read that long after the load.
const STATS_SETTLE: Duration = Duration::from_secs(11);

async fn measure_with(
    options: &BenchOptions,
    plan: &Plan,
    gateway_pid: Option<u32>,
    cpu_pids: &[u32],
    journal: Option<&JournalConfig>,
    progress: Arc<Progress>,
) -> anyhow::Result<Report> {
    let counting_db = options.ceiling && journal.is_some_and(|j| j.url.is_some());
    let db_before = match (counting_db, journal) {
        (true, Some(journal)) => Some(db_counters(journal).await?),
        _ => None,
    };
    let cpu = |pids: &[u32]| -> Option<Duration> {
        pids.iter()
            .map(|&pid| seed::cpu_time(pid))
            .sum::<Option<Duration>>()
    };
    let own = [std::process::id()];
    let (gateway_cpu_before, own_cpu_before) = (cpu(cpu_pids), cpu(&own));
    let idle = if options.idle_connections > 0 {
        Some(idle::IdleSet::open(plan.terminals[0], options.idle_connections, gateway_pid).await?)
    } else {
        None
    };
    let amount = Money {
        amount_minor: options.amount_minor,
        currency: 156,
    };
    let load = load::run(
        plan,
        amount,
        options.rate,
        options.bound,
        progress,
        options.device_keys.as_deref(),
    )
    .await?;
    let idle = match idle {
        Some(set) => Some(set.finish().await?),
        None => None,
    };
    let (gateway_cpu_after, own_cpu_after) = (cpu(cpu_pids), cpu(&own));
    let mut report = Report::from_load(options, &load);
    let per_sale = |used: Duration| {
        (load.completed > 0).then(|| used.as_secs_f64() * 1000.0 / load.completed as f64)
    };
    if !cpu_pids.is_empty()
        && let (Some(before), Some(after)) = (gateway_cpu_before, gateway_cpu_after)
    {
        report.gateway_cpu_ms_per_sale = per_sale(after.saturating_sub(before));
    }
    if let (Some(before), Some(after)) = (own_cpu_before, own_cpu_after) {
        report.bench_process_cpu_ms_per_sale = per_sale(after.saturating_sub(before));
    }
    if let (Some(before), Some(journal)) = (db_before, journal) {
        tokio::time::sleep(STATS_SETTLE).await;
        let after = db_counters(journal).await?;
        let sales = load.completed.max(1) as f64;
        let delta = |i: usize| (after[i] - before[i]) as f64 / sales;
        report.db_per_sale = Some(report::DbPerSale {
            transactions: delta(0),
            rows_inserted: delta(1),
            rows_updated: delta(2),
            rows_fetched: delta(3),
        });
    }
    report.journal = journal.map(|j| match j.url {
        Some(_) => "postgres".to_owned(),
        None => "sqlite".to_owned(),
    });
    report.idle = idle;
    if options.ceiling {
        let journal = journal
            .context("--ceiling needs the gateway's journal: give --config (or use --spawn)")?;
        let sales = match options.bound {
            Bound::Count(n) => ceiling::Limit::Count(n),
            Bound::Duration(d) => ceiling::Limit::Duration(d),
        };
        let connections = options.terminals.min(journal.pool_size.max(1));
        let ceiling =
            ceiling::measure(journal, connections, plan.accounts, load.payload_len, sales)
                .await
                .context("measuring the database ceiling")?;
        report.set_ceiling(ceiling);
        if journal.url.is_some() {
            // The same database with PostgreSQL's own tool, as many connections as the
            // gateways' pools.
            let gateways = plan.terminals.len().max(1);
            let connections = (options.terminals.min(journal.pool_size.max(1)) * gateways).max(1);
            let seconds = match options.bound {
                Bound::Duration(d) => d.max(Duration::from_secs(5)),
                Bound::Count(_) => Duration::from_secs(10),
            };
            let independent = pgbench::measure(
                journal,
                connections,
                plan.accounts,
                load.payload_len,
                seconds,
                options.rate,
            )
            .await
            .context("measuring the ceiling with pgbench")?;
            report.set_pgbench_ceiling(independent);
        }
    }
    Ok(report)
}

/// A batch number for this run, so its vouchers never meet an earlier run's orders
/// (the journal refuses a second order for the same terminal, batch and voucher).
fn run_batch() -> String {
    format!("{:06}", rand::random_range(1..1_000_000u32))
}

/// Starts the simulated host with an account per bench payer and routes their card range to it.
async fn start_host(
    config: &mut Config,
    terminals: usize,
) -> anyhow::Result<crate::host::SimHostHandle> {
    let accounts = (0..terminals)
        .map(|i| crate::host::AccountConfig {
            pan: seed::pan(i),
            balance_minor: u64::try_from(seed::OPENING_MINOR).unwrap_or(u64::MAX),
            pin: Some(seed::PIN.into()),
            pvv: None,
        })
        .collect();
    let host_config = crate::host::SimHostConfig {
        accounts,
        ..crate::host::SimHostConfig::default()
    };
    let (addr, handle) = crate::host::SimHost::start(host_config).await?;
    crate::demo::route_to_host(config, addr);
    config.hosts[0].connections = 2;
    Ok(handle)
}

async fn wait_signed_on(host: &crate::host::SimHostHandle) -> anyhow::Result<()> {
    for _ in 0..400 {
        if host.signed_on_connections() > 0 {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    anyhow::bail!("the gateway did not sign on to the simulated host")
}
