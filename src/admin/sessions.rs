//! Usage per client session of a key (Claude Code and Codex sessions; see
//! [`crate::usage::sessions`] for what names a session and an agent): the key's recent sessions,
//! newest first and paged, and one session with its models and agents.
//!
//! A session is only ever found under the key that used it: the same session id under another key
//! is another session, and a key's listing shows only its own.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::AdminState;
use super::access::Actor;
use super::routes::{ApiError, bad_request, not_found, store_error};
use super::usage::counters_json;
use crate::store::{SessionCursor, SessionUsage};
use crate::usage::sessions::valid_id;

/// Sessions per page when the query does not say.
const DEFAULT_LIMIT: usize = 50;
/// The most sessions per page.
pub const MAX_LIMIT: usize = 200;

#[derive(Deserialize)]
pub struct ListQuery {
    limit: Option<usize>,
    cursor: Option<String>,
}

/// A cursor as the API shows it: `<last_seen>.<session id>`.
fn cursor_text(c: &SessionCursor) -> String {
    format!("{}.{}", c.last_seen, c.session_id)
}

fn parse_cursor(s: &str) -> Result<SessionCursor, ApiError> {
    let bad = || bad_request("`cursor` is not one this API returned (`next_cursor` of the previous page)");
    let (last, id) = s.split_once('.').ok_or_else(bad)?;
    let last_seen: i64 = last.parse().map_err(|_| bad())?;
    if !valid_id(id) {
        return Err(bad());
    }
    Ok(SessionCursor {
        last_seen,
        session_id: id.to_string(),
    })
}

/// The earliest last use of a session still shown: now minus the retention.
fn since(state: &AdminState) -> i64 {
    let retention = i64::try_from(state.config.stats.sessions.retention.0.as_secs()).unwrap_or(i64::MAX);
    chrono::Utc::now().timestamp().saturating_sub(retention)
}

/// 404 unless a key with this id exists (configured or created here).
async fn known_key(state: &AdminState, id: &str) -> Result<(), ApiError> {
    let configured = state
        .config
        .api_keys
        .iter()
        .any(|k| crate::state::config_id(&k.config.name) == id);
    if configured || state.store.get_api_key(id).await.map_err(store_error)?.is_some() {
        Ok(())
    } else {
        Err(not_found("key", id))
    }
}

fn models_json(s: &SessionUsage) -> Map<String, Value> {
    s.models
        .iter()
        .map(|(m, c)| (m.clone(), Value::Object(counters_json(c))))
        .collect()
}

fn summary_json(s: &SessionUsage) -> Value {
    json!({
        "id": s.session_id,
        "first_seen": s.first_seen,
        "last_seen": s.last_seen,
        "totals": counters_json(&s.totals()),
        "models": models_json(s),
        "agents": s.agents.len(),
    })
}

fn detail_json(s: &SessionUsage) -> Value {
    let mut agents: Vec<_> = s.agents.iter().collect();
    agents.sort_by(|a, b| (a.1.first_seen, a.0).cmp(&(b.1.first_seen, b.0)));
    let agents: Vec<Value> = agents
        .into_iter()
        .map(|(id, a)| {
            json!({
                "id": id,
                "parent": a.parent,
                "first_seen": a.first_seen,
                "last_seen": a.last_seen,
                "usage": counters_json(&a.usage),
            })
        })
        .collect();
    json!({
        "key": s.key_id,
        "id": s.session_id,
        "first_seen": s.first_seen,
        "last_seen": s.last_seen,
        "totals": counters_json(&s.totals()),
        "models": models_json(s),
        "main": counters_json(&s.main),
        "agents": agents,
        "other_agents": counters_json(&s.other_agents),
    })
}

/// `GET /admin/api/keys/{id}/sessions`: the key's sessions, most recently used first.
pub async fn list(
    State(state): State<AdminState>,
    _actor: Actor,
    Path(id): Path<String>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| bad_request(e.body_text()))?;
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(bad_request(format!("`limit` must be between 1 and {MAX_LIMIT}")));
    }
    let cursor = q.cursor.as_deref().map(parse_cursor).transpose()?;
    known_key(&state, &id).await?;
    let page = state
        .store
        .recent_sessions(&id, since(&state), cursor.as_ref(), limit)
        .await
        .map_err(store_error)?;
    Ok(Json(json!({
        "key": id,
        "recording": state.config.stats.sessions.bounds().is_some(),
        "sessions": page.sessions.iter().map(summary_json).collect::<Vec<_>>(),
        "next_cursor": page.next.as_ref().map(cursor_text),
    }))
    .into_response())
}

/// `GET /admin/api/keys/{id}/sessions/{session_id}`: one session of the key.
pub async fn get(
    State(state): State<AdminState>,
    _actor: Actor,
    Path((id, session_id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    known_key(&state, &id).await?;
    let found = if valid_id(&session_id) {
        state
            .store
            .session_usage(&id, &session_id, since(&state))
            .await
            .map_err(store_error)?
    } else {
        None
    };
    match found {
        Some(s) => Ok(Json(detail_json(&s)).into_response()),
        None => Err(not_found("session", &session_id)),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_reject_garbage() {
        let c = SessionCursor {
            last_seen: 1_700_000_000,
            session_id: "a.b-c".into(),
        };
        assert_eq!(parse_cursor(&cursor_text(&c)).unwrap(), c);
        for bad in ["", "x", "12", "x.y", "12.", "12.a b", "-.a"] {
            assert!(parse_cursor(bad).is_err(), "{bad:?}");
        }
    }
}
