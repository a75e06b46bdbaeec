//! `posbridge admin ...`: registration against the configured journal and security module.

use crate::domain::money::Money;
use crate::registry::{self, Merchant, Terminal, WalletApp};
use crate::service::enrolment::NewPayer;
use crate::service::orders::service::Voucher;
use clap::{Args, Subcommand};
use posbridge_hsm::{Pan, Pin};
use std::path::PathBuf;

/// `posbridge admin` sub-commands.
#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Register a merchant (and open its settlement account).
    MerchantAdd(MerchantArgs),
    /// Register a terminal of a merchant.
    TerminalAdd(TerminalArgs),
    /// Open a stored-value payer account.
    AccountAdd(AccountArgs),
    /// Register a wallet app; prints its API key once.
    WalletAppAdd(WalletAppArgs),
    /// Issue a merchant's static (printed) code.
    StaticCode(StaticCodeArgs),
    /// Void a paid sale (money back; a sale approved upstream gets its reversal queued).
    Void(SaleArgs),
    /// Refund part or all of a paid sale: on the local ledger at once; for a sale a host
    /// approved, as a refund advice (0220) the running gateway sends to the host.
    Refund(RefundArgs),
    /// Lift a payer's PIN lock (after its tries ran out) once the holder is identified.
    PinUnlock(PinUnlockArgs),
    /// Issue (or replace) a merchant's API key for its payments list; prints it once.
    MerchantApiKey(MerchantKeyArgs),
    /// Set (or rotate) a merchant's webhook signing secret, read from POSBRIDGE_WEBHOOK_SECRET
    /// or `--webhook-secret-file`; it is stored sealed under the data key.
    MerchantWebhookSecret(WebhookSecretArgs),
    /// Show an account: balance, PIN state and its recent postings (newest first).
    AccountShow(AccountShowArgs),
    /// Show a merchant and its settlement account: balance and recent postings.
    MerchantShow(MerchantShowArgs),
}

/// `admin merchant-api-key`.
#[derive(Debug, Args)]
pub struct MerchantKeyArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// Merchant number (MID).
    #[arg(long)]
    mid: String,
}

/// `admin merchant-webhook-secret`.
#[derive(Debug, Args)]
pub struct WebhookSecretArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// Merchant number (MID).
    #[arg(long)]
    mid: String,
    /// File holding the secret (first line); or set POSBRIDGE_WEBHOOK_SECRET. Never on the
    /// command line.
    #[arg(long)]
    webhook_secret_file: Option<PathBuf>,
}

/// `admin account-show`.
#[derive(Debug, Args)]
pub struct AccountShowArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// Account id.
    #[arg(long)]
    account: String,
    /// Postings to list.
    #[arg(long, default_value_t = 20)]
    limit: i64,
}

/// `admin merchant-show`.
#[derive(Debug, Args)]
pub struct MerchantShowArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// Merchant number (MID).
    #[arg(long)]
    mid: String,
    /// Postings to list.
    #[arg(long, default_value_t = 20)]
    limit: i64,
}

/// An account and its recent postings, as the operator reads them.
async fn print_account(
    store: &crate::store::journal::Store,
    account_id: &str,
    limit: i64,
) -> anyhow::Result<()> {
    let account = crate::store::ledger::read_account(store, account_id)
        .await?
        .ok_or_else(|| anyhow::anyhow!("no account {account_id}"))?;
    println!(
        "account {} ({}, {}{})",
        account.account_id,
        account.kind,
        account.holder,
        account
            .pan_truncated
            .as_deref()
            .map(|pan| format!(", card {pan}"))
            .unwrap_or_default()
    );
    println!("balance {}", account.balance);
    if account.kind == "payer" {
        println!(
            "PIN tries {}{}",
            account.pin_tries,
            if account.pin_locked_at_ms.is_some() {
                " (locked)"
            } else {
                ""
            }
        );
    }
    let lines = crate::store::ledger::statement(store, account_id, limit).await?;
    println!("postings, newest first ({}):", lines.len());
    for line in lines {
        let at = posbridge_codecs::calendar::Civil::from_unix_seconds(line.at_ms.div_euclid(1000))
            .map(|c| {
                format!(
                    "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
                    c.year, c.month, c.day, c.hour, c.minute, c.second
                )
            })
            .unwrap_or_default();
        let amount = Money {
            amount_minor: line.amount_minor,
            currency: account.balance.currency,
        };
        println!(
            "  {at}  {:<9} {:>14}  order {}",
            line.kind,
            amount.to_string(),
            line.order_id
        );
    }
    Ok(())
}

