//! Upstream accounts: list, create, read, update (including replacing the credential), delete,
//! and reset (clear a cooldown or other health entry on every instance). Accounts from
//! `relay.yaml` are listed read-only, and can be reset.
//!
//! The credential and the outbound proxy URL are sealed before they reach the store and are never
//! sent back: answers show only their masked forms (`sk-a…9xQk`, `socks5://***@host:1080`).
//! Every answer also carries the account's live state (see [`scheduling::add_live_view`]).

use std::collections::BTreeMap;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Deserializer};
use serde_json::{Value, json};

use super::AdminState;
use super::routes::{
    ApiError, authenticate, bad_request, conflict, from_value, json_body, not_found, read_only, store_error,
    valid_name, write,
};
use super::scheduling::{self, DurationInput, LiveInputs};
use crate::config::AccountConfig;
use crate::providers::anthropic_oauth::TokenPair;
use crate::providers::{UpstreamBase, anthropic_console, bedrock};
use crate::secrets;
use crate::state::config_id;
use crate::store::{AccountKind, AccountRecord, StoreError, default_priority};

/// The fields of a new account other than its kind and credential.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AccountFields {
    name: String,
    #[serde(default)]
    base_url: Option<String>,
    #[serde(default)]
    priority: Option<u32>,
    #[serde(default)]
    enabled: Option<bool>,
    #[serde(default)]
    models: Option<Vec<String>>,
    #[serde(default)]
    model_map: BTreeMap<String, String>,
    #[serde(default)]
    group: Option<String>,
    #[serde(default)]
    proxy: Option<String>,
    #[serde(default)]
    max_concurrency: Option<u32>,
    #[serde(default)]
    daily_quota_usd: Option<f64>,
    #[serde(default)]
    quota_reset: Option<String>,
    #[serde(default)]
    weight: Option<u32>,
    #[serde(default)]
    cooldowns: Option<BTreeMap<String, DurationInput>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateAccount {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    kind: Option<AccountKind>,
    #[serde(default)]
    base_url: Option<String>,
    #[serde(default)]
    api_key: Option<String>,
    #[serde(default)]
    priority: Option<u32>,
    #[serde(default)]
    enabled: Option<bool>,
    /// Absent: unchanged; `null`: every model; a list: only those.
    #[serde(default, deserialize_with = "present")]
    models: Option<Option<Vec<String>>>,
    #[serde(default)]
    model_map: Option<BTreeMap<String, String>>,
    // The scheduling fields below: absent leaves them unchanged, `null` clears them.
    #[serde(default, deserialize_with = "present")]
    group: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    proxy: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    max_concurrency: Option<Option<u32>>,
    #[serde(default, deserialize_with = "present")]
    daily_quota_usd: Option<Option<f64>>,
    #[serde(default, deserialize_with = "present")]
    quota_reset: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    weight: Option<Option<u32>>,
    #[serde(default, deserialize_with = "present")]
    cooldowns: Option<Option<BTreeMap<String, DurationInput>>>,
    // `bedrock` accounts: the region, the profile (`null`: the region's), the credential
    // (replaced as a whole when any of its fields is given).
    #[serde(default)]
    region: Option<String>,
    #[serde(default, deserialize_with = "present")]
    inference_profile: Option<Option<String>>,
    #[serde(default)]
    access_key_id: Option<String>,
    #[serde(default)]
    secret_access_key: Option<String>,
    #[serde(default)]
    session_token: Option<String>,
}

/// The scheduling fields of a create or update as given: `None` leaves a field unchanged,
/// `Some(None)` clears it.
struct SchedulingInput {
    group: Option<Option<String>>,
    proxy: Option<Option<String>>,
    max_concurrency: Option<Option<u32>>,
    daily_quota_usd: Option<Option<f64>>,
    quota_reset: Option<Option<String>>,
    weight: Option<Option<u32>>,
    cooldowns: Option<Option<BTreeMap<String, DurationInput>>>,
}

/// The scheduling fields of a create or update, checked; the proxy already sealed.
struct SchedulingChange {
    group: Option<Option<String>>,
    proxy: Option<Option<crate::secrets::Sealed>>,
    max_concurrency: Option<Option<u32>>,
    daily_quota_usd: Option<Option<f64>>,
    quota_reset: Option<Option<String>>,
    weight: Option<Option<u32>>,
    cooldowns: Option<BTreeMap<String, String>>,
}

