//! The wallet API's listener: its own accept loop so that every limit a flood would test is
//! ours to set. A connection takes a permit before it is accepted (`max_connections`); the TLS
//! handshake and the request headers must arrive within `header_read_timeout_secs` (slowloris
//! gets nowhere); a whole request, body included, must be handled within
//! `request_timeout_secs`; bodies are capped (413) and read only after authentication.

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

/// The listener's limits (`[wallet_api]`).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// TLS handshake plus request headers, from accept.
    pub header_read_timeout: Duration,
    /// One whole request (body read, handling, answer).
    pub request_timeout: Duration,
    /// Connections at once; more wait in the kernel's backlog.
    pub max_connections: usize,
}

/// Loads a PEM certificate chain and private key into a rustls server configuration.
pub fn tls_config(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> anyhow::Result<Arc<tokio_rustls::rustls::ServerConfig>> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| anyhow::anyhow!("wallet_api.tls_cert {}: {e}", cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| anyhow::anyhow!("wallet_api.tls_key {}: {e}", key.display()))?;
    let mut config = tokio_rustls::rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| anyhow::anyhow!("wallet_api.tls_cert / tls_key: {e}"))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Serves `router` until `stop` turns true, then lets open requests finish (bounded).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
    limits: Limits,
    mut stop: watch::Receiver<bool>,
) {
    let router = router.layer(axum::middleware::from_fn(move |request, next| {
        bounded(limits.request_timeout, request, next)
    }));
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let permit = tokio::select! {
            permit = Arc::clone(&permits).acquire_owned() => match permit { Ok(p) => p, Err(_) => break },
            _ = stop.changed() => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "wallet API accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = stop.changed() => break,
        };
        // An answer is one small write: sent at once, not held for the peer's delayed ACK.
        let _ = stream.set_nodelay(true);
        let (router, acceptor, stop) = (router.clone(), acceptor.clone(), stop.clone());
        connections.spawn(async move {
            let _permit = permit;
            let service = TowerToHyperService::new(router);
            match acceptor {
                None => connection(TokioIo::new(stream), service, limits, stop).await,
                Some(acceptor) => {
                    let handshake =
                        tokio::time::timeout(limits.header_read_timeout, acceptor.accept(stream));
                    match handshake.await {
                        Ok(Ok(tls)) => connection(TokioIo::new(tls), service, limits, stop).await,
                        Ok(Err(error)) => tracing::debug!(%peer, %error, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                }
            }
        });
        while connections.try_join_next().is_some() {}
    }
    drop(listener);
    let drained = tokio::time::timeout(Duration::from_secs(10), async {
        while connections.join_next().await.is_some() {}
    });
    if drained.await.is_err() {
        connections.shutdown().await;
    }
}

/// One connection: HTTP/1.1 with a header-read timeout, or HTTP/2; closed gracefully on stop.
async fn connection<I>(
    io: TokioIo<I>,
    service: TowerToHyperService<Router>,
    limits: Limits,
    mut stop: watch::Receiver<bool>,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_timeout(limits.header_read_timeout);
    let serving = builder.serve_connection(io, service);
    tokio::pin!(serving);
    tokio::select! {
        result = serving.as_mut() => {
            if let Err(error) = result {
                tracing::debug!(%error, "wallet API connection ended");
            }
        }
        _ = stop.changed() => {
            serving.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(limits.request_timeout, serving).await;
        }
    }
}

/// Answers 503 when a request (body read included) takes longer than `limit`.
async fn bounded(
    limit: Duration,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(serde_json::json!({"error": "request_timeout", "message": "the request took too long"})),
        )
            .into_response(),
    }
}
