//! The pure core: money, orders and their lifecycle. No SQL, no tokio, no clock: everything
//! here can be tested exhaustively without a database, and every other layer builds on it.

pub mod lifecycle;
pub mod money;
pub mod order;
pub mod response;