impl SchedulingChange {
    /// Checks every given field and seals the proxy URL.
    fn check(state: &AdminState, input: SchedulingInput) -> Result<SchedulingChange, ApiError> {
        // Each field: Some(Some(v)) checks v, Some(None) clears, None leaves unchanged.
        fn each<T, U>(
            v: Option<Option<T>>,
            f: impl FnOnce(T) -> Result<U, ApiError>,
        ) -> Result<Option<Option<U>>, ApiError> {
            match v {
                Some(Some(x)) => Ok(Some(Some(f(x)?))),
                Some(None) => Ok(Some(None)),
                None => Ok(None),
            }
        }
        Ok(SchedulingChange {
            group: each(input.group, |g| scheduling::valid_group(&g))?,
            proxy: each(input.proxy, |p| {
                let (url, _) = scheduling::valid_proxy(&p)?;
                Ok(state.secrets.seal(&url))
            })?,
            max_concurrency: each(input.max_concurrency, scheduling::valid_max_concurrency)?,
            daily_quota_usd: each(input.daily_quota_usd, scheduling::valid_daily_quota)?,
            quota_reset: each(input.quota_reset, |r| scheduling::valid_quota_reset(&r))?,
            weight: each(input.weight, scheduling::valid_weight)?,
            cooldowns: each(input.cooldowns, scheduling::valid_cooldowns)?.map(Option::unwrap_or_default),
        })
    }

    fn apply(self, r: &mut AccountRecord) {
        if let Some(v) = self.group {
            r.group = v;
        }
        if let Some(v) = self.proxy {
            r.proxy = v;
        }
        if let Some(v) = self.max_concurrency {
            r.max_concurrency = v;
        }
        if let Some(v) = self.daily_quota_usd {
            r.daily_quota_usd = v;
        }
        if let Some(v) = self.quota_reset {
            r.quota_reset = v;
        }
        if let Some(v) = self.weight {
            r.weight = v;
        }
        if let Some(v) = self.cooldowns {
            r.cooldowns = v;
        }
    }
}

/// Tells a field given as `null` (`Some(None)`) from an absent one (`None`).
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

fn valid_base_url(url: &str) -> Result<String, ApiError> {
    let url = url.trim();
    UpstreamBase::parse(url).map_err(|r| bad_request(format!("`base_url`: {r}")))?;
    Ok(url.to_string())
}

fn valid_api_key(kind: AccountKind, key: &str) -> Result<String, ApiError> {
    let key = key.trim();
    if key.is_empty() {
        return Err(bad_request("`api_key` must not be empty"));
    }
    match kind {
        AccountKind::ClaudeConsole => {
            anthropic_console::auth_header(key).map_err(|r| bad_request(format!("`api_key`: {r}")))?;
        }
        AccountKind::Ccr => {
            anthropic_console::auth_header(key).map_err(|r| bad_request(format!("`api_key`: {r}")))?;
        }
        AccountKind::ClaudeOauth => return Err(bad_request(OAUTH_ONLY)),
        AccountKind::Bedrock => return Err(bad_request(BEDROCK_KEYS)),
    }
    Ok(key.to_string())
}

/// Why the generic account endpoints do not take `claude-oauth` accounts.
const OAUTH_ONLY: &str = "claude-oauth accounts are added through POST /admin/api/accounts/claude-oauth/authorize \
                          and /exchange, or /import; their tokens cannot be set here";

/// Why a Bedrock account's credential is not a plain `api_key` update.
const BEDROCK_KEYS: &str = "a bedrock account's credential is set with access_key_id, secret_access_key and session_token, \
                            or api_key, all together";

fn valid_models(models: &Option<Vec<String>>) -> Result<(), ApiError> {
    if let Some(m) = models
        && m.iter().any(|s| s.trim().is_empty())
    {
        return Err(bad_request("`models`: model names must not be empty"));
    }
    Ok(())
}

fn valid_model_map(map: &BTreeMap<String, String>) -> Result<(), ApiError> {
    if map.iter().any(|(f, t)| f.trim().is_empty() || t.trim().is_empty()) {
        return Err(bad_request("`model_map`: model names must not be empty"));
    }
    Ok(())
}

