//! One upstream host's configuration ([`HostConfig`]): where it is, which dialect it speaks, how
//! many connections, timeouts, limits, key labels and the IDs of the cups-host header.
//!
//! In TOML (all but `name`, `addrs` and `dialect` have defaults):
//!
//! ```toml
//! [[upstream.hosts]]
//! name = "cups"
//! addrs = ["10.0.0.5:7001", "10.0.0.6:7001"]   # connections are spread over these
//! dialect = "cups-host"          # cups-host | iso87ascii | iso87binary | path/to/spec.toml
//! connections = 2                # persistent connections
//! connect_timeout_ms = 3000
//! request_timeout_ms = 10000     # default deadline of the link's own 0800s
//! echo_idle_secs = 60            # echo (F70 = 301) after this much silence on a connection
//! max_in_flight = 64             # requests awaiting an answer, all connections together
//! backoff_initial_ms = 200       # reconnect backoff: doubles up to backoff_max_ms, with jitter
//! backoff_max_ms = 30000
//! match_fields = [41, 11]        # response matching key besides the MTI class; e.g. [37] or [11]
//! mac_key = "zak/upstream"       # X9.19 MAC key label; absent = no MAC
//! pin_key = "zpk/upstream"       # zone PIN key label (the lead translates PIN blocks to it)
//! zmk = "zmk/upstream"           # zone master key label: key exchange imports under it
//! destination_id = "00010000"    # cups-host header IDs (11 characters at most)
//! source_id = "48020000"
//! acquirer_id = "48020000"       # F32 on the link's own 0800s
//! ```

use serde::Deserialize;

/// An upstream host and how to talk to it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostConfig {
    /// Name in logs, metrics and the unmatched channel.
    pub name: String,
    /// Host addresses (`host:port`); connection `i` uses `addrs[i % addrs.len()]`.
    pub addrs: Vec<String>,
    /// Dialect: a built-in spec name or a spec file path.
    pub dialect: String,
    /// Number of persistent connections.
    #[serde(default = "default_connections")]
    pub connections: usize,
    /// TCP connect timeout.
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// Deadline of the link's own network management requests (sign-on, echo, sign-off), and
    /// the longest a write may block on a host that stops reading (the connection is then
    /// closed and its requests end `Disconnected`).
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u64,
    /// An echo test is sent on a connection silent for this long; 0 disables it.
    #[serde(default = "default_echo_idle_secs")]
    pub echo_idle_secs: u64,
    /// Requests awaiting an answer on this host, all connections together (backpressure bound).
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    /// First reconnect delay; it doubles after each failure, with up to 50 % random jitter.
    #[serde(default = "default_backoff_initial_ms")]
    pub backoff_initial_ms: u64,
    /// Longest reconnect delay.
    #[serde(default = "default_backoff_max_ms")]
    pub backoff_max_ms: u64,
    /// Fields that, with the MTI class, match a response to its request. Default TID + STAN.
    #[serde(default = "default_match_fields")]
    pub match_fields: Vec<u16>,
    /// Security-module label of the zone MAC key (ANSI X9.19). `None`: messages carry no MAC.
    #[serde(default)]
    pub mac_key: Option<String>,
    /// Security-module label of the zone PIN key: where a key exchange puts the new PIN key.
    #[serde(default)]
    pub pin_key: Option<String>,
    /// Security-module label of the zone master key under which key exchanges arrive. `None`:
    /// key-change messages are refused.
    #[serde(default)]
    pub zmk: Option<String>,
    /// cups-host header destination ID.
    #[serde(default)]
    pub destination_id: String,
    /// cups-host header source ID.
    #[serde(default)]
    pub source_id: String,
    /// Acquiring institution ID, sent in F32 of the link's own 0800s when set.
    #[serde(default)]
    pub acquirer_id: Option<String>,
    /// Capacity of the unmatched-message channel returned by `HostLink::start`.
    #[serde(default = "default_unmatched_capacity")]
    pub unmatched_capacity: usize,
    /// Send field 2 (the card number) in reversals (0400/0420) and refund advices (0220) as in
    /// the sale, for hosts that match them by card. The number is sealed under the data key
    /// (`[keys] data`) before the sale is armed, opened only to send, and destroyed once its
    /// reversal is acknowledged (or expires), when the sale is declined, or
    /// `upstream.pan_retention_secs` after the sale. Off: reversals and advices carry no field 2.
    #[serde(default)]
    pub pan_in_reversals: bool,
}

fn default_connections() -> usize {
    2
}
fn default_connect_timeout_ms() -> u64 {
    3_000
}
fn default_request_timeout_ms() -> u64 {
    10_000
}
fn default_echo_idle_secs() -> u64 {
    60
}
fn default_max_in_flight() -> usize {
    64
}
fn default_backoff_initial_ms() -> u64 {
    200
}
fn default_backoff_max_ms() -> u64 {
    30_000
}
fn default_match_fields() -> Vec<u16> {
    vec![41, 11]
}
fn default_unmatched_capacity() -> usize {
    1024
}

impl HostConfig {
    /// A configuration with the defaults for everything but the name, addresses and dialect.
    pub fn new(name: &str, addrs: Vec<String>, dialect: &str) -> HostConfig {
        HostConfig {
            name: name.to_owned(),
            addrs,
            dialect: dialect.to_owned(),
            connections: default_connections(),
            connect_timeout_ms: default_connect_timeout_ms(),
            request_timeout_ms: default_request_timeout_ms(),
            echo_idle_secs: default_echo_idle_secs(),
            max_in_flight: default_max_in_flight(),
            backoff_initial_ms: default_backoff_initial_ms(),
            backoff_max_ms: default_backoff_max_ms(),
            match_fields: default_match_fields(),
            mac_key: None,
            pin_key: None,
            zmk: None,
            destination_id: String::new(),
            source_id: String::new(),
            acquirer_id: None,
            unmatched_capacity: default_unmatched_capacity(),
            pan_in_reversals: false,
        }
    }

    /// Checks the limits; the error names the key.
    pub fn validate(&self) -> Result<(), String> {
        let fail = |key: &str, why: &str| Err(format!("upstream host {}: {key}: {why}", self.name));
        if self.addrs.is_empty() {
            return fail("addrs", "at least one address is needed");
        }
        if !(1..=64).contains(&self.connections) {
            return fail("connections", "must be 1 to 64");
        }
        if !(1..=100_000).contains(&self.max_in_flight) {
            return fail("max_in_flight", "must be 1 to 100000");
        }
        if self.match_fields.is_empty() || self.match_fields.iter().any(|f| !(2..=128).contains(f))
        {
            return fail("match_fields", "one or more field numbers 2..=128");
        }
        if self.unmatched_capacity == 0 {
            return fail("unmatched_capacity", "must be at least 1");
        }
        if self.destination_id.len() > 11 || self.source_id.len() > 11 {
            return fail("destination_id/source_id", "at most 11 characters");
        }
        if self.connect_timeout_ms == 0 || self.request_timeout_ms == 0 {
            return fail(
                "connect_timeout_ms/request_timeout_ms",
                "must be at least 1",
            );
        }
        if self.backoff_initial_ms == 0 || self.backoff_max_ms < self.backoff_initial_ms {
            return fail("backoff_initial_ms", "must be > 0 and <= backoff_max_ms");
        }
        Ok(())
    }
}
