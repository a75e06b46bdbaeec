//! `posbridge sim terminal ...` and `posbridge sim wallet ...`: a terminal and a wallet app to
//! drive a running gateway by hand (two windows: the terminal shows the code, the phone pays).

use crate::terminal::{TerminalClient, TerminalIdentity, describe};
use crate::wallet::WalletClient;
use anyhow::Context;
use clap::{Args, Subcommand};
use posbridge::domain::money::Money;
use posbridge_hsm::HsmConfig;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

/// `posbridge sim` sub-commands.
#[derive(Debug, Subcommand)]
pub enum SimCommand {
    /// A cups-pos terminal.
    Terminal(TerminalArgs),
    /// A wallet app.
    Wallet(WalletArgs),
    /// An ISO 8583 host (acquirer / UnionPay / issuer) for posbridge's upstream links.
    Host(super::sim_host::HostArgs),
    /// A Thales payShield HSM (test LMK) for the `payshield` security module.
    Payshield(super::sim_payshield::PayshieldArgs),
    /// Write a `payshield` key store of LMK cryptograms (test LMK) from a clear key file.
    PayshieldKeys(super::sim_payshield::PayshieldKeysArgs),
}

/// The simulated terminal's identity and keys.
#[derive(Debug, Args)]
pub struct TerminalArgs {
    /// Gateway terminal port.
    #[arg(long, default_value = "127.0.0.1:8583")]
    pub gateway: SocketAddr,
    /// Terminal ID.
    #[arg(long, default_value = crate::demo::TID)]
    pub tid: String,
    /// Merchant number.
    #[arg(long, default_value = crate::demo::MID)]
    pub mid: String,
    /// Label of the terminal master key in the terminal's key file.
    #[arg(long, default_value = "tmk/demo")]
    pub tmk: String,
    /// The terminal's key file (software module); default: the demo keys.
    #[arg(long)]
    pub key_file: Option<PathBuf>,
    /// Batch number.
    #[arg(long, default_value = "000001")]
    pub batch: String,
    /// First voucher number to use (the next one is used).
    #[arg(long, default_value_t = 0)]
    pub voucher: u32,
    /// What to do.
    #[command(subcommand)]
    pub action: TerminalAction,
}

/// What the terminal does (each run signs on first).
#[derive(Debug, Subcommand)]
pub enum TerminalAction {
    /// Sign on and echo.
    SignOn,
    /// A QR sale: (a) the gateway makes the code; shows it and waits for the result.
    Sale {
        /// Amount, e.g. 23.72.
        #[arg(long)]
        amount: String,
        /// ISO 4217 numeric currency.
        #[arg(long, default_value_t = 156)]
        currency: u16,
    },
    /// Reverse a voucher's sale (0400).
    Reverse {
        /// The voucher.
        voucher: String,
        /// Amount, e.g. 23.72.
        #[arg(long)]
        amount: String,
    },
    /// Settle the batch with the terminal's totals (0500).
    Settle {
        /// Number of approved sales.
        #[arg(long)]
        count: u32,
        /// Their total, e.g. 23.72.
        #[arg(long)]
        amount: String,
    },
}

/// The simulated wallet app.
#[derive(Debug, Args)]
pub struct WalletArgs {
    /// Wallet API base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub api: String,
    /// App id.
    #[arg(long, default_value = crate::demo::APP_ID)]
    pub app: String,
    /// App key.
    #[arg(long, env = "POSBRIDGE_WALLET_KEY", default_value = crate::demo::APP_KEY)]
    pub key: String,
    /// Label of the app's PIN key in its key file.
    #[arg(long, default_value = "pek/wallet")]
    pub pek: String,
    /// The app's key file (software module); default: the demo keys.
    #[arg(long)]
    pub key_file: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub action: WalletAction,
}

/// What the wallet does.
#[derive(Debug, Subcommand)]
pub enum WalletAction {
    /// Show what a scanned code asks for (from the server's stored order).
    Resolve {
        /// The scanned payload.
        payload: String,
    },
    /// Pay a scanned code.
    Pay {
        /// The scanned payload.
        payload: String,
        /// Card / account number.
        #[arg(long, default_value = crate::demo::PAN)]
        pan: String,
        /// PIN (omit for an account without one).
        #[arg(long)]
        pin: Option<String>,
        /// Static codes: the amount, e.g. 12.50.
        #[arg(long)]
        amount: Option<String>,
        /// Static codes: ISO 4217 numeric currency.
        #[arg(long, default_value_t = 156)]
        currency: u16,
        /// Idempotency key (retry with the same one to get the same result).
        #[arg(long)]
        idempotency_key: Option<String>,
    },
}