impl AccountFields {
    pub(super) fn proxy(&self) -> Option<&str> {
        self.proxy.as_deref()
    }
}

/// Splits a create body: `take` names the fields the caller handles itself (kind, credential);
/// the rest must be [`AccountFields`].
pub(super) fn split_body(
    body: &Bytes,
    take: &[&str],
) -> Result<(serde_json::Map<String, Value>, AccountFields), ApiError> {
    let mut all: serde_json::Map<String, Value> = json_body(body)?;
    let mut taken = serde_json::Map::new();
    for k in take {
        if let Some(v) = all.remove(*k) {
            taken.insert(k.to_string(), v);
        }
    }
    let fields = from_value(Value::Object(all))?;
    Ok((taken, fields))
}

/// Checks the fields of a new account and builds its record around a sealed credential.
pub(super) fn new_record(
    state: &AdminState,
    req: AccountFields,
    kind: AccountKind,
    secret: crate::secrets::Sealed,
) -> Result<AccountRecord, ApiError> {
    let name = valid_name(&req.name)?;
    let base_url = valid_base_url(
        req.base_url
            .as_deref()
            .unwrap_or(&state.config.providers.anthropic.api_base),
    )?;
    valid_models(&req.models)?;
    valid_model_map(&req.model_map)?;
    let sched = SchedulingChange::check(
        state,
        SchedulingInput {
            group: Some(req.group),
            proxy: Some(req.proxy),
            max_concurrency: Some(req.max_concurrency),
            daily_quota_usd: Some(req.daily_quota_usd),
            quota_reset: Some(req.quota_reset),
            weight: Some(req.weight),
            cooldowns: Some(req.cooldowns),
        },
    )?;
    let mut record = AccountRecord {
        id: uuid::Uuid::new_v4().to_string(),
        name,
        kind,
        base_url,
        secret,
        priority: req.priority.unwrap_or_else(default_priority),
        enabled: req.enabled.unwrap_or(true),
        models: req.models,
        model_map: req.model_map,
        group: None,
        proxy: None,
        max_concurrency: None,
        daily_quota_usd: None,
        quota_reset: None,
        weight: None,
        cooldowns: BTreeMap::new(),
        oauth: None,
        region: None,
        inference_profile: None,
        created_at: chrono::Utc::now().timestamp(),
        extra: BTreeMap::new(),
    };
    sched.apply(&mut record);
    Ok(record)
}

/// Stores a new account (its name must be free) and answers 201 with its view.
pub(super) async fn insert(state: &AdminState, record: AccountRecord) -> Result<Response, ApiError> {
    let record = write(state, move |st| async move {
        check_name_free(&st, &record.name, &record.id).await?;
        st.store.put_account(&record).await.map_err(store_error)?;
        Ok(record)
    })
    .await?;
    tracing::info!(account = %record.id, name = %record.name, kind = record.kind.as_str(), "admin created an account");
    Ok((StatusCode::CREATED, Json(stored_view(state, &record))).into_response())
}

fn config_view(state: &AdminState, a: &AccountConfig) -> Value {
    let id = config_id(&a.name);
    let mut v = json!({
        "id": id,
        "name": a.name,
        "kind": a.kind,
        "base_url": a.base_url.as_deref().unwrap_or(&state.config.providers.anthropic.api_base),
        "priority": a.priority,
        "enabled": a.enabled,
        "models": a.models,
        "model_map": a.model_map,
        "source": "config",
        "api_key": if a.kind == AccountKind::ClaudeOauth { None } else { a.api_key.as_deref().map(secrets::mask) },
        "region": a.region,
        "inference_profile": a.inference_profile.clone().map(String::from),
        "created_at": null,
        "group": a.group,
        "proxy": a.proxy.as_deref().and_then(scheduling::masked_config_proxy),
        "max_concurrency": a.max_concurrency,
        "daily_quota_usd": a.daily_quota_usd,
        // Shown in the canonical HH:MM form that stored accounts use.
        "quota_reset": a
            .quota_reset
            .as_deref()
            .map(|r| scheduling::valid_quota_reset(r).unwrap_or_else(|_| r.to_string())),
        "weight": a.weight,
        "cooldowns": a
            .cooldowns
            .iter()
            .map(|(k, d)| (k.clone(), scheduling::format_duration(d.0)))
            .collect::<BTreeMap<_, _>>(),
    });
    if a.kind == AccountKind::ClaudeOauth {
        let pair = TokenPair::parse(a.api_key.as_deref().unwrap_or_default());
        v["oauth"] = super::oauth::view(state, &id, &pair, None);
    }
    if a.kind == AccountKind::Bedrock {
        v["bedrock"] = bedrock_view(&a.bedrock_secret());
    }
    let live = LiveInputs {
        id: &id,
        enabled: a.enabled,
        daily_quota_usd: a.daily_quota_usd,
        quota_reset: a.quota_reset.as_deref(),
    };
    scheduling::add_live_view(state, &live, &mut v);
    v
}

