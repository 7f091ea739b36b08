//! The admin router, and what every admin handler shares: the error shape, authentication, JSON
//! bodies with precise 400s, and the write path that makes a change visible before answering.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde::de::DeserializeOwned;

use super::access::{self, Actor};
use super::audit::LoginAttempt;
use super::auth::printable_user;
use super::{AdminState, Credentials};
use super::{
    account_ops, accounts, alerts, audit, backup, crs_import, gemini_oauth, groups, key_ops, keys, live, oauth,
    openai_oauth, overview, requests, sessions, settings, system, usage, usage_export, users,
};
use crate::accounts::values::check_label;
use crate::secrets::{random_token, sha256_hex};
use crate::store::{AdminRole, AdminSession, StoreError};

/// The OpenAPI 3.1 description of every route below.
pub const OPENAPI: &str = include_str!("openapi.json");

pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/admin/api/openapi.json", get(openapi))
        .route("/admin/api/login", post(login))
        .route("/admin/api/logout", post(logout))
        .route("/admin/api/me", get(me))
        .route("/admin/api/password", post(users::password))
        .route("/admin/api/sessions", get(users::sessions))
        .route("/admin/api/sessions/{id}", axum::routing::delete(users::revoke))
        .route("/admin/api/users", get(users::list).post(users::create))
        .route(
            "/admin/api/users/{username}",
            axum::routing::patch(users::update).delete(users::delete),
        )
        .route("/admin/api/settings", get(settings::get).patch(settings::update))
        .route("/admin/api/system", get(system::system))
        .route("/admin/api/audit", get(audit::list))
        .route("/admin/api/audit/export.csv", get(audit::export))
        .route("/admin/api/keys", get(keys::list).post(keys::create))
        .route("/admin/api/keys/batch", post(key_ops::batch))
        .route(
            "/admin/api/keys/{id}",
            get(keys::get).patch(keys::update).delete(keys::delete),
        )
        .route("/admin/api/keys/{id}/limits", get(key_ops::limits))
        .route("/admin/api/keys/{id}/models", get(key_ops::models))
        .route("/admin/api/keys/{id}/rotate", post(key_ops::rotate))
        .route("/admin/api/keys/{id}/sessions", get(sessions::list))
        .route("/admin/api/keys/{id}/sessions/{session_id}", get(sessions::get))
        .route("/admin/api/accounts", get(accounts::list).post(accounts::create))
        .route(
            "/admin/api/accounts/{id}",
            get(accounts::get).patch(accounts::update).delete(accounts::delete),
        )
        .route("/admin/api/accounts/{id}/reset", post(accounts::reset))
        .route("/admin/api/accounts/{id}/events", get(account_ops::events))
        .route("/admin/api/accounts/{id}/refresh", post(account_ops::refresh))
        .route("/admin/api/accounts/{id}/test", post(account_ops::test))
        .route("/admin/api/accounts/claude-oauth/authorize", post(oauth::authorize))
        .route("/admin/api/accounts/claude-oauth/exchange", post(oauth::exchange))
        .route("/admin/api/accounts/claude-oauth/import", post(oauth::import))
        .route(
            "/admin/api/accounts/openai-oauth/authorize",
            post(openai_oauth::authorize),
        )
        .route(
            "/admin/api/accounts/openai-oauth/exchange",
            post(openai_oauth::exchange),
        )
        .route("/admin/api/accounts/openai-oauth/import", post(openai_oauth::import))
        .route(
            "/admin/api/accounts/gemini-oauth/authorize",
            post(gemini_oauth::authorize),
        )
        .route(
            "/admin/api/accounts/gemini-oauth/exchange",
            post(gemini_oauth::exchange),
        )
        .route("/admin/api/accounts/gemini-oauth/import", post(gemini_oauth::import))
        .route("/admin/api/import/crs", post(crs_import::import))
        .route("/admin/api/groups", get(groups::list))
        .route("/admin/api/groups/{name}/rename", post(groups::rename))
        .route("/admin/api/usage", get(usage::series))
        .route("/admin/api/usage/summary", get(usage::summary))
        .route("/admin/api/usage/global", get(usage::global))
        .route("/admin/api/usage/top", get(usage_export::top))
        .route("/admin/api/usage/range", get(usage_export::range))
        .route("/admin/api/usage/export.csv", get(usage_export::export))
        .route("/admin/api/overview", get(overview::overview))
        .route("/admin/api/live", get(live::live))
        .route("/admin/api/export", post(backup::export))
        .route(
            "/admin/api/import",
            post(backup::import).layer(axum::extract::DefaultBodyLimit::max(backup::IMPORT_BODY_LIMIT)),
        )
        .route("/admin/api/alerts", get(alerts::overview))
        .route("/admin/api/alerts/test", post(alerts::test))
        .route("/admin/api/requests", get(requests::list))
        .route("/admin/api/requests/export.csv", get(requests::export))
        .route("/admin/api/requests/{id}", get(requests::get))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), access::guard))
        .fallback(no_route)
        .method_not_allowed_fallback(wrong_method)
        .layer(axum::middleware::map_response(json_errors))
        .with_state(state)
}

