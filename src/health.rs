//! Operator endpoints on the metrics port: `/metrics` (Prometheus text), `/health/live`
//! (the process answers) and `/health/ready` (journal and security module answer).

use crate::server::Gateway;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;

#[derive(Clone)]
struct HealthState {
    gateway: Gateway,
    prometheus: Option<PrometheusHandle>,
}

/// The operator routes.
pub fn router(gateway: Gateway, prometheus: Option<PrometheusHandle>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/health/live", get(|| async { "ok\n" }))
        .route("/health/ready", get(ready))
        .with_state(HealthState {
            gateway,
            prometheus,
        })
}

async fn metrics(State(state): State<HealthState>) -> impl IntoResponse {
    let (in_use, size) = state.gateway.orders.store().pool_status();
    metrics::gauge!("posbridge_journal_pool_in_use").set(in_use as f64);
    metrics::gauge!("posbridge_journal_pool_size").set(size as f64);
    match state.prometheus {
        Some(handle) => (StatusCode::OK, handle.render()),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            "metrics recorder not installed\n".to_owned(),
        ),
    }
}

async fn ready(State(state): State<HealthState>) -> impl IntoResponse {
    let journal = state.gateway.orders.store().ping().await;
    let security = state
        .gateway
        .orders
        .security()
        .find_key(state.gateway.config.keys.qr_sign.clone())
        .await;
    let body = serde_json::json!({
        "journal": journal.as_ref().map(|_| "ok".to_owned()).unwrap_or_else(|e| e.to_string()),
        "security_module": security.as_ref().map(|_| "ok".to_owned()).unwrap_or_else(|e| e.to_string()),
    });
    let status = if journal.is_ok() && security.is_ok() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body))
}
