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
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use filters::policy::{KeyPolicy, KeyPolicySpec};
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value, json};

use super::AdminState;
use super::access::Actor;
use super::routes::{
    ApiError, bad_request, conflict, from_value, json_body, not_found, read_only, store_error, valid_name, write,
};
use super::scheduling::valid_bind;
use crate::config::ApiKeyConfig;
use crate::secrets;
use crate::state::config_id;
use crate::store::{ApiKeyRecord, Dimension, Granularity, StoreError, UsageCounters};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateKey {
    name: String,
    #[serde(default)]
    enabled: Option<bool>,
    #[serde(default)]
    bind: Option<String>,
    #[serde(default)]
    tags: Option<Vec<String>>,
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
    /// Absent: unchanged; a list (empty clears them): replaces the tags.
    #[serde(default)]
    tags: Option<Vec<String>>,
}

/// The most tags a key has.
const MAX_TAGS: usize = 16;
/// The longest tag, in characters.
const MAX_TAG_CHARS: usize = 40;

/// Tags as given, checked: trimmed, non-empty, at most [`MAX_TAG_CHARS`] characters without
/// control characters, at most [`MAX_TAGS`]; duplicates kept once, in their first place.
fn valid_tags(tags: Vec<String>) -> Result<Vec<String>, ApiError> {
    let mut out: Vec<String> = Vec::new();
    for t in tags {
        let t = t.trim();
        if t.is_empty() || t.chars().count() > MAX_TAG_CHARS || t.chars().any(char::is_control) {
            return Err(bad_request(format!(
                "each tag must be 1 to {MAX_TAG_CHARS} characters without control characters"
            )));
        }
        if !out.iter().any(|o| o == t) {
            out.push(t.to_string());
        }
    }
    if out.len() > MAX_TAGS {
        return Err(bad_request(format!("a key has at most {MAX_TAGS} tags")));
    }
    Ok(out)
}

/// Tells a field given as `null` (`Some(None)`) from an absent one (`None`).
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

/// The fields of a key's own (not of its policy) in request bodies.
const KEY_FIELDS: [&str; 4] = ["name", "enabled", "bind", "tags"];

/// A JSON object's fields.
type Fields = Map<String, Value>;

/// Splits a request body into the key's own fields and its policy fields.
fn split_body(body: &Bytes) -> Result<(Fields, Fields), ApiError> {
    let all: Map<String, Value> = json_body(body)?;
    Ok(split_fields(all))
}

/// Splits a key's JSON into its own fields and its policy fields.
pub(super) fn split_fields(all: Fields) -> (Fields, Fields) {
    all.into_iter().partition(|(k, _)| KEY_FIELDS.contains(&k.as_str()))
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
        "tags": [],
        "source": "config",
        "created_at": null,
        "last_used_at": last_used.get(&id),
    });
    with_policy(view, &k.policy_spec())
}

pub(super) fn stored_view(r: &ApiKeyRecord, last_used: &BTreeMap<String, i64>) -> Value {
    let view = json!({
        "id": r.id,
        "name": r.name,
        "hint": r.hint,
        "enabled": r.enabled,
        "bind": r.bind,
        "tags": r.tags,
        "source": "admin",
        "created_at": r.created_at,
        "last_used_at": last_used.get(&r.id),
    });
    with_policy(view, &r.policy)
}

