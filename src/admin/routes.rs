//! The admin router.

use std::net::SocketAddr;

use axum::Json;
use axum::Router;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;

use super::AdminState;
use super::auth::verify_password;
use crate::secrets::{random_token, sha256_hex};
use crate::store::AdminSession;

pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/admin/api/login", post(login))
        .route("/admin/api/logout", post(logout))
        .with_state(state)
}

/// An admin API error: `{"error":{"type","message"}}` with its status.
pub struct ApiError(pub StatusCode, pub &'static str, pub String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"error": {"type": self.1, "message": self.2}});
        (self.0, Json(body)).into_response()
    }
}

pub fn unauthorized() -> ApiError {
    ApiError(StatusCode::UNAUTHORIZED, "authentication_error", "missing, invalid or expired admin session".into())
}

pub fn store_error(e: crate::store::StoreError) -> ApiError {
    tracing::warn!(error = %e, "admin store operation failed");
    ApiError(StatusCode::SERVICE_UNAVAILABLE, "store_error", e.to_string())
}

/// Checks the bearer token and slides the session's expiry. Returns the username.
pub async fn authenticate(state: &AdminState, headers: &HeaderMap) -> Result<String, ApiError> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(unauthorized)?;
    let hash = sha256_hex(token);
    let now = chrono::Utc::now().timestamp();
    let mut session = state.store.get_session(&hash, now).await.map_err(store_error)?.ok_or_else(unauthorized)?;
    let ttl = state.config.admin.session_ttl.0.as_secs() as i64;
    // Slide the expiry, at most once a minute per session to keep writes rare.
    if session.expires_at - now < ttl - 60 {
        session.expires_at = now + ttl;
        state.store.put_session(&hash, &session).await.map_err(store_error)?;
    }
    Ok(session.username)
}

async fn health(State(state): State<AdminState>) -> Response {
    let t = std::time::Instant::now();
    let store = state.store.ping().await;
    let ms = t.elapsed().as_secs_f64() * 1000.0;
    state.metrics.store_latency.with_label_values(&["ping"]).observe(ms / 1000.0);
    let snap = state.snapshot.load();
    let accounts = snap.pool.all();
    let enabled = accounts.iter().filter(|a| a.enabled).count();
    let ok = store.is_ok();
    let body = serde_json::json!({
        "status": if ok { "ok" } else { "degraded" },
        "store": {
            "backend": state.store.backend(),
            "reachable": ok,
            "latency_ms": ms,
            "error": store.err().map(|e| e.to_string()),
        },
        "accounts": { "total": accounts.len(), "enabled": enabled },
        "keys": snap.keys.len(),
    });
    let status = if ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(body)).into_response()
}

async fn metrics(State(state): State<AdminState>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], state.metrics.render()).into_response()
}

#[derive(Deserialize)]
struct LoginBody {
    username: String,
    password: String,
}

async fn login(
    State(state): State<AdminState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: Result<Json<LoginBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let ip = peer.ip();
    if let Some(wait) = state.login_limiter.locked(ip) {
        let mut r = ApiError(StatusCode::TOO_MANY_REQUESTS, "rate_limit_error", "too many failed logins; try later".into())
            .into_response();
        if let Ok(v) = wait.to_string().parse() {
            r.headers_mut().insert(header::RETRY_AFTER, v);
        }
        return Ok(r);
    }
    let Json(body) = body.map_err(|e| ApiError(StatusCode::BAD_REQUEST, "invalid_request_error", e.body_text()))?;
    let creds = state.credentials.clone();
    let password = body.password;
    // argon2 is deliberately slow: keep it off the async workers.
    let ok = tokio::task::spawn_blocking(move || verify_password(&password, &creds.password_hash))
        .await
        .unwrap_or(false);
    if !ok || body.username != state.credentials.username {
        state.login_limiter.fail(ip);
        return Err(ApiError(StatusCode::UNAUTHORIZED, "authentication_error", "wrong username or password".into()));
    }
    state.login_limiter.succeed(ip);
    let token = random_token();
    let now = chrono::Utc::now().timestamp();
    let ttl = state.config.admin.session_ttl.0.as_secs() as i64;
    let session = AdminSession { username: body.username, created_at: now, expires_at: now + ttl };
    state.store.put_session(&sha256_hex(&token), &session).await.map_err(store_error)?;
    Ok(Json(serde_json::json!({"token": token, "expires_in": ttl})).into_response())
}

async fn logout(State(state): State<AdminState>, headers: HeaderMap) -> Result<StatusCode, ApiError> {
    authenticate(&state, &headers).await?;
    if let Some(t) = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer ")) {
        state.store.delete_session(&sha256_hex(t.trim())).await.map_err(store_error)?;
    }
    Ok(StatusCode::NO_CONTENT)
}
