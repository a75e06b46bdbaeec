//! QR orders: the one-time payment requests a terminal (or a printed static code) presents and a
//! phone pays (S101-S108).
//!
//! An order is written to the journal before its code is shown. Its state moves only forward,
//! each move in one transaction together with its event row (and, when money moves, the ledger
//! postings):
//!
//! ```text
//! CREATED --pay--> PAID --reversal--> REVERSED
//!    |  \--forward upstream--> AUTHORIZING --00--> PAID / --refused, ambiguous--> DECLINED
//!    |  \--decline (51, 75)--> DECLINED
//!    |--expiry--> EXPIRED
//!    \--cancel / terminal gone / reversal--> CANCELLED
//! ```
//!
//! A wrong PIN (55) leaves the order open so the payer can try again, as a card terminal would;
//! the account's try counter locks it after [`service::MAX_PIN_TRIES`] wrong PINs (75).

pub mod forward;
pub mod notify;
pub mod payload;
pub mod response;
pub mod service;

pub use response::ResponseCode;
pub use service::{NewOrder, Order, OrderService, PayRequest, PaymentResult};

/// Where an order's code came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// (a) posbridge made the code and returned it to the terminal.
    GatewayCode,
    /// (b) the terminal made the code itself, authenticated with its MAC key.
    TerminalCode,
    /// A static, printed code: the payer enters the amount.
    Static,
}

impl Origin {
    /// The journal's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::GatewayCode => "gateway-code",
            Origin::TerminalCode => "terminal-code",
            Origin::Static => "static",
        }
    }
}

/// An order's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OrderState {
    /// Waiting for the phone.
    Created,
    /// Paid by the phone, being authorised by an upstream host (five-role deployment).
    Authorizing,
    /// Paid: money moved.
    Paid,
    /// Refused for good (see the response code).
    Declined,
    /// Not paid in time.
    Expired,
    /// Cancelled before payment (terminal gone, reversal, operator).
    Cancelled,
    /// Paid, then reversed: the money went back.
    Reversed,
}

impl OrderState {
    /// The journal's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            OrderState::Created => "CREATED",
            OrderState::Authorizing => "AUTHORIZING",
            OrderState::Paid => "PAID",
            OrderState::Declined => "DECLINED",
            OrderState::Expired => "EXPIRED",
            OrderState::Cancelled => "CANCELLED",
            OrderState::Reversed => "REVERSED",
        }
    }

    /// Parses the journal's name.
    pub fn parse(text: &str) -> Option<OrderState> {
        [
            OrderState::Created,
            OrderState::Authorizing,
            OrderState::Paid,
            OrderState::Declined,
            OrderState::Expired,
            OrderState::Cancelled,
            OrderState::Reversed,
        ]
        .into_iter()
        .find(|state| state.as_str() == text)
    }

    /// True once nothing more can happen to the order but a reversal of a payment.
    pub fn is_final(self) -> bool {
        !matches!(self, OrderState::Created | OrderState::Authorizing)
    }
}
