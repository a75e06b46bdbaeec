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
