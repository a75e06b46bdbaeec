//! The only SQL of the order flow. Everything that changes an order goes through
//! [`orders::apply`], inside the caller's transaction.

pub mod host_queue;
pub mod orders;
pub mod terminal_requests;
