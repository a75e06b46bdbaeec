//! What a bench run reports: throughput, errors by response code, latency percentiles per step
//! (HdrHistogram, microsecond resolution), and the optional ceiling and idle-connection figures;
//! as a table for people and as one JSON object for scripts.

use super::ceiling::Ceiling;
use super::idle::IdleReport;
use super::{BenchOptions, Bound};
use hdrhistogram::Histogram;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

/// The steps of a sale whose latency is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The terminal's order request (0200, answered with the code).
    Order,
    /// The phone's resolve of the scanned code.
    Resolve,
    /// The phone's payment with the PIN.
    Pay,
    /// The terminal's result query, sent with the payment and held until it is final.
    Result,
    /// The whole sale, order request to the terminal's receipt.
    Sale,
}

impl Step {
    pub(crate) const ALL: [Step; 5] = [
        Step::Order,
        Step::Resolve,
        Step::Pay,
        Step::Result,
        Step::Sale,
    ];

    fn name(self) -> &'static str {
        match self {
            Step::Order => "order",
            Step::Resolve => "resolve",
            Step::Pay => "pay",
            Step::Result => "result",
            Step::Sale => "sale",
        }
    }
}

/// Highest latency recorded (60 s, microseconds); longer ones are clamped to it.
const MAX_MICROS: u64 = 60_000_000;

/// One histogram per step, in microseconds.
#[derive(Debug, Clone)]
pub struct Histograms(Vec<Histogram<u64>>);

impl Histograms {
    /// Empty histograms (3 significant digits, 1 µs to 60 s).
    pub fn new() -> anyhow::Result<Histograms> {
        let mut all = Vec::with_capacity(Step::ALL.len());
        for _ in Step::ALL {
            all.push(Histogram::new_with_bounds(1, MAX_MICROS, 3)?);
        }
        Ok(Histograms(all))
    }

    /// Like [`Histograms::new`]; on the (impossible with these constant bounds) failure,
    /// histograms that auto-resize instead.
    pub fn empty() -> Histograms {
        Histograms::new().unwrap_or_else(|_| {
            Histograms(
                Step::ALL
                    .iter()
                    .filter_map(|_| Histogram::new(3).ok())
                    .collect(),
            )
        })
    }

    /// Records one latency.
    pub fn record(&mut self, step: Step, elapsed: Duration) {
        let micros = u64::try_from(elapsed.as_micros())
            .unwrap_or(MAX_MICROS)
            .clamp(1, MAX_MICROS);
        if let Some(histogram) = self.0.get_mut(step as usize) {
            histogram.saturating_record(micros);
        }
    }

    /// Adds another set (another terminal's) into this one.
    pub fn add(&mut self, other: &Histograms) -> anyhow::Result<()> {
        for (mine, theirs) in self.0.iter_mut().zip(&other.0) {
            mine.add(theirs)?;
        }
        Ok(())
    }

    pub(crate) fn summary(&self, step: Step) -> Latency {
        match self.0.get(step as usize) {
            Some(h) if !h.is_empty() => {
                let ms = |micros: u64| micros as f64 / 1000.0;
                Latency {
                    count: h.len(),
                    p50_ms: ms(h.value_at_quantile(0.50)),
                    p95_ms: ms(h.value_at_quantile(0.95)),
                    p99_ms: ms(h.value_at_quantile(0.99)),
                    max_ms: ms(h.max()),
                }
            }
            _ => Latency::default(),
        }
    }
}

/// Percentiles of one step, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Latency {
    /// How many were measured.
    pub count: u64,
    /// Median.
    pub p50_ms: f64,
    /// 95th percentile.
    pub p95_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Slowest.
    pub max_ms: f64,
}

