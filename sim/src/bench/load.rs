//! The sales themselves: one task per simulated terminal, each with its own connection, its
//! phone (a wallet client) and its own histograms, merged at the end so the tasks never
//! contend on a shared recorder.

use super::report::{Histograms, Step};
use super::{Bound, Lane, Plan, Progress, STEADY_AFTER};
use crate::terminal::TerminalClient;
use crate::wallet::WalletClient;
use anyhow::Context;
use posbridge::domain::money::Money;
use posbridge_hsm::SecurityModule;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::time::Instant;

/// What the load did.
#[derive(Debug)]
pub(crate) struct LoadResult {
    /// From the first sale started to the last one finished.
    pub elapsed: Duration,
    /// Sales started.
    pub attempted: u64,
    /// Sales approved end to end (the terminal's result is 00).
    pub completed: u64,
    /// With a duration: the sales completed in its steady part (from a fifth of it to its end,
    /// so neither the first sales' start nor the drain of the last ones after it), and that
    /// part's length.
    pub steady: Option<(u64, Duration)>,
    /// Failed sales by step and response code (`pay/51`, `order/io`, ...).
    pub errors: BTreeMap<String, u64>,
    /// Latencies.
    pub histograms: Histograms,
    /// Length of a code the gateway issued (the ceiling writes rows of this size).
    pub payload_len: usize,
}

struct Shared {
    amount: Money,
    bound: Bound,
    started: AtomicU64,
    deadline: Option<Instant>,
    /// Where the steady part of a duration begins (it ends at the deadline).
    steady_from: Option<Instant>,
    /// Sales completed in the steady part.
    steady: AtomicU64,
    progress: Arc<Progress>,
}

struct LaneResult {
    attempted: u64,
    completed: u64,
    errors: BTreeMap<String, u64>,
    histograms: Histograms,
    payload_len: usize,
}

/// Connects every lane (signing on once per TID), then runs the sales until the bound.
pub(crate) async fn run(
    plan: &Plan,
    amount: Money,
    rate: Option<f64>,
    bound: Bound,
    progress: Arc<Progress>,
    device_keys: Option<&std::path::Path>,
) -> anyhow::Result<LoadResult> {
    let clients = connect(plan, device_keys).await?;
    let lanes = clients.len();
    let start = Instant::now();
    let shared = Arc::new(Shared {
        amount,
        bound,
        started: AtomicU64::new(0),
        deadline: match bound {
            Bound::Duration(d) => Some(start + d),
            Bound::Count(_) => None,
        },
        steady_from: match bound {
            Bound::Duration(d) => Some(start + d / STEADY_AFTER),
            Bound::Count(_) => None,
        },
        steady: AtomicU64::new(0),
        progress,
    });
    let mut tasks = tokio::task::JoinSet::new();
    for (i, (terminal, lane)) in clients.into_iter().enumerate() {
        let gateways = plan.wallet_urls.len().max(1);
        let wallet = WalletClient::new(
            &plan.wallet_urls[(i + usize::from(gateways > 1)) % gateways],
            &lane.app_id,
            &lane.app_key,
            phone_module(device_keys)?,
            "pek/wallet",
        );
        // Each lane's share of the rate, its first sale offset so the lanes interleave.
        let schedule = rate.map(|rate| {
            let period = Duration::from_secs_f64(lanes as f64 / rate);
            let offset = period.mul_f64(i as f64 / lanes as f64);
            (start + offset, period)
        });
        tasks.spawn(run_lane(
            terminal,
            wallet,
            lane,
            schedule,
            Arc::clone(&shared),
        ));
    }
    let mut total = LoadResult {
        elapsed: Duration::ZERO,
        attempted: 0,
        completed: 0,
        steady: None,
        errors: BTreeMap::new(),
        histograms: Histograms::new()?,
        payload_len: 0,
    };
    while let Some(done) = tasks.join_next().await {
        let lane = done.context("bench terminal task")?;
        total.attempted += lane.attempted;
        total.completed += lane.completed;
        for (key, count) in lane.errors {
            *total.errors.entry(key).or_default() += count;
        }
        total.histograms.add(&lane.histograms)?;
        total.payload_len = total.payload_len.max(lane.payload_len);
    }
    total.elapsed = start.elapsed();
    total.steady = match (shared.steady_from, shared.deadline) {
        (Some(from), Some(to)) => Some((shared.steady.load(Ordering::Relaxed), to - from)),
        _ => None,
    };
    Ok(total)
}