pub(super) fn is_config_key(state: &AdminState, id: &str) -> bool {
    config_key(state, id).is_some()
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
pub(super) async fn check_name_free(state: &AdminState, name: &str, except: &str) -> Result<(), ApiError> {
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

/// `GET /admin/api/keys` query: paging, search, sort and status filter (all optional).
#[derive(Deserialize)]
pub struct ListQuery {
    page: Option<u32>,
    per_page: Option<u32>,
    q: Option<String>,
    sort: Option<String>,
    order: Option<String>,
    status: Option<String>,
    tag: Option<String>,
}

/// The largest page.
const MAX_PER_PAGE: u32 = 500;
const DEFAULT_PER_PAGE: u32 = 50;

/// One key of the list, with what it is filtered and sorted by.
struct Row {
    view: Value,
    id: String,
    name: String,
    created_at: Option<i64>,
    last_used: Option<i64>,
    enabled: bool,
    expires_at: Option<i64>,
}

impl Row {
    fn status(&self, now: i64) -> &'static str {
        if !self.enabled {
            "disabled"
        } else if self.expires_at.is_some_and(|e| e <= now) {
            "expired"
        } else {
            "enabled"
        }
    }
}

/// Each key's requests and spend today and over the last 30 days (today included), from the
/// day buckets of the `key` dimension: one store read for all `ids`.
async fn usage_columns(
    state: &AdminState,
    ids: &[String],
    now: i64,
) -> Result<BTreeMap<String, (UsageCounters, UsageCounters)>, ApiError> {
    let today = Granularity::Day.bucket_start(now);
    let from = today - 29 * 86_400;
    let series = state
        .store
        .usage_series_many(Dimension::Key, ids, Granularity::Day, from, today + 86_400)
        .await
        .map_err(store_error)?;
    Ok(series
        .into_iter()
        .map(|(id, rows)| {
            let mut day = UsageCounters::default();
            let mut d30 = UsageCounters::default();
            for (start, c) in rows {
                d30.add(&c);
                if start == today {
                    day.add(&c);
                }
            }
            (id, (day, d30))
        })
        .collect())
}

/// A policy's `expires_at` (RFC 3339) in Unix seconds.
fn expiry(spec: &KeyPolicySpec) -> Option<i64> {
    let t = spec.expires_at.as_deref()?;
    chrono::DateTime::parse_from_rfc3339(t).ok().map(|t| t.timestamp())
}

fn usage_view(u: Option<&(UsageCounters, UsageCounters)>) -> Value {
    let (day, d30) = u.copied().unwrap_or_default();
    let col = |c: &UsageCounters| json!({"requests": c.requests, "cost_usd": c.cost_nanos as f64 / 1e9});
    json!({"today": col(&day), "d30": col(&d30)})
}

pub async fn list(
    State(state): State<AdminState>,
    _actor: Actor,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| bad_request(e.body_text()))?;
    let now = chrono::Utc::now().timestamp();
    let sort = q.sort.as_deref();
    if let Some(s) = sort
        && !["name", "created_at", "last_used", "cost_today", "cost_30d"].contains(&s)
    {
        return Err(bad_request(format!(
            "`sort` must be name, created_at, last_used, cost_today or cost_30d, not `{s}`"
        )));
    }
    let descending = match q.order.as_deref() {
        None | Some("asc") => false,
        Some("desc") => true,
        Some(o) => return Err(bad_request(format!("`order` must be asc or desc, not `{o}`"))),
    };
    if let Some(s) = q.status.as_deref()
        && !["enabled", "disabled", "expired"].contains(&s)
    {
        return Err(bad_request(format!(
            "`status` must be enabled, disabled or expired, not `{s}`"
        )));
    }
    if q.page == Some(0) {
        return Err(bad_request("`page` starts at 1"));
    }
    let per_page = q.per_page.unwrap_or(DEFAULT_PER_PAGE);
    if !(1..=MAX_PER_PAGE).contains(&per_page) {
        return Err(bad_request(format!("`per_page` must be between 1 and {MAX_PER_PAGE}")));
    }

    let last_used = state.store.api_key_last_used().await.map_err(store_error)?;
    let mut stored = state.store.list_api_keys().await.map_err(store_error)?;
    stored.sort_by(|a, b| a.created_at.cmp(&b.created_at).then_with(|| a.name.cmp(&b.name)));
    let config_rows = state.config.api_keys.iter().map(|k| {
        let k = &k.config;
        let id = config_id(&k.name);
        Row {
            view: config_view(k, &last_used),
            last_used: last_used.get(&id).copied(),
            name: k.name.clone(),
            created_at: None,
            enabled: k.enabled,
            expires_at: expiry(&k.policy_spec()),
            id,
        }
    });
    let stored_rows = stored.iter().map(|r| Row {
        view: stored_view(r, &last_used),
        id: r.id.clone(),
        name: r.name.clone(),
        created_at: Some(r.created_at),
        last_used: last_used.get(&r.id).copied(),
        enabled: r.enabled,
        expires_at: expiry(&r.policy),
    });
    let needle =
        q.q.as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_lowercase);
    let mut rows: Vec<Row> = config_rows
        .chain(stored_rows)
        .filter(|r| q.status.as_deref().is_none_or(|s| r.status(now) == s))
        .filter(|r| {
            q.tag
                .as_deref()
                .is_none_or(|t| r.view["tags"].as_array().is_some_and(|ts| ts.iter().any(|x| x == t)))
        })
        .filter(|r| {
            needle.as_deref().is_none_or(|n| {
                r.name.to_lowercase().contains(n)
                    || r.id.to_lowercase().contains(n)
                    || r.view["hint"].as_str().is_some_and(|h| h.to_lowercase().contains(n))
                    || r.view["tags"].as_array().is_some_and(|ts| {
                        ts.iter()
                            .any(|t| t.as_str().is_some_and(|t| t.to_lowercase().contains(n)))
                    })
            })
        })
        .collect();
    let total = rows.len();

    // Sorting by spend needs every matching key's usage; otherwise only the page's is read.
    let by_cost = matches!(sort, Some("cost_today" | "cost_30d"));
    let mut usage = if by_cost {
        let ids: Vec<String> = rows.iter().map(|r| r.id.clone()).collect();
        usage_columns(&state, &ids, now).await?
    } else {
        BTreeMap::new()
    };
    if let Some(s) = sort {
        let cost = |r: &Row| {
            usage.get(&r.id).map_or(0, |(day, d30)| {
                if s == "cost_today" {
                    day.cost_nanos
                } else {
                    d30.cost_nanos
                }
            })
        };
        // Stable: ties keep the default order (configured keys first, then by creation).
        rows.sort_by(|a, b| {
            let o = match s {
                "name" => a.name.to_lowercase().cmp(&b.name.to_lowercase()),
                "created_at" => a.created_at.cmp(&b.created_at),
                "last_used" => a.last_used.cmp(&b.last_used),
                _ => cost(a).cmp(&cost(b)),
            };
            if descending { o.reverse() } else { o }
        });
    } else if descending {
        rows.reverse();
    }
    let page = q.page.unwrap_or(1);
    // Without `page` and `per_page`, every key (as before paging existed).
    let (rows, per_page): (Vec<Row>, usize) = if q.page.is_some() || q.per_page.is_some() {
        let rows = rows
            .into_iter()
            .skip((page as usize - 1).saturating_mul(per_page as usize))
            .take(per_page as usize)
            .collect();
        (rows, per_page as usize)
    } else {
        (rows, total)
    };
    if !by_cost {
        let ids: Vec<String> = rows.iter().map(|r| r.id.clone()).collect();
        usage = usage_columns(&state, &ids, now).await?;
    }
    let keys: Vec<Value> = rows
        .into_iter()
        .map(|mut r| {
            r.view["usage"] = usage_view(usage.get(&r.id));
            r.view
        })
        .collect();
    Ok(Json(json!({ "keys": keys, "total": total, "page": page, "per_page": per_page })).into_response())
}

