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
pub mod service;

pub use crate::domain::order::{OrderState, Origin};
pub use crate::domain::response::{self, ResponseCode};
pub use service::{NewOrder, Order, OrderService, PayRequest, PaymentResult, ReadAt};
