//! The only SQL of the gateway: the journal (PostgreSQL or SQLite), the ledger, the order
//! writer ([`orders::apply`], the one place an order's state changes), the store-and-forward
//! queue rows, the webhook outbox rows and repeated terminal requests.

pub mod counters;
pub mod host_queue;
pub mod journal;
pub mod ledger;
pub mod orders;
pub mod outbox;
pub mod queue;
pub mod terminal_requests;
