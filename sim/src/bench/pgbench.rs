//! The database's ceiling measured by PostgreSQL's own tool, `pgbench`, independently of any
//! posbridge code: a transaction script with the durable writes of one sale (two commits, rows of
//! the same sizes as the journal's), from the same number of connections as the load, in a
//! scratch schema dropped afterwards. One script run is one sale's worth.
//!
//! The sale's two commits as posbridge makes them (see `ceiling.rs`): creating the order (the
//! order row, its event) and paying it (the idempotency claim, the order marked paid, both
//! accounts moved, two postings, the event, the stored result).

use anyhow::Context;
use posbridge::store::journal::JournalConfig;
use serde::Serialize;
use std::path::PathBuf;
use std::time::Duration;

/// What pgbench measured.
#[derive(Debug, Clone, Serialize)]
pub struct PgbenchCeiling {
    /// The pgbench used (its `--version`).
    pub pgbench: String,
    /// Client connections (`-c`), as many as the load's terminals.
    pub connections: usize,
    /// Worker threads (`-j`).
    pub threads: usize,
    /// Run time, seconds.
    pub duration_s: u64,
    /// Scripts (sales' worth of writes) per second, without connection set-up.
    pub sales_per_s: f64,
    /// Durable commits per second (two per sale).
    pub commits_per_s: f64,
    /// Mean time of one script (both commits), milliseconds.
    pub latency_avg_ms: f64,
    /// The script pgbench ran, for the record.
    pub script: String,
}

/// Finds `pgbench`: on the PATH, else in PostgreSQL's versioned directories (Debian keeps it in
/// `/usr/lib/postgresql/<version>/bin`).
pub fn find() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("pgbench"))
            .find(|candidate| candidate.is_file())
    });
    on_path.or_else(|| {
        let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .flatten()
            .map(|entry| entry.path().join("bin/pgbench"))
            .filter(|candidate| candidate.is_file())
            .collect();
        versions.sort();
        versions.pop()
    })
}

fn script(schema: &str, payload_len: usize, accounts: usize) -> String {
    let order = payload_len.max(100);
    format!(
        "\\set id random(1, 9000000000000000)\n\
         \\set acct random(1, {accounts})\n\
         BEGIN;\n\
         INSERT INTO {schema}.orders (id, state, body) VALUES (:id, 'CREATED', repeat('o', {order}));\n\
         INSERT INTO {schema}.events (order_id, body) VALUES (:id, repeat('e', 120));\n\
         COMMIT;\n\
         BEGIN;\n\
         INSERT INTO {schema}.idempotency (id, body) VALUES (:id, repeat('i', 200));\n\
         UPDATE {schema}.accounts SET balance = balance - 1 WHERE id = :acct;\n\
         UPDATE {schema}.accounts SET balance = balance + 1 WHERE id = :acct + {accounts};\n\
         INSERT INTO {schema}.postings (order_id, account, amount) VALUES (:id, :acct, -1);\n\
         INSERT INTO {schema}.postings (order_id, account, amount) VALUES (:id, :acct + {accounts}, 1);\n\
         UPDATE {schema}.orders SET state = 'PAID', body = repeat('p', {order}) WHERE id = :id;\n\
         INSERT INTO {schema}.events (order_id, body) VALUES (:id, repeat('e', 120));\n\
         COMMIT;\n"
    )
}

/// Runs pgbench for `duration` against the database of `journal` (PostgreSQL only).
pub async fn measure(
    journal: &JournalConfig,
    connections: usize,
    accounts: usize,
    payload_len: usize,
    duration: Duration,
) -> anyhow::Result<PgbenchCeiling> {
    let url = journal
        .url
        .clone()
        .context("the pgbench ceiling needs a PostgreSQL journal (journal.url)")?;
    let pgbench = find().context(
        "pgbench not found (PATH or /usr/lib/postgresql/*/bin); install PostgreSQL's client tools",
    )?;
    let version = std::process::Command::new(&pgbench)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let schema = format!("pbceil_{}", &posbridge::store::journal::new_id()[..12]);
    let accounts = accounts.max(1);
    let admin = posbridge::store::journal::db::PgStore::connect(
        &url,
        &JournalConfig {
            pool_size: 1,
            schema: "public".into(),
            ..journal.clone()
        },
    )
    .await?;
    let mut tx = posbridge::store::journal::Store::Postgres(admin.clone())
        .begin()
        .await?;
    for statement in [
        format!("CREATE SCHEMA {schema}"),
        format!(
            "CREATE TABLE {schema}.orders (id BIGINT PRIMARY KEY, state TEXT NOT NULL, body TEXT NOT NULL)"
        ),
        format!(
            "CREATE TABLE {schema}.events (id BIGSERIAL PRIMARY KEY, order_id BIGINT NOT NULL, body TEXT NOT NULL)"
        ),
        format!("CREATE TABLE {schema}.idempotency (id BIGINT PRIMARY KEY, body TEXT NOT NULL)"),
        format!("CREATE TABLE {schema}.accounts (id BIGINT PRIMARY KEY, balance BIGINT NOT NULL)"),
        format!(
            "CREATE TABLE {schema}.postings (id BIGSERIAL PRIMARY KEY, order_id BIGINT NOT NULL, account BIGINT NOT NULL, amount BIGINT NOT NULL)"
        ),
        format!(
            "INSERT INTO {schema}.accounts SELECT g, 1000000000 FROM generate_series(1, {}) g",
            accounts * 2
        ),
    ] {
        tx.execute(&statement, &[]).await?;
    }
    tx.commit().await?;
    let file = std::env::temp_dir().join(format!("posbridge-{schema}.sql"));
    let text = script(&schema, payload_len, accounts);
    std::fs::write(&file, &text)?;
    let threads = connections.clamp(1, 2);
    let run = tokio::process::Command::new(&pgbench)
        .args(["-n", "-M", "prepared"])
        .arg("-c")
        .arg(connections.max(1).to_string())
        .arg("-j")
        .arg(threads.to_string())
        .arg("-T")
        .arg(duration.as_secs().max(1).to_string())
        .arg("-f")
        .arg(&file)
        .arg(&url)
        .output()
        .await
        .context("running pgbench");
    let _ = std::fs::remove_file(&file);
    let mut tx = posbridge::store::journal::Store::Postgres(admin)
        .begin()
        .await?;
    tx.execute(&format!("DROP SCHEMA {schema} CASCADE"), &[])
        .await?;
    tx.commit().await?;
    let output = run?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    anyhow::ensure!(
        output.status.success(),
        "pgbench failed: {}{}",
        stdout,
        String::from_utf8_lossy(&output.stderr)
    );
    let number_after = |label: &str| -> Option<f64> {
        let line = stdout.lines().find(|l| l.trim_start().starts_with(label))?;
        line.split('=')
            .nth(1)?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    };
    let sales_per_s = number_after("tps").context("pgbench printed no tps")?;
    Ok(PgbenchCeiling {
        pgbench: version,
        connections: connections.max(1),
        threads,
        duration_s: duration.as_secs().max(1),
        sales_per_s,
        commits_per_s: sales_per_s * 2.0,
        latency_avg_ms: number_after("latency average").unwrap_or_default(),
        script: text,
    })
}
