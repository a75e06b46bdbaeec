//! An order's identity facts that every layer shares: where its code came from and the states
//! it can be in. What moves it between states is [`super::lifecycle`].

use super::money::Money;
use serde::{Deserialize, Serialize};

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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
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

    /// Every state, in the order of the lifecycle diagram.
    pub const ALL: [OrderState; 7] = [
        OrderState::Created,
        OrderState::Authorizing,
        OrderState::Paid,
        OrderState::Declined,
        OrderState::Expired,
        OrderState::Cancelled,
        OrderState::Reversed,
    ];

    /// Parses the journal's name; `None` for anything else (a stored state that does not parse
    /// is an error for the caller, never a default).
    pub fn parse(text: &str) -> Option<OrderState> {
        OrderState::ALL
            .into_iter()
            .find(|state| state.as_str() == text)
    }

    /// True once nothing more can happen to the order but a reversal of a payment.
    pub fn is_final(self) -> bool {
        !matches!(self, OrderState::Created | OrderState::Authorizing)
    }
}

impl std::fmt::Display for OrderState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<&str> for OrderState {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl PartialEq<str> for OrderState {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

/// An order as stored, with what a receipt needs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Order {
    /// Identifier.
    pub order_id: String,
    /// `gateway-code`, `terminal-code` or `static`.
    pub origin: String,
    /// Merchant number.
    pub mid: String,
    /// Merchant name.
    pub merchant_name: String,
    /// Merchant city.
    pub merchant_city: String,
    /// Terminal ID.
    pub tid: Option<String>,
    /// Operator number.
    pub operator: Option<String>,
    /// Acquirer.
    pub acquirer: Option<String>,
    /// Transaction type.
    pub txn_type: String,
    /// Batch number.
    pub batch: Option<String>,
    /// Voucher number.
    pub voucher: Option<String>,
    /// Amount.
    pub amount: Money,
    /// One-time reference carried in the code (62.05).
    pub reference: String,
    /// The EMV payload shown.
    pub payload: String,
    /// Its state (a stored name that does not parse is an error when the row is read).
    pub state: OrderState,
    /// Last response code.
    pub response_code: Option<String>,
    /// Retrieval reference number (F37).
    pub rrn: Option<String>,
    /// Authorisation code (F38).
    pub auth_code: Option<String>,
    /// Payer's card number, masked.
    pub payer_pan_masked: Option<String>,
    /// Created, ms since epoch.
    pub created_at_ms: i64,
    /// Expires, ms since epoch.
    pub expires_at_ms: i64,
    /// Last change, ms since epoch.
    pub updated_at_ms: i64,
}

impl Order {
    /// Its state.
    pub fn state(&self) -> OrderState {
        self.state
    }

    /// Where it came from; `None` for a stored origin this version does not know.
    pub fn origin(&self) -> Option<Origin> {
        [Origin::GatewayCode, Origin::TerminalCode, Origin::Static]
            .into_iter()
            .find(|origin| origin.as_str() == self.origin)
    }
}
