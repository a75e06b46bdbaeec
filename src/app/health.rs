//! Operator endpoints on the metrics port: `/metrics` (Prometheus text), `/health/live`
//! (the process answers) and `/health/ready` (journal and security module answer).

use crate::app::server::Gateway;
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
    upstream_gauges(&state.gateway).await;
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

/// Link state, in-flight requests and the reversal queue, read at scrape time.
async fn upstream_gauges(gateway: &Gateway) {
    let Some(upstream) = gateway.orders.upstream() else {
        return;
    };
    for link in upstream.links() {
        let state = link.state();
        let host = link.name().to_owned();
        metrics::gauge!("posbridge_upstream_connections_up", "host" => host.clone())
            .set(state.up as f64);
        metrics::gauge!("posbridge_upstream_connections_signed_on", "host" => host.clone())
            .set(state.signed_on as f64);
        metrics::gauge!("posbridge_upstream_in_flight", "host" => host)
            .set(link.in_flight() as f64);
    }
    let queue = async {
        let mut tx = gateway.orders.store().begin().await?;
        let row = tx
            .query_opt(
                "SELECT COUNT(*), CAST(COALESCE(MIN(created_at_ms), 0) AS BIGINT) FROM reversals WHERE status = 'QUEUED'",
                &[],
            )
            .await?;
        tx.commit().await?;
        Ok::<_, crate::store::journal::JournalError>(row)
    };
    if let Ok(Some(row)) = queue.await {
        let queued = row.i64(0).unwrap_or(0);
        let oldest = row.i64(1).unwrap_or(0);
        metrics::gauge!("posbridge_reversals_queued").set(queued as f64);
        let age_ms = if queued > 0 {
            crate::store::journal::now_ms() - oldest
        } else {
            0
        };
        metrics::gauge!("posbridge_reversals_oldest_age_seconds").set(age_ms as f64 / 1000.0);
    }
}

async fn ready(State(state): State<HealthState>) -> impl IntoResponse {
    let journal = state.gateway.orders.store().ping().await;
    // The module itself answers (a round trip to the HSM), and it holds the gateway's key (on
    // payShield the QR key lives in the AES module, so the key alone proves nothing).
    let module = state.gateway.orders.security();
    let security = match module.health().await {
        Ok(()) => module
            .find_key(state.gateway.config.keys.qr_sign.clone())
            .await
            .map(|_| ()),
        Err(error) => Err(error),
    };
    let links: Vec<(String, usize)> = state
        .gateway
        .orders
        .upstream()
        .map(|u| {
            u.links()
                .map(|l| (l.name().to_owned(), l.state().signed_on))
                .collect()
        })
        .unwrap_or_default();
    let links_ok = links.iter().all(|(_, signed_on)| *signed_on > 0);
    let body = serde_json::json!({
        "journal": journal.as_ref().map(|_| "ok".to_owned()).unwrap_or_else(|e| e.to_string()),
        "upstream": links.iter().map(|(name, signed_on)| (name.clone(), serde_json::json!({"signed_on": signed_on}))).collect::<serde_json::Map<_, _>>(),
        "security_module": security.as_ref().map(|_| "ok".to_owned()).unwrap_or_else(|e| e.to_string()),
        "mode": state.gateway.posture.mode.as_str(),
        "production_ready": state.gateway.posture.production_ready(),
        "findings": state.gateway.posture.findings,
    });
    let status = if journal.is_ok() && security.is_ok() && links_ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body))
}
