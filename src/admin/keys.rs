//! Client API keys: list, create (the plaintext is shown once, in the creation answer), read,
//! rename, enable or disable, bind to an account or group, delete. Keys from `relay.yaml` are
//! listed and read-only.
//!
//! A key's `bind` (an account name or `group:<name>`) makes it use only those accounts, and makes
//! those accounts dedicated to the keys bound to them.
//!
//! Answers never contain a key's hash or plaintext (except that one creation answer): only its
//! non-secret hint.
//!
//! A key's restrictions and limits are top-level fields of its JSON with the names of `relay.yaml`
//! (`permissions`, `expires_at`, `activate_for`, `clients`, `ip_allow`, `ip_deny`,
//! `model_blacklist`, `model_allowlist`, `rate_limit`, `cost_limits`, `concurrency`,
//! `fast_mode`); fields that are not set are absent. On update each given field is replaced whole, and `null` removes it.
//! Every write is checked with [`KeyPolicy::compile`]; a bad value is a 400 that names the field.

use std::collections::BTreeMap;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use filters::policy::{KeyPolicy, KeyPolicySpec};
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value, json};

use super::AdminState;
use super::routes::{
    ApiError, authenticate, bad_request, conflict, from_value, json_body, not_found, read_only, store_error,
    valid_name, write,
};
use super::scheduling::valid_bind;
use crate::config::ApiKeyConfig;
use crate::secrets;
use crate::state::config_id;
use crate::store::{ApiKeyRecord, StoreError};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateKey {
    name: String,
    #[serde(default)]
    enabled: Option<bool>,
    #[serde(default)]
    bind: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateKey {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    enabled: Option<bool>,
    /// Absent: unchanged; `null`: unbound; a string: bound to it.
    #[serde(default, deserialize_with = "present")]
    bind: Option<Option<String>>,
}

/// Tells a field given as `null` (`Some(None)`) from an absent one (`None`).
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

/// The fields of a key's own (not of its policy) in request bodies.
const KEY_FIELDS: [&str; 3] = ["name", "enabled", "bind"];

/// A JSON object's fields.
type Fields = Map<String, Value>;

/// Splits a request body into the key's own fields and its policy fields.
fn split_body(body: &Bytes) -> Result<(Fields, Fields), ApiError> {
    let all: Map<String, Value> = json_body(body)?;
    Ok(all.into_iter().partition(|(k, _)| KEY_FIELDS.contains(&k.as_str())))
}

/// A policy from its fields (`null` ones are absent), checked as the relay will compile it.
fn valid_policy(mut fields: Map<String, Value>) -> Result<KeyPolicySpec, ApiError> {
    fields.retain(|_, v| !v.is_null());
    let spec: KeyPolicySpec = from_value(Value::Object(fields))?;
    KeyPolicy::compile(&spec).map_err(bad_request)?;
    Ok(spec)
}

/// `current` with the fields of `patch` replaced (`null` removes one).
fn patched_policy(current: &KeyPolicySpec, patch: &Map<String, Value>) -> Result<KeyPolicySpec, ApiError> {
    let mut fields = match serde_json::to_value(current) {
        Ok(Value::Object(m)) => m,
        _ => Map::new(),
    };
    for (k, v) in patch {
        fields.insert(k.clone(), v.clone());
    }
    valid_policy(fields)
}

/// Adds the policy fields to a key's view, top level.
fn with_policy(mut view: Value, spec: &KeyPolicySpec) -> Value {
    if let (Some(v), Ok(Value::Object(p))) = (view.as_object_mut(), serde_json::to_value(spec)) {
        v.extend(p);
    }
    view
}

fn config_view(k: &ApiKeyConfig, last_used: &BTreeMap<String, i64>) -> Value {
    let id = config_id(&k.name);
    let hint = k.key.as_deref().map(secrets::mask).unwrap_or_else(|| "(hash)".into());
    let view = json!({
        "id": id,
        "name": k.name,
        "hint": hint,
        "enabled": k.enabled,
        "bind": k.bind,
        "source": "config",
        "created_at": null,
        "last_used_at": last_used.get(&id),
    });
    with_policy(view, &k.policy_spec())
}

fn stored_view(r: &ApiKeyRecord, last_used: &BTreeMap<String, i64>) -> Value {
    let view = json!({
        "id": r.id,
        "name": r.name,
        "hint": r.hint,
        "enabled": r.enabled,
        "bind": r.bind,
        "source": "admin",
        "created_at": r.created_at,
        "last_used_at": last_used.get(&r.id),
    });
    with_policy(view, &r.policy)
}

fn config_key<'a>(state: &'a AdminState, id: &str) -> Option<&'a ApiKeyConfig> {
    state
        .config
        .api_keys
        .iter()
        .map(|k| &k.config)
        .find(|k| config_id(&k.name) == id)
}

/// Refuses a name that a configured key or another stored key already has.
async fn check_name_free(state: &AdminState, name: &str, except: &str) -> Result<(), ApiError> {
    let taken = state.config.api_keys.iter().any(|k| k.config.name == name)
        || state
            .store
            .list_api_keys()
            .await
            .map_err(store_error)?
            .iter()
            .any(|k| k.name == name && k.id != except);
    if taken {
        return Err(conflict(format!("a key named `{name}` already exists")));
    }
    Ok(())
}

