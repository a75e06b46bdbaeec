//! The order lifecycle as data: every state an order can be in, every event that can happen to
//! it, and one pure function, [`next`], that decides what each event does in each state: the
//! new state, the response code to give, and the follow-up work to queue in the same
//! transaction. Nothing here touches a database, a clock or a socket; the store applies what
//! this decides ([`crate::store::orders::apply`]), and the services only gather the facts
//! ([`Context`]) and name the event.
//!
//! ```text
//!                 pay (local ledger, 00)                 terminal reversal / void
//!   CREATED ───────────────────────────────▶ PAID ─────────────────────────────▶ REVERSED
//!    │ │ │ └─forward─▶ AUTHORIZING ─host 00─▶ PAID          (refund: PAID stays PAID)
//!    │ │ │               │ │ │ └─host declines / no answer / recovery─▶ DECLINED
//!    │ │ │               │ │ └─terminal reversal (reversal queued)───▶ CANCELLED
//!    │ │ │               │ └─not sent─▶ CREATED (the payer may try again)
//!    │ │ └─declined locally (51, 75)─▶ DECLINED
//!    │ └─expire (or paid too late)─▶ EXPIRED
//!    └─cancel / terminal reversal─▶ CANCELLED
//! ```
//!
//! The diagram is checked against [`next`] by a test (every arrow is a transition the table
//! makes, and the table makes no other state change). Unknown or impossible combinations are
//! [`Verdict::Refuse`] with a reason, never a default.

use super::order::OrderState;
use super::response::ResponseCode;

/// Where a paid sale's money was decided: that is where a reversal or refund must go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settlement {
    /// posbridge's own ledger (the standard deployment).
    Local,
    /// An upstream host approved it (five roles): reversals and refund advices go there.
    Upstream,
}

/// Everything that can happen to an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// The phone asks to pay (S106), before any PIN or ledger work.
    PayAttempt,
    /// The local ledger approved the payment (PIN right, funds moved).
    LocalApproved,
    /// The local ledger refused it for good (51 insufficient funds, 75 PIN tries exceeded).
    LocalDeclined(ResponseCode),
    /// A wrong PIN with tries left: the order stays payable.
    WrongPin,
    /// The sale is armed (standby reversal written) and about to go to its host.
    Forward,
    /// The host approved the forwarded sale (a MACed 0210 with 00).
    HostApproved,
    /// The host declined it cleanly (a MACed answer with another code).
    HostDeclined(ResponseCode),
    /// The sale may have reached the host but no clean answer came (timeout, bad or missing MAC,
    /// connection lost).
    HostAmbiguous,
    /// The sale never left posbridge (link down, PIN translation failed, deadline passed while
    /// still queued).
    NotSent,
    /// The order's time ran out.
    Expire,
    /// The terminal went away or an operator cancelled it.
    Cancel,
    /// The terminal reversed its own request (0400).
    TerminalReversal,
    /// The merchant voids the sale (0200 with 60.1 = 23, or the operator).
    Void,
    /// The merchant refunds part or all of the sale.
    Refund {
        /// Amount to give back, in the sale's currency's minor units.
        amount_minor: i64,
    },
    /// The host acknowledged a queued reversal of this order's forwarded sale.
    ReversalAcknowledged,
    /// A standby reversal outlived its sale's deadline with no answer recorded (posbridge
    /// stopped mid-sale).
    Recovery,
}

impl Event {
    /// Every event with representative arguments, for exhaustive tests.
    pub fn samples() -> Vec<Event> {
        vec![
            Event::PayAttempt,
            Event::LocalApproved,
            Event::LocalDeclined(ResponseCode::InsufficientFunds),
            Event::LocalDeclined(ResponseCode::PinTriesExceeded),
            Event::WrongPin,
            Event::Forward,
            Event::HostApproved,
            Event::HostDeclined(ResponseCode::InsufficientFunds),
            Event::HostDeclined(ResponseCode::WrongPin),
            Event::HostAmbiguous,
            Event::NotSent,
            Event::Expire,
            Event::Cancel,
            Event::TerminalReversal,
            Event::Void,
            Event::Refund { amount_minor: 1 },
            Event::ReversalAcknowledged,
            Event::Recovery,
        ]
    }
}