pub(super) fn stored_view(state: &AdminState, r: &AccountRecord) -> Value {
    let mut v = json!({
        "id": r.id,
        "name": r.name,
        "kind": r.kind,
        "base_url": r.base_url,
        "priority": r.priority,
        "enabled": r.enabled,
        "models": r.models,
        "model_map": r.model_map,
        "source": "admin",
        "api_key": null,
        "created_at": r.created_at,
        "group": r.group,
        "proxy": null,
        "max_concurrency": r.max_concurrency,
        "daily_quota_usd": r.daily_quota_usd,
        "quota_reset": r.quota_reset,
        "weight": r.weight,
        "cooldowns": r.cooldowns,
        "region": r.region,
        "inference_profile": r.inference_profile,
    });
    let mut errors = Vec::new();
    match state.secrets.open(&r.secret) {
        Ok(k) if r.kind == AccountKind::ClaudeOauth => {
            v["oauth"] = super::oauth::view(state, &r.id, &TokenPair::parse(&k), r.oauth.as_ref());
        }
        Ok(k) if r.kind == AccountKind::Bedrock => match bedrock::BedrockSecret::parse(&k) {
            Ok(secret) => v["bedrock"] = bedrock_view(&secret),
            Err(e) => errors.push(e),
        },
        Ok(k) => v["api_key"] = Value::String(secrets::mask(&k)),
        Err(e) => {
            // The relay skips such an account too; say why instead of failing the whole list.
            tracing::warn!(account = %r.id, error = %e, "stored account secret cannot be opened");
            errors.push(e.to_string());
        }
    }
    if let Some(sealed) = &r.proxy {
        match scheduling::masked_stored_proxy(state, sealed) {
            Ok(masked) => v["proxy"] = Value::String(masked),
            Err(e) => {
                tracing::warn!(account = %r.id, error = %e, "stored account proxy is unusable");
                errors.push(e);
            }
        }
    }
    if !errors.is_empty() {
        v["error"] = Value::String(errors.join("; "));
    }
    let live = LiveInputs {
        id: &r.id,
        enabled: r.enabled,
        daily_quota_usd: r.daily_quota_usd,
        quota_reset: r.quota_reset.as_deref(),
    };
    scheduling::add_live_view(state, &live, &mut v);
    v
}

/// A Bedrock credential as the admin API shows it: how it authenticates, masked.
fn bedrock_view(s: &bedrock::BedrockSecret) -> Value {
    json!({
        "auth": if s.api_key.is_some() { "api-key" } else { "sigv4" },
        "access_key_id": s.access_key_id.as_deref().map(secrets::mask),
        "session_token": s.session_token.is_some(),
        "api_key": s.api_key.as_deref().map(secrets::mask),
    })
}

fn config_account<'a>(state: &'a AdminState, id: &str) -> Option<&'a AccountConfig> {
    state.config.accounts.iter().find(|a| config_id(&a.name) == id)
}

/// Refuses a name that a configured account or another stored account already has.
async fn check_name_free(state: &AdminState, name: &str, except: &str) -> Result<(), ApiError> {
    let taken = state.config.accounts.iter().any(|a| a.name == name)
        || state
            .store
            .list_accounts()
            .await
            .map_err(store_error)?
            .iter()
            .any(|a| a.name == name && a.id != except);
    if taken {
        return Err(conflict(format!("an account named `{name}` already exists")));
    }
    Ok(())
}

