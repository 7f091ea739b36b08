//! What the panel does with keys beyond their CRUD: a read of a key's limit counters as they
//! stand, rotation (a new secret under the same id, policy and usage) and batch operations.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::AdminState;
use super::access::Actor;
use super::keys::{self, stored_view};
use super::routes::{ApiError, bad_request, json_body, not_found, read_only, store_error, write};
use super::usage::{DEFAULT_SPAN_SECS, counters_json, parse_range};
use crate::secrets;
use crate::usage::report;

/// `GET /admin/api/keys/{id}/limits`: the key's windows, spend, slots and reservations as the
/// limit backend holds them (this instance's memory, or Redis shared by all), read only.
pub async fn limits(
    State(state): State<AdminState>,
    _actor: Actor,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let key = state
        .snapshot
        .load()
        .keys
        .iter()
        .find(|(k, ..)| *k.id == *id)
        .map(|(k, ..)| k.clone())
        .ok_or_else(|| not_found("key", &id))?;
    let now_ms = chrono::Utc::now().timestamp_millis();
    let peek = state.limits.peek(&key, now_ms).await.map_err(|e| {
        tracing::warn!(key = %id, error = %e, "reading a key's limit counters failed");
        ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            "api_error",
            "the limit counters cannot be read right now".into(),
        )
    })?;
    Ok(Json(crate::limits::view::limits(&key.policy, &peek, now_ms.div_euclid(1000))).into_response())
}

/// `POST /admin/api/keys/{id}/rotate`: a new secret for the key; the old one stops working at
/// once. The answer holds the new plaintext, once.
pub async fn rotate(
    State(state): State<AdminState>,
    _actor: Actor,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    if keys::is_config_key(&state, &id) {
        return Err(read_only("key", &id));
    }
    let plaintext = secrets::generate_client_key();
    let hash = state.secrets.hash_client_key_hex(&plaintext);
    let hint = secrets::mask(&plaintext);
    let target = id.clone();
    let record = write(&state, move |st| async move {
        let mut r = st
            .store
            .get_api_key(&target)
            .await
            .map_err(store_error)?
            .ok_or_else(|| not_found("key", &target))?;
        r.key_hash = hash;
        // The new secret is hashed under this relay's own key, whatever the old one was.
        r.hash_key = None;
        r.hint = hint;
        r.legacy_hash = None;
        st.store.put_api_key(&r).await.map_err(store_error)?;
        Ok(r)
    })
    .await?;
    tracing::info!(key = %record.id, name = %record.name, "admin rotated a client key");
    let last_used = state.store.api_key_last_used().await.unwrap_or_default();
    let mut view = stored_view(&record, &last_used);
    view["key"] = Value::String(plaintext);
    Ok(Json(view).into_response())
}

#[derive(Deserialize)]
pub struct ModelsQuery {
    from: Option<i64>,
    to: Option<i64>,
}

/// `GET /admin/api/keys/{id}/models`: the key's usage per model in `[from, to)` (whole hours
/// while hours are kept, as `/usage/range` counts), most expensive first. Also answers for a
/// deleted key whose usage remains.
pub async fn models(
    State(state): State<AdminState>,
    _actor: Actor,
    Path(id): Path<String>,
    query: Result<Query<ModelsQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| bad_request(e.body_text()))?;
    let (from, to) = parse_range(q.from, q.to, DEFAULT_SPAN_SECS)?;
    let now = chrono::Utc::now().timestamp();
    let rows = report::key_models(&*state.store, &id, from, to, now)
        .await
        .map_err(store_error)?;
    let items: Vec<Value> = rows
        .into_iter()
        .map(|(model, c)| json!({"model": model, "totals": counters_json(&c)}))
        .collect();
    Ok(Json(json!({"id": id, "from": from, "to": to, "items": items})).into_response())
}