/// The facts about an order that decisions depend on besides its state, read by the caller
/// under the order's row lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Context {
    /// The order's amount (minor units, positive).
    pub amount_minor: i64,
    /// Refunds made or queued so far.
    pub refunded_minor: i64,
    /// Where a paid sale's money was decided; `None` while unpaid.
    pub settlement: Option<Settlement>,
    /// An upstream refund advice has reached (or may have reached) the host: it cannot be
    /// withdrawn, so the sale can no longer be reversed whole.
    pub advice_sent: bool,
    /// The order is past its expiry.
    pub expired: bool,
    /// The merchant is notified of this payment by webhook (static codes).
    pub notify_merchant: bool,
}

impl Context {
    /// What is left of the sale after refunds.
    pub fn remaining_minor(&self) -> i64 {
        self.amount_minor - self.refunded_minor
    }
}

/// Follow-up work a transition queues, written in the same transaction as the state change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Work {
    /// Give back what is left of a local sale (net of refunds) through the ledger.
    ReverseLocal,
    /// Queue the reversal of the forwarded sale for the reversal worker (from standby, from a
    /// clean answer's cancellation, or again after a late approval).
    QueueHostReversal,
    /// Cancel the standby reversal: the host's answer was clean or the sale never left.
    CancelStandbyReversal,
    /// Withdraw refund advices that are queued and never sent.
    CancelQueuedAdvices,
    /// Move this amount from the merchant back to the payer through the ledger.
    RefundLocal(i64),
    /// Queue a refund advice of this amount to the host that approved the sale.
    QueueAdvice(i64),
    /// Queue the merchant's webhook for this payment.
    NotifyMerchant,
}

/// A decided move: from one state to another (or the same, for refunds and late answers), the
/// code to answer with and the work to queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    /// The state the order must still be in when this is applied.
    pub from: OrderState,
    /// The state it moves to.
    pub to: OrderState,
    /// The order's response code from now on, and the answer to the request.
    pub code: ResponseCode,
    /// The event row's detail.
    pub detail: &'static str,
    /// Follow-up work, applied in order in the same transaction.
    pub work: Vec<Work>,
}

/// A request the lifecycle refuses: nothing is written but the attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    /// What to answer.
    pub code: ResponseCode,
    /// Why, for the log and the attempt record.
    pub reason: &'static str,
}

/// What [`next`] decides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Apply this transition.
    Move(Transition),
    /// The event is allowed and changes nothing yet: go on (its outcome is the next event).
    Proceed,
    /// Nothing to do, and that is a success: answer with this code (an idempotent repeat, or a
    /// reversal of something that never moved money).
    Unchanged(ResponseCode),
    /// Refused.
    Refuse(Refusal),
}

fn moves(
    from: OrderState,
    to: OrderState,
    code: ResponseCode,
    detail: &'static str,
    work: &[Work],
) -> Verdict {
    Verdict::Move(Transition {
        from,
        to,
        code,
        detail,
        work: work.to_vec(),
    })
}

fn refuse(code: ResponseCode, reason: &'static str) -> Verdict {
    Verdict::Refuse(Refusal { code, reason })
}

