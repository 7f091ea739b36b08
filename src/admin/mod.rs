//! The admin service: a JSON API (with an OpenAPI document), `/health` and `/metrics`, on its own
//! listener (default `127.0.0.1:3001`), run by axum inside a Pingora background service.
//!
//! Authentication: `POST /admin/api/login` with the admin username and password returns a bearer
//! token. Sessions live in the store (so every instance accepts them), expire after
//! `admin.session_ttl` of inactivity and slide on use. Failed logins slow further attempts per
//! (user name, client address) with a growing delay, and per client address across user names;
//! password verifications run a few at a time (see [`auth::LoginLimiter`]).
//!
//! Roles: besides the configuration's admin, admins create users with a role ([`users`]); one
//! layer in front of every route ([`access::guard`]) authenticates, checks the route's required
//! role and writes the audit record of every change ([`audit`]).
//!
//! Resources: client API keys ([`keys`]), upstream accounts ([`accounts`], with their scheduling
//! fields and live health in [`scheduling`]), usage statistics ([`usage`]) and usage per client
//! session of a key ([`sessions`]). The web panel is served under `/ui/` ([`ui`]). Keys and accounts
//! from `relay.yaml` are listed read-only; those created here live in the store. Every write is
//! announced to all instances and reloaded into this instance's snapshot before the answer, so the
//! relay serves it at once. `GET /admin/api/openapi.json` describes every endpoint.

mod access;
mod account_ops;
mod accounts;
mod alerts;
mod audit;
mod auth;
mod backup;
mod crs_import;
mod gemini_oauth;
mod groups;
mod https;
mod key_ops;
mod keys;
mod live;
mod oauth;
mod openai_oauth;
mod overview;
mod requests;
mod routes;
mod scheduling;
mod sessions;
mod settings;
mod system;
mod ui;
mod usage;
mod usage_export;
mod users;

use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::secrets::Secrets;
use crate::state::Reloader;
use crate::state::Snapshot;
use crate::store::Store;
use crate::usage::pricing::PricingTable;

pub use audit::trim_forever as trim_audit_forever;
pub use auth::{LoginLimiter, hash_password, verify_password};

/// The admin user's name and argon2 password hash.
pub struct Credentials {
    pub username: String,
    pub password_hash: String,
}

/// What admin handlers share.
#[derive(Clone)]
pub struct AdminState {
    pub config: Arc<Config>,
    pub secrets: Arc<Secrets>,
    pub store: Arc<dyn Store>,
    pub snapshot: Arc<ArcSwap<Snapshot>>,
    pub reloader: Reloader,
    pub metrics: Arc<Metrics>,
    pub pricing: Arc<PricingTable>,
    pub credentials: Arc<Credentials>,
    pub login_limiter: Arc<LoginLimiter>,
    /// The owner of background tasks (on the store's runtime): writes that must finish even if
    /// the admin runtime stops, and that shutdown waits for.
    pub tasks: crate::lifecycle::Tasks,
    /// This instance's requests in flight and recent requests.
    pub live: Arc<crate::usage::live::Live>,
    /// When this process started serving.
    pub started: std::time::Instant,
    /// The key limit counters the relay admits with (read by `/keys/{id}/limits`).
    pub limits: Arc<dyn filters::LimitBackend>,
    /// The OAuth kinds' token engines (`/accounts/{id}/refresh`).
    pub oauth: crate::state::TokenEngines,
    /// This instance's id (its mark in `x-relay-hops`).
    pub instance: String,
    /// What instances share: the live views of the others (`/live`).
    pub coord: Arc<dyn crate::store::coord::Coordination>,
    /// The relay itself, whose upstream side sends account tests (`/accounts/{id}/test`).
    pub relay: Arc<crate::proxy::Relay>,
    /// Webhooks, delivery counters and recent alerts (`/alerts`).
    pub alerts: Arc<crate::alerts::Alerts>,
}

/// The background service that serves the admin router.
pub struct AdminService {
    state: AdminState,
    listener: std::sync::Mutex<Option<std::net::TcpListener>>,
    /// HTTPS (`admin.tls`): the listener's TLS configuration.
    tls: Option<Arc<rustls::ServerConfig>>,
}

impl AdminService {
    pub fn new(state: AdminState, listener: std::net::TcpListener) -> Self {
        AdminService {
            state,
            listener: std::sync::Mutex::new(Some(listener)),
            tls: None,
        }
    }

    /// Serves HTTPS with `tls` instead of plain HTTP.
    pub fn with_tls(mut self, tls: Option<Arc<rustls::ServerConfig>>) -> Self {
        self.tls = tls;
        self
    }
}

#[async_trait]
impl BackgroundService for AdminService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let Some(std_listener) = self.listener.lock().unwrap_or_else(|p| p.into_inner()).take() else {
            return;
        };
        let listener = match std_listener
            .set_nonblocking(true)
            .and_then(|_| tokio::net::TcpListener::from_std(std_listener))
        {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "admin listener unusable");
                return;
            }
        };
        // The panel's routes sit outside the API's JSON error shape: their errors are plain text.
        let app = routes::router(self.state.clone()).merge(ui::router());
        if let Some(tls) = &self.tls {
            https::serve(listener, app, tokio_rustls::TlsAcceptor::from(tls.clone()), shutdown).await;
            return;
        }
        let served = axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
            .with_graceful_shutdown(async move {
                let _ = shutdown.changed().await;
            })
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "admin service stopped with an error");
        }
    }
}
