//! Running the gateway: open the journal and the security module, then serve terminals (ISO
//! 8583), wallet apps (HTTP) and operators (metrics, health) until shutdown, with the
//! background workers (order expiry, merchant notifications).
//!
//! Listeners are bound by the caller and passed in, so tests and the demo run on port 0.

use crate::edge::terminal;
use crate::infra::config::Config;
use crate::infra::security::Security;
use crate::service::orders::OrderService;
use crate::service::orders::service::{OrderKeys, OrderSettings};
use anyhow::Context;
use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use crate::service::Gateway;

/// Opens the journal (migrating it) and the security module.
pub async fn open(config: Config) -> anyhow::Result<Gateway> {
    // Configurations built in code (tests, embedders) get the same checks as files.
    crate::infra::config::validate(&config)?;
    let module = posbridge_hsm::open(&config.hsm).context("opening the security module")?;
    let capabilities = module.capabilities();
    tracing::info!(backend = %capabilities.backend, production = capabilities.production, "security module ready");
    let keys = module
        .list_keys()
        .context("listing the security module's keys")?;
    let demo = posbridge_hsm::demo_check_values().context("the demo keys' check values")?;
    let posture = crate::infra::posture::assess(&config, &capabilities, &keys, &demo);
    crate::infra::posture::enforce(&posture)?;
    let store = crate::store::journal::open(&config.journal)
        .await
        .context("opening the journal")?;
    let orders = OrderService::new(
        store,
        Security::new(module),
        OrderSettings {
            keys: OrderKeys {
                pvk: config.keys.pvk.clone(),
                qr_sign: config.keys.qr_sign.clone(),
                pan_hash: config.keys.pan_hash.clone(),
            },
            gui: config.gateway.gui.clone(),
            country: config.gateway.country.clone(),
            poll_interval: Duration::from_millis(config.gateway.poll_interval_ms),
            host_queue_ttl: Duration::from_secs(config.upstream.reversal_expiry_secs),
            velocity: crate::service::orders::service::Velocity {
                card_per_minute: config.wallet_api.card_payments_per_minute,
                app_per_minute: config.wallet_api.app_payments_per_minute,
            },
            registry_cache: Duration::from_millis(config.gateway.registry_cache_ms),
            pin_lock: (config.gateway.pin_lock_secs > 0)
                .then(|| Duration::from_secs(config.gateway.pin_lock_secs)),
        },
    );
    let gateway = Gateway {
        config: Arc::new(config),
        orders,
        posture: Arc::new(posture),
    };
    match gateway
        .webhook_secrets()
        .seal_clear(gateway.orders.store())
        .await
    {
        Ok(0) => {}
        Ok(count) => tracing::info!(
            count,
            "sealed webhook secrets an older posbridge kept in clear"
        ),
        Err(error) => tracing::error!(
            %error,
            key = gateway.config.keys.data,
            "webhook secrets are still in clear in the journal: provision the data key; until then they sign nothing"
        ),
    }
    Ok(gateway)
}

/// The sockets a gateway serves on.
#[derive(Debug)]
pub struct Listeners {
    /// ISO 8583 terminals.
    pub terminal: TcpListener,
    /// Wallet API.
    pub wallet_api: TcpListener,
    /// Metrics and health, if enabled.
    pub metrics: Option<TcpListener>,
}

impl Listeners {
    /// Binds the configured addresses.
    pub async fn bind(config: &Config) -> anyhow::Result<Listeners> {
        let bind = |addr| async move {
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding {addr}"))
        };
        Ok(Listeners {
            terminal: bind(config.terminal.listen).await?,
            wallet_api: bind(config.wallet_api.listen).await?,
            metrics: match config.metrics.listen {
                Some(addr) => Some(bind(addr).await?),
                None => None,
            },
        })
    }
}