pub async fn list(State(state): State<AdminState>, headers: HeaderMap) -> Result<Response, ApiError> {
    authenticate(&state, &headers).await?;
    let mut stored = state.store.list_accounts().await.map_err(store_error)?;
    stored.sort_by(|a, b| a.created_at.cmp(&b.created_at).then_with(|| a.name.cmp(&b.name)));
    let accounts: Vec<Value> = state
        .config
        .accounts
        .iter()
        .map(|a| config_view(&state, a))
        .chain(stored.iter().map(|r| stored_view(&state, r)))
        .collect();
    Ok(Json(json!({ "accounts": accounts })).into_response())
}

pub async fn get(
    State(state): State<AdminState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    authenticate(&state, &headers).await?;
    if let Some(a) = config_account(&state, &id) {
        return Ok(Json(config_view(&state, a)).into_response());
    }
    match state.store.get_account(&id).await.map_err(store_error)? {
        Some(r) => Ok(Json(stored_view(&state, &r)).into_response()),
        None => Err(not_found("account", &id)),
    }
}

pub async fn create(State(state): State<AdminState>, headers: HeaderMap, body: Bytes) -> Result<Response, ApiError> {
    authenticate(&state, &headers).await?;
    let (mut taken, mut fields) = split_body(&body, &BEDROCK_FIELDS)?;
    let kind: AccountKind = match taken.remove("kind") {
        Some(k) => serde_json::from_value(k).map_err(|e| bad_request(format!("invalid body at `kind`: {e}")))?,
        None => return Err(bad_request("invalid body: missing field `kind`")),
    };
    if kind == AccountKind::Bedrock {
        let more = &mut taken;
        let region = match more.remove("region") {
            Some(Value::String(r)) => r.trim().to_string(),
            Some(_) => return Err(bad_request("invalid body at `region`: expected a string")),
            None => return Err(bad_request("invalid body: missing field `region` (kind bedrock)")),
        };
        bedrock::valid_region(&region).map_err(|r| bad_request(format!("`region`: {r}")))?;
        let profile = optional_profile(more.remove("inference_profile"))?;
        let secret = bedrock_secret(more)?;
        fields
            .base_url
            .get_or_insert_with(|| bedrock::default_base_url(&region));
        let mut record = new_record(&state, fields, kind, state.secrets.seal(&secret.to_secret()))?;
        record.region = Some(region);
        record.inference_profile = profile.map(String::from);
        return insert(&state, record).await;
    }
    for f in [
        "region",
        "inference_profile",
        "access_key_id",
        "secret_access_key",
        "session_token",
    ] {
        if taken.contains_key(f) {
            return Err(bad_request(format!("`{f}` applies to kind bedrock only")));
        }
    }
    let api_key = match taken.remove("api_key") {
        Some(Value::String(k)) => valid_api_key(kind, &k)?,
        Some(_) => return Err(bad_request("invalid body at `api_key`: expected a string")),
        None if kind == AccountKind::ClaudeOauth => return Err(bad_request(OAUTH_ONLY)),
        None => return Err(bad_request("invalid body: missing field `api_key`")),
    };
    let record = new_record(&state, fields, kind, state.secrets.seal(&api_key))?;
    insert(&state, record).await
}

/// The fields a `bedrock` account has besides the common ones.
const BEDROCK_FIELDS: [&str; 7] = [
    "kind",
    "region",
    "inference_profile",
    "access_key_id",
    "secret_access_key",
    "session_token",
    "api_key",
];

fn optional_profile(v: Option<Value>) -> Result<Option<bedrock::models::Profile>, ApiError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(p)) => bedrock::models::Profile::parse(&p)
            .map(Some)
            .map_err(|r| bad_request(format!("`inference_profile`: {r}"))),
        Some(_) => Err(bad_request("invalid body at `inference_profile`: expected a string")),
    }
}

/// The Bedrock credential of a create or update body (its fields removed from `more`).
fn bedrock_secret(more: &mut serde_json::Map<String, Value>) -> Result<bedrock::BedrockSecret, ApiError> {
    let mut take = |f: &str| -> Result<Option<String>, ApiError> {
        match more.remove(f) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(v)) if v.trim().is_empty() => Ok(None),
            Some(Value::String(v)) => Ok(Some(v)),
            Some(_) => Err(bad_request(format!("invalid body at `{f}`: expected a string"))),
        }
    };
    let secret = bedrock::BedrockSecret {
        access_key_id: take("access_key_id")?,
        secret_access_key: take("secret_access_key")?,
        session_token: take("session_token")?,
        api_key: take("api_key")?,
    };
    secret
        .validate()
        .map_err(|r| bad_request(format!("bedrock credential: {r}")))?;
    Ok(secret)
}