/// Runs a `posbridge sim` command.
pub fn run(command: SimCommand) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        match command {
            SimCommand::Terminal(args) => terminal(args).await,
            SimCommand::Wallet(args) => wallet(args).await,
            SimCommand::Host(args) => super::sim_host::host(args).await,
            SimCommand::Payshield(args) => super::sim_payshield::payshield(args).await,
            SimCommand::PayshieldKeys(args) => super::sim_payshield::payshield_keys(args),
        }
    })
}

fn module(key_file: Option<PathBuf>) -> anyhow::Result<Arc<dyn posbridge_hsm::SecurityModule>> {
    Ok(posbridge_hsm::open(&HsmConfig::Software {
        key_file,
        persist: false,
    })?)
}

fn money(text: &str, currency: u16) -> anyhow::Result<Money> {
    let exponent = posbridge_codecs::emv_qr::currency_exponent(currency);
    let minor = posbridge_codecs::emv_qr::parse_amount(text, exponent)
        .map_err(|e| anyhow::anyhow!("amount {text:?}: {e}"))?;
    Ok(Money {
        amount_minor: i64::try_from(minor)?,
        currency,
    })
}

async fn terminal(args: TerminalArgs) -> anyhow::Result<()> {
    let spec = Arc::new(posbridge_codecs::Spec::builtin("cups-pos")?);
    let identity = TerminalIdentity {
        tid: args.tid.clone(),
        mid: args.mid.clone(),
        master_key: args.tmk.clone(),
        operator: "01".into(),
        batch: args.batch.clone(),
    };
    let mut client = TerminalClient::connect(
        args.gateway,
        spec,
        identity,
        module(args.key_file)?,
        args.voucher,
    )
    .await?;
    client.sign_on().await?;
    println!("signed on as {} (merchant {})", args.tid, args.mid);
    match args.action {
        TerminalAction::SignOn => {
            let echo = client.echo().await?;
            println!("echo: {}", describe(&echo.response_code));
        }
        TerminalAction::Sale { amount, currency } => {
            let amount = money(&amount, currency)?;
            let order = client.request_order(amount).await?;
            if order.response_code != "00" {
                anyhow::bail!("order refused: {}", describe(&order.response_code));
            }
            let payload = order.payload.context("no code in the answer")?;
            println!(
                "{}",
                posbridge::infra::qr::render::terminal(
                    &payload,
                    posbridge::infra::qr::render::Background::Dark
                )?
            );
            println!(
                "{payload}\nsale {amount}, batch {} voucher {}: waiting for the phone...",
                order.batch, order.voucher
            );
            loop {
                let receipt = client.query_result(&order.voucher).await?;
                if receipt.response_code != posbridge::edge::terminal::protocol::PENDING {
                    println!("{receipt}");
                    break;
                }
            }
        }
        TerminalAction::Reverse { voucher, amount } => {
            let receipt = client.reverse(&voucher, money(&amount, 156)?).await?;
            println!(
                "reversal of voucher {voucher}: {}",
                describe(&receipt.response_code)
            );
        }
        TerminalAction::Settle { count, amount } => {
            let total = money(&amount, 156)?;
            let receipt = client
                .settle(count, u64::try_from(total.amount_minor)?)
                .await?;
            println!("settlement: {}", describe(&receipt.response_code));
        }
    }
    Ok(())
}

async fn wallet(args: WalletArgs) -> anyhow::Result<()> {
    let client = WalletClient::new(
        &args.api,
        &args.app,
        &args.key,
        module(args.key_file)?,
        &args.pek,
    );
    match args.action {
        WalletAction::Resolve { payload } => {
            let view = client.resolve(&payload).await?;
            println!("{}", serde_json::to_string_pretty(&view)?);
        }
        WalletAction::Pay {
            payload,
            pan,
            pin,
            amount,
            currency,
            idempotency_key,
        } => {
            let amount = amount
                .map(|a| money(&a, currency))
                .transpose()?
                .map(|m| (m.amount_minor, m.currency));
            let key = idempotency_key.unwrap_or_else(posbridge::store::journal::new_id);
            let answer = client
                .pay(&payload, &pan, pin.as_deref(), &key, amount)
                .await?;
            match &answer.payment {
                Some(payment) => {
                    println!("{} ({})", describe(&payment.response_code), payment.message)
                }
                None => println!(
                    "refused: HTTP {} {}",
                    answer.status,
                    answer.error_code.as_deref().unwrap_or("")
                ),
            }
            if answer.response_code() != Some("00") {
                anyhow::bail!("payment not approved");
            }
        }
    }
    Ok(())
}