/// The result of a bench run (`--json` prints exactly this).
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// `spawn` (gateway in this process) or `running`.
    pub mode: String,
    /// `postgres` or `sqlite`, when known.
    pub journal: Option<String>,
    /// The gateway's security module backend, when known (spawn mode).
    pub security_module: Option<String>,
    /// Simulated terminals.
    pub terminals: usize,
    /// Target rate (sales/s) or `null` for as fast as possible.
    pub rate_target: Option<f64>,
    /// The bound: `count` or `duration_s`.
    pub bound: BTreeMap<String, f64>,
    /// Wall time of the load, seconds.
    pub elapsed_s: f64,
    /// Sales started.
    pub attempted: u64,
    /// Sales approved end to end.
    pub completed: u64,
    /// Completed sales per second: with a duration, in its steady part (the sales completed
    /// from a fifth of the duration to its end, over that time), else `sales_per_s_overall`.
    pub sales_per_s: f64,
    /// Completed sales over the whole wall time (`completed / elapsed_s`), which includes the
    /// first sales' start and the drain of those still running at the end of the duration (as
    /// long as a sale takes, which grows with the terminals).
    pub sales_per_s_overall: f64,
    /// The steady part's length, seconds (with a duration).
    pub steady_s: Option<f64>,
    /// Failed sales by `step/response-code`.
    pub errors: BTreeMap<String, u64>,
    /// Latency per step (`order`, `resolve`, `pay`, `result`, `sale`).
    pub latency: BTreeMap<String, Latency>,
    /// The database's own limit, with `--ceiling`.
    pub ceiling: Option<Ceiling>,
    /// `sales_per_s / ceiling.sales_per_s`, with `--ceiling`.
    pub ceiling_ratio: Option<f64>,
    /// Idle-connection figures, with `--idle-connections`.
    pub idle: Option<IdleReport>,
    /// The ceiling measured by pgbench (PostgreSQL's own tool), with `--ceiling` on PostgreSQL.
    pub ceiling_pgbench: Option<super::pgbench::PgbenchCeiling>,
    /// `sales_per_s / ceiling_pgbench.sales_per_s` (not with `--rate`: pgbench is then held to
    /// the same rate).
    pub ceiling_pgbench_ratio: Option<f64>,
    /// With `--rate` and `--ceiling`: the sale's p99 less pgbench's p99 at the same rate (what
    /// the gateway adds at p99 over the database's own two commits), milliseconds.
    pub sale_p99_over_pgbench_ms: Option<f64>,
    /// CPU time of the gateway processes per completed sale (`--processes`, `--gateway-pid`),
    /// milliseconds.
    pub gateway_cpu_ms_per_sale: Option<f64>,
    /// CPU time of this bench process per completed sale (the load generator, and the gateway
    /// too with `--spawn`), milliseconds.
    pub bench_process_cpu_ms_per_sale: Option<f64>,
    /// The database's work per completed sale (`pg_stat_database`), with `--ceiling` on
    /// PostgreSQL. Counts the whole database: run nothing else on it meanwhile.
    pub db_per_sale: Option<DbPerSale>,
}

/// The database's work per sale, from `pg_stat_database`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct DbPerSale {
    /// Transactions (committed and rolled back, read-only ones included).
    pub transactions: f64,
    /// Rows inserted.
    pub rows_inserted: f64,
    /// Rows updated.
    pub rows_updated: f64,
    /// Rows fetched.
    pub rows_fetched: f64,
}