pub async fn list(State(state): State<AdminState>, headers: HeaderMap) -> Result<Response, ApiError> {
    authenticate(&state, &headers).await?;
    let last_used = state.store.api_key_last_used().await.map_err(store_error)?;
    let mut stored = state.store.list_api_keys().await.map_err(store_error)?;
    stored.sort_by(|a, b| a.created_at.cmp(&b.created_at).then_with(|| a.name.cmp(&b.name)));
    let keys: Vec<Value> = state
        .config
        .api_keys
        .iter()
        .map(|k| config_view(&k.config, &last_used))
        .chain(stored.iter().map(|r| stored_view(r, &last_used)))
        .collect();
    Ok(Json(json!({ "keys": keys })).into_response())
}

pub async fn get(
    State(state): State<AdminState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    authenticate(&state, &headers).await?;
    let last_used = state.store.api_key_last_used().await.map_err(store_error)?;
    if let Some(k) = config_key(&state, &id) {
        return Ok(Json(config_view(k, &last_used)).into_response());
    }
    match state.store.get_api_key(&id).await.map_err(store_error)? {
        Some(r) => Ok(Json(stored_view(&r, &last_used)).into_response()),
        None => Err(not_found("key", &id)),
    }
}

pub async fn create(State(state): State<AdminState>, headers: HeaderMap, body: Bytes) -> Result<Response, ApiError> {
    authenticate(&state, &headers).await?;
    let (own, policy) = split_body(&body)?;
    let req: CreateKey = from_value(Value::Object(own))?;
    let policy = valid_policy(policy)?;
    let name = valid_name(&req.name)?;
    let bind = req.bind.as_deref().map(valid_bind).transpose()?;
    let plaintext = secrets::generate_client_key();
    let record = ApiKeyRecord {
        id: uuid::Uuid::new_v4().to_string(),
        name,
        key_hash: state.secrets.hash_client_key_hex(&plaintext),
        hint: secrets::mask(&plaintext),
        enabled: req.enabled.unwrap_or(true),
        bind,
        policy,
        created_at: chrono::Utc::now().timestamp(),
        extra: BTreeMap::new(),
    };
    let record = write(&state, move |st| async move {
        check_name_free(&st, &record.name, &record.id).await?;
        st.store.put_api_key(&record).await.map_err(store_error)?;
        Ok(record)
    })
    .await?;
    tracing::info!(key = %record.id, name = %record.name, "admin created a client key");
    let mut view = stored_view(&record, &BTreeMap::new());
    view["key"] = Value::String(plaintext);
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

pub async fn update(
    State(state): State<AdminState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    authenticate(&state, &headers).await?;
    if config_key(&state, &id).is_some() {
        return Err(read_only("key", &id));
    }
    let (own, policy_patch) = split_body(&body)?;
    let req: UpdateKey = from_value(Value::Object(own))?;
    let name = req.name.as_deref().map(valid_name).transpose()?;
    // The patch's own shape is checked before the store is read.
    let mut shape = policy_patch.clone();
    shape.retain(|_, v| !v.is_null());
    let _: KeyPolicySpec = from_value(Value::Object(shape))?;
    let bind = match req.bind {
        Some(Some(b)) => Some(Some(valid_bind(&b)?)),
        Some(None) => Some(None),
        None => None,
    };
    let record = write(&state, move |st| async move {
        let mut r = st
            .store
            .get_api_key(&id)
            .await
            .map_err(store_error)?
            .ok_or_else(|| not_found("key", &id))?;
        if let Some(name) = name {
            check_name_free(&st, &name, &r.id).await?;
            r.name = name;
        }
        if let Some(enabled) = req.enabled {
            r.enabled = enabled;
        }
        if let Some(bind) = bind {
            r.bind = bind;
        }
        if !policy_patch.is_empty() {
            r.policy = patched_policy(&r.policy, &policy_patch)?;
        }
        st.store.put_api_key(&r).await.map_err(store_error)?;
        Ok(r)
    })
    .await?;
    tracing::info!(key = %record.id, enabled = record.enabled, bind = ?record.bind, "admin updated a client key");
    let last_used = state.store.api_key_last_used().await.unwrap_or_default();
    Ok(Json(stored_view(&record, &last_used)).into_response())
}

pub async fn delete(
    State(state): State<AdminState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    authenticate(&state, &headers).await?;
    if config_key(&state, &id).is_some() {
        return Err(read_only("key", &id));
    }
    let target = id.clone();
    write(&state, move |st| async move {
        match st.store.delete_api_key(&target).await {
            Ok(true) => Ok(()),
            Ok(false) | Err(StoreError::NotFound) => Err(not_found("key", &target)),
            Err(e) => Err(store_error(e)),
        }
    })
    .await?;
    tracing::info!(key = %id, "admin deleted a client key");
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patch_tells_null_bind_from_absent() {
        let u: UpdateKey = serde_json::from_str(r#"{"bind":null}"#).unwrap();
        assert_eq!(u.bind, Some(None));
        let u: UpdateKey = serde_json::from_str(r#"{}"#).unwrap();
        assert_eq!(u.bind, None);
        let u: UpdateKey = serde_json::from_str(r#"{"bind":"group:a"}"#).unwrap();
        assert_eq!(u.bind, Some(Some("group:a".to_string())));
        assert!(serde_json::from_str::<CreateKey>(r#"{"name":"a","bind":5}"#).is_err());
    }
}