/// The most keys one batch may create or change.
const MAX_BATCH: usize = 100;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Batch {
    #[serde(default)]
    create: Option<Map<String, Value>>,
    #[serde(default)]
    ids: Option<Vec<String>>,
    #[serde(default)]
    patch: Option<Map<String, Value>>,
    #[serde(default)]
    delete: Option<bool>,
}

fn result(id: &str, outcome: Result<(), ApiError>) -> Value {
    match outcome {
        Ok(()) => json!({"id": id, "ok": true}),
        Err(e) => json!({"id": id, "ok": false, "error": e.2}),
    }
}

/// `POST /admin/api/keys/batch`: one of `{"create":{"count","name_prefix",…}}`,
/// `{"ids":[…],"patch":{…}}` or `{"ids":[…],"delete":true}`. Each key is done as its single
/// endpoint would do it; the answer says, per key, whether it was.
pub async fn batch(State(state): State<AdminState>, _actor: Actor, body: Bytes) -> Result<Response, ApiError> {
    let b: Batch = json_body(&body)?;
    let mut results = Vec::new();
    match (b.create, b.ids, b.patch, b.delete) {
        (Some(mut create), None, None, None) => {
            let count = match create.remove("count") {
                Some(Value::Number(n)) => n.as_u64().filter(|n| (1..=MAX_BATCH as u64).contains(n)),
                _ => None,
            }
            .ok_or_else(|| bad_request(format!("`create.count` must be a number from 1 to {MAX_BATCH}")))?;
            let prefix = match create.remove("name_prefix") {
                Some(Value::String(p)) => p,
                _ => return Err(bad_request("`create.name_prefix` must be a string")),
            };
            if create.contains_key("name") {
                return Err(bad_request("`create.name` is made from `name_prefix`"));
            }
            let (own, policy) = keys::split_fields(create);
            let req = keys::create_request(own, policy)?;
            let records = keys::new_records(&state, &req, &prefix, count as usize)?;
            let created = write(&state, move |st| async move {
                let mut out = Vec::new();
                for (record, plaintext) in records {
                    let outcome = keys::check_name_free(&st, &record.name, &record.id).await;
                    let outcome = match outcome {
                        Ok(()) => st.store.put_api_key(&record).await.map_err(store_error),
                        Err(e) => Err(e),
                    };
                    out.push((record, plaintext, outcome));
                }
                Ok(out)
            })
            .await?;
            for (record, plaintext, outcome) in created {
                let mut r = result(&record.id, outcome);
                r["name"] = Value::String(record.name.clone());
                if r["ok"] == true {
                    r["key"] = Value::String(plaintext);
                }
                results.push(r);
            }
            tracing::info!(count, "admin created client keys in a batch");
        }
        (None, Some(ids), Some(patch), None) => {
            check_ids(&ids)?;
            let (own, policy) = keys::split_fields(patch);
            let change = keys::update_request(own, policy)?;
            for id in ids {
                let outcome = if keys::is_config_key(&state, &id) {
                    Err(read_only("key", &id))
                } else {
                    keys::apply_update(&state, id.clone(), change.clone()).await.map(|_| ())
                };
                results.push(result(&id, outcome));
            }
        }
        (None, Some(ids), None, Some(true)) => {
            check_ids(&ids)?;
            for id in ids {
                let outcome = if keys::is_config_key(&state, &id) {
                    Err(read_only("key", &id))
                } else {
                    keys::remove(&state, id.clone()).await
                };
                results.push(result(&id, outcome));
            }
        }
        _ => {
            return Err(bad_request(
                "give one of {\"create\":{…}}, {\"ids\":[…],\"patch\":{…}} or {\"ids\":[…],\"delete\":true}",
            ));
        }
    }
    Ok(Json(json!({ "results": results })).into_response())
}

fn check_ids(ids: &[String]) -> Result<(), ApiError> {
    if ids.is_empty() || ids.len() > MAX_BATCH {
        return Err(bad_request(format!("`ids` must hold 1 to {MAX_BATCH} key ids")));
    }
    Ok(())
}