impl Report {
    pub(crate) fn from_load(options: &BenchOptions, load: &super::load::LoadResult) -> Report {
        let elapsed_s = load.elapsed.as_secs_f64();
        let overall = if elapsed_s > 0.0 {
            load.completed as f64 / elapsed_s
        } else {
            0.0
        };
        let steady = load
            .steady
            .filter(|&(_, window)| !window.is_zero())
            .map(|(sales, window)| (sales as f64 / window.as_secs_f64(), window.as_secs_f64()));
        let mut bound = BTreeMap::new();
        match options.bound {
            Bound::Count(n) => bound.insert("count".to_owned(), n as f64),
            Bound::Duration(d) => bound.insert("duration_s".to_owned(), d.as_secs_f64()),
        };
        Report {
            mode: String::new(),
            journal: None,
            security_module: None,
            terminals: options.terminals,
            rate_target: options.rate,
            bound,
            elapsed_s,
            attempted: load.attempted,
            completed: load.completed,
            sales_per_s: steady.map_or(overall, |(rate, _)| rate),
            sales_per_s_overall: overall,
            steady_s: steady.map(|(_, window)| window),
            errors: load.errors.clone(),
            latency: Step::ALL
                .iter()
                .map(|&step| (step.name().to_owned(), load.histograms.summary(step)))
                .collect(),
            ceiling: None,
            ceiling_ratio: None,
            idle: None,
            ceiling_pgbench: None,
            ceiling_pgbench_ratio: None,
            sale_p99_over_pgbench_ms: None,
            gateway_cpu_ms_per_sale: None,
            bench_process_cpu_ms_per_sale: None,
            db_per_sale: None,
        }
    }

    pub(crate) fn set_pgbench_ceiling(&mut self, ceiling: super::pgbench::PgbenchCeiling) {
        // Held to the sales' rate, pgbench measures the database's latency at that rate, not
        // its ceiling.
        self.ceiling_pgbench_ratio = (ceiling.rate.is_none() && ceiling.sales_per_s > 0.0)
            .then(|| self.sales_per_s / ceiling.sales_per_s);
        self.sale_p99_over_pgbench_ms = ceiling
            .latency
            .zip(self.latency.get(Step::Sale.name()))
            .filter(|(db, sale)| db.count > 0 && sale.count > 0)
            .map(|(db, sale)| sale.p99_ms - db.p99_ms);
        self.ceiling_pgbench = Some(ceiling);
    }

    pub(crate) fn set_ceiling(&mut self, ceiling: Ceiling) {
        self.ceiling_ratio =
            (ceiling.sales_per_s > 0.0).then(|| self.sales_per_s / ceiling.sales_per_s);
        self.ceiling = Some(ceiling);
    }