/// The simulated terminals' and phones' software module: the demo keys, or `device_keys` (a
/// gateway whose wallet PIN key is not the demo's, e.g. a TDES one on a payShield).
fn phone_module(device_keys: Option<&std::path::Path>) -> anyhow::Result<Arc<dyn SecurityModule>> {
    posbridge_hsm::open(&posbridge_hsm::HsmConfig::Software {
        key_file: device_keys.map(std::path::Path::to_path_buf),
        persist: false,
    })
    .context("opening the simulated terminals' software security module")
}

/// Connects the lanes. Lanes sharing a TID share the terminal's security module and the first
/// one's sign-on (a second sign-on would replace the working keys under the others), and use
/// separate ranges of voucher numbers.
async fn connect(
    plan: &Plan,
    device_keys: Option<&std::path::Path>,
) -> anyhow::Result<Vec<(TerminalClient, Lane)>> {
    let spec = Arc::new(posbridge_codecs::Spec::builtin("cups-pos")?);
    let mut modules: HashMap<String, Arc<dyn SecurityModule>> = HashMap::new();
    let lanes = plan.lanes.len().max(1);
    let stride = u32::try_from(999_000 / lanes).unwrap_or(1).max(1);
    let mut clients = Vec::with_capacity(lanes);
    for (i, lane) in plan.lanes.iter().enumerate() {
        let tid = lane.identity.tid.clone();
        let first_of_tid = !modules.contains_key(&tid);
        let module = match modules.get(&tid) {
            Some(module) => Arc::clone(module),
            None => {
                let module = phone_module(device_keys)?;
                modules.insert(tid.clone(), Arc::clone(&module));
                module
            }
        };
        let first_stan = u32::try_from(i).unwrap_or(0).saturating_mul(stride);
        let mut client = TerminalClient::connect(
            plan.terminals[i % plan.terminals.len().max(1)],
            Arc::clone(&spec),
            lane.identity.clone(),
            module,
            first_stan,
        )
        .await?;
        if first_of_tid {
            client
                .sign_on()
                .await
                .with_context(|| format!("terminal {tid}: sign-on"))?;
        }
        clients.push((client, lane.clone()));
    }
    Ok(clients)
}

async fn run_lane(
    mut terminal: TerminalClient,
    wallet: WalletClient,
    lane: Lane,
    schedule: Option<(Instant, Duration)>,
    shared: Arc<Shared>,
) -> LaneResult {
    let mut result = LaneResult {
        attempted: 0,
        completed: 0,
        errors: BTreeMap::new(),
        histograms: Histograms::empty(),
        payload_len: 0,
    };
    let mut ticker = schedule.map(|(first, period)| {
        let mut ticker = tokio::time::interval_at(first, period);
        // Behind schedule (the gateway is slower than the rate): start the next sale at once
        // and keep the period from there, rather than bursting to catch up.
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker
    });
    loop {
        if let Some(ticker) = ticker.as_mut() {
            ticker.tick().await;
        }
        if !may_start(&shared) {
            break;
        }
        result.attempted += 1;
        // Timed are the sales started in the steady part (all of a --count run): the first
        // sales also open the gateway's journal connections and prepare its statements.
        let timed = shared.steady_from.is_none_or(|from| Instant::now() >= from);
        let mut times = SaleTimes::default();
        let outcome = sale(&mut terminal, &wallet, &lane, shared.amount, &mut times).await;
        if timed {
            times.record_into(&mut result.histograms);
        }
        shared.progress.finished.fetch_add(1, Ordering::Relaxed);
        match outcome {
            Ok(payload_len) => {
                result.completed += 1;
                if in_steady_part(&shared) {
                    shared.steady.fetch_add(1, Ordering::Relaxed);
                }
                result.payload_len = result.payload_len.max(payload_len);
            }
            Err(failure) => {
                shared.progress.failed.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(tid = %lane.identity.tid, error = %failure.key, "bench sale failed");
                *result.errors.entry(failure.key).or_default() += 1;
                if failure.connection_lost {
                    // The terminal's link is in an unknown state; this lane stops here.
                    break;
                }
            }
        }
    }
    result
}

