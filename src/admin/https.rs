//! The admin router over HTTPS (`admin.tls`): connections accepted here, the TLS handshake by
//! tokio-rustls (the certificate from [`crate::tls::ReloadingCert`], so a renewal reaches new
//! connections), then hyper serving HTTP/2 or HTTP/1.1 (ALPN `h2`, `http/1.1`).
//!
//! Like `axum::serve` on the plain listener: at shutdown the listener closes at once, open
//! connections are asked to finish (HTTP/1.1 after the request in flight, HTTP/2 with a GOAWAY)
//! and are waited for.

use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use pingora::server::ShutdownWatch;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// A client must finish its TLS handshake within this time.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The pause after a failed accept (after an upgrade's hand-over the listener refuses to accept
/// until the shutdown: see `server::handover`).
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Serves `app` over TLS on `listener` until `shutdown`.
pub async fn serve(listener: TcpListener, app: Router, acceptor: TlsAcceptor, mut shutdown: ShutdownWatch) {
    let graceful = GracefulShutdown::new();
    let mut accept_failed = false;
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = shutdown.changed() => break,
        };
        let (tcp, peer) = match accepted {
            Ok(a) => {
                accept_failed = false;
                a
            }
            Err(e) => {
                if !accept_failed {
                    tracing::debug!(error = %e, "admin listener: accept failed");
                    accept_failed = true;
                }
                tokio::select! {
                    _ = tokio::time::sleep(ACCEPT_ERROR_PAUSE) => continue,
                    _ = shutdown.changed() => break,
                }
            }
        };
        let acceptor = acceptor.clone();
        let app = app.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "admin TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "admin TLS handshake timed out");
                    return;
                }
            };
            // Handlers read the client's address as they do on the plain listener.
            let service = hyper::service::service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(ConnectInfo(peer));
                let mut app = app.clone();
                async move { tower_service::Service::call(&mut app, req).await }
            });
            let builder = auto::Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(tls), service);
            if let Err(e) = watcher.watch(conn.into_owned()).await {
                tracing::debug!(%peer, error = %e, "admin connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}
