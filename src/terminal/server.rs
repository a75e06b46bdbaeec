//! Terminal listener (being written).

use crate::server::Gateway;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Serves terminals until `stop` turns true.
pub async fn serve(
    _gateway: Gateway,
    _listener: TcpListener,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    while !*stop.borrow_and_update() {
        if stop.changed().await.is_err() {
            break;
        }
    }
    Ok(())
}