/// Decides what `event` does to an order in `state`. Total over every state and event; pure.
pub fn next(state: OrderState, event: Event, context: &Context) -> Verdict {
    use Event as E;
    use OrderState as S;
    use ResponseCode as C;
    match (state, event) {
        // --- paying (S106/S107) ---------------------------------------------------------------
        (S::Created, E::PayAttempt) if context.expired => moves(
            S::Created,
            S::Expired,
            C::Expired,
            "expired at payment",
            &[],
        ),
        (S::Created, E::PayAttempt) => Verdict::Proceed,
        (S::Authorizing, E::PayAttempt) => refuse(C::InProgress, "order is AUTHORIZING"),
        (S::Paid | S::Reversed, E::PayAttempt) => refuse(C::Duplicate, "order is paid already"),
        (S::Expired, E::PayAttempt) => refuse(C::Expired, "order is EXPIRED"),
        (S::Declined | S::Cancelled, E::PayAttempt) => {
            refuse(C::NotPermitted, "order is no longer payable")
        }
        (S::Created, E::LocalApproved) => {
            let work: &[Work] = if context.notify_merchant {
                &[Work::NotifyMerchant]
            } else {
                &[]
            };
            moves(S::Created, S::Paid, C::Approved, "paid", work)
        }
        (S::Created, E::LocalDeclined(code @ (C::InsufficientFunds | C::PinTriesExceeded))) => {
            moves(S::Created, S::Declined, code, "declined by the ledger", &[])
        }
        (S::Created, E::WrongPin) => refuse(C::WrongPin, "PIN not accepted"),
        (S::Created, E::Forward) => moves(
            S::Created,
            S::Authorizing,
            C::InProgress,
            "forwarded upstream",
            &[],
        ),

        // --- the host's answer to a forwarded sale -------------------------------------------
        (S::Authorizing, E::HostApproved) => moves(
            S::Authorizing,
            S::Paid,
            C::Approved,
            "approved by host",
            &[Work::CancelStandbyReversal],
        ),
        // A wrong PIN at the host: nothing moved and nothing to reverse; the payer may try again
        // (the host counts the tries and answers 75 when they run out).
        (S::Authorizing, E::HostDeclined(C::WrongPin)) => moves(
            S::Authorizing,
            S::Created,
            C::WrongPin,
            "wrong PIN at the host; the payer may try again",
            &[Work::CancelStandbyReversal],
        ),
        (S::Authorizing, E::HostDeclined(code)) if code != C::Approved => moves(
            S::Authorizing,
            S::Declined,
            code,
            "declined by host",
            &[Work::CancelStandbyReversal],
        ),
        (S::Authorizing, E::HostAmbiguous) => moves(
            S::Authorizing,
            S::Declined,
            C::IssuerTimeout,
            "no clean answer; reversal queued",
            &[Work::QueueHostReversal],
        ),
        (S::Authorizing, E::NotSent) => moves(
            S::Authorizing,
            S::Created,
            C::IssuerUnavailable,
            "not sent",
            &[Work::CancelStandbyReversal],
        ),
        (S::Authorizing, E::Recovery) => moves(
            S::Authorizing,
            S::Declined,
            C::IssuerTimeout,
            "no answer recorded (posbridge stopped mid-sale); reversal queued",
            &[Work::QueueHostReversal],
        ),
        // The reversal was decided before this approval arrived (terminal reversal, timeout,
        // recovery): whatever the host did, it must be reversed, so queue it again (it may have
        // been acknowledged with 25 because it overtook its own sale).
        (S::Declined | S::Cancelled, E::HostApproved) => moves(
            state,
            state,
            C::IssuerTimeout,
            "late approval after the reversal decision; reversal re-queued",
            &[Work::QueueHostReversal],
        ),
        // A late decline or a second "no answer" after the decision changes nothing: the
        // reversal is queued already, and a reversal of a declined sale is harmless.
        (S::Declined | S::Cancelled, E::HostDeclined(_) | E::HostAmbiguous | E::NotSent) => {
            Verdict::Unchanged(C::IssuerTimeout)
        }
        (S::Declined | S::Cancelled | S::Paid | S::Reversed, E::Recovery) => {
            Verdict::Unchanged(C::Approved)
        }

        // --- time and the terminal ---------------------------------------------------------
        (S::Created, E::Expire) => moves(S::Created, S::Expired, C::Expired, "expired", &[]),
        (S::Created, E::Cancel) => {
            moves(S::Created, S::Cancelled, C::NotPermitted, "cancelled", &[])
        }
        (S::Created, E::TerminalReversal) => moves(
            S::Created,
            S::Cancelled,
            C::NotPermitted,
            "terminal reversal (0400) before payment",
            &[],
        ),
        // The sale is at the host: the reversal is queued now and the terminal answered only
        // once that is durable; the host's answer, when it comes, cannot make the order paid.
        (S::Authorizing, E::TerminalReversal) => moves(
            S::Authorizing,
            S::Cancelled,
            C::NotPermitted,
            "terminal reversal (0400) while authorising; reversal queued",
            &[Work::QueueHostReversal],
        ),
        (S::Paid, E::TerminalReversal | E::Void) => reverse_paid(event, context),
        (S::Reversed, E::TerminalReversal) => Verdict::Unchanged(C::Approved),
        (S::Reversed, E::Void) => refuse(C::InvalidTransaction, "the sale is voided already"),
        // Nothing ever moved: the terminal must stop resending its reversal.
        (S::Declined | S::Expired | S::Cancelled, E::TerminalReversal) => {
            Verdict::Unchanged(C::Approved)
        }
        (S::Paid, E::Refund { amount_minor }) => refund(amount_minor, context),
        (S::Paid, E::ReversalAcknowledged) => moves(
            S::Paid,
            S::Reversed,
            C::Approved,
            "reversal acknowledged by host",
            &[],
        ),
        (_, E::ReversalAcknowledged) => Verdict::Unchanged(C::Approved),
        (_, E::Void) => refuse(C::InvalidTransaction, "only a paid sale can be voided"),
        (_, E::Refund { .. }) => refuse(C::InvalidTransaction, "only a paid sale can be refunded"),
        (_, E::Expire | E::Cancel) => Verdict::Unchanged(C::NotPermitted),
        (
            _,
            E::LocalApproved
            | E::LocalDeclined(_)
            | E::WrongPin
            | E::Forward
            | E::HostApproved
            | E::HostDeclined(_)
            | E::HostAmbiguous
            | E::NotSent
            | E::Recovery,
        ) => refuse(C::InvalidTransaction, "impossible in this state"),
    }
}

