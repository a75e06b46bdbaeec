//! The database's ceiling measured by PostgreSQL's own tool, `pgbench`, independently of any
//! posbridge code: a transaction script with the durable writes of one sale (two commits, rows of
//! the same sizes as the journal's), from the same number of connections as the load, in a
//! scratch schema dropped afterwards. One script run is one sale's worth. With a `--rate` load,
//! pgbench is held to the same rate and measures the database's own latency for the two commits
//! at that rate instead of its ceiling.
//!
//! The sale's two commits as posbridge makes them (see `ceiling.rs`): creating the order (the
//! order row, its event) and paying it (the idempotency claim, the order marked paid, both
//! accounts moved, two postings, the event, the stored result).

use super::STEADY_AFTER;
use super::report::{Histograms, Latency, Step};
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
    /// The rate pgbench was held to (`-R`), with a `--rate` load: the same rate as the sales.
    pub rate: Option<f64>,
    /// With a rate: the percentiles of one script (both commits) from pgbench's per-transaction
    /// log, timed from each script's actual start (pgbench's time less its schedule lag, as the
    /// sales are timed), over the scripts started after the first fifth of the run (as the
    /// sales' latencies are).
    pub latency: Option<Latency>,
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
    rate: Option<f64>,
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
    let log_dir = std::env::temp_dir().join(format!("posbridge-{schema}-log"));
    let mut command = tokio::process::Command::new(&pgbench);
    if let Some(rate) = rate {
        std::fs::create_dir_all(&log_dir)?;
        command
            .arg("-R")
            .arg(format!("{rate}"))
            .arg("-l")
            .arg(format!(
                "--log-prefix={}",
                log_dir.join("pgbench_log").display()
            ));
    }
    let run = command
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
    let latency = rate.map(|_| logged_latency(&log_dir, duration));
    let _ = std::fs::remove_dir_all(&log_dir);
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
        rate,
        latency: latency.transpose()?,
        script: text,
    })
}

/// The percentiles of the scripts logged in `dir` (pgbench `-l`: one file per thread, a line
/// per script: client, number, time µs, script, end s, end µs, schedule lag µs), timed from
/// their actual start, over those started after the first fifth of the run.
fn logged_latency(dir: &std::path::Path, duration: Duration) -> anyhow::Result<Latency> {
    let mut scripts = Vec::new();
    for entry in std::fs::read_dir(dir).context("reading pgbench's log")? {
        let text = std::fs::read_to_string(entry?.path())?;
        for line in text.lines() {
            let fields: Vec<i64> = line
                .split_whitespace()
                .map(|f| f.parse().unwrap_or(-1))
                .collect();
            let [_, _, time, _, end_s, end_us, lag, ..] = fields[..] else {
                continue;
            };
            if time < 0 || end_s < 0 || end_us < 0 || lag < 0 {
                continue; // a skipped or failed script
            }
            let ran = (time - lag).max(0);
            scripts.push((end_s * 1_000_000 + end_us - ran, ran));
        }
    }
    let first = scripts.iter().map(|&(start, _)| start).min().unwrap_or(0);
    let steady_from = first + i64::try_from((duration / STEADY_AFTER).as_micros())?;
    let mut histograms = Histograms::new()?;
    for &(start, ran) in &scripts {
        if start >= steady_from {
            histograms.record(Step::Sale, Duration::from_micros(ran.unsigned_abs()));
        }
    }
    Ok(histograms.summary(Step::Sale))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// pgbench's log lines (client, number, time µs, script, end s, end µs, lag µs): a script is
    /// timed from its actual start, and those started in the first fifth are left out.
    #[test]
    fn the_logged_scripts_are_timed_from_their_start_after_the_first_fifth() {
        let dir = tempfile::tempdir().unwrap();
        // A 10 s run starting at 100.000000 s: the first fifth ends at 102 s.
        let lines = [
            "0 0 50000 0 100 50000 0",    // started at 100.0 s: left out
            "0 1 3000 0 101 903000 1000", // ran 2 ms (lag 1 ms) from 101.901 s: left out
            "0 2 4000 0 103 4000 1000",   // ran 3 ms from 103.001
            "1 0 9000 0 105 0 0",         // ran 9 ms
            "1 1 skipped 0 106 0 0",      // skipped: no time
            "1 2 2000 0 107 0 500",       // ran 1.5 ms
        ];
        std::fs::write(dir.path().join("pgbench_log.1"), lines[..3].join("\n")).unwrap();
        std::fs::write(dir.path().join("pgbench_log.1.1"), lines[3..].join("\n")).unwrap();
        let latency = logged_latency(dir.path(), Duration::from_secs(10)).unwrap();
        assert_eq!(latency.count, 3);
        assert!((latency.p50_ms - 3.0).abs() < 0.01, "{latency:?}");
        assert!((latency.max_ms - 9.0).abs() < 0.01, "{latency:?}");
    }
}
