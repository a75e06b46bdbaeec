//! `posbridge demo`: the whole payment (S101-S108) on one machine with nothing installed: an
//! in-memory SQLite journal, the software security module with its demo keys, the gateway on
//! loopback ports, a simulated terminal that shows the QR in this window, and a simulated phone
//! that scans it and pays with a PIN. Prints both receipts.

use crate::terminal::{TerminalClient, TerminalIdentity, describe};
use crate::wallet::WalletClient;
use anyhow::Context;
use posbridge::app::server::{self, Listeners};
use posbridge::domain::money::Money;
use posbridge::infra::config::Config;
use posbridge::registry::{self, Merchant, Terminal, WalletApp};
use posbridge::service::enrolment::NewPayer;
use posbridge_hsm::{Pan, Pin};
use std::io::Write;
use std::sync::Arc;

/// The demo merchant number.
pub const MID: &str = "898310048160001";
/// The demo terminal.
pub const TID: &str = "10000001";
/// The demo payer's card number.
pub const PAN: &str = "6222021234567890123";
/// The demo payer's PIN.
pub const PIN: &str = "1234";
/// The demo wallet app.
pub const APP_ID: &str = "demo-wallet";
/// The demo wallet app's API key.
pub const APP_KEY: &str = "pbk_demo_wallet_key";

/// The demo's configuration: embedded journal in memory, software module, loopback port 0.
pub fn config() -> Config {
    let mut config = Config::default();
    config.journal.sqlite_path = ":memory:".into();
    config.terminal.listen = ([127, 0, 0, 1], 0).into();
    config.wallet_api.listen = ([127, 0, 0, 1], 0).into();
    config.metrics.listen = None;
    config.gateway.poll_interval_ms = 50;
    config
}

/// Registers the demo merchant, terminal, payer and wallet app.
pub async fn seed(gateway: &server::Gateway) -> anyhow::Result<()> {
    // A known wallet key and a funded account have no place in a production journal.
    anyhow::ensure!(
        gateway.config.gateway.mode == posbridge::infra::config::Mode::Development,
        "the demo data is seeded only in development mode (gateway.mode = {})",
        gateway.config.gateway.mode.as_str()
    );
    let store = gateway.orders.store();
    registry::register_merchant(
        store,
        &Merchant {
            mid: MID.into(),
            name: "BEST TRANSPORT".into(),
            city: "BEIJING".into(),
            mcc: "4111".into(),
            country: "CN".into(),
            currency: 156,
            account_id: String::new(),
            webhook_url: None,
        },
    )
    .await?;
    registry::register_terminal(
        store,
        &Terminal {
            tid: TID.into(),
            mid: MID.into(),
            acquirer: "48020000".into(),
            master_key_label: "tmk/demo".into(),
            enabled: true,
            key_slot: 0,
        },
    )
    .await?;
    registry::register_wallet_app(
        store,
        &WalletApp {
            app_id: APP_ID.into(),
            name: "Demo wallet".into(),
            pek_label: "pek/wallet".into(),
        },
        Some(APP_KEY.into()),
    )
    .await?;
    posbridge::service::enrolment::register_payer(
        &gateway.orders,
        NewPayer {
            account_id: "demo-payer".into(),
            holder: "LI LEI".into(),
            pan: Pan::new(PAN)?,
            pin: Some(Pin::new(PIN)?),
            opening: Money {
                amount_minor: 100_000,
                currency: 156,
            },
            wallet_app: Some(APP_ID.into()),
        },
        &gateway.config.keys.pvk,
    )
    .await?;
    Ok(())
}

/// Routes the demo card range to a (simulated) UnionPay host at `host`: the five-role
/// deployment, with the demo's zone keys (`zpk/upstream`, `zak/upstream`, `zmk/upstream`).
pub fn route_to_host(config: &mut Config, host: std::net::SocketAddr) {
    let mut link =
        posbridge::upstream::HostConfig::new("cups", vec![host.to_string()], "cups-host");
    link.mac_key = Some("zak/upstream".into());
    link.pin_key = Some("zpk/upstream".into());
    link.zmk = Some("zmk/upstream".into());
    link.destination_id = "0001000".into();
    link.source_id = "48020000".into();
    link.connections = 1;
    link.backoff_initial_ms = 50;
    link.backoff_max_ms = 1_000;
    config.hosts = vec![link];
    config.routes = vec![posbridge::infra::config::RouteConfig {
        prefix: "622202".into(),
        target: "cups".into(),
        fallback: None,
    }];
}

