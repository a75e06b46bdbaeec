//! The journal: durable record of orders, payment attempts, ledger postings and notifications,
//! in PostgreSQL (production) or an embedded SQLite file (demo, development).
//!
//! Everything that moves money or changes an order's state is written here inside one
//! transaction before anyone is told about it.

pub mod db;

pub use db::{Dialect, Later, Row, Store, Tx, Value};

/// Journal errors, by who is at fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JournalError {
    /// The configuration is wrong (bad URL, bad schema name, unreadable file).
    #[error("journal configuration: {0}")]
    Config(String),
    /// The database cannot be reached or has no free connection.
    #[error("journal unavailable: {0}")]
    Unavailable(String),
    /// The database refused a statement.
    #[error("journal database error: {0}")]
    Database(String),
    /// The stored data does not have the shape the code expects.
    #[error("journal schema mismatch: {0}")]
    Schema(String),
    /// A bug in posbridge.
    #[error("journal internal error: {0}")]
    Internal(String),
}

pub use crate::infra::config::JournalConfig;

/// Opens the configured journal and brings its schema up to date.
pub async fn open(config: &JournalConfig) -> Result<Store, JournalError> {
    let store = match &config.url {
        Some(url) => Store::Postgres(db::PgStore::connect(url, config).await?),
        None => Store::Sqlite(db::SqliteStore::open(&config.sqlite_path)?),
    };
    migrate(&store).await?;
    Ok(store)
}

/// One schema version: portable statements (separated by `;`), then each engine's own
/// (triggers; separated by a line holding only `/`, since their bodies contain `;`).
struct Migration {
    version: i64,
    portable: &'static str,
    postgres: &'static str,
    sqlite: &'static str,
}

/// The schema versions, applied in order.
const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        portable: include_str!("migrations/0001_core.sql"),
        postgres: "",
        sqlite: "",
    },
    Migration {
        version: 2,
        portable: include_str!("migrations/0002_upstream.sql"),
        postgres: "",
        sqlite: "",
    },
    Migration {
        version: 3,
        portable: include_str!("migrations/0003_advices.sql"),
        postgres: "",
        sqlite: "",
    },
    Migration {
        version: 4,
        portable: include_str!("migrations/0004_invariants.sql"),
        postgres: include_str!("migrations/0004_invariants.postgres.sql"),
        sqlite: include_str!("migrations/0004_invariants.sqlite.sql"),
    },
    Migration {
        version: 5,
        portable: include_str!("migrations/0005_security.sql"),
        postgres: "",
        sqlite: "",
    },
    Migration {
        version: 6,
        portable: include_str!("migrations/0006_counters.sql"),
        postgres: include_str!("migrations/0006_counters.postgres.sql"),
        sqlite: "",
    },
    Migration {
        version: 7,
        portable: include_str!("migrations/0007_leases.sql"),
        postgres: include_str!("migrations/0007_leases.postgres.sql"),
        sqlite: "",
    },
    Migration {
        version: 8,
        portable: include_str!("migrations/0008_merchant_keys.sql"),
        postgres: "",
        sqlite: "",
    },
    Migration {
        version: 9,
        portable: include_str!("migrations/0009_velocity.sql"),
        postgres: "",
        sqlite: "",
    },
    Migration {
        version: 10,
        portable: "",
        postgres: include_str!("migrations/0010_registry_notify.postgres.sql"),
        sqlite: "",
    },
    Migration {
        version: 11,
        portable: include_str!("migrations/0011_sealed.sql"),
        postgres: "",
        sqlite: "",
    },
    Migration {
        version: 12,
        portable: include_str!("migrations/0012_key_slots.sql"),
        postgres: "",
        sqlite: "",
    },
    Migration {
        version: 13,
        portable: "",
        postgres: include_str!("migrations/0013_quiet_creation.postgres.sql"),
        sqlite: "",
    },
    Migration {
        version: 14,
        portable: "",
        postgres: include_str!("migrations/0014_lean_ledger_triggers.postgres.sql"),
        sqlite: "",
    },
    Migration {
        version: 15,
        portable: include_str!("migrations/0015_open_orders_index.sql"),
        postgres: "",
        sqlite: "",
    },
    Migration {
        version: 16,
        portable: "",
        postgres: include_str!("migrations/0016_expect_moved.postgres.sql"),
        sqlite: "",
    },
    Migration {
        version: 17,
        portable: "",
        postgres: include_str!("migrations/0017_announce_after_commit.postgres.sql"),
        sqlite: "",
    },
    Migration {
        version: 18,
        portable: "",
        postgres: include_str!("migrations/0018_lean_postings.postgres.sql"),
        sqlite: "",
    },
];

/// Applies the migrations not yet recorded in `schema_migrations`. Several gateways starting
/// at once on PostgreSQL serialise on an advisory lock.
pub async fn migrate(store: &Store) -> Result<(), JournalError> {
    let mut tx = store.begin().await?;
    if tx.dialect() == Dialect::Postgres {
        tx.execute("SELECT pg_advisory_xact_lock(8583001)", &[])
            .await?;
    }
    tx.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, applied_at_ms BIGINT NOT NULL)",
        &[],
    )
    .await?;
    for migration in MIGRATIONS {
        let applied = tx
            .query_opt(
                "SELECT version FROM schema_migrations WHERE version = $1",
                &[migration.version.into()],
            )
            .await?;
        if applied.is_some() {
            continue;
        }
        let (bytes_type, own) = match tx.dialect() {
            Dialect::Postgres => ("BYTEA", migration.postgres),
            Dialect::Sqlite => ("BLOB", migration.sqlite),
        };
        let portable = strip_comments(&migration.portable.replace("{BYTES}", bytes_type));
        let own = strip_comments(own);
        let statements = portable
            .split(';')
            .chain(own.split("\n/\n"))
            .filter(|s| !s.trim().is_empty());
        for statement in statements {
            tx.execute(statement, &[]).await?;
        }
        tx.execute(
            "INSERT INTO schema_migrations (version, applied_at_ms) VALUES ($1, $2)",
            &[migration.version.into(), now_ms().into()],
        )
        .await?;
    }
    tx.commit().await
}

fn strip_comments(statement: &str) -> String {
    statement
        .lines()
        .map(|line| line.split("--").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

pub use crate::infra::clock::{new_id, now_ms};

/// The payload of the order channel's notification that a terminal, wallet app or merchant
/// changed (migration 10's trigger); every other payload is an order id.
pub const REGISTRY_CHANGED: &str = "registry";