/// `admin pin-unlock`.
#[derive(Debug, Args)]
pub struct PinUnlockArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// Payer account id.
    #[arg(long)]
    account: String,
}

/// A secret given to a command: from the environment variable `env`, else the first line of
/// `file`; never on the command line (where shell history and the process list keep it).
fn secret_input(env: &str, file: Option<&std::path::Path>) -> anyhow::Result<Option<String>> {
    if let Ok(value) = std::env::var(env) {
        return Ok(Some(value.trim().to_owned()));
    }
    let Some(path) = file else {
        return Ok(None);
    };
    let text =
        std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    Ok(text.lines().next().map(|line| line.trim().to_owned()))
}

/// The sale an operator command acts on: by terminal, batch and voucher, or by its RRN.
#[derive(Debug, Args)]
pub struct SaleArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// Terminal ID.
    #[arg(long, required_unless_present = "rrn")]
    tid: Option<String>,
    /// Batch number.
    #[arg(long, required_unless_present = "rrn")]
    batch: Option<String>,
    /// Voucher number.
    #[arg(long, required_unless_present = "rrn")]
    voucher: Option<String>,
    /// Retrieval reference number (F37) of the sale, instead of terminal, batch and voucher.
    #[arg(long, conflicts_with_all = ["tid", "batch", "voucher"])]
    rrn: Option<String>,
}

impl SaleArgs {
    /// Terminal, batch and voucher of the sale, looked up by RRN when given so.
    async fn locate(
        &self,
        gateway: &crate::app::server::Gateway,
    ) -> anyhow::Result<(String, String, String)> {
        if let Some(rrn) = &self.rrn {
            let order = gateway
                .orders
                .order_by_rrn(rrn)
                .await?
                .ok_or_else(|| anyhow::anyhow!("no sale with RRN {rrn}"))?;
            return match (order.tid, order.batch, order.voucher) {
                (Some(tid), Some(batch), Some(voucher)) => Ok((tid, batch, voucher)),
                _ => Err(anyhow::anyhow!(
                    "the sale with RRN {rrn} has no terminal voucher (a static-code payment)"
                )),
            };
        }
        match (&self.tid, &self.batch, &self.voucher) {
            (Some(tid), Some(batch), Some(voucher)) => {
                Ok((tid.clone(), batch.clone(), voucher.clone()))
            }
            _ => Err(anyhow::anyhow!(
                "give --tid, --batch and --voucher, or --rrn"
            )),
        }
    }
}

/// `admin refund`.
#[derive(Debug, Args)]
pub struct RefundArgs {
    #[command(flatten)]
    sale: SaleArgs,
    /// Amount in minor units.
    #[arg(long)]
    amount_minor: i64,
    /// ISO 4217 numeric currency.
    #[arg(long, default_value_t = 156)]
    currency: u16,
}

/// The configuration to act on (also `admin seed-demo`'s, which the simulator crate adds).
#[derive(Debug, Args)]
pub struct ConfigArg {
    /// Configuration file; without one, the embedded defaults.
    #[arg(long)]
    pub config: Option<PathBuf>,
}

/// `admin merchant-add`.
#[derive(Debug, Args)]
pub struct MerchantArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// Merchant number (15 characters).
    #[arg(long)]
    mid: String,
    /// Name (at most 25 characters).
    #[arg(long)]
    name: String,
    /// City (at most 15 characters).
    #[arg(long)]
    city: String,
    /// Merchant category code.
    #[arg(long)]
    mcc: String,
    /// ISO 3166 alpha-2 country.
    #[arg(long, default_value = "CN")]
    country: String,
    /// ISO 4217 numeric currency.
    #[arg(long, default_value_t = 156)]
    currency: u16,
    /// Webhook for static-code payments.
    #[arg(long)]
    webhook_url: Option<String>,
    /// File holding the webhook signing secret (first line, at least 16 characters); or set
    /// POSBRIDGE_WEBHOOK_SECRET. Never on the command line. Stored sealed under the data key.
    #[arg(long)]
    webhook_secret_file: Option<PathBuf>,
}