/// Serves until `shutdown` completes, then stops accepting, lets in-flight transactions finish
/// (bounded by `terminal.shutdown_grace_secs`) and returns.
pub async fn run(
    gateway: Gateway,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    // An embedded journal serves one running gateway (held until this function returns).
    let journal = &gateway.config.journal;
    let _embedded = match (&journal.url, journal.sqlite_path.as_str()) {
        (None, path) if path != ":memory:" => {
            Some(crate::store::journal::db::lock_for_this_process(path)?)
        }
        _ => None,
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    let gateway = start_upstream(gateway, &mut tasks, &stop_rx)?;
    tasks.spawn(expiry_worker(gateway.clone(), stop_rx.clone()));
    if gateway.config.journal.url.is_some() {
        let notifier = std::sync::Arc::clone(gateway.orders.notifier());
        let resumed = std::sync::Arc::clone(&notifier);
        let (registry, registry_resumed) = (
            std::sync::Arc::clone(gateway.orders.registry()),
            std::sync::Arc::clone(gateway.orders.registry()),
        );
        let settings = gateway.config.journal.clone();
        let store = gateway.orders.store().clone();
        let stop = stop_rx.clone();
        tasks.spawn(async move {
            crate::store::journal::db::listen_for_orders(
                &settings,
                move |payload| match payload {
                    // A terminal, wallet app or merchant changed (the registry tables' trigger).
                    crate::store::journal::REGISTRY_CHANGED => registry.clear(),
                    payload => {
                        let heard = crate::store::journal::db::Announcement::parse(payload);
                        // This gateway's own changes woke its waiters at their commit.
                        if !store.announced_here(&heard) {
                            notifier.changed_elsewhere(heard.order_id);
                        }
                    }
                },
                move || {
                    registry_resumed.clear();
                    resumed.resumed();
                },
                stop,
            )
            .await;
        });
    }
    tasks.spawn(outbox_worker(gateway.clone(), stop_rx.clone()));
    spawn_wallet_api(&gateway, listeners.wallet_api, stop_rx.clone(), &mut tasks)?;
    if let Some(listener) = listeners.metrics {
        let router = crate::app::health::router(gateway.clone(), prometheus_handle());
        let stop = wait_stop(stop_rx.clone());
        tasks.spawn(async move {
            if let Err(error) = axum::serve(listener, router)
                .with_graceful_shutdown(stop)
                .await
            {
                tracing::error!(%error, "metrics server failed");
            }
        });
    }
    let terminal_server =
        terminal::server::serve(gateway.clone(), listeners.terminal, stop_rx.clone());
    tokio::pin!(terminal_server);
    tokio::select! {
        result = &mut terminal_server => {
            let _ = stop_tx.send(true);
            result?;
        }
        () = shutdown => {
            tracing::info!("shutting down: no new connections; finishing in-flight transactions");
            let _ = stop_tx.send(true);
            terminal_server.await?;
        }
    }
    if let Some(upstream) = gateway.orders.upstream() {
        upstream.shutdown().await;
    }
    while tasks.join_next().await.is_some() {}
    tracing::info!("stopped");
    Ok(())
}

/// Serves the wallet API, over HTTPS (rustls) when a certificate is configured, with the
/// listener's limits (connections, header-read and request timeouts).
fn spawn_wallet_api(
    gateway: &Gateway,
    listener: TcpListener,
    stop: watch::Receiver<bool>,
    tasks: &mut tokio::task::JoinSet<()>,
) -> anyhow::Result<()> {
    use crate::edge::wallet_api::listener;
    let router = crate::edge::wallet_api::router(gateway.orders.clone());
    let config = &gateway.config.wallet_api;
    let tls = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => Some(listener::tls_config(cert, key)?),
        _ => None,
    };
    if tls.is_some() {
        tracing::info!("wallet API speaks HTTPS (rustls)");
    }
    let limits = listener::Limits {
        header_read_timeout: Duration::from_secs(config.header_read_timeout_secs),
        request_timeout: Duration::from_secs(config.request_timeout_secs),
        max_connections: config.max_connections,
    };
    tasks.spawn(listener::serve(listener, router, tls, limits, stop));
    Ok(())
}

