//! A seeded simulation of the order lifecycle: many orders driven through random interleavings
//! of phone, terminal, host, operator and worker events with injected faults (host silent, late,
//! a sale that reaches the host after its own reversal, crashes mid-sale), with the decisions
//! taken by the real `lifecycle::next` and their work applied to a model of the ledger, the host
//! and the queues. After every step: money is conserved, no balance is negative, nothing is
//! refunded beyond its sale. At the end (queues drained): every sale the host approved is either
//! completed (order PAID) or reversed at the host exactly once.
//!
//! A failure prints its seed; `POSBRIDGE_SIM_SEED=<seed>` replays it, `POSBRIDGE_SIM_ORDERS`
//! sets the size (the nightly run uses 1,000,000).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use posbridge::domain::lifecycle::{Context, Event, Settlement, Verdict, Work, next};
use posbridge::domain::order::OrderState;
use posbridge::domain::response::ResponseCode;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reversal {
    None,
    Standby,
    Queued,
    Done,
    Cancelled,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Advice {
    Queued,
    Sent,
    Cancelled,
}

#[derive(Debug, Default, Clone)]
struct HostSale {
    /// The host has received the sale (and approved it: the simulated host approves all).
    approved: bool,
    /// Reversals the host applied.
    reversed: u32,
    /// Refund advices the host applied.
    refunded: i64,
    /// The sale is still on its way (sent, not yet received): it may arrive after its reversal.
    in_network: bool,
}

#[derive(Debug, Clone)]
struct SimOrder {
    state: OrderState,
    amount: i64,
    upstream: bool,
    /// Local sale: money moved payer -> merchant.
    local_paid: bool,
    refunded: i64,
    reversal: Reversal,
    advices: Vec<(i64, Advice)>,
    host: HostSale,
    /// A forwarded request is waiting for its answer.
    in_flight: bool,
    expired: bool,
}

struct Sim {
    rng: StdRng,
    orders: Vec<SimOrder>,
    payer: i64,
    merchant: i64,
    total: i64,
    steps: u64,
}

impl Sim {
    fn context(&self, i: usize) -> Context {
        let o = &self.orders[i];
        let settlement = match o.state {
            OrderState::Paid | OrderState::Reversed if o.local_paid => Some(Settlement::Local),
            OrderState::Paid | OrderState::Reversed if o.upstream => Some(Settlement::Upstream),
            _ => None,
        };
        Context {
            amount_minor: o.amount,
            refunded_minor: o.refunded,
            settlement,
            advice_sent: o.advices.iter().any(|a| a.1 == Advice::Sent),
            expired: o.expired,
            notify_merchant: false,
        }
    }

    /// Decides `event` with the lifecycle and applies the transition to the model.
    fn event(&mut self, i: usize, event: Event) -> Verdict {
        let context = self.context(i);
        let verdict = next(self.orders[i].state, event, &context);
        if let Verdict::Move(t) = &verdict {
            assert_eq!(t.from, self.orders[i].state);
            posbridge::domain::lifecycle::check_invariants(t, &context);
            self.orders[i].state = t.to;
            for work in t.work.clone() {
                self.work(i, work);
            }
        }
        verdict
    }

    fn work(&mut self, i: usize, work: Work) {
        let o = &mut self.orders[i];
        match work {
            Work::ReverseLocal => {
                let left = o.amount - o.refunded;
                self.merchant -= left;
                self.payer += left;
                o.refunded = o.amount;
            }
            Work::QueueHostReversal => {
                if matches!(
                    o.reversal,
                    Reversal::Standby | Reversal::Cancelled | Reversal::Done
                ) {
                    o.reversal = Reversal::Queued;
                }
            }
            Work::CancelStandbyReversal => {
                if o.reversal == Reversal::Standby {
                    o.reversal = Reversal::Cancelled;
                }
            }
            Work::CancelQueuedAdvices => {
                for advice in &mut o.advices {
                    if advice.1 == Advice::Queued {
                        advice.1 = Advice::Cancelled;
                        o.refunded -= advice.0;
                    }
                }
            }
            Work::RefundLocal(amount) => {
                self.merchant -= amount;
                self.payer += amount;
                o.refunded += amount;
            }
            Work::QueueAdvice(amount) => {
                o.advices.push((amount, Advice::Queued));
                o.refunded += amount;
            }
            Work::NotifyMerchant => {}
        }
    }

    fn check(&self, seed: u64, only: Option<usize>) {
        assert_eq!(
            self.payer + self.merchant,
            self.total,
            "seed {seed} step {}: money conserved",
            self.steps
        );
        assert!(
            self.payer >= 0 && self.merchant >= 0,
            "seed {seed}: no negative balance"
        );
        for (i, o) in self.orders.iter().enumerate() {
            if only.is_some_and(|only| only != i) {
                continue;
            }
            assert!(
                (0..=o.amount).contains(&o.refunded),
                "seed {seed} order {i}: refunds within the sale"
            );
            assert!(
                o.host.reversed <= 1,
                "seed {seed} order {i}: reversed at the host twice"
            );
            assert!(
                o.host.refunded <= o.amount,
                "seed {seed} order {i}: host refunds within the sale"
            );
        }
    }

    /// One random step of a random order.
    fn step(&mut self) -> usize {
        self.steps += 1;
        let i = self.rng.random_range(0..self.orders.len());
        self.step_order(i);
        i
    }

    fn step_order(&mut self, i: usize) {
        let roll = self.rng.random_range(0..100);
        let o = self.orders[i].clone();
        match roll {
            0..=29 if o.in_flight => self.host_answer(i),
            0..=24 => self.pay(i),
            25..=34 => {
                self.event(i, Event::TerminalReversal);
            }
            35..=41 => {
                self.event(i, Event::Void);
            }
            42..=51 => {
                let amount = self.rng.random_range(1..=o.amount);
                self.event(
                    i,
                    Event::Refund {
                        amount_minor: amount,
                    },
                );
            }
            52..=56 => {
                self.orders[i].expired = true;
                self.event(i, Event::Expire);
            }
            57..=59 => {
                self.event(i, Event::Cancel);
            }
            60..=74 => self.deliver_reversal(i),
            75..=84 => self.deliver_advices(i),
            85..=89 => self.network(i),
            // A crash of posbridge loses the in-flight answer; recovery later.
            90..=94 if o.in_flight => {
                self.orders[i].in_flight = false;
                if self.rng.random_bool(0.5) {
                    self.orders[i].host.approved = true;
                }
            }
            _ => self.recover(i),
        }
    }

    fn pay(&mut self, i: usize) {
        if self.event(i, Event::PayAttempt) != Verdict::Proceed {
            return;
        }
        if self.orders[i].upstream {
            if let Verdict::Move(_) = self.event(i, Event::Forward) {
                self.orders[i].reversal = Reversal::Standby;
                self.orders[i].in_flight = true;
            }
            return;
        }
        let amount = self.orders[i].amount;
        let outcome = self.rng.random_range(0..10);
        let event = match outcome {
            0 => Event::WrongPin,
            1 => Event::LocalDeclined(ResponseCode::PinTriesExceeded),
            _ if self.payer < amount => Event::LocalDeclined(ResponseCode::InsufficientFunds),
            _ => Event::LocalApproved,
        };
        if let Verdict::Move(t) = self.event(i, event)
            && t.to == OrderState::Paid
        {
            self.payer -= amount;
            self.merchant += amount;
            self.orders[i].local_paid = true;
        }
    }

    /// The host's answer to the in-flight sale, or its absence.
    fn host_answer(&mut self, i: usize) {
        self.orders[i].in_flight = false;
        let event = match self.rng.random_range(0..6) {
            0 | 1 => {
                self.orders[i].host.approved = true;
                Event::HostApproved
            }
            2 => Event::HostDeclined(ResponseCode::InsufficientFunds),
            // Timeout after the host approved, or with the sale still on its way.
            3 => {
                self.orders[i].host.approved = true;
                Event::HostAmbiguous
            }
            4 => {
                self.orders[i].host.in_network = true;
                Event::HostAmbiguous
            }
            _ => Event::NotSent,
        };
        self.event(i, event);
    }

    /// A sale still on its way reaches the host (possibly after its reversal), is approved, and
    /// its late approval comes back unmatched.
    fn network(&mut self, i: usize) {
        if !self.orders[i].host.in_network {
            return;
        }
        self.orders[i].host.in_network = false;
        self.orders[i].host.approved = true;
        self.event(i, Event::HostApproved);
    }

    fn deliver_reversal(&mut self, i: usize) {
        // A reversal is not sent while its sale is still in flight, so it cannot overtake it.
        if self.orders[i].reversal != Reversal::Queued || self.orders[i].in_flight {
            return;
        }
        let host = &mut self.orders[i].host;
        // The host reverses what it approved and has not reversed; otherwise it answers 25
        // (never saw it) or 12/94 (reversed already): all acknowledge.
        if host.approved && host.reversed == 0 {
            host.reversed = 1;
        }
        self.orders[i].reversal = Reversal::Done;
        self.event(i, Event::ReversalAcknowledged);
    }

    fn deliver_advices(&mut self, i: usize) {
        let o = &mut self.orders[i];
        for advice in &mut o.advices {
            if advice.1 == Advice::Queued {
                advice.1 = Advice::Sent;
                o.host.refunded += advice.0;
            }
        }
    }

    fn recover(&mut self, i: usize) {
        let o = &self.orders[i];
        if o.reversal == Reversal::Standby && !o.in_flight {
            if let Verdict::Move(_) = self.event(i, Event::Recovery) {
            } else {
                self.orders[i].reversal = Reversal::Queued;
            }
        }
    }

    /// Lets every queue run dry: in-flight answers lost, sales in the network arrive, standby
    /// reversals recovered, queued reversals and advices delivered.
    fn drain(&mut self) {
        for i in 0..self.orders.len() {
            if self.orders[i].in_flight {
                self.orders[i].in_flight = false;
            }
            self.network(i);
            self.recover(i);
            self.deliver_reversal(i);
            self.deliver_advices(i);
        }
    }

    fn check_final(&self, seed: u64) {
        for (i, o) in self.orders.iter().enumerate() {
            if !o.upstream {
                continue;
            }
            assert_ne!(
                o.reversal,
                Reversal::Queued,
                "seed {seed} order {i}: drained"
            );
            if o.host.approved {
                let completed = o.state == OrderState::Paid && o.host.reversed == 0;
                let reversed = o.state != OrderState::Paid && o.host.reversed == 1;
                assert!(
                    completed ^ reversed,
                    "seed {seed} order {i}: approved by the host, so completed or reversed once: {o:?}"
                );
            } else {
                assert_ne!(
                    o.state,
                    OrderState::Paid,
                    "seed {seed} order {i}: paid only if approved"
                );
            }
        }
    }
}

fn run(seed: u64, orders: usize) {
    let mut rng = StdRng::seed_from_u64(seed);
    let orders: Vec<SimOrder> = (0..orders)
        .map(|_| SimOrder {
            state: OrderState::Created,
            amount: rng.random_range(1..=50_000),
            upstream: rng.random_bool(0.5),
            local_paid: false,
            refunded: 0,
            reversal: Reversal::None,
            advices: Vec::new(),
            host: HostSale::default(),
            in_flight: false,
            expired: false,
        })
        .collect();
    let total = 10_000_000_i64;
    let mut sim = Sim {
        rng,
        payer: total,
        merchant: 0,
        total,
        steps: 0,
        orders,
    };
    let steps = sim.orders.len() * 12;
    for _ in 0..steps {
        let touched = sim.step();
        sim.check(seed, Some(touched));
    }
    sim.drain();
    sim.check(seed, None);
    sim.check_final(seed);
}

#[test]
fn ten_thousand_seeded_orders_keep_every_invariant() {
    let seed = std::env::var("POSBRIDGE_SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    let orders = std::env::var("POSBRIDGE_SIM_ORDERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000);
    println!("lifecycle simulation: seed {seed}, {orders} orders (POSBRIDGE_SIM_SEED replays)");
    run(seed, orders);
}

#[test]
fn fixed_seeds_replay_the_same() {
    for seed in [1, 2, 3, 8583] {
        run(seed, 500);
    }
}
