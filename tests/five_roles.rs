//! The five-role deployment over real sockets: terminal -> posbridge -> simulated UnionPay host
//! (cups-host, MACs, PIN translated to the host's zone key), with the host's faults, reversals
//! that are never lost, and a reconciliation of posbridge's journal against the host's ledger.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use posbridge::domain::money::Money;
use posbridge_sim::host::{
    Condition, DeclineRule, Fault, FaultRule, LedgerState, RandomFaults, SimHost, SimHostConfig,
    SimHostHandle,
};
use std::time::Duration;

async fn host(config: SimHostConfig) -> (std::net::SocketAddr, SimHostHandle) {
    SimHost::start(config).await.unwrap()
}

fn five_roles(
    config: &mut posbridge::infra::config::Config,
    host_addr: std::net::SocketAddr,
    sale_timeout_ms: u64,
) {
    posbridge_sim::demo::route_to_host(config, host_addr);
    config.hosts[0].connections = 2;
    config.upstream.sale_timeout_ms = sale_timeout_ms;
    config.upstream.reversal_retry_initial_ms = 100;
    config.upstream.reversal_retry_max_ms = 400;
    config.upstream.reversal_poll_ms = 50;
}

async fn signed_on(handle: &SimHostHandle) {
    for _ in 0..400 {
        if handle.signed_on_connections() > 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("posbridge never signed on to the host");
}

/// A five-role configuration file for a `posbridge serve` process on `journal` and `host`.
fn config_file(
    dir: &std::path::Path,
    journal: &TestJournal,
    host: std::net::SocketAddr,
    sale_timeout_ms: u64,
) -> std::path::PathBuf {
    let path = dir.join("posbridge.toml");
    let text = format!(
        "[journal]\nurl = \"{}\"\nschema = \"{}\"\n[terminal]\nlisten = \"127.0.0.1:0\"\n[wallet_api]\nlisten = \"127.0.0.1:0\"\n\
         [metrics]\nlisten = \"127.0.0.1:0\"\n[upstream]\nsale_timeout_ms = {sale_timeout_ms}\nreversal_poll_ms = 100\n\
         [[hosts]]\nname = \"cups\"\naddrs = [\"{host}\"]\ndialect = \"cups-host\"\nconnections = 1\nmac_key = \"zak/upstream\"\n\
         pin_key = \"zpk/upstream\"\nzmk = \"zmk/upstream\"\ndestination_id = \"0001000\"\nsource_id = \"48020000\"\n\
         backoff_initial_ms = 50\n[[routes]]\nprefix = \"622202\"\ntarget = \"cups\"\n",
        journal.config.url.as_deref().unwrap(),
        journal.config.schema,
    );
    std::fs::write(&path, text).unwrap();
    path
}

fn when_amount_ends(suffix: &str) -> Condition {
    Condition {
        mti: Some("0200".into()),
        amount_suffix: Some(suffix.into()),
        ..Condition::default()
    }
}

async fn sale(
    terminal: &mut posbridge_sim::terminal::TerminalClient,
    wallet: &posbridge_sim::wallet::WalletClient,
    amount_minor: i64,
    key: &str,
) -> (String, String) {
    let order = terminal
        .request_order(Money {
            amount_minor,
            currency: CNY,
        })
        .await
        .unwrap();
    assert_eq!(order.response_code, "00", "{order:?}");
    let payload = order.payload.unwrap();
    let paid = wallet
        .pay(&payload, PAYER_PAN, Some(PAYER_PIN), key, None)
        .await
        .unwrap();
    (
        paid.response_code().unwrap_or("none").to_owned(),
        order.voucher,
    )
}

async fn count(store: &posbridge::store::journal::Store, sql: &str) -> i64 {
    let mut tx = store.begin().await.unwrap();
    let rows = tx.query(sql, &[]).await.unwrap();
    tx.commit().await.unwrap();
    rows[0].i64(0).unwrap()
}

async fn until(what: &str, mut check: impl AsyncFnMut() -> bool) {
    for _ in 0..600 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for: {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approvals_declines_timeouts_bad_macs_and_late_answers() {
    let (addr, handle) = host(SimHostConfig {
        decline: vec![DeclineRule {
            when: when_amount_ends("51"),
            code: "51".into(),
        }],
        faults: vec![
            FaultRule {
                when: when_amount_ends("91"),
                fault: Fault::NoResponse,
            },
            FaultRule {
                when: when_amount_ends("92"),
                fault: Fault::WrongMac,
            },
            FaultRule {
                when: when_amount_ends("93"),
                fault: Fault::DuplicateResponse,
            },
            FaultRule {
                when: when_amount_ends("94"),
                fault: Fault::LateResponse,
            },
        ],
        late_response_ms: 1_500,
        ..SimHostConfig::default()
    })
    .await;
    let journal = TestJournal::new(Backend::Postgres);
    let running = start_with(&journal, |c| five_roles(c, addr, 800)).await;
    signed_on(&handle).await;
    let mut terminal = terminal_client(&running).await;
    terminal.sign_on().await.unwrap();
    let wallet = wallet_client(&running);
    let store = running.seeded.store.clone();

    // Happy path: approved by the host, PIN translated to its zone key, receipt from the 0210.
    let (code, voucher) = sale(&mut terminal, &wallet, 1_000, "h1").await;
    assert_eq!(code, "00");
    let receipt = terminal.query_result(&voucher).await.unwrap();
    assert_eq!(receipt.response_code, "00");
    let approved: Vec<_> = handle
        .ledger()
        .into_iter()
        .filter(|e| e.state == LedgerState::Approved)
        .collect();
    assert_eq!(approved.len(), 1);
    assert_eq!(
        receipt.auth_code.as_deref(),
        Some(approved[0].auth_code.as_str())
    );
    // Nothing moved in the local ledger: the issuer holds the account.
    assert_eq!(assert_ledger_conserved(&store).await, OPENING);

    // A host decline is mapped to the phone and the terminal; nothing to reverse.
    let (code, voucher) = sale(&mut terminal, &wallet, 2_051, "h2").await;
    assert_eq!(code, "51");
    assert_eq!(
        terminal.query_result(&voucher).await.unwrap().response_code,
        "51"
    );

    // No answer: 98 to the phone, the sale is reversed once the host answers the reversal.
    let (code, _) = sale(&mut terminal, &wallet, 3_091, "h3").await;
    assert_eq!(code, "98");
    // A wrong MAC on an approval cannot be trusted: reversed too.
    let (code, _) = sale(&mut terminal, &wallet, 4_092, "h4").await;
    assert_eq!(code, "98");
    // A duplicate 0210: the first answer counts, the second is journaled as unmatched.
    let (code, _) = sale(&mut terminal, &wallet, 5_093, "h5").await;
    assert_eq!(code, "00");
    // An approval arriving after the timeout (the reversal is already queued) never pays.
    let (code, voucher) = sale(&mut terminal, &wallet, 6_094, "h6").await;
    assert_eq!(code, "98");
    until("three reversals acknowledged", async || {
        count(
            &store,
            "SELECT COUNT(*) FROM reversals WHERE status = 'DONE'",
        )
        .await
            == 3
    })
    .await;
    until("late and duplicate answers journaled", async || {
        count(&store, "SELECT COUNT(*) FROM unmatched_responses").await >= 2
    })
    .await;
    let order = running
        .seeded
        .orders
        .order_by_voucher(TID, "000001", &voucher)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        order.state, "DECLINED",
        "a late approval must never turn the order PAID"
    );
    let ledger = handle.ledger();
    let state_of = |amount: u64| {
        ledger
            .iter()
            .find(|e| e.amount_minor == amount)
            .map(|e| e.state)
    };
    assert_eq!(state_of(1_000), Some(LedgerState::Approved));
    assert_eq!(state_of(5_093), Some(LedgerState::Approved));
    assert_eq!(state_of(2_051), None);
    for reversed in [3_091, 4_092, 6_094] {
        assert_eq!(
            state_of(reversed),
            Some(LedgerState::Reversed),
            "amount {reversed}"
        );
    }
    running.stop().await;
    handle.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reversals_wait_for_a_host_that_went_away() {
    let (addr, handle) = host(SimHostConfig {
        faults: vec![FaultRule {
            when: when_amount_ends("91"),
            fault: Fault::Disconnect,
        }],
        ..SimHostConfig::default()
    })
    .await;
    let journal = TestJournal::new(Backend::Sqlite);
    let running = start_with(&journal, |c| five_roles(c, addr, 800)).await;
    signed_on(&handle).await;
    let mut terminal = terminal_client(&running).await;
    terminal.sign_on().await.unwrap();
    let wallet = wallet_client(&running);
    // The host drops the connection mid-sale: ambiguous, reversed after the link reconnects.
    let (code, _) = sale(&mut terminal, &wallet, 7_091, "d1").await;
    assert_eq!(code, "98");
    let store = running.seeded.store.clone();
    until("reversal acknowledged after reconnect", async || {
        count(
            &store,
            "SELECT COUNT(*) FROM reversals WHERE status = 'DONE'",
        )
        .await
            == 1
    })
    .await;
    assert_eq!(handle.ledger()[0].state, LedgerState::Reversed);
    // A paid sale reversed by the terminal (0400) is reversed at the host too.
    let (code, voucher) = sale(&mut terminal, &wallet, 1_200, "d2").await;
    assert_eq!(code, "00");
    assert_eq!(
        terminal
            .reverse(
                &voucher,
                Money {
                    amount_minor: 1_200,
                    currency: CNY
                }
            )
            .await
            .unwrap()
            .response_code,
        "00"
    );
    until("terminal reversal delivered", async || {
        count(
            &store,
            "SELECT COUNT(*) FROM reversals WHERE status = 'DONE'",
        )
        .await
            == 2
    })
    .await;
    assert!(
        handle
            .ledger()
            .iter()
            .all(|e| e.state == LedgerState::Reversed)
    );
    // A refund of a sale the host approved goes there as a 0220 advice; at most what is left.
    let (code, voucher) = sale(&mut terminal, &wallet, 2_000, "d4").await;
    assert_eq!(code, "00");
    let cny = |amount_minor| Money {
        amount_minor,
        currency: CNY,
    };
    assert_eq!(
        terminal
            .refund(&voucher, cny(500))
            .await
            .unwrap()
            .response_code,
        "00"
    );
    assert_eq!(
        terminal
            .refund(&voucher, cny(1_600))
            .await
            .unwrap()
            .response_code,
        "13"
    );
    until("refund advice acknowledged", async || {
        count(&store, "SELECT COUNT(*) FROM advices WHERE status = 'DONE'").await == 1
    })
    .await;
    let refunded = handle
        .ledger()
        .into_iter()
        .find(|e| e.amount_minor == 2_000)
        .unwrap();
    assert_eq!(
        (refunded.state, refunded.refunded_minor),
        (LedgerState::Approved, 500)
    );
    // A void of a sale the host approved is forwarded as its reversal.
    let (code, voucher) = sale(&mut terminal, &wallet, 1_300, "d3").await;
    assert_eq!(code, "00");
    let voided = terminal
        .void(
            &voucher,
            Money {
                amount_minor: 1_300,
                currency: CNY,
            },
        )
        .await
        .unwrap();
    assert_eq!(voided.response_code, "00");
    until("void delivered as a reversal", async || {
        count(
            &store,
            "SELECT COUNT(*) FROM reversals WHERE status = 'DONE'",
        )
        .await
            == 3
    })
    .await;
    assert!(
        handle
            .ledger()
            .iter()
            .all(|e| e.state == LedgerState::Reversed || e.amount_minor == 2_000)
    );
    running.stop().await;
    handle.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateway_processes_on_one_database_send_each_reversal_once() {
    let (addr, handle) = host(SimHostConfig {
        faults: vec![FaultRule {
            when: when_amount_ends("91"),
            fault: Fault::NoResponse,
        }],
        ..SimHostConfig::default()
    })
    .await;
    let journal = TestJournal::new(Backend::Postgres);
    let first = start_with(&journal, |c| five_roles(c, addr, 500)).await;
    // The second gateway is another OS process on the same journal (schema) and host; it
    // takes its share of the reversal queue.
    let dir = tempfile::tempdir().unwrap();
    let second = ServeProcess::start(&config_file(dir.path(), &journal, addr, 500), &[]);
    signed_on(&handle).await;
    let mut terminal = terminal_client(&first).await;
    terminal.sign_on().await.unwrap();
    let wallet = wallet_client(&first);
    for n in 0..6 {
        let (code, _) = sale(&mut terminal, &wallet, 10_091 + n * 100, &format!("t{n}")).await;
        assert_eq!(code, "98");
    }
    let store = first.seeded.store.clone();
    until("all reversals acknowledged", async || {
        count(
            &store,
            "SELECT COUNT(*) FROM reversals WHERE status = 'DONE'",
        )
        .await
            == 6
    })
    .await;
    assert_eq!(
        count(&store, "SELECT COUNT(*) FROM reversals WHERE attempts <> 1").await,
        0,
        "each reversal sent exactly once"
    );
    assert!(
        handle
            .ledger()
            .iter()
            .all(|e| e.state == LedgerState::Reversed)
    );
    drop(second);
    first.stop().await;
    handle.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn randomised_faults_reconcile_with_the_host() {
    let seed: u64 = std::env::var("POSBRIDGE_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20261126);
    println!("seed {seed}");
    let (addr, handle) = host(SimHostConfig {
        random_faults: Some(RandomFaults {
            seed,
            no_response: 0.02,
            late_response: 0.02,
            duplicate_response: 0.02,
            disconnect: 0.01,
            wrong_mac: 0.02,
        }),
        late_response_ms: 700,
        accounts: vec![posbridge_sim::host::AccountConfig {
            pan: PAYER_PAN.into(),
            balance_minor: 1_000_000_000,
            pin: Some(PAYER_PIN.into()),
            pvv: None,
        }],
        ..SimHostConfig::default()
    })
    .await;
    let journal = TestJournal::new(Backend::Postgres);
    let running = start_with(&journal, |c| five_roles(c, addr, 400)).await;
    signed_on(&handle).await;
    let sales = 1_000u32;
    let workers = 10u32;
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..workers {
        // One terminal per worker: a sign-on replaces that terminal's working keys.
        let tid = format!("200000{worker:02}");
        posbridge::registry::register_terminal(
            &running.seeded.store,
            &posbridge::registry::Terminal {
                tid: tid.clone(),
                mid: MID.into(),
                acquirer: "48020000".into(),
                master_key_label: "tmk/demo".into(),
                enabled: true,
                key_slot: 0,
            },
        )
        .await
        .unwrap();
        let wallet = wallet_client(&running);
        let mut terminal = {
            let spec = std::sync::Arc::new(posbridge_codecs::Spec::builtin("cups-pos").unwrap());
            let module = posbridge_hsm::open(&posbridge_hsm::HsmConfig::default()).unwrap();
            posbridge_sim::terminal::TerminalClient::connect(
                running.terminal,
                spec,
                posbridge_sim::terminal::TerminalIdentity {
                    tid,
                    mid: MID.into(),
                    master_key: "tmk/demo".into(),
                    operator: "01".into(),
                    batch: "000001".into(),
                },
                module,
                0,
            )
            .await
            .unwrap()
        };
        tasks.spawn(async move {
            terminal.sign_on().await.unwrap();
            let mut codes = Vec::new();
            for n in 0..sales / workers {
                let (code, _) = sale(
                    &mut terminal,
                    &wallet,
                    100 + i64::from(n),
                    &format!("r{worker}-{n}"),
                )
                .await;
                codes.push(code);
            }
            codes
        });
    }
    let mut approved = 0;
    while let Some(codes) = tasks.join_next().await {
        approved += codes.unwrap().iter().filter(|c| c.as_str() == "00").count();
    }
    let store = running.seeded.store.clone();
    until("every queued reversal acknowledged", async || {
        count(
            &store,
            "SELECT COUNT(*) FROM reversals WHERE status IN ('QUEUED', 'STANDBY')",
        )
        .await
            == 0
    })
    .await;
    // Reconcile: every forwarded sale is completed on both sides or reversed on both sides.
    let mut tx = store.begin().await.unwrap();
    let rows = tx
        .query(
            "SELECT f.tid, f.stan, f.state, o.state, r.status FROM forwarded_sales f JOIN orders o ON o.order_id = f.order_id \
             JOIN reversals r ON r.forward_id = f.forward_id",
            &[],
        )
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(rows.len(), sales as usize, "every sale forwarded once");
    let ledger = handle.ledger();
    let host_state = |tid: &str, stan: &str| {
        ledger
            .iter()
            .find(|e| e.tid == tid && e.stan == stan)
            .map(|e| e.state)
    };
    let mut paid = 0;
    for row in &rows {
        let (tid, stan) = (row.text(0).unwrap(), row.text(1).unwrap());
        let (forward_state, order_state, reversal) = (
            row.text(2).unwrap(),
            row.text(3).unwrap(),
            row.text(4).unwrap(),
        );
        match (order_state.as_str(), reversal.as_str()) {
            ("PAID", "CANCELLED") => {
                paid += 1;
                assert_eq!(
                    host_state(&tid, &stan),
                    Some(LedgerState::Approved),
                    "{tid}/{stan} paid here, not at the host"
                );
            }
            (_, "DONE") => assert!(
                matches!(
                    host_state(&tid, &stan),
                    Some(LedgerState::Reversed | LedgerState::ReversedUnseen)
                ),
                "{tid}/{stan} reversed here, not at the host"
            ),
            // Never sent (the link was down for a moment): the order is still payable.
            ("CREATED", "CANCELLED") => assert_eq!(
                host_state(&tid, &stan),
                None,
                "{tid}/{stan} not sent but moved at the host"
            ),
            ("DECLINED", "CANCELLED") => assert_eq!(
                host_state(&tid, &stan),
                None,
                "{tid}/{stan} declined ({forward_state}) but moved at the host"
            ),
            other => panic!("{tid}/{stan}: unexpected {other:?} ({forward_state})"),
        }
    }
    assert_eq!(paid, approved);
    let host_approved = ledger
        .iter()
        .filter(|e| e.state == LedgerState::Approved)
        .count();
    assert_eq!(
        host_approved, paid,
        "the host approved sales posbridge does not know as paid (seed {seed})"
    );
    println!("{sales} sales: {paid} paid, {} reversed", rows.len() - paid);
    running.stop().await;
    handle.stop().await;
}

#[test]
fn a_sale_interrupted_by_sigkill_is_reversed_after_restart() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let (addr, handle) = runtime.block_on(host(SimHostConfig {
        faults: vec![FaultRule {
            when: when_amount_ends("91"),
            fault: Fault::NoResponse,
        }],
        ..SimHostConfig::default()
    }));
    let dir = tempfile::tempdir().unwrap();
    let journal = TestJournal::new(Backend::Postgres);
    let config = config_file(dir.path(), &journal, addr, 60_000);
    seed_demo(&config);
    let mut server = ServeProcess::start(&config, &[]);
    runtime.block_on(async {
        signed_on(&handle).await;
        let spec = std::sync::Arc::new(posbridge_codecs::Spec::builtin("cups-pos").unwrap());
        let keys = posbridge_hsm::open(&posbridge_hsm::HsmConfig::default()).unwrap();
        let identity = posbridge_sim::terminal::TerminalIdentity {
            tid: posbridge_sim::demo::TID.into(),
            mid: posbridge_sim::demo::MID.into(),
            master_key: "tmk/demo".into(),
            operator: "01".into(),
            batch: "000001".into(),
        };
        let mut terminal = posbridge_sim::terminal::TerminalClient::connect(
            server.terminal,
            spec,
            identity,
            keys,
            700,
        )
        .await
        .unwrap();
        terminal.sign_on().await.unwrap();
        let order = terminal
            .request_order(Money {
                amount_minor: 991,
                currency: CNY,
            })
            .await
            .unwrap();
        let payload = order.payload.unwrap();
        let phone_keys = posbridge_hsm::open(&posbridge_hsm::HsmConfig::default()).unwrap();
        let wallet = posbridge_sim::wallet::WalletClient::new(
            &server.wallet_url,
            posbridge_sim::demo::APP_ID,
            posbridge_sim::demo::APP_KEY,
            phone_keys,
            "pek/wallet",
        );
        // The phone's payment hangs: the host took the money and will never answer.
        tokio::spawn(async move {
            wallet
                .pay(
                    &payload,
                    posbridge_sim::demo::PAN,
                    Some(posbridge_sim::demo::PIN),
                    "kill-1",
                    None,
                )
                .await
        });
        until("the host has the sale", async || {
            !handle.ledger().is_empty()
        })
        .await;
    });
    assert_eq!(handle.ledger()[0].state, LedgerState::Approved);
    // posbridge dies mid-sale: no answer recorded, nothing in memory survives.
    server.signal("KILL");
    let restarted =
        ServeProcess::start(&config, &[("POSBRIDGE__UPSTREAM__SALE_TIMEOUT_MS", "500")]);
    runtime.block_on(until(
        "the host reversed the interrupted sale",
        async || handle.ledger()[0].state == LedgerState::Reversed,
    ));
    let store = runtime.block_on(async {
        posbridge::store::journal::open(&journal.config)
            .await
            .unwrap()
    });
    // The host reverses before it answers; the gateway records the reversal as delivered once
    // the answer is in, so that is waited for, not assumed.
    runtime.block_on(until(
        "the journal records the reversal as delivered",
        async || {
            count(
                &store,
                "SELECT COUNT(*) FROM reversals WHERE status = 'DONE'",
            )
            .await
                == 1
        },
    ));
    let declined = runtime.block_on(count(
        &store,
        "SELECT COUNT(*) FROM orders WHERE state = 'DECLINED'",
    ));
    assert_eq!(declined, 1, "the interrupted order is declined, never paid");
    drop(restarted);
    runtime.block_on(handle.stop());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_and_metrics_follow_the_host_link() {
    let (addr, handle) = host(SimHostConfig::default()).await;
    let journal = TestJournal::new(Backend::Sqlite);
    let running = start_with(&journal, |c| five_roles(c, addr, 800)).await;
    signed_on(&handle).await;
    let http = reqwest::Client::new();
    let ready = format!("http://{}/health/ready", running.metrics);
    let status =
        async |http: &reqwest::Client| http.get(&ready).send().await.unwrap().status().as_u16();
    until("ready with the host signed on", async || {
        status(&http).await == 200
    })
    .await;
    let metrics = http
        .get(format!("http://{}/metrics", running.metrics))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("posbridge_upstream_connections_signed_on{host=\"cups\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("posbridge_reversals_queued 0"),
        "{metrics}"
    );
    handle.stop().await;
    until("not ready once the host is gone", async || {
        status(&http).await == 503
    })
    .await;
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_falls_back_while_its_primary_host_is_down() {
    let (addr, handle) = host(SimHostConfig::default()).await;
    // A primary nobody listens on: its link never signs on.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let journal = TestJournal::new(Backend::Sqlite);
    let running = start_with(&journal, |c| {
        five_roles(c, addr, 800);
        let mut primary = c.hosts[0].clone();
        primary.name = "primary".into();
        primary.addrs = vec![dead.to_string()];
        c.hosts.push(primary);
        c.routes = vec![posbridge::infra::config::RouteConfig {
            prefix: "622202".into(),
            target: "primary".into(),
            fallback: Some("cups".into()),
        }];
    })
    .await;
    signed_on(&handle).await;
    let mut terminal = terminal_client(&running).await;
    terminal.sign_on().await.unwrap();
    let wallet = wallet_client(&running);
    let (code, _) = sale(&mut terminal, &wallet, 1_500, "fb").await;
    assert_eq!(code, "00");
    assert_eq!(handle.ledger().len(), 1, "the fallback host approved it");
    running.stop().await;
    handle.stop().await;
}

/// A gateway routing every card to a simulated host (with `faults`), on `backend`, with a
/// signed-on terminal and a wallet app: the set-up of the regression tests below.
struct Rig {
    running: Running,
    handle: SimHostHandle,
    terminal: posbridge_sim::terminal::TerminalClient,
    wallet: posbridge_sim::wallet::WalletClient,
    _journal: TestJournal,
}

async fn rig(faults: Vec<FaultRule>, backend: Backend, sale_timeout_ms: u64) -> Rig {
    let (addr, handle) = host(SimHostConfig {
        faults,
        ..SimHostConfig::default()
    })
    .await;
    let journal = TestJournal::new(backend);
    let running = start_with(&journal, |c| five_roles(c, addr, sale_timeout_ms)).await;
    signed_on(&handle).await;
    let mut terminal = terminal_client(&running).await;
    terminal.sign_on().await.unwrap();
    let wallet = wallet_client(&running);
    Rig {
        running,
        handle,
        terminal,
        wallet,
        _journal: journal,
    }
}

/// Regression (lifecycle issue): a terminal reversal (0400) that arrived while its forwarded
/// sale was AUTHORIZING was answered 00 and nothing was done, so the host's approval charged
/// the payer. Now the 0400 cancels the order and queues the host reversal before it is
/// answered; the approval that follows cannot make the order paid, and the host ends with the
/// sale reversed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminal_reversal_while_authorising_reverses_at_the_host() {
    let late = vec![FaultRule {
        when: when_amount_ends("77"),
        fault: Fault::LateResponse,
    }];
    let Rig {
        running,
        handle,
        mut terminal,
        wallet,
        _journal,
    } = rig(late, Backend::Postgres, 10_000).await;
    let amount = Money {
        amount_minor: 4_277,
        currency: CNY,
    };
    let order = terminal.request_order(amount).await.unwrap();
    let payload = order.payload.clone().unwrap();
    let paying = tokio::spawn(async move {
        wallet
            .pay(&payload, PAYER_PAN, Some(PAYER_PIN), "ra-1", None)
            .await
    });
    let store = running.seeded.store.clone();
    until("the sale is at the host", async || {
        count(
            &store,
            "SELECT COUNT(*) FROM orders WHERE state = 'AUTHORIZING'",
        )
        .await
            == 1
    })
    .await;
    let reversed = terminal.reverse(&order.voucher, amount).await.unwrap();
    assert_eq!(reversed.response_code, "00");
    assert_eq!(
        count(
            &store,
            "SELECT COUNT(*) FROM reversals WHERE status = 'QUEUED'"
        )
        .await,
        1,
        "the reversal is durable before the terminal is answered"
    );
    let paid = paying.await.unwrap().unwrap();
    assert_eq!(
        paid.response_code(),
        Some("98"),
        "the late approval is not a payment"
    );
    until("the host reversed the sale", async || {
        handle
            .ledger()
            .first()
            .is_some_and(|e| e.state == LedgerState::Reversed)
    })
    .await;
    assert_eq!(
        count(&store, "SELECT COUNT(*) FROM orders WHERE state = 'PAID'").await,
        0
    );
    // Regression (conformance issue): the reversal reused the sale's STAN in field 11. It has
    // its own (kept for repeats); field 90 carries the sale's.
    let mut tx = store.begin().await.unwrap();
    let row = tx
        .query(
            "SELECT f.stan, r.message FROM forwarded_sales f JOIN reversals r ON r.forward_id = f.forward_id",
            &[],
        )
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let (sale_stan, message) = (row[0].text(0).unwrap(), row[0].text(1).unwrap());
    let fields: serde_json::Value = serde_json::from_str(&message).unwrap();
    assert_ne!(fields["fields"]["11"], sale_stan.as_str());
    assert_eq!(&fields["fields"]["90"].as_str().unwrap()[4..10], sale_stan);
    running.stop().await;
}

/// Regression (lifecycle issue): voiding an upstream sale after partial refund advices sent a
/// reversal of the full amount, so the payer was refunded twice. Now a void after an advice
/// reached the host is refused (12) and nothing is reversed; the rest can be refunded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_void_after_a_delivered_refund_advice_is_refused() {
    let Rig {
        running,
        handle,
        mut terminal,
        wallet,
        _journal,
    } = rig(Vec::new(), Backend::Sqlite, 5_000).await;
    let (code, voucher) = sale(&mut terminal, &wallet, 3_000, "va-1").await;
    assert_eq!(code, "00");
    let cny = |amount_minor| Money {
        amount_minor,
        currency: CNY,
    };
    assert_eq!(
        terminal
            .refund(&voucher, cny(1_000))
            .await
            .unwrap()
            .response_code,
        "00"
    );
    let store = running.seeded.store.clone();
    until("the refund advice is delivered", async || {
        count(&store, "SELECT COUNT(*) FROM advices WHERE status = 'DONE'").await == 1
    })
    .await;
    let void = terminal.void(&voucher, cny(3_000)).await.unwrap();
    assert_eq!(
        void.response_code, "12",
        "a delivered advice cannot be withdrawn"
    );
    assert_eq!(
        count(
            &store,
            "SELECT COUNT(*) FROM reversals WHERE status IN ('QUEUED', 'DONE')"
        )
        .await,
        0,
        "nothing is reversed"
    );
    assert_eq!(
        terminal
            .refund(&voucher, cny(2_000))
            .await
            .unwrap()
            .response_code,
        "00"
    );
    until("the second advice is delivered", async || {
        count(&store, "SELECT COUNT(*) FROM advices WHERE status = 'DONE'").await == 2
    })
    .await;
    let entry = &handle.ledger()[0];
    assert_eq!(
        (entry.state, entry.refunded_minor),
        (LedgerState::Approved, 3_000),
        "the host refunded exactly the sale"
    );
    running.stop().await;
}

/// Regression (security issue): an unMACed decline cancelled the standby reversal, so a sale
/// the host had approved was never reversed. Now an answer without a MAC is ambiguous: the
/// phone is told 98 and the sale is reversed at the host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unmaced_decline_leaves_the_reversal_armed() {
    let forged = vec![FaultRule {
        when: when_amount_ends("66"),
        fault: Fault::UnmacedDecline,
    }];
    let Rig {
        running,
        handle,
        mut terminal,
        wallet,
        _journal,
    } = rig(forged, Backend::Sqlite, 5_000).await;
    let (code, _) = sale(&mut terminal, &wallet, 5_166, "um-1").await;
    assert_eq!(code, "98", "an unMACed decline is not believed");
    until("the host reversed the approved sale", async || {
        handle
            .ledger()
            .first()
            .is_some_and(|e| e.state == LedgerState::Reversed)
    })
    .await;
    running.stop().await;
}

/// Regression (conformance issue): a host's 55 (wrong PIN) ended the order at once, though the
/// wallet API and the terminal docs say the payer may try again. Now the order stays payable and
/// the next attempt, with the right PIN, is approved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_hosts_wrong_pin_the_payer_tries_again() {
    // The host's handle is held to the end: dropping it stops the host.
    let Rig {
        running,
        handle: _handle,
        mut terminal,
        wallet,
        _journal,
    } = rig(Vec::new(), Backend::Sqlite, 5_000).await;
    let order = terminal
        .request_order(Money {
            amount_minor: 1_234,
            currency: CNY,
        })
        .await
        .unwrap();
    let payload = order.payload.unwrap();
    let wrong = wallet
        .pay(&payload, PAYER_PAN, Some("9999"), "wp-1", None)
        .await
        .unwrap();
    assert_eq!(wrong.response_code(), Some("55"));
    let right = wallet
        .pay(&payload, PAYER_PAN, Some(PAYER_PIN), "wp-2", None)
        .await
        .unwrap();
    assert_eq!(right.response_code(), Some("00"), "the payer may try again");
    running.stop().await;
}

/// Scale-out: a reversal claimed by a gateway that is then killed (SIGKILL at the
/// `queue.claimed` failpoint: the claim committed, nothing sent yet) is taken over by another
/// gateway when the claim's lease ends, sent as a repeat, and reversed once at the host. The
/// gateway that took the sale has its reversal worker asleep, so the kill lands on the claim.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reversal_claimed_by_a_killed_gateway_is_delivered_once_by_another() {
    let (addr, handle) = host(SimHostConfig {
        faults: vec![FaultRule {
            when: when_amount_ends("91"),
            fault: Fault::NoResponse,
        }],
        ..SimHostConfig::default()
    })
    .await;
    let journal = TestJournal::new(Backend::Postgres);
    let first = start_with(&journal, |c| {
        five_roles(c, addr, 500);
        c.upstream.reversal_poll_ms = 3_600_000;
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(dir.path(), &journal, addr, 500);
    let mut doomed =
        ServeProcess::start(&config, &[("POSBRIDGE_FAILPOINTS", "queue.claimed=pause")]);
    signed_on(&handle).await;
    let mut terminal = terminal_client(&first).await;
    terminal.sign_on().await.unwrap();
    let (code, _) = sale(&mut terminal, &wallet_client(&first), 10_091, "doomed-1").await;
    assert_eq!(code, "98");
    until("the doomed gateway claimed the reversal", async || {
        doomed.log().contains("failpoint reached")
    })
    .await;
    doomed.signal("KILL");
    let store = first.seeded.store.clone();
    assert_eq!(
        count(
            &store,
            "SELECT COUNT(*) FROM reversals WHERE status = 'QUEUED' AND lease_token IS NOT NULL"
        )
        .await,
        1,
        "the dead gateway's claim is held"
    );
    let survivor = ServeProcess::start(&config, &[]);
    until("the survivor delivered the reversal", async || {
        count(
            &store,
            "SELECT COUNT(*) FROM reversals WHERE status = 'DONE'",
        )
        .await
            == 1
    })
    .await;
    assert_eq!(
        count(&store, "SELECT attempts FROM reversals").await,
        2,
        "the dead claim counted: the survivor's send is a repeat"
    );
    let ledger = handle.ledger();
    assert_eq!(ledger.len(), 1);
    assert_eq!(
        ledger[0].state,
        LedgerState::Reversed,
        "reversed once at the host"
    );
    drop(survivor);
    first.stop().await;
    handle.stop().await;
}

/// Regression (conformance review): a reversal's expiry was set when its sale was armed, so a
/// void more than `reversal_expiry_secs` (a day) after the sale expired at once and was never
/// sent: the payer stayed charged at the host. The sale's arm-time expiry is moved into the past
/// here, as a day's passing would; the void's reversal still reaches the host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_void_a_day_after_the_sale_still_reverses_at_the_host() {
    let Rig {
        running,
        handle,
        mut terminal,
        wallet,
        _journal,
    } = rig(Vec::new(), Backend::Sqlite, 5_000).await;
    let (code, voucher) = sale(&mut terminal, &wallet, 3_300, "day-1").await;
    assert_eq!(code, "00");
    let store = running.seeded.store.clone();
    let mut tx = store.begin().await.unwrap();
    tx.execute(
        "UPDATE reversals SET expires_at_ms = $1",
        &[(posbridge::store::journal::now_ms() - 1).into()],
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let void = terminal
        .void(
            &voucher,
            Money {
                amount_minor: 3_300,
                currency: CNY,
            },
        )
        .await
        .unwrap();
    assert_eq!(void.response_code, "00");
    until("the void's reversal is acknowledged", async || {
        count(
            &store,
            "SELECT COUNT(*) FROM reversals WHERE status = 'DONE'",
        )
        .await
            == 1
    })
    .await;
    assert_eq!(handle.ledger()[0].state, LedgerState::Reversed);
    running.stop().await;
    handle.stop().await;
}

/// Conformance issue: a host that matches reversals and advices by card gets field 2 in them.
/// The card number is sealed under the data key before the sale is armed (never in clear in the
/// journal), opened only to send, and destroyed once the sale is reversed, or when the
/// retention period of an approved sale has passed.
async fn reversals_and_advices_carry_the_sealed_card_number(backend: Backend) {
    let (addr, handle) = host(SimHostConfig {
        faults: vec![FaultRule {
            when: when_amount_ends("91"),
            fault: Fault::NoResponse,
        }],
        require_pan_in_reversals: true,
        ..SimHostConfig::default()
    })
    .await;
    let journal = TestJournal::new(backend);
    let running = start_with(&journal, |c| {
        five_roles(c, addr, 800);
        c.hosts[0].pan_in_reversals = true;
    })
    .await;
    signed_on(&handle).await;
    let mut terminal = terminal_client(&running).await;
    terminal.sign_on().await.unwrap();
    let wallet = wallet_client(&running);
    let store = running.seeded.store.clone();

    let (code, _) = sale(&mut terminal, &wallet, 3_091, "pan-1").await;
    assert_eq!(code, "98");
    let (code, voucher) = sale(&mut terminal, &wallet, 2_000, "pan-2").await;
    assert_eq!(code, "00");
    let refund = Money {
        amount_minor: 500,
        currency: CNY,
    };
    assert_eq!(
        terminal
            .refund(&voucher, refund)
            .await
            .unwrap()
            .response_code,
        "00"
    );
    until("the reversal and the advice are acknowledged", async || {
        count(
            &store,
            "SELECT COUNT(*) FROM reversals WHERE status = 'DONE'",
        )
        .await
            == 1
            && count(&store, "SELECT COUNT(*) FROM advices WHERE status = 'DONE'").await == 1
    })
    .await;
    // The host (which answers 30 to a reversal or advice without the sale's card) took both.
    let ledger = handle.ledger();
    let entry = |amount: u64| ledger.iter().find(|e| e.amount_minor == amount).unwrap();
    assert_eq!(entry(3_091).state, LedgerState::Reversed);
    assert_eq!(
        (entry(2_000).state, entry(2_000).refunded_minor),
        (LedgerState::Approved, 500)
    );
    // In the journal: sealed only, and only while it may still be needed.
    let mut tx = store.begin().await.unwrap();
    let rows = tx
        .query(
            "SELECT amount_minor, pan_sealed FROM forwarded_sales ORDER BY amount_minor",
            &[],
        )
        .await
        .unwrap();
    let stored: Vec<(i64, Option<Vec<u8>>)> = rows
        .iter()
        .map(|r| (r.i64(0).unwrap(), r.opt_bytes(1).unwrap()))
        .collect();
    let messages = tx
        .query(
            "SELECT message FROM reversals UNION ALL SELECT message FROM advices",
            &[],
        )
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(stored[0].0, 2_000);
    let sealed = stored[0]
        .1
        .as_ref()
        .expect("the approved sale keeps its sealed card");
    assert!(
        !sealed
            .windows(PAYER_PAN.len())
            .any(|w| w == PAYER_PAN.as_bytes()),
        "sealed, not clear"
    );
    assert_eq!(
        (stored[1].0, stored[1].1.as_ref()),
        (3_091, None),
        "the reversed sale's card number is destroyed"
    );
    for message in messages {
        assert!(!message.text(0).unwrap().contains(PAYER_PAN));
    }
    // Past the retention period, and with nothing queued, the approved sale's goes too.
    let config = posbridge::infra::config::UpstreamConfig {
        pan_retention_secs: 0,
        ..running.seeded.gateway.config.upstream.clone()
    };
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(
        posbridge::service::orders::forward::destroy_pans_no_longer_needed(&store, &config)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        count(
            &store,
            "SELECT COUNT(*) FROM forwarded_sales WHERE pan_sealed IS NOT NULL"
        )
        .await,
        0
    );
    running.stop().await;
    handle.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sealed_card_numbers_on_postgres() {
    reversals_and_advices_carry_the_sealed_card_number(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sealed_card_numbers_on_sqlite() {
    reversals_and_advices_carry_the_sealed_card_number(Backend::Sqlite).await;
}