    /// The report as a table for a terminal window.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "posbridge bench: {} gateway, journal {}, security module {}",
            self.mode,
            self.journal.as_deref().unwrap_or("unknown"),
            self.security_module.as_deref().unwrap_or("unknown")
        );
        let rate = self
            .rate_target
            .map_or("as fast as possible".to_owned(), |r| format!("{r} sales/s"));
        let _ = writeln!(
            out,
            "  {} terminals, {rate}; {} sales started, {} completed in {:.2} s; {:.1} sales/s",
            self.terminals, self.attempted, self.completed, self.elapsed_s, self.sales_per_s
        );
        if let Some(steady) = self.steady_s {
            let _ = writeln!(
                out,
                "  (sales/s over the last {steady:.1} s of the duration, latencies of the sales started in it; {:.1} sales/s over the whole run with its drain)",
                self.sales_per_s_overall
            );
        }
        if self.errors.is_empty() {
            let _ = writeln!(out, "  errors: none");
        } else {
            let _ = writeln!(out, "  errors by step/response code:");
            for (key, count) in &self.errors {
                let _ = writeln!(out, "    {key:<20} {count}");
            }
        }
        let _ = writeln!(
            out,
            "\n  {:<8} {:>8} {:>9} {:>9} {:>9} {:>9}",
            "step", "count", "p50 ms", "p95 ms", "p99 ms", "max ms"
        );
        for step in Step::ALL {
            if let Some(l) = self.latency.get(step.name()) {
                let _ = writeln!(
                    out,
                    "  {:<8} {:>8} {:>9.2} {:>9.2} {:>9.2} {:>9.2}",
                    step.name(),
                    l.count,
                    l.p50_ms,
                    l.p95_ms,
                    l.p99_ms,
                    l.max_ms
                );
            }
        }
        if let Some(c) = &self.ceiling {
            let _ = writeln!(
                out,
                "\n  ceiling ({}, synchronous {}): {} connections, {} durable commits per sale: {:.1} sales/s ({:.1} commits/s)",
                c.backend,
                c.synchronous,
                c.connections,
                c.commits_per_sale,
                c.sales_per_s,
                c.commits_per_s
            );
            let _ = writeln!(
                out,
                "  the database alone, one sale's writes: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
                c.latency.p50_ms, c.latency.p99_ms, c.latency.max_ms
            );
            if let Some(ratio) = self.ceiling_ratio {
                let _ = writeln!(
                    out,
                    "  posbridge reaches {:.0}% of the ceiling{}",
                    ratio * 100.0,
                    if self.rate_target.is_some() {
                        " (at the fixed --rate, not its maximum)"
                    } else {
                        ""
                    }
                );
            }
            if let Some(note) = &c.note {
                let _ = writeln!(out, "  note: {note}");
            }
        }
        if let Some(c) = &self.ceiling_pgbench {
            let held = c
                .rate
                .map_or(String::new(), |rate| format!(" held to {rate} sales/s"));
            let _ = writeln!(
                out,
                "\n  pgbench ceiling ({}){held}: {} connections, {} threads, {} s, 2 commits per sale: {:.1} sales/s ({:.1} commits/s), mean {:.2} ms",
                c.pgbench,
                c.connections,
                c.threads,
                c.duration_s,
                c.sales_per_s,
                c.commits_per_s,
                c.latency_avg_ms
            );
            if let Some(l) = &c.latency {
                let _ = writeln!(
                    out,
                    "  pgbench's two commits, {} scripts after the first fifth: p50 {:.2} ms, p95 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
                    l.count, l.p50_ms, l.p95_ms, l.p99_ms, l.max_ms
                );
            }
            if let Some(over) = self.sale_p99_over_pgbench_ms {
                let _ = writeln!(
                    out,
                    "  the sale's p99 is {over:.2} ms over the database's own at this rate"
                );
            }
            if let Some(ratio) = self.ceiling_pgbench_ratio {
                let _ = writeln!(
                    out,
                    "  posbridge reaches {:.0}% of pgbench's ceiling",
                    ratio * 100.0
                );
            }
        }
        if self.gateway_cpu_ms_per_sale.is_some() || self.bench_process_cpu_ms_per_sale.is_some() {
            let show = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.2} ms"));
            let _ = writeln!(
                out,
                "\n  CPU per sale: gateway processes {}, this bench process {}",
                show(self.gateway_cpu_ms_per_sale),
                show(self.bench_process_cpu_ms_per_sale)
            );
        }
        if let Some(db) = &self.db_per_sale {
            let _ = writeln!(
                out,
                "  database per sale: {:.1} transactions, {:.1} rows inserted, {:.1} updated, {:.1} fetched",
                db.transactions, db.rows_inserted, db.rows_updated, db.rows_fetched
            );
        }
        if let Some(idle) = &self.idle {
            let _ = writeln!(out, "\n{idle}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn percentiles_come_from_the_recorded_latencies() {
        let mut h = Histograms::new().unwrap();
        for ms in 1..=100u64 {
            h.record(Step::Sale, Duration::from_millis(ms));
        }
        let mut other = Histograms::new().unwrap();
        other.record(Step::Sale, Duration::from_secs(3600));
        h.add(&other).unwrap();
        let s = h.summary(Step::Sale);
        assert_eq!(s.count, 101);
        assert!((s.p50_ms - 51.0).abs() < 0.1, "{s:?}");
        assert!((s.p99_ms - 100.0).abs() < 0.1, "{s:?}");
        // Clamped to the histogram's 60 s ceiling.
        assert!((s.max_ms - 60_000.0).abs() < 60.0, "{s:?}");
        assert_eq!(h.summary(Step::Order), Latency::default());
    }
}