/// A paid sale reversed by the terminal (0400) or voided: the money goes back the way it came.
fn reverse_paid(event: Event, context: &Context) -> Verdict {
    let detail = if event == Event::Void {
        "voided"
    } else {
        "terminal reversal (0400)"
    };
    match context.settlement {
        Some(Settlement::Local) => moves(
            OrderState::Paid,
            OrderState::Reversed,
            ResponseCode::Approved,
            detail,
            &[Work::ReverseLocal],
        ),
        // An advice the host may have applied cannot be withdrawn, and a reversal is of the
        // whole sale: refund what is left instead.
        Some(Settlement::Upstream) if context.advice_sent => refuse(
            ResponseCode::InvalidTransaction,
            "refunds were sent to the host; refund the rest instead",
        ),
        Some(Settlement::Upstream) => moves(
            OrderState::Paid,
            OrderState::Reversed,
            ResponseCode::Approved,
            detail,
            &[Work::CancelQueuedAdvices, Work::QueueHostReversal],
        ),
        None => refuse(ResponseCode::SystemError, "a paid order without settlement"),
    }
}

fn refund(amount_minor: i64, context: &Context) -> Verdict {
    if amount_minor <= 0 || amount_minor > context.remaining_minor() {
        return refuse(
            ResponseCode::InvalidAmount,
            "refund exceeds what is left of the sale",
        );
    }
    let work = match context.settlement {
        Some(Settlement::Local) => Work::RefundLocal(amount_minor),
        Some(Settlement::Upstream) => Work::QueueAdvice(amount_minor),
        None => return refuse(ResponseCode::SystemError, "a paid order without settlement"),
    };
    moves(
        OrderState::Paid,
        OrderState::Paid,
        ResponseCode::Approved,
        "refunded",
        &[work],
    )
}

