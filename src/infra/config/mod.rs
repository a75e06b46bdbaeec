//! Configuration, layered: built-in defaults, then the file (`--config posbridge.toml`), then
//! `POSBRIDGE__SECTION__KEY` environment variables (e.g. `POSBRIDGE__JOURNAL__URL`). Validated
//! at start; errors name the key. `posbridge.example.toml` documents every key.

pub mod host;

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use posbridge_hsm::HsmConfig;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::Path;

/// The whole configuration.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Gateway-wide settings.
    #[serde(default)]
    pub gateway: GatewayConfig,
    /// The terminal (ISO 8583) listener.
    #[serde(default)]
    pub terminal: TerminalConfig,
    /// The wallet API (HTTP) listener.
    #[serde(default)]
    pub wallet_api: WalletApiConfig,
    /// Metrics and health endpoints.
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// Journal and ledger storage.
    #[serde(default)]
    pub journal: JournalConfig,
    /// The security module.
    #[serde(default)]
    pub hsm: HsmConfig,
    /// Key labels in the security module.
    #[serde(default)]
    pub keys: KeyLabels,
    /// Logging.
    #[serde(default)]
    pub log: LogConfig,
    /// Upstream hosts (five-role deployment): `[[hosts]]` tables.
    #[serde(default)]
    pub hosts: Vec<host::HostConfig>,
    /// Account-range routing: `[[routes]]` tables; cards matching no prefix use the local ledger.
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    /// How forwarded sales and their reversals are built and retried.
    #[serde(default)]
    pub upstream: UpstreamConfig,
}

/// `[[routes]]`: an account range (BIN prefix) and where its payments go.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Card number prefix (the longest matching prefix wins).
    pub prefix: String,
    /// `local` (the stored-value ledger) or the name of a `[[hosts]]` entry.
    pub target: String,
    /// A host to use when the target host has no signed-on connection.
    #[serde(default)]
    pub fallback: Option<String>,
}

/// `[upstream]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamConfig {
    /// How long a forwarded sale waits for the host's answer, ms; then it is reversed.
    pub sale_timeout_ms: u64,
    /// F22, POS entry mode of a cardless QR sale.
    pub entry_mode: String,
    /// F25, POS condition code.
    pub condition_code: String,
    /// F32, acquiring institution ID.
    pub acquirer_id: String,
    /// F33, forwarding institution ID (none: not sent).
    pub forwarding_id: Option<String>,
    /// PIN block format the hosts expect (ISO 9564 format 0 or 3), translated by the HSM.
    pub pin_format: u8,
    /// F53, security control information sent with a PIN block.
    pub security_control: String,
    /// Send reversals as 0420 advices (repeat 0421) instead of 0400 (repeat 0401).
    pub reversal_as_advice: bool,
    /// First retry delay of an unacknowledged reversal, ms (doubles up to `reversal_retry_max_ms`).
    pub reversal_retry_initial_ms: u64,
    /// Longest retry delay, ms.
    pub reversal_retry_max_ms: u64,
    /// A reversal not acknowledged after this long is given up (EXPIRED) and logged loudly, s.
    pub reversal_expiry_secs: u64,
    /// How often the reversal queue is polled, ms.
    pub reversal_poll_ms: u64,
    /// How long the sealed card number of an approved sale to a `pan_in_reversals` host is
    /// kept for a later void or refund, seconds; a refund advice sent after it carries no
    /// field 2.
    pub pan_retention_secs: u64,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            sale_timeout_ms: 10_000,
            entry_mode: "032".to_owned(),
            condition_code: "00".to_owned(),
            acquirer_id: "48020000".to_owned(),
            forwarding_id: None,
            pin_format: 0,
            security_control: "2600000000000000".to_owned(),
            reversal_as_advice: false,
            reversal_retry_initial_ms: 1_000,
            reversal_retry_max_ms: 60_000,
            reversal_expiry_secs: 86_400,
            reversal_poll_ms: 200,
            pan_retention_secs: 7 * 86_400,
        }
    }
}

/// How strict the gateway is about its own configuration (`[gateway] mode`).
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Anything goes, and the gateway says so loudly at start: demo keys, the software module,
    /// plain HTTP, hosts without MACs. The default, so `posbridge serve` runs with no file.
    #[default]
    Development,
    /// Refuses to start on anything unsafe (see `app::posture`).
    Production,
}

impl Mode {
    /// `development` or `production`.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Development => "development",
            Mode::Production => "production",
        }
    }
}

