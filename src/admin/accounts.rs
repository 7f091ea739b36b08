//! Upstream accounts: list, create, read, update (including replacing the credential), delete,
//! and reset (clear a cooldown or other health entry on every instance). Accounts from
//! `relay.yaml` are listed read-only, and can be reset.
//!
//! Bodies are read into the same [`AccountInput`] as `relay.yaml`'s accounts and checked by the
//! same [`AccountSettings::validate`]. The credential and the outbound proxy URL are sealed before
//! they reach the store and are never sent back: answers show only their masked forms
//! (`sk-a…9xQk`, `socks5://***@host:1080`). Every answer also carries the account's live state
//! (see [`scheduling::live_view`]).

use std::collections::BTreeMap;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::{Map, Value};

use super::AdminState;
use super::access::Actor;
use super::oauth::OAuthView;
use super::routes::{ApiError, bad_request, conflict, from_value, json_body, not_found, read_only, store_error, write};
use super::scheduling::{self, LiveView};
use crate::accounts::{
    AccountCredential, AccountDefinition, AccountInput, AccountSettings, Cooldowns, CredentialFields, FieldError,
    ProxyUrl, Region, TimeOfDay, stored,
};
use crate::providers::bedrock::BedrockSecret;
use crate::providers::bedrock::models::Profile;
use crate::scheduler::Source;
use crate::secrets;
use crate::state::config_id;
use crate::store::{AccountKind, AccountRecord, OAuthMeta, StoreError};

/// An account as the admin API shows it: its settings, its credential and proxy masked, and its
/// live state on this instance.
#[derive(Debug, Serialize)]
pub struct AccountView {
    pub id: String,
    pub name: String,
    pub kind: AccountKind,
    /// The base URL in effect (the kind's default when none was given).
    pub base_url: String,
    pub priority: u32,
    pub enabled: bool,
    pub models: Option<Vec<String>>,
    pub model_map: BTreeMap<String, String>,
    pub source: Source,
    /// The API key, masked; `null` for OAuth accounts (see `oauth`), bedrock accounts
    /// (see `bedrock`), and when the credential cannot be opened (see `error`).
    pub api_key: Option<String>,
    /// Unix seconds; `null` for configured accounts.
    pub created_at: Option<i64>,
    pub group: Option<String>,
    /// The outbound proxy, masked.
    pub proxy: Option<String>,
    pub max_concurrency: Option<u32>,
    pub daily_quota_usd: Option<f64>,
    pub quota_reset: Option<TimeOfDay>,
    pub weight: Option<u32>,
    pub cooldowns: Cooldowns,
    pub region: Option<Region>,
    pub inference_profile: Option<Profile>,
    pub api_version: Option<String>,
    pub deployments: BTreeMap<String, String>,
    pub project_id: Option<String>,
    #[serde(flatten)]
    pub live: LiveView,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oauth: Option<OAuthView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bedrock: Option<BedrockView>,
    /// Why the credential or proxy of a stored account cannot be used (the relay skips it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A Bedrock credential as the admin API shows it: how it authenticates, masked.
#[derive(Debug, Serialize)]
pub struct BedrockView {
    pub auth: &'static str,
    pub access_key_id: Option<String>,
    pub session_token: bool,
    pub api_key: Option<String>,
}

impl BedrockView {
    fn of(s: &BedrockSecret) -> BedrockView {
        BedrockView {
            auth: if s.api_key.is_some() { "api-key" } else { "sigv4" },
            access_key_id: s.access_key_id.as_deref().map(secrets::mask),
            session_token: s.session_token.is_some(),
            api_key: s.api_key.as_deref().map(secrets::mask),
        }
    }
}

impl AccountView {
    /// The view of `s`, without credential or proxy.
    fn new(
        state: &AdminState,
        id: String,
        source: Source,
        created_at: Option<i64>,
        s: &AccountSettings,
    ) -> AccountView {
        AccountView {
            live: scheduling::live_view(state, &id, s),
            id,
            name: s.name.clone(),
            kind: s.kind,
            base_url: s
                .base_url_or(&state.config.providers.default_bases())
                .as_str()
                .to_string(),
            priority: s.priority,
            enabled: s.enabled,
            models: s.models.clone(),
            model_map: s.model_map.clone(),
            source,
            api_key: None,
            created_at,
            group: s.group.clone(),
            proxy: None,
            max_concurrency: s.max_concurrency,
            daily_quota_usd: s.daily_quota_usd,
            quota_reset: s.quota_reset,
            weight: s.weight,
            cooldowns: s.cooldowns.clone(),
            region: s.region.clone(),
            inference_profile: s.inference_profile.clone(),
            api_version: s.api_version.clone(),
            deployments: s.deployments.clone(),
            project_id: s.project_id.clone(),
            oauth: None,
            bedrock: None,
            error: None,
        }
    }