/// Invariants every applied transition must keep; the writer asserts them (in release builds
/// too) before it touches the database, so a bug stops the request instead of moving money.
pub fn check_invariants(transition: &Transition, context: &Context) {
    assert!(context.amount_minor > 0, "orders have a positive amount");
    assert!(
        (0..=context.amount_minor).contains(&context.refunded_minor),
        "refunds stay within the sale"
    );
    for work in &transition.work {
        match *work {
            Work::RefundLocal(amount) | Work::QueueAdvice(amount) => assert!(
                amount > 0 && amount <= context.remaining_minor(),
                "a refund never exceeds what is left of its sale"
            ),
            Work::ReverseLocal => assert_eq!(
                context.settlement,
                Some(Settlement::Local),
                "only a local sale is reversed in the ledger"
            ),
            _ => {}
        }
    }
    if transition.to == OrderState::Paid && transition.from != OrderState::Paid {
        assert!(
            transition.code.is_approved(),
            "an order becomes paid only with 00"
        );
    }
}

/// The lifecycle as a Markdown table, generated from [`next`]: every state and event that
/// moves an order (or queues work), for docs/lifecycle.md, which a test keeps equal to this.
pub fn describe() -> String {
    let mut out = String::from("| from | event | to | code | work |\n|---|---|---|---|---|\n");
    let contexts = describe_contexts();
    for state in OrderState::ALL {
        for event in Event::samples() {
            let base = next(state, event, &contexts[0].1);
            for (suffix, context) in &contexts {
                let verdict = next(state, event, context);
                let differs = suffix.is_empty() || verdict != base;
                if let (true, Verdict::Move(t)) = (differs, verdict) {
                    let work: Vec<String> = t.work.iter().map(|w| format!("{w:?}")).collect();
                    out.push_str(&format!(
                        "| {state} | {}{suffix} | {} | {} | {} |\n",
                        event_name(event),
                        t.to,
                        t.code,
                        work.join(", ")
                    ));
                }
            }
        }
    }
    out
}

