//! What the panel does with an account beyond its CRUD: its recent health changes and a token
//! refresh on demand for the OAuth kinds.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::AdminState;
use super::routes::{ApiError, authenticate, bad_request, not_found};
use crate::credentials::Holder;

/// `GET /admin/api/accounts/{id}/events`: the account's last health changes as this instance saw
/// them (kept in memory per instance, [`crate::scheduler::health::HEALTH_EVENTS`] at most, lost
/// on restart), newest first. A cleared entry shows as state `active`.
pub async fn events(
    State(state): State<AdminState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    authenticate(&state, &headers).await?;
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
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    authenticate(&state, &headers).await?;
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