pub async fn update(
    State(state): State<AdminState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    authenticate(&state, &headers).await?;
    if config_account(&state, &id).is_some() {
        return Err(read_only("account", &id));
    }
    let req: UpdateAccount = json_body(&body)?;
    let name = req.name.as_deref().map(valid_name).transpose()?;
    let base_url = req.base_url.as_deref().map(valid_base_url).transpose()?;
    if let Some(m) = &req.models {
        valid_models(m)?;
    }
    if let Some(m) = &req.model_map {
        valid_model_map(m)?;
    }
    let sched = SchedulingChange::check(
        &state,
        SchedulingInput {
            group: req.group,
            proxy: req.proxy,
            max_concurrency: req.max_concurrency,
            daily_quota_usd: req.daily_quota_usd,
            quota_reset: req.quota_reset,
            weight: req.weight,
            cooldowns: req.cooldowns,
        },
    )?;
    let record = write(&state, move |st| async move {
        let mut r = st
            .store
            .get_account(&id)
            .await
            .map_err(store_error)?
            .ok_or_else(|| not_found("account", &id))?;
        if let Some(name) = name {
            check_name_free(&st, &name, &r.id).await?;
            r.name = name;
        }
        if let Some(kind) = req.kind {
            if kind != r.kind && (kind == AccountKind::ClaudeOauth || r.kind == AccountKind::ClaudeOauth) {
                return Err(bad_request(OAUTH_ONLY));
            }
            if kind != r.kind && (kind == AccountKind::Bedrock || r.kind == AccountKind::Bedrock) {
                return Err(bad_request("an account cannot become or stop being a bedrock account; create a new one"));
            }
            r.kind = kind;
        }
        let bedrock_creds = req.access_key_id.is_some() || req.secret_access_key.is_some() || req.session_token.is_some();
        if r.kind == AccountKind::Bedrock {
            if bedrock_creds || req.api_key.is_some() {
                let secret = bedrock::BedrockSecret {
                    access_key_id: req.access_key_id.clone(),
                    secret_access_key: req.secret_access_key.clone(),
                    session_token: req.session_token.clone().filter(|t| !t.trim().is_empty()),
                    api_key: req.api_key.clone(),
                };
                secret.validate().map_err(|e| bad_request(format!("bedrock credential: {e}")))?;
                r.secret = st.secrets.seal(&secret.to_secret());
            }
            if let Some(region) = &req.region {
                let region = region.trim();
                bedrock::valid_region(region).map_err(|e| bad_request(format!("`region`: {e}")))?;
                // An account on its region's default endpoint moves with the region.
                let old_default = r.region.as_deref().map(bedrock::default_base_url);
                if req.base_url.is_none() && old_default.as_deref() == Some(r.base_url.as_str()) {
                    r.base_url = bedrock::default_base_url(region);
                }
                r.region = Some(region.to_string());
            }
            if let Some(p) = &req.inference_profile {
                r.inference_profile = optional_profile(p.clone().map(Value::String))?.map(String::from);
            }
        } else {
            if bedrock_creds || req.region.is_some() || req.inference_profile.is_some() {
                return Err(bad_request(
                    "region, inference_profile, access_key_id, secret_access_key and session_token apply to kind bedrock only",
                ));
            }
            if let Some(key) = &req.api_key {
                r.secret = st.secrets.seal(&valid_api_key(r.kind, key)?);
            }
        }
        if let Some(base_url) = base_url {
            r.base_url = base_url;
        }
        if let Some(p) = req.priority {
            r.priority = p;
        }
        if let Some(e) = req.enabled {
            r.enabled = e;
        }
        if let Some(m) = req.models {
            r.models = m;
        }
        if let Some(m) = req.model_map {
            r.model_map = m;
        }
        sched.apply(&mut r);
        if r.kind == AccountKind::ClaudeOauth
            && let Some(fresh) = st.store.get_account(&r.id).await.map_err(store_error)?
        {
            // Tokens are not edited here, and a refresh may have rotated them since the read
            // above: write back the newest pair, not the one read first.
            r.secret = fresh.secret;
            r.oauth = fresh.oauth;
        }
        st.store.put_account(&r).await.map_err(store_error)?;
        Ok(r)
    })
    .await?;
    tracing::info!(account = %record.id, enabled = record.enabled, "admin updated an account");
    Ok(Json(stored_view(&state, &record)).into_response())
}