/// `[gateway]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayConfig {
    /// `development` (default) or `production`.
    pub mode: Mode,
    /// Production only: accept a security module that decrypts PIN blocks in host memory
    /// (PKCS#11 tokens cannot translate or verify PINs inside). Logged loudly at every start.
    pub allow_pin_in_host_memory: bool,
    /// Globally unique identifier written in posbridge's QR templates.
    pub gui: String,
    /// ISO 3166 alpha-2 country of the merchants.
    pub country: String,
    /// How long an order's code stays payable, seconds.
    pub order_ttl_secs: u64,
    /// How often expired orders are swept, milliseconds.
    pub expiry_sweep_ms: u64,
    /// How often a waiting request re-reads the journal (changes by other processes), ms.
    pub poll_interval_ms: u64,
    /// A card locked by three wrong PINs unlocks by itself after this many seconds (the next
    /// payment starts a fresh count); 0 keeps it locked until `posbridge admin pin-unlock`.
    pub pin_lock_secs: u64,
    /// Terminals, wallet apps and merchants are kept in memory this long, milliseconds (0: read
    /// on every request). Changes reach every gateway at once on PostgreSQL (a notification);
    /// on SQLite an admin command's change is seen within this time.
    pub registry_cache_ms: u64,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            mode: Mode::Development,
            allow_pin_in_host_memory: false,
            gui: posbridge_codecs::emv_qr::POSBRIDGE_GUI.to_owned(),
            country: "CN".to_owned(),
            order_ttl_secs: 120,
            expiry_sweep_ms: 1_000,
            poll_interval_ms: 1_000,
            pin_lock_secs: 86_400,
            registry_cache_ms: 5_000,
        }
    }
}

/// `[terminal]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TerminalConfig {
    /// Address the terminal listener binds.
    pub listen: SocketAddr,
    /// ISO 8583 dialect spoken to terminals (a built-in name or a spec file path).
    pub dialect: String,
    /// Most terminal connections held at once; more wait before accept.
    pub max_connections: usize,
    /// A connection idle this long is closed, seconds.
    pub idle_timeout_secs: u64,
    /// A message must be complete this long after its first byte arrived, seconds; otherwise
    /// the connection is closed (a half-sent frame is not held for the idle timeout).
    pub read_timeout_secs: u64,
    /// An answer the terminal does not take within this closes the connection, seconds.
    pub write_timeout_secs: u64,
    /// Most connections from one IP address at once; more are closed at accept.
    pub max_connections_per_address: usize,
    /// A terminal may sign on (and so replace its working keys) at most once per this many
    /// seconds, across all gateway processes; an earlier sign-on is answered 65.
    pub sign_on_interval_secs: u64,
    /// Longest a result query or held sale waits for the phone, seconds.
    pub hold_secs: u64,
    /// How long shutdown waits for in-flight transactions, seconds.
    pub shutdown_grace_secs: u64,
}

impl Default for TerminalConfig {
    fn default() -> Self {
        TerminalConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8583)),
            dialect: "cups-pos".to_owned(),
            max_connections: 20_000,
            idle_timeout_secs: 300,
            read_timeout_secs: 30,
            write_timeout_secs: 10,
            max_connections_per_address: 256,
            sign_on_interval_secs: 10,
            hold_secs: 60,
            shutdown_grace_secs: 30,
        }
    }
}

/// `[wallet_api]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WalletApiConfig {
    /// Address the wallet API binds.
    pub listen: SocketAddr,
    /// PEM certificate chain; with `tls_key`, the API speaks HTTPS (rustls).
    pub tls_cert: Option<std::path::PathBuf>,
    /// PEM private key.
    pub tls_key: Option<std::path::PathBuf>,
    /// TLS handshake plus request headers must arrive within this from accept, seconds.
    pub header_read_timeout_secs: u64,
    /// One whole request (body included) must be handled within this, seconds (else 503).
    pub request_timeout_secs: u64,
    /// Connections at once; more wait in the kernel's backlog.
    pub max_connections: usize,
    /// Payments one card may attempt per minute, through any app and any gateway sharing the
    /// journal (0: no limit); more are answered 429 `too_many_payments` (65).
    pub card_payments_per_minute: u32,
    /// Payments one wallet app may attempt per minute, over all its cards (0: no limit).
    pub app_payments_per_minute: u32,
}

