//! What the panel does with an account beyond its CRUD: its recent health changes, a token
//! refresh on demand for the OAuth kinds, and a test request.

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::AdminState;
use super::access::Actor;
use super::routes::{ApiError, bad_request, json_body, not_found};
use crate::credentials::Holder;
use crate::proxy::probe;

/// The prompt of a test that names none.
const DEFAULT_PROMPT: &str = "Say hello in five words or fewer.";

/// The longest prompt a test sends.
const MAX_PROMPT_CHARS: usize = 4000;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct TestBody {
    model: Option<String>,
    prompt: Option<String>,
}

/// `POST /admin/api/accounts/{id}/test`: one small request to the account's upstream with its own
/// credentials, model map and proxy, answered as NDJSON lines while it runs (`start`, `status`,
/// `text`…, then `done` or `error`). A test never changes the account's health and is charged to
/// no key; a disabled account can be tested.
pub async fn test(
    State(state): State<AdminState>,
    _actor: Actor,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let account = state
        .snapshot
        .load()
        .pool
        .by_id(&id)
        .cloned()
        .ok_or_else(|| not_found("account", &id))?;
    let body: TestBody = if body.trim_ascii().is_empty() {
        TestBody::default()
    } else {
        json_body(&body)?
    };
    let model = match body.model.as_deref().map(str::trim) {
        None | Some("") => probe::default_model(&account),
        Some(m) if m.chars().count() > 200 || m.chars().any(char::is_control) => {
            return Err(bad_request(
                "`model` must be at most 200 characters, without control characters",
            ));
        }
        Some(m) => m.to_string(),
    };
    let prompt = match body.prompt {
        Some(p) if p.chars().count() > MAX_PROMPT_CHARS => {
            return Err(bad_request(format!(
                "`prompt` must be at most {MAX_PROMPT_CHARS} characters"
            )));
        }
        Some(p) if !p.trim().is_empty() => p,
        _ => DEFAULT_PROMPT.to_string(),
    };
    probe::testable(&account).map_err(bad_request)?;
    tracing::info!(account = %id, model = %model, "admin test of an account");
    let (reader, writer) = tokio::io::duplex(16 * 1024);
    let relay = state.relay.clone();
    state.tasks.spawn_loop("account test", async move {
        let mut out = probe::Lines(writer);
        probe::run(&relay, account, &model, &prompt, &mut out).await;
    });
    Ok((
        [
            (header::CONTENT_TYPE, "application/x-ndjson"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        Body::from_stream(tokio_util::io::ReaderStream::new(reader)),
    )
        .into_response())
}

/// `GET /admin/api/accounts/{id}/events`: the account's last health changes as this instance saw
/// them (kept in memory per instance, [`crate::scheduler::health::HEALTH_EVENTS`] at most, lost
/// on restart), newest first. A cleared entry shows as state `active`.
pub async fn events(
    State(state): State<AdminState>,
    _actor: Actor,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let known =
        state.snapshot.load().pool.by_id(&id).is_some() || state.store.get_account(&id).await.ok().flatten().is_some();
    if !known {
        return Err(not_found("account", &id));
    }
    let events: Vec<Value> = state
        .reloader
        .scheduler
        .runtime(&id)
        .map(|rt| rt.events())
        .unwrap_or_default()
        .into_iter()
        .map(|e| match e.health {
            Some(h) => json!({
                "at": e.at.div_euclid(1000),
                "state": super::scheduling::state_name(h.state),
                "reason": h.reason,
                "until": h.until.map(|u| u.div_euclid(1000)),
                "family": h.family,
            }),
            None => json!({"at": e.at.div_euclid(1000), "state": "active", "reason": "cleared", "until": null, "family": null}),
        })
        .collect();
    Ok(Json(json!({ "events": events })).into_response())
}

/// `POST /admin/api/accounts/{id}/refresh`: refreshes an OAuth account's access token now (under
/// the same single-flight and cross-instance lock as every refresh) and answers its new expiry.
pub async fn refresh(
    State(state): State<AdminState>,
    _actor: Actor,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let account = state
        .snapshot
        .load()
        .pool
        .by_id(&id)
        .cloned()
        .ok_or_else(|| not_found("account", &id))?;
    let (Some(engine), Some(cell)) = (state.oauth.of(account.kind), account.token()) else {
        return Err(bad_request(format!(
            "account `{}` is a {} account; only OAuth accounts have tokens to refresh",
            account.name,
            account.kind.as_str()
        )));
    };
    let stale = cell.live().issued_at;
    match engine.refresh(&account, stale).await {
        Ok(live) => {
            tracing::info!(account = %id, "admin refreshed an account's token");
            Ok(Json(json!({"ok": true, "expires_at": live.expires_at.map(|e| e.div_euclid(1000))})).into_response())
        }
        Err(e) => Err(ApiError(
            StatusCode::BAD_GATEWAY,
            "api_error",
            format!("the token could not be refreshed: {e}"),
        )),
    }
}
