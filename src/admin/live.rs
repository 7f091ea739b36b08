//! `GET /admin/api/live`: requests in flight by key and by account, counts of the last minute
//! and the last requests, of every instance together: this one's view as it stands, the others'
//! as they last published it (each instance publishes its own every second; see
//! `usage::live::publish_forever`), so another instance's figures may be a second old.
//! `?key=<id>` keeps only that key's requests in `recent`.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::AdminState;
use super::access::Actor;
use super::routes::{ApiError, bad_request};
use crate::usage::live::LiveSnapshot;

/// This instance's live view as it stands, then every other instance's last published one; and
/// whether the others' could not be read.
pub(super) async fn views(state: &AdminState, now_ms: i64) -> (Vec<(String, LiveSnapshot)>, bool) {
    let mut views = vec![(state.instance.clone(), state.live.snapshot(now_ms))];
    let mut partial = false;
    match state.coord.instances_live(now_ms).await {
        Ok(others) => {
            for (instance, doc) in others {
                if instance == state.instance {
                    continue;
                }
                match serde_json::from_str::<LiveSnapshot>(&doc) {
                    Ok(v) => views.push((instance, v)),
                    Err(e) => tracing::warn!(instance = %instance, error = %e, "unreadable live view; ignored"),
                }
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "reading the other instances' live views failed");
            partial = true;
        }
    }
    (views, partial)
}

#[derive(serde::Deserialize)]
pub struct LiveQuery {
    key: Option<String>,
}

pub async fn live(
    State(state): State<AdminState>,
    _actor: Actor,
    query: Result<Query<LiveQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| bad_request(e.body_text()))?;
    let now_ms = chrono::Utc::now().timestamp_millis();
    let (views, partial) = views(&state, now_ms).await;
    let instances: Vec<Value> = views
        .iter()
        .map(|(id, v)| {
            let n: u64 = v.by_key.iter().map(|(_, n)| u64::from(*n)).sum();
            json!({"id": id, "in_flight": n, "last_minute_requests": v.last_minute.requests})
        })
        .collect();
    let s = LiveSnapshot::merge(views.iter().map(|(_, v)| v));
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
        "instances": instances,
        "partial": partial,
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