impl Default for WalletApiConfig {
    fn default() -> Self {
        WalletApiConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            tls_cert: None,
            tls_key: None,
            header_read_timeout_secs: 10,
            request_timeout_secs: 30,
            max_connections: 4_096,
            card_payments_per_minute: 10,
            app_payments_per_minute: 0,
        }
    }
}

/// `[metrics]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Address of the Prometheus metrics and health endpoints; none disables them.
    pub listen: Option<SocketAddr>,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            listen: Some(SocketAddr::from(([127, 0, 0, 1], 9102))),
        }
    }
}

/// `[keys]`: labels of the gateway's own keys in the security module.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KeyLabels {
    /// PIN verification key (Visa PVV) of the stored-value accounts.
    pub pvk: String,
    /// AES key that signs gateway-made QR codes.
    pub qr_sign: String,
    /// AES key of the card-number hash.
    pub pan_hash: String,
    /// AES data key (`dek/`) that seals what the journal must keep secret: merchants' webhook
    /// secrets, and the card numbers of sales whose host wants field 2 in reversals and advices.
    pub data: String,
}

impl Default for KeyLabels {
    fn default() -> Self {
        KeyLabels {
            pvk: "pvk/wallet".to_owned(),
            qr_sign: "qr/sign".to_owned(),
            pan_hash: "pan/hash".to_owned(),
            data: "dek/journal".to_owned(),
        }
    }
}

/// `[log]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `text` or `json`.
    pub format: String,
    /// A tracing filter, e.g. `info` or `posbridge=debug`.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: "text".to_owned(),
            level: "info".to_owned(),
        }
    }
}

/// Where the configuration came from, for the start-up log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// Built-in defaults (and environment variables) only.
    Defaults,
    /// A file (and environment variables).
    File(String),
}

/// Loads and validates the configuration: defaults, then `file` if given, then environment.
pub fn load(file: Option<&Path>) -> anyhow::Result<(Config, Source)> {
    let mut figment = Figment::new();
    let source = match file {
        Some(path) => {
            if !path.is_file() {
                anyhow::bail!("configuration file {} not found", path.display());
            }
            figment = figment.merge(Toml::file_exact(path));
            Source::File(path.display().to_string())
        }
        None => Source::Defaults,
    };
    figment = figment.merge(Env::prefixed("POSBRIDGE__").split("__").lowercase(true));
    let config: Config = figment
        .extract()
        .map_err(|e| anyhow::anyhow!("configuration: {}", one_line(&e)))?;
    validate(&config)?;
    Ok((config, source))
}

fn one_line(error: &figment::Error) -> String {
    error
        .clone()
        .into_iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join("; ")
}