/// Errors that axum answers itself, before a handler runs (a body over its 2 MiB limit, a path
/// segment that is not UTF-8), come as plain text: they get the JSON error shape of every other
/// answer here.
async fn json_errors(response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let kind = match status {
        StatusCode::PAYLOAD_TOO_LARGE => "request_too_large",
        StatusCode::NOT_FOUND => "not_found_error",
        s if s.is_client_error() => "invalid_request_error",
        _ => "api_error",
    };
    let text = axum::body::to_bytes(response.into_body(), 64 * 1024)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let message = if text.is_empty() {
        status.canonical_reason().unwrap_or("error").to_string()
    } else {
        text
    };
    ApiError(status, kind, message).into_response()
}

/// An admin API error: `{"error":{"type","message"}}` with its status.
#[derive(Debug)]
pub struct ApiError(pub StatusCode, pub &'static str, pub String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"error": {"type": self.1, "message": self.2}});
        (self.0, Json(body)).into_response()
    }
}

pub fn unauthorized() -> ApiError {
    ApiError(
        StatusCode::UNAUTHORIZED,
        "authentication_error",
        "missing, invalid or expired admin session".into(),
    )
}

pub fn bad_request(message: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, "invalid_request_error", message.into())
}

pub fn not_found(what: &str, id: &str) -> ApiError {
    ApiError(
        StatusCode::NOT_FOUND,
        "not_found_error",
        format!("no {what} with id `{id}`"),
    )
}

pub fn conflict(message: impl Into<String>) -> ApiError {
    ApiError(StatusCode::CONFLICT, "conflict_error", message.into())
}

/// The answer to a write on something defined in `relay.yaml`.
pub fn read_only(what: &str, id: &str) -> ApiError {
    conflict(format!(
        "{what} `{id}` is defined in the configuration file and is read-only here; \
         change it in relay.yaml and restart"
    ))
}

pub fn store_error(e: StoreError) -> ApiError {
    tracing::warn!(error = %e, "admin store operation failed");
    match e {
        StoreError::Conflict(m) => conflict(m),
        StoreError::Invalid(m) => bad_request(m),
        e => ApiError(StatusCode::SERVICE_UNAVAILABLE, "store_error", e.to_string()),
    }
}

/// A 400 naming the path of the offending field.
fn invalid_at(e: serde_path_to_error::Error<serde_json::Error>) -> ApiError {
    let path = e.path().to_string();
    let inner = e.into_inner();
    if path == "." {
        bad_request(format!("invalid body: {inner}"))
    } else {
        bad_request(format!("invalid body at `{path}`: {inner}"))
    }
}

/// Reads a JSON value (a body already parsed) into `T`, answering 400 with the path of the
/// offending field.
pub fn from_value<T: DeserializeOwned>(v: serde_json::Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(v).map_err(invalid_at)
}