/// `admin terminal-add`.
#[derive(Debug, Args)]
pub struct TerminalArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// Terminal ID (8 characters).
    #[arg(long)]
    tid: String,
    /// Merchant number.
    #[arg(long)]
    mid: String,
    /// Acquiring institution code.
    #[arg(long)]
    acquirer: String,
    /// Security-module label of the terminal master key.
    #[arg(long)]
    tmk: String,
}

/// `admin account-add`.
#[derive(Debug, Args)]
pub struct AccountArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// Account id.
    #[arg(long)]
    id: String,
    /// Holder's name.
    #[arg(long)]
    holder: String,
    /// File holding the card / account number; or set POSBRIDGE_ACCOUNT_PAN.
    #[arg(long)]
    pan_file: Option<PathBuf>,
    /// File holding the 4-digit PIN (only its verification value is kept); or set
    /// POSBRIDGE_ACCOUNT_PIN. An account without either has no PIN.
    #[arg(long)]
    pin_file: Option<PathBuf>,
    /// The wallet app the card is bound to: other apps are answered as for an unknown card.
    #[arg(long)]
    wallet_app: Option<String>,
    /// Opening balance in minor units.
    #[arg(long)]
    balance_minor: i64,
    /// ISO 4217 numeric currency.
    #[arg(long, default_value_t = 156)]
    currency: u16,
}

/// `admin wallet-app-add`.
#[derive(Debug, Args)]
pub struct WalletAppArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// App id.
    #[arg(long)]
    id: String,
    /// Name.
    #[arg(long)]
    name: String,
    /// Security-module label of the app's PIN encryption key.
    #[arg(long)]
    pek: String,
}

/// `admin static-code`.
#[derive(Debug, Args)]
pub struct StaticCodeArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// Merchant number.
    #[arg(long)]
    mid: String,
    /// Label printed with the code (62.07).
    #[arg(long)]
    label: Option<String>,
}

/// Runs a `posbridge admin` command.
pub fn run(command: AdminCommand) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run_async(command))
}

async fn open(config: &ConfigArg) -> anyhow::Result<crate::app::server::Gateway> {
    let (config, _) = crate::infra::config::load(config.config.as_deref())?;
    crate::app::server::open(config).await
}