/// The latencies of one sale's steps, as far as it got.
#[derive(Default)]
struct SaleTimes([Option<Duration>; Step::ALL.len()]);

impl SaleTimes {
    fn set(&mut self, step: Step, elapsed: Duration) {
        self.0[step as usize] = Some(elapsed);
    }

    fn record_into(&self, histograms: &mut Histograms) {
        for (step, elapsed) in Step::ALL.iter().zip(self.0) {
            if let Some(elapsed) = elapsed {
                histograms.record(*step, elapsed);
            }
        }
    }
}

/// Whether now is in the steady part of the duration.
fn in_steady_part(shared: &Shared) -> bool {
    let now = Instant::now();
    matches!((shared.steady_from, shared.deadline), (Some(from), Some(to)) if from <= now && now < to)
}

fn may_start(shared: &Shared) -> bool {
    match (shared.bound, shared.deadline) {
        (Bound::Count(n), _) => shared.started.fetch_add(1, Ordering::Relaxed) < n,
        (Bound::Duration(_), Some(deadline)) => Instant::now() < deadline,
        (Bound::Duration(_), None) => false,
    }
}

/// Why a sale failed: `step/code` and whether the terminal's connection is still usable.
struct Failure {
    key: String,
    connection_lost: bool,
}

impl Failure {
    fn code(step: &str, code: &str) -> Failure {
        Failure {
            key: format!("{step}/{code}"),
            connection_lost: false,
        }
    }

    fn link(step: &str, error: &anyhow::Error) -> Failure {
        tracing::debug!(step, error = %format!("{error:#}"), "bench terminal link failed");
        Failure {
            key: format!("{step}/io"),
            connection_lost: true,
        }
    }
}

/// One complete QR sale (a): order, resolve, pay with PIN while the terminal's result query is
/// held. Returns the code's length.
async fn sale(
    terminal: &mut TerminalClient,
    wallet: &WalletClient,
    lane: &Lane,
    amount: Money,
    times: &mut SaleTimes,
) -> Result<usize, Failure> {
    let began = Instant::now();
    let order = terminal
        .request_order(amount)
        .await
        .map_err(|e| Failure::link("order", &e))?;
    times.set(Step::Order, began.elapsed());
    if order.response_code != "00" {
        return Err(Failure::code("order", &order.response_code));
    }
    let payload = order
        .payload
        .ok_or_else(|| Failure::code("order", "no-code"))?;
    let resolving = Instant::now();
    let view = wallet
        .resolve(&payload)
        .await
        .map_err(|_| Failure::code("resolve", "refused"))?;
    times.set(Step::Resolve, resolving.elapsed());
    if view.amount_minor != amount.amount_minor {
        return Err(Failure::code("resolve", "wrong-amount"));
    }
    let idempotency_key = format!(
        "bench-{}-{}-{}",
        lane.identity.tid, lane.identity.batch, order.voucher
    );
    let voucher = order.voucher;
    let paying = Instant::now();
    let (receipt, paid) = tokio::join!(
        async {
            let outcome = terminal.query_result(&voucher).await;
            (outcome, paying.elapsed())
        },
        async {
            let outcome = wallet
                .pay(&payload, &lane.pan, Some(&lane.pin), &idempotency_key, None)
                .await;
            (outcome, paying.elapsed())
        }
    );
    let (paid, pay_time) = paid;
    let (receipt, result_time) = receipt;
    let receipt = receipt.map_err(|e| Failure::link("result", &e))?;
    times.set(Step::Result, result_time);
    let paid = paid.map_err(|_| Failure::code("pay", "http"))?;
    times.set(Step::Pay, pay_time);
    match (paid.response_code(), paid.error_code.as_deref()) {
        (Some("00"), _) => {}
        (Some(code), _) => return Err(Failure::code("pay", code)),
        (None, Some(error)) => return Err(Failure::code("pay", error)),
        (None, None) => return Err(Failure::code("pay", &format!("http-{}", paid.status))),
    }
    if receipt.response_code != "00" {
        return Err(Failure::code("result", &receipt.response_code));
    }
    times.set(Step::Sale, began.elapsed());
    Ok(payload.len())
}
