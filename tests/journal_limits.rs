//! The journal's limits on PostgreSQL: a pool that stays exhausted fails the request after
//! `pool_wait_timeout_ms` instead of waiting forever; `statement_timeout` is set on every
//! connection; and the URL's `sslmode` is honoured (this test server has no TLS, so `require`
//! must fail rather than silently connect in clear).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use posbridge::store::journal::{self, JournalError};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_wait_timeout_statement_timeout_and_sslmode() {
    let mut journal = TestJournal::new(Backend::Postgres);
    journal.config.pool_size = 1;
    journal.config.pool_wait_timeout_ms = 200;
    journal.config.statement_timeout_ms = 1_500;
    let store = journal::open(&journal.config).await.unwrap();
    let mut held = store.begin().await.unwrap();
    let rows = held.query("SHOW statement_timeout", &[]).await.unwrap();
    assert_eq!(rows[0].text(0).unwrap(), "1500ms");
    let Err(error) = store.begin().await else {
        panic!("a second transaction got a connection from a pool of one");
    };
    assert!(matches!(error, JournalError::Unavailable(_)), "{error}");
    // A statement that runs past statement_timeout is cancelled by the server.
    let slow = held.query("SELECT pg_sleep(5)", &[]).await;
    assert!(slow.is_err(), "statement_timeout did not apply");
    drop(held);
    let url = journal.config.url.clone().unwrap();
    let mut tls = journal.config.clone();
    tls.url = Some(format!("{url}?sslmode=require"));
    match journal::open(&tls).await {
        Ok(_) => panic!("sslmode=require connected to a server without TLS"),
        Err(error) => {
            let text = error.to_string().to_lowercase();
            assert!(text.contains("tls") || text.contains("ssl"), "{text}");
        }
    }
}

/// Regression (scale-out issue): the upstream STAN counter was per process and random at start,
/// so two gateways (or one after a restart) could send two sales with the same F11. STANs now
/// come from the journal: two gateways' stores drawing at once, then a third opened later (a
/// restart), never repeat one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_stans_are_unique_across_gateways_and_restarts() {
    use posbridge::store::counters::next_stan;
    let journal = TestJournal::new(Backend::Postgres);
    let a = journal::open(&journal.config).await.unwrap();
    let b = journal::open(&journal.config).await.unwrap();
    let draw = |store: posbridge::store::journal::Store| async move {
        let mut stans = Vec::new();
        for _ in 0..200 {
            let mut tx = store.begin().await.unwrap();
            stans.push(next_stan(&mut tx).await.unwrap());
            tx.commit().await.unwrap();
        }
        stans
    };
    let (first, second) = tokio::join!(draw(a), draw(b));
    let restarted = draw(journal::open(&journal.config).await.unwrap()).await;
    let mut all: Vec<String> = first.into_iter().chain(second).chain(restarted).collect();
    let drawn = all.len();
    assert!(all.iter().all(|s| s.len() == 6 && s != "000000"));
    all.sort();
    all.dedup();
    assert_eq!(all.len(), drawn, "a STAN was handed out twice");
}

/// Regression (scale-out issue): RRNs were twelve random digits, refused by the unique index
/// when two met (at a million sales the odds of one meeting are about 40%). They now come from
/// the journal: two gateways drawing at once and a third opened later never repeat one, on
/// both journals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rrns_are_unique_across_gateways_and_restarts() {
    use posbridge::store::counters::next_rrn;
    for backend in [Backend::Postgres, Backend::Sqlite] {
        let journal = TestJournal::new(backend);
        let draw = |store: posbridge::store::journal::Store| async move {
            let mut rrns = Vec::new();
            for _ in 0..200 {
                let mut tx = store.begin().await.unwrap();
                rrns.push(next_rrn(&mut tx).await.unwrap());
                tx.commit().await.unwrap();
            }
            rrns
        };
        let a = journal::open(&journal.config).await.unwrap();
        let first = draw(a).await;
        // SQLite belongs to one process: its "second gateway" is the same file opened again.
        let (second, third) = if backend == Backend::Postgres {
            let b = journal::open(&journal.config).await.unwrap();
            let c = journal::open(&journal.config).await.unwrap();
            tokio::join!(draw(b), draw(c))
        } else {
            let again = journal::open(&journal.config).await.unwrap();
            (draw(again.clone()).await, draw(again).await)
        };
        let mut all: Vec<String> = first.into_iter().chain(second).chain(third).collect();
        let drawn = all.len();
        assert!(
            all.iter()
                .all(|r| r.len() == 12 && r.bytes().all(|b| b.is_ascii_digit()))
        );
        all.sort();
        all.dedup();
        assert_eq!(all.len(), drawn, "{backend:?}: an RRN was handed out twice");
    }
}