async fn run_async(command: AdminCommand) -> anyhow::Result<()> {
    match command {
        AdminCommand::MerchantAdd(a) => {
            let gateway = open(&a.config).await?;
            let merchant = Merchant {
                mid: a.mid,
                name: a.name,
                city: a.city,
                mcc: a.mcc,
                country: a.country,
                currency: a.currency,
                account_id: String::new(),
                webhook_url: a.webhook_url,
            };
            let secret =
                secret_input("POSBRIDGE_WEBHOOK_SECRET", a.webhook_secret_file.as_deref())?;
            if secret.is_some() {
                gateway.webhook_secrets().ensure_key().await?;
            }
            let merchant = registry::register_merchant(gateway.orders.store(), &merchant).await?;
            if let Some(secret) = secret {
                gateway
                    .webhook_secrets()
                    .set(gateway.orders.store(), &merchant.mid, &secret)
                    .await?;
            }
            println!(
                "merchant {} registered, settlement account {}",
                merchant.mid, merchant.account_id
            );
        }
        AdminCommand::TerminalAdd(a) => {
            let gateway = open(&a.config).await?;
            let terminal = Terminal {
                tid: a.tid,
                mid: a.mid,
                acquirer: a.acquirer,
                master_key_label: a.tmk,
                enabled: true,
                key_slot: 0,
            };
            registry::register_terminal(gateway.orders.store(), &terminal).await?;
            println!("terminal {} registered", terminal.tid);
        }
        AdminCommand::AccountAdd(a) => {
            let gateway = open(&a.config).await?;
            let payer = NewPayer {
                account_id: a.id.clone(),
                holder: a.holder,
                pan: Pan::new(
                    &secret_input("POSBRIDGE_ACCOUNT_PAN", a.pan_file.as_deref())?.ok_or_else(
                        || {
                            anyhow::anyhow!(
                                "the card number: set POSBRIDGE_ACCOUNT_PAN or --pan-file"
                            )
                        },
                    )?,
                )?,
                pin: secret_input("POSBRIDGE_ACCOUNT_PIN", a.pin_file.as_deref())?
                    .as_deref()
                    .map(Pin::new)
                    .transpose()?,
                wallet_app: a.wallet_app,
                opening: Money {
                    amount_minor: a.balance_minor,
                    currency: a.currency,
                },
            };
            crate::service::enrolment::register_payer(
                &gateway.orders,
                payer,
                &gateway.config.keys.pvk,
            )
            .await?;
            println!("account {} opened", a.id);
        }
        AdminCommand::WalletAppAdd(a) => {
            let gateway = open(&a.config).await?;
            let app = WalletApp {
                app_id: a.id,
                name: a.name,
                pek_label: a.pek,
            };
            let key = registry::register_wallet_app(gateway.orders.store(), &app, None).await?;
            println!(
                "wallet app {} registered; API key (shown once): {key}",
                app.app_id
            );
        }
        AdminCommand::StaticCode(a) => {
            let gateway = open(&a.config).await?;
            let payload = crate::service::enrolment::create_static_code(
                gateway.orders.store(),
                &gateway.config.gateway.gui,
                &a.mid,
                a.label.as_deref(),
            )
            .await?;
            println!("{payload}");
        }
        AdminCommand::PinUnlock(a) => {
            let gateway = open(&a.config).await?;
            let mut tx = gateway.orders.store().begin().await?;
            let unlocked = crate::store::ledger::unlock_pin(&mut tx, &a.account).await?;
            tx.commit().await?;
            anyhow::ensure!(unlocked, "no payer account {}", a.account);
            tracing::warn!(account = %a.account, "PIN lock lifted by an operator");
            println!("PIN lock of {} lifted", a.account);
        }
        AdminCommand::MerchantApiKey(a) => {
            let gateway = open(&a.config).await?;
            let key = registry::issue_merchant_api_key(gateway.orders.store(), &a.mid)
                .await?
                .ok_or_else(|| anyhow::anyhow!("no merchant {}", a.mid))?;
            println!(
                "merchant {} API key (shown once; replaces any earlier one): {key}",
                a.mid
            );
        }
        AdminCommand::MerchantWebhookSecret(a) => {
            let gateway = open(&a.config).await?;
            let secret =
                secret_input("POSBRIDGE_WEBHOOK_SECRET", a.webhook_secret_file.as_deref())?
                    .ok_or_else(|| {
                        anyhow::anyhow!("set POSBRIDGE_WEBHOOK_SECRET or --webhook-secret-file")
                    })?;
            gateway
                .webhook_secrets()
                .set(gateway.orders.store(), &a.mid, &secret)
                .await?;
            println!("merchant {} webhook secret set (sealed)", a.mid);
        }
        AdminCommand::AccountShow(a) => {
            let gateway = open(&a.config).await?;
            print_account(gateway.orders.store(), &a.account, a.limit).await?;
        }
        AdminCommand::MerchantShow(a) => {
            let gateway = open(&a.config).await?;
            let store = gateway.orders.store();
            let merchant = registry::read_merchant(store, &a.mid)
                .await?
                .ok_or_else(|| anyhow::anyhow!("no merchant {}", a.mid))?;
            println!(
                "merchant {} {} ({}, {}, MCC {}, currency {})",
                merchant.mid,
                merchant.name,
                merchant.city,
                merchant.country,
                merchant.mcc,
                merchant.currency
            );
            print_account(store, &merchant.account_id, a.limit).await?;
        }
        AdminCommand::Void(a) => {
            let gateway = open(&a.config).await?;
            let (tid, batch, voucher) = a.locate(&gateway).await?;
            let order = gateway
                .orders
                .void(&Voucher::of(&tid, &batch, &voucher), "operator void")
                .await?;
            println!("order {} is {}", order.order_id, order.state);
        }
        AdminCommand::Refund(a) => {
            let gateway = open(&a.sale.config).await?;
            let (tid, batch, voucher) = a.sale.locate(&gateway).await?;
            let amount = Money {
                amount_minor: a.amount_minor,
                currency: a.currency,
            };
            let order = gateway
                .orders
                .refund(&Voucher::of(&tid, &batch, &voucher), amount)
                .await?;
            println!("refunded {amount} of order {}", order.order_id);
        }
    }
    Ok(())
}