pub async fn delete(
    State(state): State<AdminState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    authenticate(&state, &headers).await?;
    if config_account(&state, &id).is_some() {
        return Err(read_only("account", &id));
    }
    let target = id.clone();
    write(&state, move |st| async move {
        match st.store.delete_account(&target).await {
            Ok(true) => Ok(()),
            Ok(false) | Err(StoreError::NotFound) => Err(not_found("account", &target)),
            Err(e) => Err(store_error(e)),
        }
    })
    .await?;
    tracing::info!(account = %id, "admin deleted an account");
    Ok(StatusCode::NO_CONTENT)
}

/// Clears the account's health entry (cooldown, rate limit, refusal) on every instance: the
/// shared entry goes, the change is announced, and this instance reloads before answering, so the
/// account is back in the pool at once. A daily quota that is spent stays spent.
pub async fn reset(
    State(state): State<AdminState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    authenticate(&state, &headers).await?;
    let configured = config_account(&state, &id).is_some();
    let target = id.clone();
    let record = write(&state, move |st| async move {
        let record = if configured {
            None
        } else {
            Some(
                st.store
                    .get_account(&target)
                    .await
                    .map_err(store_error)?
                    .ok_or_else(|| not_found("account", &target))?,
            )
        };
        st.reloader
            .coord
            .clear_account_health(&target)
            .await
            .map_err(store_error)?;
        Ok(record)
    })
    .await?;
    tracing::info!(account = %id, "admin reset the account's health");
    match (record, config_account(&state, &id)) {
        (Some(r), _) => Ok(Json(stored_view(&state, &r)).into_response()),
        (None, Some(a)) => Ok(Json(config_view(&state, a)).into_response()),
        (None, None) => Err(not_found("account", &id)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_and_urls_are_validated() {
        assert!(valid_api_key(AccountKind::ClaudeConsole, "  ").is_err());
        assert!(valid_api_key(AccountKind::ClaudeConsole, "sk-ant\nx").is_err());
        assert_eq!(
            valid_api_key(AccountKind::ClaudeConsole, " sk-ant-api03-x ").unwrap(),
            "sk-ant-api03-x"
        );
        assert!(valid_base_url("ftp://x").is_err());
        assert!(valid_base_url("not a url").is_err());
        assert_eq!(
            valid_base_url(" http://127.0.0.1:9/p ").unwrap(),
            "http://127.0.0.1:9/p"
        );
        assert!(valid_models(&Some(vec!["".into()])).is_err());
        assert!(valid_models(&None).is_ok());
        let mut m = BTreeMap::new();
        m.insert("a".to_string(), " ".to_string());
        assert!(valid_model_map(&m).is_err());
    }

    #[test]
    fn patch_tells_null_models_from_absent() {
        let u: UpdateAccount = serde_json::from_str(r#"{"models":null}"#).unwrap();
        assert_eq!(u.models, Some(None));
        let u: UpdateAccount = serde_json::from_str(r#"{}"#).unwrap();
        assert_eq!(u.models, None);
        let u: UpdateAccount = serde_json::from_str(r#"{"models":["m"]}"#).unwrap();
        assert_eq!(u.models, Some(Some(vec!["m".to_string()])));
        assert!(serde_json::from_str::<UpdateAccount>(r#"{"secret":"x"}"#).is_err());
        assert!(serde_json::from_str::<AccountFields>(r#"{"name":"a","api_key":"k"}"#).is_err());
        assert!(
            split_body(
                &Bytes::from_static(br#"{"name":"a","kind":"x","api_key":"k"}"#),
                &["kind", "api_key"]
            )
            .is_ok()
        );
        assert!(split_body(&Bytes::from_static(br#"{"name":"a","nope":1}"#), &["kind"]).is_err());
    }
}