/// Checks values serde cannot: ranges and combinations. Errors name the key.
pub fn validate(config: &Config) -> anyhow::Result<()> {
    let check = |ok: bool, key: &str, why: &str| {
        if ok {
            Ok(())
        } else {
            Err(anyhow::anyhow!("configuration key {key}: {why}"))
        }
    };
    check(
        config.gateway.order_ttl_secs > 0 && config.gateway.order_ttl_secs <= 3600,
        "gateway.order_ttl_secs",
        "1 to 3600",
    )?;
    check(
        config.gateway.country.len() == 2,
        "gateway.country",
        "ISO 3166 alpha-2 (two letters)",
    )?;
    check(
        config.gateway.expiry_sweep_ms >= 10,
        "gateway.expiry_sweep_ms",
        "at least 10",
    )?;
    check(
        config.gateway.poll_interval_ms >= 10,
        "gateway.poll_interval_ms",
        "at least 10",
    )?;
    check(
        config.terminal.max_connections > 0,
        "terminal.max_connections",
        "at least 1",
    )?;
    check(
        config.terminal.hold_secs > 0,
        "terminal.hold_secs",
        "at least 1",
    )?;
    check(
        config.terminal.read_timeout_secs > 0,
        "terminal.read_timeout_secs",
        "at least 1",
    )?;
    check(
        config.terminal.write_timeout_secs > 0,
        "terminal.write_timeout_secs",
        "at least 1",
    )?;
    check(
        config.terminal.max_connections_per_address > 0,
        "terminal.max_connections_per_address",
        "at least 1",
    )?;
    check(
        config.terminal.idle_timeout_secs > 0,
        "terminal.idle_timeout_secs",
        "at least 1",
    )?;
    check(
        config.wallet_api.tls_cert.is_some() == config.wallet_api.tls_key.is_some(),
        "wallet_api.tls_cert",
        "tls_cert and tls_key go together",
    )?;
    let wallet = &config.wallet_api;
    check(
        wallet.header_read_timeout_secs > 0,
        "wallet_api.header_read_timeout_secs",
        "at least 1",
    )?;
    check(
        wallet.request_timeout_secs > 0,
        "wallet_api.request_timeout_secs",
        "at least 1",
    )?;
    check(
        wallet.max_connections > 0,
        "wallet_api.max_connections",
        "at least 1",
    )?;
    check(
        matches!(config.log.format.as_str(), "text" | "json"),
        "log.format",
        "text or json",
    )?;
    check(
        config.journal.pool_size > 0,
        "journal.pool_size",
        "at least 1",
    )?;
    for (value, key) in [
        (
            config.journal.pool_wait_timeout_ms,
            "journal.pool_wait_timeout_ms",
        ),
        (
            config.journal.statement_timeout_ms,
            "journal.statement_timeout_ms",
        ),
        (
            config.journal.connect_timeout_ms,
            "journal.connect_timeout_ms",
        ),
    ] {
        check(value > 0, key, "at least 1")?;
    }
    // Intervals and timeouts of zero would spin, panic a timer, or give up at once.
    let upstream = &config.upstream;
    check(
        upstream.reversal_poll_ms >= 10,
        "upstream.reversal_poll_ms",
        "at least 10",
    )?;
    check(
        upstream.sale_timeout_ms >= 100,
        "upstream.sale_timeout_ms",
        "at least 100",
    )?;
    check(
        upstream.reversal_retry_initial_ms > 0
            && upstream.reversal_retry_max_ms >= upstream.reversal_retry_initial_ms,
        "upstream.reversal_retry_initial_ms",
        "more than 0 and at most upstream.reversal_retry_max_ms",
    )?;
    check(
        upstream.reversal_expiry_secs > 0,
        "upstream.reversal_expiry_secs",
        "at least 1",
    )?;
    check(
        config.terminal.shutdown_grace_secs > 0,
        "terminal.shutdown_grace_secs",
        "at least 1",
    )?;
    for host in &config.hosts {
        host.validate()
            .map_err(|e| anyhow::anyhow!("configuration key hosts: {e}"))?;
    }
    Ok(())
}

/// Where the journal lives (`[journal]` in the configuration).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct JournalConfig {
    /// PostgreSQL URL (`postgres://user@host:port/db`). Without it the embedded SQLite file
    /// `sqlite_path` is used.
    #[serde(default)]
    pub url: Option<String>,
    /// PostgreSQL schema holding posbridge's tables (created if missing).
    #[serde(default = "default_schema")]
    pub schema: String,
    /// PostgreSQL pool size.
    #[serde(default = "default_pool_size")]
    pub pool_size: usize,
    /// SQLite file for the embedded journal; `:memory:` keeps it in memory (demo only).
    #[serde(default = "default_sqlite_path")]
    pub sqlite_path: String,
    /// Longest a request waits for a free PostgreSQL connection, ms (then it fails with 96).
    #[serde(default = "default_pool_wait_timeout_ms")]
    pub pool_wait_timeout_ms: u64,
    /// Longest one statement may run on PostgreSQL (`statement_timeout`), ms.
    #[serde(default = "default_statement_timeout_ms")]
    pub statement_timeout_ms: u64,
    /// Longest a new PostgreSQL connection may take, ms.
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// PEM CA certificates to trust for PostgreSQL over TLS (the URL's `sslmode=prefer` or
    /// `require`); the system's roots without it.
    #[serde(default)]
    pub tls_ca_file: Option<std::path::PathBuf>,
}

fn default_pool_wait_timeout_ms() -> u64 {
    2_000
}
fn default_statement_timeout_ms() -> u64 {
    10_000
}
fn default_connect_timeout_ms() -> u64 {
    5_000
}

fn default_schema() -> String {
    "posbridge".into()
}
fn default_pool_size() -> usize {
    16
}
fn default_sqlite_path() -> String {
    "posbridge-journal.sqlite".into()
}

impl Default for JournalConfig {
    fn default() -> Self {
        JournalConfig {
            url: None,
            schema: default_schema(),
            pool_size: default_pool_size(),
            sqlite_path: default_sqlite_path(),
            pool_wait_timeout_ms: default_pool_wait_timeout_ms(),
            statement_timeout_ms: default_statement_timeout_ms(),
            connect_timeout_ms: default_connect_timeout_ms(),
            tls_ca_file: None,
        }
    }
}