/// The contexts the description distinguishes (named as a suffix of the event).
fn describe_contexts() -> [(&'static str, Context); 4] {
    let base = Context {
        amount_minor: 100,
        refunded_minor: 0,
        settlement: None,
        advice_sent: false,
        expired: false,
        notify_merchant: false,
    };
    [
        ("", base),
        (
            " (expired)",
            Context {
                expired: true,
                ..base
            },
        ),
        (
            " (local sale)",
            Context {
                settlement: Some(Settlement::Local),
                ..base
            },
        ),
        (
            " (upstream sale)",
            Context {
                settlement: Some(Settlement::Upstream),
                ..base
            },
        ),
    ]
}

fn event_name(event: Event) -> String {
    match event {
        Event::LocalDeclined(code) => format!("LocalDeclined({code})"),
        Event::HostDeclined(code) => format!("HostDeclined({code})"),
        Event::Refund { .. } => "Refund".to_owned(),
        other => format!("{other:?}"),
    }
}

#[cfg(test)]
#[allow(clippy::panic)]
mod tests {
    use super::*;
    use OrderState as S;

    fn context() -> Context {
        Context {
            amount_minor: 1_000,
            refunded_minor: 0,
            settlement: None,
            advice_sent: false,
            expired: false,
            notify_merchant: false,
        }
    }

    /// The verdict in words, for a compact expected table.
    fn short(verdict: &Verdict) -> String {
        match verdict {
            Verdict::Move(t) => format!("->{} {}", t.to, t.code),
            Verdict::Proceed => "proceed".into(),
            Verdict::Unchanged(code) => format!("= {code}"),
            Verdict::Refuse(r) => format!("x {}", r.code),
        }
    }

    /// Every state x event, in an unpaid context (paid states get a local settlement): the
    /// whole table, written out, so any change to a decision must change this test.
    #[test]
    fn every_state_and_event() {
        let expected: &[(S, &[&str])] = &[
            (
                S::Created,
                &[
                    "proceed",
                    "->PAID 00",
                    "->DECLINED 51",
                    "->DECLINED 75",
                    "x 55",
                    "->AUTHORIZING 09",
                    "x 12",
                    "x 12",
                    "x 12",
                    "x 12",
                    "x 12",
                    "->EXPIRED 54",
                    "->CANCELLED 57",
                    "->CANCELLED 57",
                    "x 12",
                    "x 12",
                    "= 00",
                    "x 12",
                ],
            ),
            (
                S::Authorizing,
                &[
                    "x 09",
                    "x 12",
                    "x 12",
                    "x 12",
                    "x 12",
                    "x 12",
                    "->PAID 00",
                    "->DECLINED 51",
                    "->CREATED 55",
                    "->DECLINED 98",
                    "->CREATED 91",
                    "= 57",
                    "= 57",
                    "->CANCELLED 57",
                    "x 12",
                    "x 12",
                    "= 00",
                    "->DECLINED 98",
                ],
            ),
            (
                S::Paid,
                &[
                    "x 94",
                    "x 12",
                    "x 12",
                    "x 12",
                    "x 12",
                    "x 12",
                    "x 12",
                    "x 12",
                    "x 12",
                    "x 12",
                    "x 12",
                    "= 57",
                    "= 57",
                    "->REVERSED 00",
                    "->REVERSED 00",
                    "->PAID 00",
                    "->REVERSED 00",
                    "= 00",
                ],
            ),
            (
                S::Declined,
                &[
                    "x 57",
                    "x 12",
                    "x 12",
                    "x 12",
                    "x 12",
                    "x 12",
                    "->DECLINED 98",
                    "= 98",
                    "= 98",
                    "= 98",
                    "= 98",
                    "= 57",
                    "= 57",
                    "= 00",
                    "x 12",
                    "x 12",
                    "= 00",
                    "= 00",
                ],
            ),
            (
                S::Expired,
                &[
                    "x 54", "x 12", "x 12", "x 12", "x 12", "x 12", "x 12", "x 12", "x 12", "x 12",
                    "x 12", "= 57", "= 57", "= 00", "x 12", "x 12", "= 00", "x 12",
                ],
            ),
            (
                S::Cancelled,
                &[
                    "x 57",
                    "x 12",
                    "x 12",
                    "x 12",
                    "x 12",
                    "x 12",
                    "->CANCELLED 98",
                    "= 98",
                    "= 98",
                    "= 98",
                    "= 98",
                    "= 57",
                    "= 57",
                    "= 00",
                    "x 12",
                    "x 12",
                    "= 00",
                    "= 00",
                ],
            ),
            (
                S::Reversed,
                &[
                    "x 94", "x 12", "x 12", "x 12", "x 12", "x 12", "x 12", "x 12", "x 12", "x 12",
                    "x 12", "= 57", "= 57", "= 00", "x 12", "x 12", "= 00", "= 00",
                ],
            ),
        ];
        let events = Event::samples();
        for (state, row) in expected {
            assert_eq!(row.len(), events.len(), "{state}: one verdict per event");
            let mut ctx = context();
            if matches!(state, S::Paid | S::Reversed) {
                ctx.settlement = Some(Settlement::Local);
            }
            for (event, want) in events.iter().zip(row.iter()) {
                let got = short(&next(*state, *event, &ctx));
                assert_eq!(&got, want, "{state} x {event:?}");
            }
        }
        assert_eq!(expected.len(), OrderState::ALL.len());
    }

    #[test]
    fn paying_an_expired_order_expires_it() {
        let ctx = Context {
            expired: true,
            ..context()
        };
        assert_eq!(
            short(&next(S::Created, Event::PayAttempt, &ctx)),
            "->EXPIRED 54"
        );
    }

    #[test]
    fn a_static_payment_notifies_the_merchant() {
        let ctx = Context {
            notify_merchant: true,
            ..context()
        };
        let Verdict::Move(t) = next(S::Created, Event::LocalApproved, &ctx) else {
            panic!("paying a created order moves it");
        };
        assert_eq!(t.work, vec![Work::NotifyMerchant]);
    }

    #[test]
    fn reversal_while_authorising_queues_the_host_reversal() {
        let Verdict::Move(t) = next(S::Authorizing, Event::TerminalReversal, &context()) else {
            panic!("a 0400 while authorising moves the order");
        };
        assert_eq!(
            (t.to, t.work),
            (S::Cancelled, vec![Work::QueueHostReversal])
        );
    }

    #[test]
    fn a_late_approval_after_the_reversal_decision_queues_it_again() {
        for state in [S::Declined, S::Cancelled] {
            let Verdict::Move(t) = next(state, Event::HostApproved, &context()) else {
                panic!("{state}: a late approval re-queues");
            };
            assert_eq!((t.to, t.work), (state, vec![Work::QueueHostReversal]));
        }
    }

    #[test]
    fn refunds_never_exceed_what_is_left() {
        let ctx = Context {
            settlement: Some(Settlement::Local),
            refunded_minor: 600,
            ..context()
        };
        let refund = |amount_minor| next(S::Paid, Event::Refund { amount_minor }, &ctx);
        assert_eq!(short(&refund(401)), "x 13");
        assert_eq!(short(&refund(0)), "x 13");
        assert_eq!(short(&refund(-5)), "x 13");
        let Verdict::Move(t) = refund(400) else {
            panic!("the rest can be refunded")
        };
        assert_eq!(t.work, vec![Work::RefundLocal(400)]);
    }

    #[test]
    fn voiding_an_upstream_sale() {
        let upstream = Context {
            settlement: Some(Settlement::Upstream),
            ..context()
        };
        let Verdict::Move(t) = next(S::Paid, Event::Void, &upstream) else {
            panic!("an upstream sale with no advice sent can be voided");
        };
        assert_eq!(
            t.work,
            vec![Work::CancelQueuedAdvices, Work::QueueHostReversal]
        );
        let sent = Context {
            advice_sent: true,
            ..upstream
        };
        assert_eq!(short(&next(S::Paid, Event::Void, &sent)), "x 12");
        assert_eq!(short(&next(S::Reversed, Event::Void, &upstream)), "x 12");
    }

    #[test]
    fn every_move_keeps_the_invariants() {
        for settlement in [None, Some(Settlement::Local), Some(Settlement::Upstream)] {
            for refunded_minor in [0, 500, 1_000] {
                let ctx = Context {
                    settlement,
                    refunded_minor,
                    ..context()
                };
                for state in OrderState::ALL {
                    for event in Event::samples() {
                        if let Verdict::Move(t) = next(state, event, &ctx) {
                            assert_eq!(t.from, state);
                            check_invariants(&t, &ctx);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn the_description_lists_every_move() {
        let table = describe();
        assert!(table.contains("| CREATED | Forward | AUTHORIZING | 09 |  |"));
        assert!(table.contains("| PAID | Void (local sale) | REVERSED | 00 | ReverseLocal |"));
    }
}

#[cfg(test)]
#[allow(clippy::panic)]
mod doc_tests {
    /// docs/lifecycle.md carries [`super::describe`]'s table between its markers; regenerate
    /// with `POSBRIDGE_BLESS=1 cargo test -p posbridge --lib lifecycle`.
    #[test]
    fn docs_lifecycle_md_is_the_code_table() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/lifecycle.md");
        let doc = std::fs::read_to_string(path).unwrap_or_default();
        let (begin, end) = ("<!-- table:begin -->\n", "<!-- table:end -->");
        let table = super::describe();
        let (Some(a), Some(b)) = (doc.find(begin), doc.find(end)) else {
            panic!("docs/lifecycle.md lacks its table markers");
        };
        let current = &doc[a + begin.len()..b];
        if current != table && std::env::var_os("POSBRIDGE_BLESS").is_some() {
            let updated = format!("{}{table}{}", &doc[..a + begin.len()], &doc[b..]);
            std::fs::write(path, updated).unwrap_or_else(|e| panic!("writing {path}: {e}"));
            return;
        }
        assert_eq!(
            current, table,
            "docs/lifecycle.md differs from the lifecycle table"
        );
    }
}
