//! posbridge's upstream side: persistent ISO 8583 client links to acquirer, UnionPay and issuer
//! hosts. The host-facing messages are described in docs/host-interface.md. The simulated host
//! to test them against (`posbridge sim host`) lives in the `posbridge-sim` crate
//! (`sim/src/host.rs`), which this library never imports.
//!
//! # The API the order flow calls
//!
//! ```text
//! HostLink::start(config: HostConfig, security: Security)
//!     -> Result<(HostLink, mpsc::Receiver<Unmatched>), StartError>      // HostLink: Clone+Send+Sync
//! HostLink::request(&self, message: IsoMessage, deadline: Duration)
//!     -> Result<IsoMessage, LinkError>
//! HostLink::next_stan(&self) -> String            // reserve F11 to journal before sending
//! HostLink::state(&self) -> LinkState             // connections, up, signed_on
//! HostLink::in_flight(&self) -> usize
//! HostLink::wait_signed_on(&self, connections: usize, timeout: Duration) -> bool
//! HostLink::shutdown(&self)                       // sign-off, close, join
//! HostLink::name(&self) -> &str;  HostLink::config(&self) -> &HostConfig
//! link::transmission_date_time(SystemTime) -> String   // F7, UTC MMDDhhmmss
//! LinkError::is_ambiguous(&self) -> bool          // false only for NotSent
//! ```
//!
//! - [`IsoMessage`]: an owned MTI + field map in the codec's value form; the link adds F11 (if
//!   absent), F7 (if absent), the cups-host header and the MAC.
//! - [`LinkError`]: `NotSent(reason)` never left posbridge (link down, busy, duplicate key,
//!   invalid message); `Timeout`, `BadMac(answer)` and `Disconnected` may have reached the host:
//!   reverse, never resend.
//! - [`Unmatched`]: every frame the link could not hand to a waiting request (late, duplicate,
//!   undecodable, unexpected host request) arrives on the receiver returned by
//!   [`HostLink::start`]; it is logged too, so a full channel loses nothing silently.
//! - Key exchange is handled inside the link: a host's 0800 with F70 = 101 (layout in
//!   [`key_exchange`]) is imported into the configured `pin_key` / `mac_key` labels through the
//!   security module, both or neither.

pub mod key_exchange;
pub mod link;
pub mod message;

/// Host link settings (`[[hosts]]`), defined with the rest of the configuration schema.
pub use crate::infra::config::host as config;
pub use crate::infra::config::host::HostConfig;
pub use link::{
    HostLink, LinkError, LinkState, NotSentReason, StartError, Unmatched, UnmatchedReason,
};
pub use message::IsoMessage;