    fn show_credential(&mut self, state: &AdminState, c: &AccountCredential, meta: Option<&OAuthMeta>) {
        match c {
            AccountCredential::ApiKey(k) => self.api_key = Some(secrets::mask(k)),
            AccountCredential::OAuth(pair) => self.oauth = Some(OAuthView::new(state, self.kind, &self.id, pair, meta)),
            AccountCredential::Bedrock(s) => self.bedrock = Some(BedrockView::of(s)),
            AccountCredential::None => {}
        }
    }
}

fn config_view(state: &AdminState, a: &AccountDefinition) -> AccountView {
    let mut v = AccountView::new(state, config_id(&a.settings.name), Source::Config, None, &a.settings);
    v.proxy = a.proxy.as_ref().map(ProxyUrl::masked);
    v.show_credential(state, &a.credential, None);
    v
}

/// The view of a stored account; an error when this relay cannot read its settings.
pub(super) fn stored_view(state: &AdminState, r: &AccountRecord) -> Result<AccountView, ApiError> {
    let s = stored::settings(r).map_err(|e| unreadable(&r.id, &e))?;
    let mut v = AccountView::new(state, r.id.clone(), Source::Admin, Some(r.created_at), &s);
    let mut errors = Vec::new();
    match stored::credential(r, &s, &state.secrets) {
        Ok(c) => v.show_credential(state, &c, r.oauth.as_ref()),
        Err(e) => errors.push(e),
    }
    match stored::proxy(r, &state.secrets) {
        Ok(p) => v.proxy = p.as_ref().map(ProxyUrl::masked),
        Err(e) => {
            tracing::warn!(account = %r.id, error = %e, "stored account proxy is unusable");
            errors.push(e);
        }
    }
    if !errors.is_empty() {
        v.error = Some(errors.join("; "));
    }
    Ok(v)
}

/// The answer about a stored account whose settings this relay cannot read (written by another
/// version): it is not served, and can be deleted.
fn unreadable(id: &str, e: &FieldError) -> ApiError {
    tracing::error!(account = %id, error = %e, "stored account cannot be read");
    conflict(format!(
        "stored account `{id}` cannot be read by this relay ({e}) and is not served; \
         a relay that knows it can change it, or delete it"
    ))
}

/// A 400 naming the field.
pub(super) fn field_error(e: FieldError) -> ApiError {
    bad_request(e.to_string())
}

/// Why the generic account endpoints do not take the tokens of an OAuth kind (`None` for other
/// kinds): its accounts come from a sign-in or an import.
fn oauth_only(kind: AccountKind) -> Option<ApiError> {
    let k = match kind {
        AccountKind::ClaudeOauth | AccountKind::OpenAiOauth | AccountKind::GeminiOauth => kind.as_str(),
        _ => return None,
    };
    Some(bad_request(format!(
        "{k} accounts are added through POST /admin/api/accounts/{k}/authorize and /exchange, \
         or /import; their tokens cannot be set here"
    )))
}

/// A new account's record: its base URL made explicit (a later change of the default does not move
/// it), its credential and proxy sealed. A Bedrock account without one keeps following its
/// region's endpoint, so that changing the region moves it.
pub(super) fn new_record(state: &AdminState, mut a: AccountDefinition) -> Result<AccountRecord, ApiError> {
    if a.settings.kind != AccountKind::Bedrock {
        let base = a.settings.base_url_or(&state.config.providers.default_bases()).clone();
        a.settings.base_url = Some(base);
    }
    stored::new_record(
        uuid::Uuid::new_v4().to_string(),
        &a,
        &state.secrets,
        chrono::Utc::now().timestamp(),
    )
    .map_err(internal)
}

fn internal(e: String) -> ApiError {
    tracing::error!(error = %e, "admin account write failed");
    ApiError(
        StatusCode::INTERNAL_SERVER_ERROR,
        "api_error",
        "the account could not be written".into(),
    )
}

/// Stores a new account (its name must be free) and answers 201 with its view.
pub(super) async fn insert(state: &AdminState, record: AccountRecord) -> Result<Response, ApiError> {
    Ok((StatusCode::CREATED, Json(insert_view(state, record).await?)).into_response())
}

/// Stores a new account (its name must be free): its view.
pub(super) async fn insert_view(state: &AdminState, record: AccountRecord) -> Result<AccountView, ApiError> {
    let name = stored::settings(&record).map_err(|e| unreadable(&record.id, &e))?.name;
    let record = write(state, move |st| async move {
        check_name_free(&st, &name, &record.id).await?;
        st.store.put_account(&record).await.map_err(store_error)?;
        Ok(record)
    })
    .await?;
    tracing::info!(account = %record.id, "admin created an account");
    stored_view(state, &record)
}

fn config_account<'a>(state: &'a AdminState, id: &str) -> Option<&'a AccountDefinition> {
    state.config.accounts.iter().find(|a| config_id(&a.settings.name) == id)
}