pub async fn get(State(state): State<AdminState>, _actor: Actor, Path(id): Path<String>) -> Result<Response, ApiError> {
    let last_used = state.store.api_key_last_used().await.map_err(store_error)?;
    if let Some(k) = config_key(&state, &id) {
        return Ok(Json(config_view(k, &last_used)).into_response());
    }
    match state.store.get_api_key(&id).await.map_err(store_error)? {
        Some(r) => Ok(Json(stored_view(&r, &last_used)).into_response()),
        None => Err(not_found("key", &id)),
    }
}

/// A checked creation request, without its name.
pub(super) struct NewKey {
    enabled: bool,
    bind: Option<String>,
    tags: Vec<String>,
    policy: KeyPolicySpec,
}

/// Checks a creation request's own fields (with a `name` or not) and its policy.
pub(super) fn create_request(mut own: Fields, policy: Fields) -> Result<NewKey, ApiError> {
    own.entry("name").or_insert_with(|| Value::String("-".into()));
    let req: CreateKey = from_value(Value::Object(own))?;
    Ok(NewKey {
        enabled: req.enabled.unwrap_or(true),
        bind: req.bind.as_deref().map(valid_bind).transpose()?,
        tags: valid_tags(req.tags.unwrap_or_default())?,
        policy: valid_policy(policy)?,
    })
}