/// Runs the demo, writing what the terminal and the phone show to `out`. With `five_roles`, the
/// sale goes through a simulated UnionPay host (`posbridge sim host`) instead of the local
/// ledger. Returns an error unless the sale is approved.
pub async fn run(out: &mut (dyn Write + Send), five_roles: bool) -> anyhow::Result<()> {
    let mut config = config();
    let host = if five_roles {
        let (addr, handle) =
            crate::host::SimHost::start(crate::host::SimHostConfig::default()).await?;
        route_to_host(&mut config, addr);
        Some((addr, handle))
    } else {
        None
    };
    let gateway = server::open(config).await?;
    seed(&gateway).await?;
    let listeners = Listeners::bind(&gateway.config).await?;
    let terminal_addr = listeners.terminal.local_addr()?;
    let wallet_url = format!("http://{}", listeners.wallet_api.local_addr()?);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(server::run(gateway.clone(), listeners, async move {
        let _ = stopped.await;
    }));
    writeln!(out, "posbridge demo")?;
    writeln!(
        out,
        "  gateway: terminals on {terminal_addr} (cups-pos), wallet API on {wallet_url}"
    )?;
    writeln!(
        out,
        "  journal: embedded SQLite in memory; security module: software, demo keys (NOT for production)"
    )?;
    if let Some((addr, handle)) = &host {
        writeln!(
            out,
            "  five roles: card range 622202 routed to a simulated UnionPay host on {addr} (cups-host)"
        )?;
        for _ in 0..200 {
            if handle.signed_on_connections() > 0 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
    }
    let outcome = sale(out, terminal_addr, &wallet_url).await;
    if let Some((_, handle)) = &host {
        for entry in handle.ledger() {
            writeln!(
                out,
                "\n[host] ledger: {} {} TID {} STAN {} RRN {} auth {} -> {:?}",
                entry.pan,
                entry.amount_minor,
                entry.tid,
                entry.stan,
                entry.rrn,
                entry.auth_code,
                entry.state
            )?;
        }
    }
    let _ = stop.send(());
    server.await.context("gateway task")??;
    if let Some((_, handle)) = host {
        handle.stop().await;
    }
    outcome
}

async fn sale(
    out: &mut (dyn Write + Send),
    terminal_addr: std::net::SocketAddr,
    wallet_url: &str,
) -> anyhow::Result<()> {
    let spec = Arc::new(posbridge_codecs::Spec::builtin("cups-pos")?);
    let terminal_module = posbridge_hsm::open(&posbridge_hsm::HsmConfig::default())?;
    let identity = TerminalIdentity {
        tid: TID.into(),
        mid: MID.into(),
        master_key: "tmk/demo".into(),
        operator: "01".into(),
        batch: "000001".into(),
    };
    let mut terminal =
        TerminalClient::connect(terminal_addr, spec, identity, terminal_module, 100).await?;
    terminal.sign_on().await?;
    writeln!(
        out,
        "\n[terminal {TID}] signed on: PIN and MAC working keys received and checked (KCV)"
    )?;
    let amount = Money {
        amount_minor: 2372,
        currency: 156,
    };
    let order = terminal.request_order(amount).await?;
    if order.response_code != "00" {
        anyhow::bail!("order refused: {}", describe(&order.response_code));
    }
    let payload = order.payload.clone().context("no code in the answer")?;
    writeln!(
        out,
        "[terminal {TID}] S101 sale {amount}, batch {} voucher {}: scan to pay",
        order.batch, order.voucher
    )?;
    writeln!(
        out,
        "{}",
        posbridge::infra::qr::render::terminal(
            &payload,
            posbridge::infra::qr::render::Background::Dark
        )?
    )?;
    writeln!(out, "  {payload}")?;
    writeln!(
        out,
        "  MERCHANT BEST TRANSPORT  TERMINAL {TID}  OPERATOR 01  AMOUNT {amount}"
    )?;

    let phone_module = posbridge_hsm::open(&posbridge_hsm::HsmConfig::default())?;
    let wallet = WalletClient::new(wallet_url, APP_ID, APP_KEY, phone_module, "pek/wallet");
    let view = wallet.resolve(&payload).await?;
    writeln!(
        out,
        "\n[phone] S104 scanned: pay {} to {} ({}), terminal {}, voucher {}",
        view.amount_text,
        view.merchant_name,
        view.merchant_city,
        view.tid.as_deref().unwrap_or("-"),
        view.voucher.as_deref().unwrap_or("-")
    )?;
    writeln!(
        out,
        "[phone] S105 payer confirms and enters the PIN (sent as an ISO 9564 format 4 block)"
    )?;
    let query = {
        let voucher = order.voucher.clone();
        tokio::spawn(async move { terminal.query_result(&voucher).await })
    };
    let paid = wallet
        .pay(&payload, PAN, Some(PIN), "demo-payment-1", None)
        .await?;
    let receipt = query.await.context("terminal task")??;
    let payment = paid.payment.context("payment not processed")?;
    writeln!(
        out,
        "\n[phone] S108 {} ({})",
        describe(&payment.response_code),
        payment.message
    )?;
    if let Some(order) = &payment.order {
        writeln!(
            out,
            "  {} {}  card {}  ref {}  auth {}",
            order.merchant_name,
            order.amount_text,
            order.masked_pan.as_deref().unwrap_or("-"),
            order.rrn.as_deref().unwrap_or("-"),
            order.auth_code.as_deref().unwrap_or("-")
        )?;
    }
    writeln!(out, "\n[terminal {TID}] S108 receipt\n{receipt}")?;
    if receipt.response_code != "00" {
        anyhow::bail!("sale not approved: {}", describe(&receipt.response_code));
    }
    Ok(())
}