/// Refuses a name that a configured account or another stored account already has.
async fn check_name_free(state: &AdminState, name: &str, except: &str) -> Result<(), ApiError> {
    let taken = state.config.accounts.iter().any(|a| a.settings.name == name)
        || state
            .store
            .list_accounts()
            .await
            .map_err(store_error)?
            .iter()
            .filter(|a| a.id != except)
            .any(|a| stored::settings(a).is_ok_and(|s| s.name == name));
    if taken {
        return Err(conflict(format!("an account named `{name}` already exists")));
    }
    Ok(())
}

#[derive(Serialize)]
struct AccountList {
    accounts: Vec<AccountView>,
}

pub async fn list(State(state): State<AdminState>, _actor: Actor) -> Result<Response, ApiError> {
    let mut stored = state.store.list_accounts().await.map_err(store_error)?;
    stored.sort_by(|a, b| a.created_at.cmp(&b.created_at).then_with(|| a.id.cmp(&b.id)));
    let mut accounts: Vec<AccountView> = state.config.accounts.iter().map(|a| config_view(&state, a)).collect();
    // One this relay cannot read is left out (logged), as the relay leaves it out.
    accounts.extend(stored.iter().filter_map(|r| stored_view(&state, r).ok()));
    // In flight on the other instances too, as they last published it.
    let (views, _) = super::live::views(&state, chrono::Utc::now().timestamp_millis()).await;
    let mut elsewhere: std::collections::HashMap<&str, u64> = std::collections::HashMap::new();
    for (_, v) in views.iter().skip(1) {
        for (id, n) in &v.by_account {
            *elsewhere.entry(&**id).or_insert(0) += u64::from(*n);
        }
    }
    for a in &mut accounts {
        a.live.in_flight += elsewhere.get(a.id.as_str()).copied().unwrap_or(0);
    }
    Ok(Json(AccountList { accounts }).into_response())
}

pub async fn get(State(state): State<AdminState>, _actor: Actor, Path(id): Path<String>) -> Result<Response, ApiError> {
    if let Some(a) = config_account(&state, &id) {
        return Ok(Json(config_view(&state, a)).into_response());
    }
    match state.store.get_account(&id).await.map_err(store_error)? {
        Some(r) => Ok(Json(stored_view(&state, &r)?).into_response()),
        None => Err(not_found("account", &id)),
    }
}

pub async fn create(State(state): State<AdminState>, _actor: Actor, body: Bytes) -> Result<Response, ApiError> {
    let input: AccountInput = json_body(&body)?;
    if let Some(e) = oauth_only(input.settings.kind) {
        return Err(e);
    }
    let account = input.validate().map_err(field_error)?;
    let record = new_record(&state, account)?;
    insert(&state, record).await
}

/// Settings that `null` clears in an update; `null` leaves the others as they are.
const CLEARABLE: [&str; 11] = [
    "models",
    "group",
    "max_concurrency",
    "daily_quota_usd",
    "quota_reset",
    "weight",
    "cooldowns",
    "inference_profile",
    "api_version",
    "deployments",
    "project_id",
];

/// `old` with the settings `patch` gives: each field given replaces the old value (`cooldowns` as
/// a whole), `null` clears it (see [`CLEARABLE`]), and the result is read as any body is.
fn patched(old: &AccountSettings, patch: &Map<String, Value>) -> Result<AccountSettings, ApiError> {
    let Ok(Value::Object(mut doc)) = serde_json::to_value(old) else {
        return Err(internal("the stored settings cannot be written as JSON".into()));
    };
    for (k, v) in patch {
        if !AccountSettings::FIELDS.contains(&k.as_str()) {
            continue;
        }
        match v {
            Value::Null if CLEARABLE.contains(&k.as_str()) => {
                doc.remove(k);
            }
            Value::Null => {}
            v => {
                doc.insert(k.clone(), v.clone());
            }
        }
    }
    from_value(Value::Object(doc))
}