/// Parses a JSON request body, answering 400 with the path of the offending field.
pub fn json_body<T: DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    // serde would also read a struct from a JSON array; only objects are accepted.
    if body.trim_ascii_start().first() != Some(&b'{') {
        return Err(bad_request("the body must be a JSON object"));
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let value = serde_path_to_error::deserialize(&mut de).map_err(invalid_at)?;
    de.end().map_err(|e| bad_request(format!("invalid body: {e}")))?;
    Ok(value)
}

/// A display name of a key: trimmed, 1 to 100 characters, no control characters
/// (the rule of account names too).
pub fn valid_name(name: &str) -> Result<String, ApiError> {
    let name = name.trim();
    check_label(name).map_err(|r| bad_request(format!("`name` {r}")))?;
    Ok(name.to_string())
}

/// Admin writes of this instance run one at a time, so a name check and the write that follows
/// it cannot interleave with another write, and reloads finish in the order of the writes.
static WRITES: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Runs one admin write and makes it visible before the caller answers: the change is announced
/// to every instance sharing the store and this instance's snapshot is reloaded, so the relay
/// serves the new state from the moment the client sees the response.
///
/// The write runs on the store's runtime as work the shutdown waits for: a client that
/// disconnects, or an admin service that stops, cannot cut it between the store write and the
/// reload.
pub async fn write<T, F, Fut>(state: &AdminState, change: F) -> Result<T, ApiError>
where
    F: FnOnce(AdminState) -> Fut + Send + 'static,
    Fut: Future<Output = Result<T, ApiError>> + Send + 'static,
    T: Send + 'static,
{
    let st = state.clone();
    let task = state.tasks.spawn_work("admin write", async move {
        let _one_at_a_time = WRITES.lock().await;
        let out = change(st.clone()).await?;
        // The write is durable from here on; failures below delay its visibility but do not
        // undo it, so the caller still gets its result (a created key's plaintext must not be
        // lost). Other instances also reload every 30 s.
        if let Err(e) = st.store.publish_change().await {
            tracing::warn!(error = %e, "admin change saved but not announced to other instances");
        }
        if let Err(e) = st.reloader.reload().await {
            tracing::warn!(error = %e, "admin change saved but this instance could not reload yet");
        }
        Ok(out)
    });
    match task.await {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "admin write task failed");
            Err(ApiError(
                StatusCode::INTERNAL_SERVER_ERROR,
                "api_error",
                "the change could not be completed".into(),
            ))
        }
    }
}

/// Checks the bearer token and slides the session's expiry. Returns who the session is for.
/// (Called by [`access::guard`] for every route that needs a session; handlers take [`Actor`].)
pub async fn authenticate(state: &AdminState, headers: &HeaderMap) -> Result<Actor, ApiError> {
    let token = bearer(headers).filter(|t| !t.is_empty()).ok_or_else(unauthorized)?;
    let hash = sha256_hex(token);
    let now = chrono::Utc::now().timestamp();
    let mut session = state
        .store
        .get_session(&hash, now)
        .await
        .map_err(store_error)?
        .ok_or_else(unauthorized)?;
    let ttl = state.config.admin.session_ttl.0.as_secs() as i64;
    // Slide the expiry. To keep writes rare, only once a sixtieth of the TTL (at least a second,
    // at most a minute) has passed since the last slide: a session expires at most that much
    // before a full TTL of inactivity, whatever the TTL.
    let step = (ttl / 60).clamp(1, 60);
    if session.expires_at - now <= ttl - step {
        session.expires_at = now + ttl;
        state.store.put_session(&hash, &session).await.map_err(store_error)?;
    }
    Ok(Actor {
        username: session.username,
        role: session.role,
        session: hash,
    })
}

async fn no_route() -> ApiError {
    ApiError(
        StatusCode::NOT_FOUND,
        "not_found_error",
        "no such admin endpoint (see /admin/api/openapi.json)".into(),
    )
}

