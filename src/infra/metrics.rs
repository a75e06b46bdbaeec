//! Metric names and recording helpers. Recording goes through the `metrics` facade (cheap when
//! no exporter is installed); `posbridge serve` installs the Prometheus exporter on its own port.

use std::time::Duration;

/// Records one security-module call.
pub fn record_hsm_call(elapsed: Duration, ok: bool) {
    metrics::histogram!("posbridge_hsm_operation_seconds").record(elapsed.as_secs_f64());
    if !ok {
        metrics::counter!("posbridge_hsm_errors_total").increment(1);
    }
}

/// Records one ISO 8583 message handled on a terminal link.
pub fn record_message(mti: &str, response_code: &str) {
    metrics::counter!("posbridge_messages_total", "mti" => mti.to_owned(), "response_code" => response_code.to_owned())
        .increment(1);
}

/// Records a completed sale (order paid) and its latency from order creation.
pub fn record_sale(elapsed: Duration) {
    metrics::histogram!("posbridge_sale_seconds").record(elapsed.as_secs_f64());
}

/// Sets the number of open terminal connections.
pub fn set_terminal_connections(count: usize) {
    metrics::gauge!("posbridge_terminal_connections").set(count as f64);
}

/// Records an order state change.
pub fn record_order_state(state: &str) {
    metrics::counter!("posbridge_order_transitions_total", "state" => state.to_owned())
        .increment(1);
}

/// Records a sale that became PAID, with its latency from the order's creation (`created_at_ms`,
/// journal milliseconds): the `posbridge_sale_seconds` histogram.
pub fn record_sale_since_ms(created_at_ms: i64) {
    let elapsed_ms = crate::infra::clock::now_ms()
        .saturating_sub(created_at_ms)
        .max(0);
    record_sale(Duration::from_millis(
        u64::try_from(elapsed_ms).unwrap_or(0),
    ));
}
