//! `GET /admin/api/live`: requests in flight by key and by account, counts of the last minute
//! and the last requests, on the instance that answers (each instance keeps its own, in memory).
//! `?key=<id>` keeps only that key's requests in `recent`.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::AdminState;
use super::routes::{ApiError, authenticate, bad_request};

#[derive(serde::Deserialize)]
pub struct LiveQuery {
    key: Option<String>,
}

pub async fn live(
    State(state): State<AdminState>,
    headers: HeaderMap,
    query: Result<Query<LiveQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    authenticate(&state, &headers).await?;
    let Query(q) = query.map_err(|e| bad_request(e.body_text()))?;
    let now_ms = chrono::Utc::now().timestamp_millis();
    let s = state.live.snapshot(now_ms);
    let snap = state.snapshot.load();
    let key_names: HashMap<&str, &str> = snap.keys.iter().map(|(k, ..)| (&*k.id, &*k.name)).collect();
    let account_names: HashMap<&str, &str> = snap.pool.all().iter().map(|a| (&*a.id, &*a.name)).collect();
    let list = |v: &[(Arc<str>, u32)], names: &HashMap<&str, &str>| -> Vec<Value> {
        v.iter()
            .map(|(id, n)| json!({"id": &**id, "name": names.get(&**id).copied().unwrap_or(id), "n": n}))
            .collect()
    };
    let total: u64 = s.by_key.iter().map(|(_, n)| u64::from(*n)).sum();
    let recent: Vec<Value> = s
        .recent
        .iter()
        .filter(|r| q.key.as_deref().is_none_or(|k| r.key.as_deref() == Some(k)))
        .map(|r| {
            json!({
                "at": r.at_ms as f64 / 1000.0,
                "key": r.key.as_deref(),
                "account": r.account.as_deref(),
                "model": r.model.as_deref(),
                "status": r.status,
                "duration_ms": r.duration_ms,
                "tokens": r.tokens,
            })
        })
        .collect();
    Ok(Json(json!({
        "instance": state.instance,
        "in_flight": {
            "total": total,
            "by_key": list(&s.by_key, &key_names),
            "by_account": list(&s.by_account, &account_names),
        },
        "last_minute": {
            "requests": s.last_minute.requests,
            "status_429": s.last_minute.status_429,
            "status_5xx": s.last_minute.status_5xx,
        },
        "recent": recent,
    }))
    .into_response())
}