async fn wrong_method() -> ApiError {
    ApiError(
        StatusCode::METHOD_NOT_ALLOWED,
        "invalid_request_error",
        "method not allowed on this endpoint (see /admin/api/openapi.json)".into(),
    )
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

async fn health(State(state): State<AdminState>) -> Response {
    let t = std::time::Instant::now();
    let store = state.store.ping().await;
    let ms = t.elapsed().as_secs_f64() * 1000.0;
    state
        .metrics
        .store_latency
        .with_label_values(&["ping"])
        .observe(ms / 1000.0);
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
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

async fn metrics(State(state): State<AdminState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}

#[derive(Deserialize)]
struct LoginBody {
    username: String,
    password: String,
}

/// A refusal that tells the client when to come back.
fn retry_later(status: StatusCode, kind: &'static str, message: &str, wait: std::time::Duration) -> Response {
    let mut r = ApiError(status, kind, message.into()).into_response();
    // Whole seconds, rounded up, at least one.
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    r.headers_mut().insert(header::RETRY_AFTER, secs.max(1).into());
    r
}

async fn login(
    State(state): State<AdminState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Result<Json<LoginBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let ip = crate::net::client_ip(peer.ip(), &headers, &state.config.trusted_proxies);
    let Json(body) = body.map_err(|e| bad_request(e.body_text()))?;
    let user = printable_user(&body.username);
    let limiter = &state.login_limiter;
    let reservation = match limiter.reserve(&body.username, ip, &state.config.admin.login_backoff) {
        Ok(r) => r,
        Err(wait) => {
            tracing::debug!(user = %user, client = %ip, wait_s = wait.as_secs_f64(), "admin login refused: backoff running");
            return Ok(retry_later(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_error",
                "too many failed logins; try again after the time in Retry-After",
                wait,
            ));
        }
    };
    // A stored user (enabled) is checked against its own hash; anyone else against the
    // configuration's admin, so an unknown name costs the same verification as a known one.
    let stored = match state.store.get_admin_user(&body.username).await {
        Ok(u) => u.filter(|u| !u.disabled && u.username != state.credentials.username),
        Err(e) => {
            limiter.not_verified(reservation);
            return Err(store_error(e));
        }
    };
    let (credentials, role) = match stored {
        Some(u) => (
            Arc::new(Credentials {
                username: u.username,
                password_hash: u.password_hash,
            }),
            u.role,
        ),
        None => (state.credentials.clone(), AdminRole::Admin),
    };
    let attempt = LoginAttempt(user.clone());
    let Some(ok) = limiter.verify(body.password, credentials.clone()).await else {
        limiter.not_verified(reservation);
        tracing::warn!(user = %user, client = %ip, "admin login refused: too many logins being verified");
        return Ok(retry_later(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded_error",
            "too many logins in progress; try again shortly",
            std::time::Duration::from_secs(1),
        ));
    };
    if !ok || body.username != credentials.username {
        tracing::warn!(user = %user, client = %ip, "failed admin login");
        let mut refused = ApiError(
            StatusCode::UNAUTHORIZED,
            "authentication_error",
            "wrong username or password".into(),
        )
        .into_response();
        refused.extensions_mut().insert(attempt);
        return Ok(refused);
    }
    limiter.succeeded(reservation);
    tracing::info!(user = %user, client = %ip, role = role.as_str(), "admin login");
    let token = random_token();
    let now = chrono::Utc::now().timestamp();
    let ttl = state.config.admin.session_ttl.0.as_secs() as i64;
    let user_agent = headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.chars().take(200).collect());
    let session = AdminSession {
        username: body.username,
        created_at: now,
        expires_at: now + ttl,
        role,
        ip: Some(ip.to_string()),
        user_agent,
    };
    state
        .store
        .put_session(&sha256_hex(&token), &session)
        .await
        .map_err(store_error)?;
    let mut answer = Json(serde_json::json!({"token": token, "expires_in": ttl, "role": role})).into_response();
    answer.extensions_mut().insert(attempt);
    Ok(answer)
}

/// `GET /admin/api/me`: who the session belongs to, with which role, until when, and which
/// relay answers.
async fn me(State(state): State<AdminState>, actor: Actor) -> Result<Response, ApiError> {
    let expires_at = state
        .store
        .get_session(&actor.session, chrono::Utc::now().timestamp())
        .await
        .map_err(store_error)?
        .map(|s| s.expires_at);
    let panel = state.store.get_settings().await.map_err(store_error)?;
    Ok(Json(serde_json::json!({
        "username": actor.username,
        "role": actor.role,
        "currency": settings::currency_json(settings::currency(&state, &panel)),
        "public_base_url": panel.public_base_url,
        "expires_at": expires_at,
        "version": env!("CARGO_PKG_VERSION"),
        "instance": state.instance,
        "relay_listen": state.config.listen.to_string(),
    }))
    .into_response())
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
}

async fn logout(State(state): State<AdminState>, actor: Actor) -> Result<StatusCode, ApiError> {
    state.store.delete_session(&actor.session).await.map_err(store_error)?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `(method, path)` of every route in [`router`], read from this file's source so that a
    /// route added without documentation fails the test below.
    fn routed() -> Vec<(String, String)> {
        let src = include_str!("routes.rs");
        let start = src.find("pub fn router(").unwrap();
        let end = start + src[start..].find(".fallback(").unwrap();
        let mut out = Vec::new();
        for chunk in src[start..end].split(".route(").skip(1) {
            let path = chunk.split('"').nth(1).unwrap().to_string();
            for m in ["get", "post", "put", "patch", "delete"] {
                if chunk.contains(&format!("{m}(")) {
                    out.push((m.to_string(), path.clone()));
                }
            }
        }
        out
    }

    #[test]
    fn openapi_documents_exactly_the_routes() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI).unwrap();
        assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
        let routes = routed();
        assert!(routes.len() >= 16, "route parsing broke: {routes:?}");
        for (m, p) in &routes {
            assert!(
                doc["paths"][p][m].is_object(),
                "{} {p} is routed but not in openapi.json",
                m.to_uppercase()
            );
        }
        let paths = doc["paths"].as_object().unwrap();
        for (p, item) in paths {
            for m in item.as_object().unwrap().keys() {
                if m == "parameters" {
                    continue;
                }
                assert!(
                    routes.iter().any(|(rm, rp)| rm == m && rp == p),
                    "openapi.json documents {} {p}, which is not routed",
                    m.to_uppercase()
                );
            }
        }
    }

    #[test]
    fn openapi_references_resolve() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI).unwrap();
        let text = OPENAPI;
        for part in text.split("\"$ref\": \"").skip(1) {
            let r = part.split('"').next().unwrap();
            let pointer = r.strip_prefix('#').unwrap();
            assert!(doc.pointer(pointer).is_some(), "dangling $ref {r}");
        }
    }

    #[test]
    fn json_bodies_give_precise_errors() {
        #[derive(Deserialize, Debug)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct B {
            name: String,
        }
        let e = json_body::<B>(&Bytes::from_static(b"{\"name\":\"a\",\"x\":1}")).unwrap_err();
        assert_eq!(e.0, StatusCode::BAD_REQUEST);
        assert!(e.2.contains("unknown field `x`"), "{}", e.2);
        let e = json_body::<B>(&Bytes::from_static(b"{\"name\":3}")).unwrap_err();
        assert!(e.2.contains("`name`"), "{}", e.2);
        assert!(json_body::<B>(&Bytes::from_static(b"")).is_err());
        assert!(json_body::<B>(&Bytes::from_static(b"[\"a\"]")).is_err());
        assert!(json_body::<B>(&Bytes::from_static(b"{\"name\":\"a\"} x")).is_err());
        assert_eq!(
            json_body::<B>(&Bytes::from_static(b" {\"name\":\"a\"} ")).unwrap().name,
            "a"
        );
    }

    #[test]
    fn names_are_checked() {
        use crate::accounts::values::MAX_NAME_CHARS;
        assert_eq!(valid_name("  team a ").unwrap(), "team a");
        assert!(valid_name("   ").is_err());
        assert!(valid_name(&"x".repeat(MAX_NAME_CHARS)).is_ok());
        assert!(valid_name(&"x".repeat(MAX_NAME_CHARS + 1)).is_err());
        assert!(valid_name("a\nb").is_err());
    }
}