/// Starts the links to the configured hosts and the workers of the five-role deployment: the
/// reversal queue (with recovery of sales left in flight by a stopped posbridge) and the journal
/// of unmatched answers.
fn start_upstream(
    mut gateway: Gateway,
    tasks: &mut tokio::task::JoinSet<()>,
    stop: &watch::Receiver<bool>,
) -> anyhow::Result<Gateway> {
    if gateway.config.hosts.is_empty() {
        return Ok(gateway);
    }
    let (upstream, unmatched) = crate::service::orders::forward::Upstream::start(
        &gateway.config,
        gateway.orders.security(),
    )?;
    let upstream = Arc::new(upstream);
    gateway.orders = gateway.orders.clone().with_upstream(Arc::clone(&upstream));
    for receiver in unmatched {
        let journal = crate::service::orders::forward::journal_unmatched(
            gateway.orders.store().clone(),
            receiver,
        );
        let stopped = wait_stop(stop.clone());
        tasks.spawn(async move {
            tokio::select! {
                () = journal => {}
                () = stopped => {}
            }
        });
    }
    let every = Duration::from_millis(gateway.config.upstream.reversal_poll_ms);
    let worker = gateway.clone();
    // Recovery of sales left in flight is a write over the whole reversal table: once a second
    // is plenty (the queued rows are then sent at the polling pace).
    let mut last_recovery: Option<std::time::Instant> = None;
    tasks.spawn(periodic(stop.clone(), every, move || {
        let worker = worker.clone();
        let recover = last_recovery.is_none_or(|at| at.elapsed() >= Duration::from_secs(1));
        if recover {
            last_recovery = Some(std::time::Instant::now());
        }
        async move {
            let Some(upstream) = worker.orders.upstream() else {
                return;
            };
            let store = worker.orders.store();
            if recover
                && let Err(error) =
                    crate::service::orders::forward::recover_standby(store, &upstream.config).await
            {
                tracing::warn!(%error, "reversal recovery failed; will retry");
            }
            if recover {
                match crate::service::orders::forward::destroy_pans_no_longer_needed(
                    store,
                    &upstream.config,
                )
                .await
                {
                    Ok(0) => {}
                    Ok(count) => tracing::debug!(count, "sealed card numbers destroyed"),
                    Err(error) => tracing::warn!(%error, "card number clean-up failed; will retry"),
                }
            }
            match crate::service::orders::forward::deliver_reversals(store, upstream).await {
                Ok(0) => {}
                Ok(count) => tracing::info!(count, "reversals acknowledged"),
                Err(error) => tracing::warn!(%error, "reversal delivery failed; will retry"),
            }
            match crate::service::orders::forward::deliver_advices(store, upstream).await {
                Ok(0) => {}
                Ok(count) => tracing::info!(count, "refund advices acknowledged"),
                Err(error) => tracing::warn!(%error, "advice delivery failed; will retry"),
            }
        }
    }));
    tracing::info!(hosts = gateway.config.hosts.len(), "upstream links started");
    Ok(gateway)
}

async fn wait_stop(mut stop: watch::Receiver<bool>) {
    while !*stop.borrow_and_update() {
        if stop.changed().await.is_err() {
            return;
        }
    }
}

async fn expiry_worker(gateway: Gateway, stop: watch::Receiver<bool>) {
    let every = Duration::from_millis(gateway.config.gateway.expiry_sweep_ms);
    periodic(stop, every, || async {
        match gateway.orders.expire_due().await {
            Ok(expired) if !expired.is_empty() => {
                tracing::info!(count = expired.len(), "orders expired")
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "expiry sweep failed; will retry"),
        }
    })
    .await;
}

async fn outbox_worker(gateway: Gateway, stop: watch::Receiver<bool>) {
    let client = reqwest::Client::new();
    let secrets = gateway.webhook_secrets();
    periodic(stop, Duration::from_millis(500), || async {
        if let Err(error) =
            crate::service::webhooks::deliver_due(gateway.orders.store(), &client, &secrets).await
        {
            tracing::warn!(%error, "notification delivery failed; will retry");
        }
    })
    .await;
}

async fn periodic<F, Fut>(mut stop: watch::Receiver<bool>, every: Duration, mut work: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => work().await,
            _ = stop.changed() => return,
        }
    }
}

/// The process-wide Prometheus recorder (installed once; later gateways in the same process,
/// as in tests, share it).
pub fn prometheus_handle() -> Option<metrics_exporter_prometheus::PrometheusHandle> {
    static HANDLE: OnceLock<Option<metrics_exporter_prometheus::PrometheusHandle>> =
        OnceLock::new();
    HANDLE
        .get_or_init(|| {
            metrics_exporter_prometheus::PrometheusBuilder::new()
                .set_buckets(&[
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                ])
                .ok()?
                .install_recorder()
                .ok()
        })
        .clone()
}
