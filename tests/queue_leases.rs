//! The one queue engine (`store::queue`) under reversals, advices and webhooks: a claim leases
//! its rows and commits before anything is sent; while the lease holds no other gateway takes
//! the row; when the claimer dies its rows come due at the lease's end and another takes them
//! over as a repeat; the dead claim's late outcome is then refused, so nothing is recorded twice.
//! Time is not waited for: a lease's end is its row's `next_attempt_at_ms`, moved by the test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use posbridge::registry::{self, Merchant};
use posbridge::store::journal::{self, Store, now_ms};
use posbridge::store::queue::{self, Outcome, Queue};

const OUTBOX: Queue = Queue {
    table: "outbox",
    id: "event_id",
    columns: "q.url, q.body",
    join: "",
    filter: "",
};

async fn store_with_events(journal: &TestJournal, count: usize) -> Store {
    let store = journal::open(&journal.config).await.unwrap();
    registry::register_merchant(
        &store,
        &Merchant {
            mid: MID.into(),
            name: "BEST TRANSPORT".into(),
            city: "BEIJING".into(),
            mcc: "4111".into(),
            country: "CN".into(),
            currency: CNY,
            account_id: String::new(),
            webhook_url: Some("http://127.0.0.1:9/hook".into()),
        },
    )
    .await
    .unwrap();
    let mut tx = store.begin().await.unwrap();
    for n in 0..count {
        tx.execute(
            "INSERT INTO outbox (event_id, mid, url, body, status, attempts, next_attempt_at_ms, created_at_ms, updated_at_ms) \
             VALUES ($1, $2, 'http://127.0.0.1:9/hook', '{}', 'QUEUED', 0, $3, $3, $3)",
            &[format!("event-{n:04}").into(), MID.into(), (now_ms() - 1).into()],
        )
        .await
        .unwrap();
    }
    tx.commit().await.unwrap();
    store
}

/// Ends every lease now, as the passing of its time would.
async fn end_leases(store: &Store) {
    let mut tx = store.begin().await.unwrap();
    tx.execute(
        "UPDATE outbox SET next_attempt_at_ms = $1 WHERE status = 'QUEUED'",
        &[(now_ms() - 1).into()],
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
}

async fn lease_taken_over_after_a_crash(backend: Backend) {
    let journal = TestJournal::new(backend);
    let a = store_with_events(&journal, 1).await;
    let b = journal::open(&journal.config).await.unwrap();

    let first = queue::claim(&a, &OUTBOX, 10, 60_000, None).await.unwrap();
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].attempt, 1);
    assert_eq!(first[0].row.text(0).unwrap(), "http://127.0.0.1:9/hook");
    // Leased: the other gateway finds nothing due.
    assert!(
        queue::claim(&b, &OUTBOX, 10, 60_000, None)
            .await
            .unwrap()
            .is_empty()
    );

    // Gateway A dies before recording; its lease ends; B takes the row over, as a repeat.
    end_leases(&a).await;
    let taken = queue::claim(&b, &OUTBOX, 10, 60_000, None).await.unwrap();
    assert_eq!(taken.len(), 1);
    assert_eq!(taken[0].id, first[0].id);
    assert_eq!(taken[0].attempt, 2, "a taken-over claim is a repeat");

    // A's late outcome is refused; B's is recorded once.
    let mut tx = a.begin().await.unwrap();
    assert!(
        !queue::finish(&mut tx, &OUTBOX, &first[0], &Outcome::done())
            .await
            .unwrap()
    );
    tx.commit().await.unwrap();
    let mut tx = b.begin().await.unwrap();
    assert!(
        queue::finish(&mut tx, &OUTBOX, &taken[0], &Outcome::done())
            .await
            .unwrap()
    );
    tx.commit().await.unwrap();
    let row = b
        .read_opt("SELECT status, attempts, lease_token FROM outbox", &[])
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.text(0).unwrap(), "DONE");
    assert_eq!(row.i64(1).unwrap(), 2);
    assert_eq!(row.opt_text(2).unwrap(), None);
    // Done work is never claimed again, lease or not.
    end_leases(&b).await;
    assert!(
        queue::claim(&a, &OUTBOX, 10, 60_000, None)
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_claimers_lease_is_taken_over_once_on_postgres() {
    lease_taken_over_after_a_crash(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_claimers_lease_is_taken_over_once_on_sqlite() {
    lease_taken_over_after_a_crash(Backend::Sqlite).await;
}

/// Work not sent (no host, expired) does not count as an attempt: its first real send is not a
/// repeat.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attempt_not_sent_is_not_counted() {
    let journal = TestJournal::new(Backend::Sqlite);
    let store = store_with_events(&journal, 1).await;
    let claim = queue::claim(&store, &OUTBOX, 1, 60_000, None)
        .await
        .unwrap();
    let mut tx = store.begin().await.unwrap();
    let retry = Outcome::retry(now_ms() - 1, "host not configured".into(), false);
    assert!(
        queue::finish(&mut tx, &OUTBOX, &claim[0], &retry)
            .await
            .unwrap()
    );
    tx.commit().await.unwrap();
    let again = queue::claim(&store, &OUTBOX, 1, 60_000, None)
        .await
        .unwrap();
    assert_eq!(again[0].attempt, 1);
}

/// Three gateways claiming one queue at once on PostgreSQL (SKIP LOCKED): every row is claimed
/// by exactly one of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_claims_take_each_row_once() {
    let journal = TestJournal::new(Backend::Postgres);
    let first = store_with_events(&journal, 120).await;
    let claimer = |store: Store| async move {
        let mut ids = Vec::new();
        loop {
            let claims = queue::claim(&store, &OUTBOX, 7, 60_000, None)
                .await
                .unwrap();
            if claims.is_empty() {
                return ids;
            }
            ids.extend(claims.into_iter().map(|c| c.id));
        }
    };
    let (second, third) = (
        journal::open(&journal.config).await.unwrap(),
        journal::open(&journal.config).await.unwrap(),
    );
    let (x, y, z) = tokio::join!(claimer(first), claimer(second), claimer(third));
    let mut all: Vec<String> = x.into_iter().chain(y).chain(z).collect();
    assert_eq!(all.len(), 120, "every row claimed, none twice");
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 120);
}

/// The same lease on tokio's paused clock, which the journal's times follow
/// (`clock::follow_runtime_clock`): the row stays leased until the clock reaches the lease's
/// end, to the millisecond, and is taken over right after.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_lease_ends_when_the_runtime_clock_says_so() {
    posbridge::infra::clock::follow_runtime_clock();
    let journal = TestJournal::new(Backend::Sqlite);
    let store = store_with_events(&journal, 1).await;
    let first = queue::claim(&store, &OUTBOX, 1, 60_000, None)
        .await
        .unwrap();
    assert_eq!(first.len(), 1);
    tokio::time::advance(std::time::Duration::from_millis(59_990)).await;
    assert!(
        queue::claim(&store, &OUTBOX, 1, 60_000, None)
            .await
            .unwrap()
            .is_empty(),
        "still leased 10 ms before its end"
    );
    tokio::time::advance(std::time::Duration::from_millis(20)).await;
    let taken = queue::claim(&store, &OUTBOX, 1, 60_000, None)
        .await
        .unwrap();
    assert_eq!(taken.len(), 1, "taken over once the lease ended");
    assert_eq!(taken[0].attempt, 2);
}