/// The credential fields an update gives (`null` is the same as absent).
fn credential_fields(patch: &Map<String, Value>) -> Result<CredentialFields, ApiError> {
    let mut f = CredentialFields::default();
    for (name, slot) in [
        ("api_key", &mut f.api_key),
        ("access_key_id", &mut f.access_key_id),
        ("secret_access_key", &mut f.secret_access_key),
        ("session_token", &mut f.session_token),
    ] {
        *slot = match patch.get(name) {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => return Err(bad_request(format!("invalid body at `{name}`: expected a string"))),
        };
    }
    Ok(f)
}

/// The proxy an update gives: absent leaves it, `null` removes it.
fn proxy_change(patch: &Map<String, Value>) -> Result<Option<Option<ProxyUrl>>, ApiError> {
    match patch.get("proxy") {
        None => Ok(None),
        Some(v) => serde_json::from_value::<Option<ProxyUrl>>(v.clone())
            .map(Some)
            .map_err(|e| bad_request(format!("invalid body at `proxy`: {e}"))),
    }
}

pub async fn update(
    State(state): State<AdminState>,
    _actor: Actor,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    if config_account(&state, &id).is_some() {
        return Err(read_only("account", &id));
    }
    let patch: Map<String, Value> = json_body(&body)?;
    if let Some(k) = patch.keys().find(|k| !AccountInput::FIELDS.contains(&k.as_str())) {
        return Err(bad_request(format!(
            "invalid body: {}",
            <serde_json::Error as serde::de::Error>::unknown_field(k, &AccountInput::FIELDS)
        )));
    }
    let credential = credential_fields(&patch)?;
    let proxy = proxy_change(&patch)?;
    let record = write(&state, move |st| async move {
        let mut r = st
            .store
            .get_account(&id)
            .await
            .map_err(store_error)?
            .ok_or_else(|| not_found("account", &id))?;
        let old = stored::settings(&r).map_err(|e| unreadable(&r.id, &e))?;
        let new = patched(&old, &patch)?;
        if new.kind != old.kind {
            if let Some(e) = oauth_only(new.kind).or_else(|| oauth_only(old.kind)) {
                return Err(e);
            }
            for kind in [AccountKind::Bedrock, AccountKind::ClaudePassthrough] {
                if new.kind == kind || old.kind == kind {
                    return Err(bad_request(format!(
                        "an account cannot become or stop being a {} account; create a new one",
                        kind.as_str()
                    )));
                }
            }
        }
        new.validate().map_err(field_error)?;
        if credential.any() {
            if let Some(e) = oauth_only(new.kind) {
                return Err(e);
            }
            let c = AccountCredential::from_fields(new.kind, credential).map_err(field_error)?;
            r.secret = st.secrets.seal(&c.to_secret());
        }
        if let Some(p) = proxy {
            r.proxy = p.map(|p| st.secrets.seal(p.url()));
        }
        if new.name != old.name {
            check_name_free(&st, &new.name, &r.id).await?;
        }
        stored::set_settings(&mut r, &new).map_err(internal)?;
        if oauth_only(new.kind).is_some()
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
    tracing::info!(account = %record.id, "admin updated an account");
    Ok(Json(stored_view(&state, &record)?).into_response())
}

pub async fn delete(
    State(state): State<AdminState>,
    _actor: Actor,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
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
    _actor: Actor,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
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
        (Some(r), _) => Ok(Json(stored_view(&state, &r)?).into_response()),
        (None, Some(a)) => Ok(Json(config_view(&state, a)).into_response()),
        (None, None) => Err(not_found("account", &id)),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use serde_json::json;

    fn settings(v: Value) -> AccountSettings {
        serde_json::from_value(v).unwrap()
    }

    fn patch(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn an_update_replaces_given_fields_and_null_clears_what_may_be_cleared() {
        let old = settings(json!({
            "name": "a", "kind": "claude-console", "base_url": "http://127.0.0.1:9",
            "priority": 3, "models": ["m"], "group": "g", "cooldowns": {"529": "2m", "connect": 45}
        }));
        let same = patched(&old, &patch(json!({}))).unwrap();
        assert_eq!(same, old);
        let new = patched(
            &old,
            &patch(
                json!({"models": null, "priority": null, "group": null, "base_url": null, "weight": 2, "api_key": "k"}),
            ),
        )
        .unwrap();
        assert_eq!(new.models, None, "null: every model");
        assert_eq!(new.priority, 3, "null leaves a field that cannot be cleared");
        assert_eq!(new.base_url, old.base_url);
        assert_eq!((new.group, new.weight), (None, Some(2)));
        assert_eq!(new.cooldowns, old.cooldowns);
        let cd = patched(&old, &patch(json!({"cooldowns": {"503": "1m"}}))).unwrap();
        assert_eq!(serde_json::to_value(&cd.cooldowns).unwrap(), json!({"503": "1m"}));
        let e = patched(&old, &patch(json!({"quota_reset": "25:00"}))).unwrap_err();
        assert!(e.2.contains("`quota_reset`"), "{}", e.2);
        let e = patched(&old, &patch(json!({"cooldowns": {"42": "1m"}}))).unwrap_err();
        assert!(e.2.contains("cooldowns.42"), "{}", e.2);
    }

    #[test]
    fn update_credentials_and_proxies_are_read_strictly() {
        let f = credential_fields(&patch(json!({"api_key": "k", "session_token": null}))).unwrap();
        assert_eq!((f.api_key.as_deref(), f.session_token), (Some("k"), None));
        assert!(credential_fields(&patch(json!({"api_key": 5}))).is_err());
        assert!(proxy_change(&patch(json!({}))).unwrap().is_none());
        assert_eq!(proxy_change(&patch(json!({"proxy": null}))).unwrap(), Some(None));
        let e = proxy_change(&patch(json!({"proxy": "ftp://u:secretpw@h:1"}))).unwrap_err();
        assert!(e.2.contains("`proxy`") && !e.2.contains("secretpw"), "{}", e.2);
    }

    /// The property names of a schema of the OpenAPI document, and its required ones.
    fn schema(doc: &Value, pointer: &str) -> (BTreeSet<String>, BTreeSet<String>) {
        let s = doc
            .pointer(pointer)
            .unwrap_or_else(|| panic!("{pointer} is not in openapi.json"));
        let props = s["properties"].as_object().unwrap().keys().cloned().collect();
        let required = s["required"]
            .as_array()
            .map(|r| r.iter().map(|v| v.as_str().unwrap().to_string()).collect())
            .unwrap_or_default();
        (props, required)
    }

    fn keys(v: &impl Serialize) -> BTreeSet<String> {
        serde_json::to_value(v)
            .unwrap()
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect()
    }

    fn names(fields: &[&str]) -> BTreeSet<String> {
        fields.iter().map(|f| f.to_string()).collect()
    }

    /// A view with every field it may have.
    fn full_view() -> AccountView {
        let s = settings(json!({
            "name": "a", "kind": "bedrock", "base_url": "http://127.0.0.1:9", "models": ["m"],
            "model_map": {"a": "b"}, "group": "g", "max_concurrency": 1, "daily_quota_usd": 1.0,
            "quota_reset": "01:00", "weight": 1, "cooldowns": {"529": "1m"}, "region": "us-east-1",
            "inference_profile": "us"
        }));
        let health = scheduling::HealthView {
            state: "active",
            reason: Some("r".into()),
            since: Some(1),
            until: Some(2),
            family: Some("opus".into()),
        };
        AccountView {
            id: "x".into(),
            name: s.name.clone(),
            kind: s.kind,
            base_url: "http://127.0.0.1:9".into(),
            priority: s.priority,
            enabled: s.enabled,
            models: s.models.clone(),
            model_map: s.model_map.clone(),
            source: Source::Admin,
            api_key: Some("sk-a…x".into()),
            created_at: Some(1),
            group: s.group.clone(),
            proxy: Some("socks5://***@h:1".into()),
            max_concurrency: s.max_concurrency,
            daily_quota_usd: s.daily_quota_usd,
            quota_reset: s.quota_reset,
            weight: s.weight,
            cooldowns: s.cooldowns.clone(),
            region: s.region.clone(),
            inference_profile: s.inference_profile.clone(),
            api_version: s.api_version.clone(),
            deployments: s.deployments.clone(),
            project_id: s.project_id.clone(),
            live: LiveView {
                health,
                ratelimit: Some(Default::default()),
                in_flight: 1,
                spend_today_usd: Some(0.5),
            },
            oauth: Some(OAuthView {
                access_token: "a".into(),
                refresh_token: Some("r".into()),
                expires_at: Some(1),
                scopes: vec!["s".into()],
                setup_token: false,
                tier: Some("max".into()),
                email: Some("e".into()),
                refreshed_at: Some(1),
                usage: Some(json!({})),
                chatgpt_account_id: Some("a".into()),
                plan: Some("plus".into()),
                project_id: Some("p".into()),
            }),
            bedrock: Some(BedrockView {
                auth: "sigv4",
                access_key_id: Some("AKIA…".into()),
                session_token: true,
                api_key: None,
            }),
            error: Some("e".into()),
        }
    }

    /// openapi.json and the account types agree both ways: the document lists exactly the fields
    /// the bodies accept and the views write, so neither can change without the other.
    #[test]
    fn the_openapi_account_schemas_are_the_account_types() {
        let doc: Value = serde_json::from_str(super::super::routes::OPENAPI).unwrap();
        let inputs = names(&AccountInput::FIELDS);
        for s in ["CreateAccount", "UpdateAccount"] {
            let (props, _) = schema(&doc, &format!("/components/schemas/{s}"));
            assert_eq!(
                props, inputs,
                "{s}: the document's properties, then AccountInput::FIELDS"
            );
            assert_eq!(
                doc["components"]["schemas"][s]["additionalProperties"],
                json!(false),
                "{s}"
            );
        }
        let (create_props, create_required) = schema(&doc, "/components/schemas/CreateAccount");
        assert!(create_required.is_subset(&create_props));

        // The view: every field it may write is documented, and every documented field is written;
        // the required ones are those it always writes.
        let full = full_view();
        let (props, required) = schema(&doc, "/components/schemas/Account");
        assert_eq!(
            props,
            keys(&full),
            "Account: the document's properties, then AccountView's"
        );
        let always = AccountView {
            oauth: None,
            bedrock: None,
            error: None,
            ..full_view()
        };
        assert_eq!(required, keys(&always), "Account: required, then always written");
        for (pointer, v) in [
            ("/components/schemas/Account/properties/bedrock", keys(&full.bedrock)),
            ("/components/schemas/OAuthState", keys(&full.oauth)),
            ("/components/schemas/AccountHealth", keys(&full.live.health)),
        ] {
            let (props, required) = schema(&doc, pointer);
            assert_eq!(props, v, "{pointer}");
            assert_eq!(required, v, "{pointer}: all required");
        }

        // The OAuth endpoints take the settings of an OAuth account (not its kind, nor Bedrock's
        // or Azure's fields; the project for Google accounts only) and a proxy, besides their
        // own fields.
        let mut google_account = names(&AccountSettings::FIELDS);
        for f in ["kind", "region", "inference_profile", "api_version", "deployments"] {
            google_account.remove(f);
        }
        google_account.insert("proxy".into());
        let mut oauth_account = google_account.clone();
        oauth_account.remove("project_id");
        for (s, own, account) in [
            (
                "GeminiOAuthExchangeRequest",
                &["authorization_id", "code", "account_id"][..],
                &google_account,
            ),
            (
                "GeminiOAuthImportRequest",
                &[super::super::gemini_oauth::IMPORT_FIELDS.as_slice(), &["account_id"]].concat()[..],
                &google_account,
            ),
        ]
        .into_iter()
        .chain(
            [
                ("OAuthExchangeRequest", &["authorization_id", "code", "account_id"][..]),
                (
                    "OAuthImportRequest",
                    &[
                        "access_token",
                        "refresh_token",
                        "expires_at",
                        "scopes",
                        "claudeAiOauth",
                        "account_id",
                    ][..],
                ),
                (
                    "OpenAiOAuthExchangeRequest",
                    &["authorization_id", "code", "account_id"][..],
                ),
                (
                    "OpenAiOAuthImportRequest",
                    &[super::super::openai_oauth::IMPORT_FIELDS.as_slice(), &["account_id"]].concat()[..],
                ),
            ]
            .map(|(s, own)| (s, own, &oauth_account)),
        ) {
            let (props, _) = schema(&doc, &format!("/components/schemas/{s}"));
            let own = names(own);
            assert!(own.is_subset(&props), "{s}");
            assert_eq!(
                &props.difference(&own).cloned().collect::<BTreeSet<_>>(),
                account,
                "{s}"
            );
        }
    }
}