/// `count` new keys named `{prefix}{1..=count}`, each with its plaintext.
pub(super) fn new_records(
    state: &AdminState,
    req: &NewKey,
    prefix: &str,
    count: usize,
) -> Result<Vec<(ApiKeyRecord, String)>, ApiError> {
    (1..=count)
        .map(|i| {
            let name = valid_name(&format!("{prefix}{i}"))?;
            Ok(new_record(state, req, name))
        })
        .collect()
}

fn new_record(state: &AdminState, req: &NewKey, name: String) -> (ApiKeyRecord, String) {
    let plaintext = secrets::generate_client_key();
    let record = ApiKeyRecord {
        id: uuid::Uuid::new_v4().to_string(),
        name,
        key_hash: state.secrets.hash_client_key_hex(&plaintext),
        hash_key: None,
        hint: secrets::mask(&plaintext),
        enabled: req.enabled,
        bind: req.bind.clone(),
        tags: req.tags.clone(),
        policy: req.policy.clone(),
        created_at: chrono::Utc::now().timestamp(),
        legacy_hash: None,
        extra: BTreeMap::new(),
    };
    (record, plaintext)
}

pub async fn create(State(state): State<AdminState>, _actor: Actor, body: Bytes) -> Result<Response, ApiError> {
    let (own, policy) = split_body(&body)?;
    let named: CreateKey = from_value(Value::Object(own.clone()))?;
    let name = valid_name(&named.name)?;
    let req = create_request(own, policy)?;
    let (record, plaintext) = new_record(&state, &req, name);
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

/// A checked change of a stored key.
#[derive(Clone)]
pub(super) struct KeyChange {
    name: Option<String>,
    enabled: Option<bool>,
    bind: Option<Option<String>>,
    tags: Option<Vec<String>>,
    policy_patch: Fields,
}

/// Checks a change's own fields and the shape of its policy fields.
pub(super) fn update_request(own: Fields, policy_patch: Fields) -> Result<KeyChange, ApiError> {
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
    Ok(KeyChange {
        name,
        enabled: req.enabled,
        bind,
        tags: req.tags.map(valid_tags).transpose()?,
        policy_patch,
    })
}

/// Applies a change to the stored key `id`.
pub(super) async fn apply_update(state: &AdminState, id: String, change: KeyChange) -> Result<ApiKeyRecord, ApiError> {
    let record = write(state, move |st| async move {
        let mut r = st
            .store
            .get_api_key(&id)
            .await
            .map_err(store_error)?
            .ok_or_else(|| not_found("key", &id))?;
        if let Some(name) = change.name {
            check_name_free(&st, &name, &r.id).await?;
            r.name = name;
        }
        if let Some(enabled) = change.enabled {
            r.enabled = enabled;
        }
        if let Some(bind) = change.bind {
            r.bind = bind;
        }
        if let Some(tags) = change.tags {
            r.tags = tags;
        }
        if !change.policy_patch.is_empty() {
            r.policy = patched_policy(&r.policy, &change.policy_patch)?;
        }
        st.store.put_api_key(&r).await.map_err(store_error)?;
        Ok(r)
    })
    .await?;
    tracing::info!(key = %record.id, enabled = record.enabled, bind = ?record.bind, "admin updated a client key");
    Ok(record)
}

/// Deletes the stored key `id`.
pub(super) async fn remove(state: &AdminState, id: String) -> Result<(), ApiError> {
    let target = id.clone();
    write(state, move |st| async move {
        match st.store.delete_api_key(&target).await {
            Ok(true) => Ok(()),
            Ok(false) | Err(StoreError::NotFound) => Err(not_found("key", &target)),
            Err(e) => Err(store_error(e)),
        }
    })
    .await?;
    tracing::info!(key = %id, "admin deleted a client key");
    Ok(())
}

pub async fn update(
    State(state): State<AdminState>,
    _actor: Actor,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    if config_key(&state, &id).is_some() {
        return Err(read_only("key", &id));
    }
    let (own, policy_patch) = split_body(&body)?;
    let change = update_request(own, policy_patch)?;
    let record = apply_update(&state, id, change).await?;
    let last_used = state.store.api_key_last_used().await.unwrap_or_default();
    Ok(Json(stored_view(&record, &last_used)).into_response())
}

pub async fn delete(
    State(state): State<AdminState>,
    _actor: Actor,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    if config_key(&state, &id).is_some() {
        return Err(read_only("key", &id));
    }
    remove(&state, id).await?;
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
