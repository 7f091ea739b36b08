//! Connecting Claude subscriptions (`claude-oauth` accounts):
//! - `POST /admin/api/accounts/claude-oauth/authorize` starts an authorization (`flow`: `oauth`,
//!   the default, or `setup-token`) and answers the URL to open and an opaque authorization id;
//! - `POST /admin/api/accounts/claude-oauth/exchange` takes that id and the code (bare, `code#state`
//!   or the whole callback URL), exchanges it and stores the account;
//! - `POST /admin/api/accounts/claude-oauth/import` stores tokens obtained elsewhere (Claude Code's
//!   `~/.claude/.credentials.json`, for migrations).
//!
//! Both of the last two take the usual account fields, or `account_id` to give an existing
//! `claude-oauth` account new tokens (which also clears an `unauthorized` mark). Tokens are sealed
//! at once and only ever shown masked.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::AdminState;
use super::accounts::{field_error, insert, new_record, stored_view};
use super::routes::{
    ApiError, authenticate, bad_request, conflict, from_value, json_body, not_found, store_error, write,
};
use crate::accounts::{AccountCredential, AccountDefinition, AccountInput, CredentialFields, ProxyUrl, stored};
use crate::credentials::{Live, OAuthError, TokenPair};
use crate::outbound::OutboundProxy;
use crate::providers::anthropic_oauth::flow::{self, Flow, TokenAnswer};
use crate::secrets::mask;
use crate::store::{AccountKind, AccountRecord, OAuthMeta};

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// The `oauth` part of an account's view: token state without the tokens.
#[derive(Debug, Serialize)]
pub struct OAuthView {
    pub access_token: String,
    pub refresh_token: Option<String>,
    pub expires_at: Option<i64>,
    pub scopes: Vec<String>,
    pub setup_token: bool,
    pub tier: Option<String>,
    pub email: Option<String>,
    pub refreshed_at: Option<i64>,
    /// The last answer of the usage endpoint, as it came.
    pub usage: Option<Value>,
}

impl OAuthView {
    pub fn new(state: &AdminState, id: &str, pair: &TokenPair, meta: Option<&OAuthMeta>) -> OAuthView {
        let cell = state.reloader.oauth.cell(id);
        // The live token may be newer than the record this view was built from.
        let live = cell.as_ref().map(|c| c.live());
        let (access_token, refresh_token, expires_at) = match &live {
            Some(l) if meta.is_none_or(|m| l.issued_at >= m.issued_at) => (
                mask(&l.pair.access_token),
                l.pair.refresh_token.as_deref().map(mask),
                l.expires_at,
            ),
            _ => (
                mask(&pair.access_token),
                pair.refresh_token.as_deref().map(mask),
                meta.and_then(|m| m.expires_at),
            ),
        };
        let m = meta.cloned().unwrap_or_default();
        OAuthView {
            access_token,
            refresh_token,
            expires_at,
            scopes: m.scopes,
            setup_token: m.setup_token || (meta.is_none() && pair.refresh_token.is_none()),
            tier: m.tier,
            email: m.email,
            refreshed_at: m.refreshed_at,
            usage: cell.and_then(|c| c.usage()),
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct AuthorizeRequest {
    #[serde(default)]
    flow: Flow,
}

pub async fn authorize(State(state): State<AdminState>, headers: HeaderMap, body: Bytes) -> Result<Response, ApiError> {
    authenticate(&state, &headers).await?;
    let req: AuthorizeRequest = if body.trim_ascii().is_empty() {
        AuthorizeRequest::default()
    } else {
        json_body(&body)?
    };
    let cfg = &state.config.providers.anthropic.oauth;
    let a = flow::start(cfg, &state.secrets, req.flow, now_ms() / 1000).map_err(|e| {
        tracing::error!(error = %e, "cannot build the authorize URL");
        ApiError(StatusCode::INTERNAL_SERVER_ERROR, "api_error", e)
    })?;
    Ok(Json(json!({
        "authorization_id": a.id,
        "url": a.url,
        "flow": a.flow,
        "expires_at": a.expires_at,
    }))
    .into_response())
}

/// Where new tokens go: a new account, or an existing one (`account_id`).
enum Target {
    New(Box<AccountInput>),
    Existing(Box<AccountRecord>, Option<ProxyUrl>),
}

impl Target {
    fn proxy(&self) -> Option<&OutboundProxy> {
        match self {
            Target::New(a) => a.proxy.as_ref(),
            Target::Existing(_, p) => p.as_ref(),
        }
        .map(ProxyUrl::proxy)
    }
}

async fn target(
    state: &AdminState,
    taken: &mut Map<String, Value>,
    fields: Option<AccountInput>,
) -> Result<Target, ApiError> {
    if let Some(id) = taken.remove("account_id") {
        let id = id
            .as_str()
            .ok_or_else(|| bad_request("invalid body at `account_id`: expected a string"))?
            .to_string();
        let r = state
            .store
            .get_account(&id)
            .await
            .map_err(store_error)?
            .ok_or_else(|| not_found("account", &id))?;
        let settings =
            stored::settings(&r).map_err(|e| conflict(format!("stored account `{id}` cannot be read: {e}")))?;
        if settings.kind != AccountKind::ClaudeOauth {
            return Err(bad_request(format!("account `{id}` is not a claude-oauth account")));
        }
        // Its tokens are fetched through its proxy, or not at all.
        let proxy = stored::proxy(&r, &state.secrets).map_err(|e| conflict(format!("account `{id}`: {e}")))?;
        return Ok(Target::Existing(Box::new(r), proxy));
    }
    let fields = fields.ok_or_else(|| bad_request("invalid body: missing field `name`"))?;
    Ok(Target::New(Box::new(fields)))
}

/// The new account's fields, unless the body names an existing account (then only the OAuth
/// fields may be given). The account fields are those of any account but its kind and
/// credential.
fn fields_or_existing(
    body: &Bytes,
    oauth_fields: &[&str],
) -> Result<(Map<String, Value>, Option<AccountInput>), ApiError> {
    let mut all: Map<String, Value> = json_body(body)?;
    if all.contains_key("account_id") {
        if let Some(k) = all
            .keys()
            .find(|k| *k != "account_id" && !oauth_fields.contains(&k.as_str()))
        {
            return Err(bad_request(format!(
                "invalid body: `{k}` cannot be given with `account_id` (change it with PATCH /admin/api/accounts/{{id}})"
            )));
        }
        return Ok((all, None));
    }
    let mut taken = Map::new();
    for k in oauth_fields {
        if let Some(v) = all.remove(*k) {
            taken.insert(k.to_string(), v);
        }
    }
    if let Some(k) = all
        .keys()
        .find(|k| *k == "kind" || CredentialFields::NAMES.contains(&k.as_str()))
    {
        return Err(bad_request(format!(
            "invalid body: `{k}` cannot be given here: the account is a claude-oauth account and its tokens come from this request"
        )));
    }
    all.insert("kind".into(), Value::String(AccountKind::ClaudeOauth.as_str().into()));
    let input: AccountInput = from_value(Value::Object(all))?;
    input.settings.validate().map_err(field_error)?;
    Ok((taken, Some(input)))
}

fn string_field(taken: &mut Map<String, Value>, name: &str) -> Result<Option<String>, ApiError> {
    match taken.remove(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.trim().to_string())),
        Some(_) => Err(bad_request(format!("invalid body at `{name}`: expected a string"))),
    }
}

pub async fn exchange(State(state): State<AdminState>, headers: HeaderMap, body: Bytes) -> Result<Response, ApiError> {
    authenticate(&state, &headers).await?;
    let (mut taken, fields) = fields_or_existing(&body, &["authorization_id", "code"])?;
    let id = string_field(&mut taken, "authorization_id")?
        .ok_or_else(|| bad_request("invalid body: missing field `authorization_id`"))?;
    let code = string_field(&mut taken, "code")?.ok_or_else(|| bad_request("invalid body: missing field `code`"))?;
    let pending = flow::open(&state.secrets, &id, now_ms() / 1000).map_err(bad_request)?;
    let (code, code_state) = flow::parse_code(&code).map_err(bad_request)?;
    if code_state.is_some_and(|s| s != pending.state) {
        return Err(bad_request(
            "the code belongs to another authorization (its state does not match); start again",
        ));
    }
    let target = target(&state, &mut taken, fields).await?;
    let cfg = &state.config.providers.anthropic.oauth;
    let answer = state
        .reloader
        .oauth
        .client
        .exchange(cfg, &pending, &code, target.proxy())
        .await
        .map_err(|e| match e {
            OAuthError::Refused { .. } => bad_request(format!(
                "the token endpoint refused the code ({e}); codes are single-use and expire quickly: start again"
            )),
            OAuthError::Unavailable(m) => token_endpoint_down(m),
        })?;
    tracing::info!(flow = ?pending.flow, "OAuth code exchanged");
    let setup = pending.flow == Flow::SetupToken;
    save(&state, target, answer, setup).await
}

fn token_endpoint_down(m: String) -> ApiError {
    ApiError(
        StatusCode::BAD_GATEWAY,
        "upstream_error",
        format!("the token endpoint is unavailable: {m}"),
    )
}

/// `expires_at` as Unix ms, from ms, seconds or an RFC 3339 string.
fn expiry(v: Option<Value>) -> Result<Option<i64>, ApiError> {
    let bad = || bad_request("invalid body at `expires_at`: expected Unix ms (or s) or an RFC 3339 time");
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => {
            let n = n.as_f64().ok_or_else(bad)? as i64;
            // Ten-digit values are seconds; Claude Code writes milliseconds.
            Ok(Some(if n < 100_000_000_000 { n.saturating_mul(1000) } else { n }))
        }
        Some(Value::String(s)) => match s.trim().parse::<i64>() {
            Ok(n) => expiry(Some(json!(n))),
            Err(_) => chrono::DateTime::parse_from_rfc3339(s.trim())
                .map(|t| Some(t.timestamp_millis()))
                .map_err(|_| bad()),
        },
        Some(_) => Err(bad()),
    }
}

pub async fn import(State(state): State<AdminState>, headers: HeaderMap, body: Bytes) -> Result<Response, ApiError> {
    authenticate(&state, &headers).await?;
    const FIELDS: [&str; 5] = ["access_token", "refresh_token", "expires_at", "scopes", "claudeAiOauth"];
    let (mut taken, fields) = fields_or_existing(&body, &FIELDS)?;
    // Claude Code's credentials file: {"claudeAiOauth": {"accessToken", "refreshToken", "expiresAt", "scopes"}}.
    if let Some(cc) = taken.remove("claudeAiOauth") {
        let Value::Object(cc) = cc else {
            return Err(bad_request("invalid body at `claudeAiOauth`: expected an object"));
        };
        for (from, to) in [
            ("accessToken", "access_token"),
            ("refreshToken", "refresh_token"),
            ("expiresAt", "expires_at"),
            ("scopes", "scopes"),
        ] {
            if let Some(v) = cc.get(from) {
                taken.entry(to).or_insert_with(|| v.clone());
            }
        }
    }
    let access = string_field(&mut taken, "access_token")?
        .ok_or_else(|| bad_request("invalid body: missing field `access_token`"))?;
    let refresh = string_field(&mut taken, "refresh_token")?;
    let expires_at = expiry(taken.remove("expires_at"))?;
    let scopes: Vec<String> = match taken.remove("scopes") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a.iter().filter_map(|s| s.as_str().map(String::from)).collect(),
        Some(Value::String(s)) => s.split_whitespace().map(String::from).collect(),
        Some(_) => return Err(bad_request("invalid body at `scopes`: expected a list of strings")),
    };
    let pair = TokenPair {
        access_token: access,
        refresh_token: refresh,
    };
    Live::new(pair.clone(), expires_at, 0).map_err(|e| bad_request(format!("`access_token`: {e}")))?;
    let target = target(&state, &mut taken, fields).await?;
    let answer = TokenAnswer {
        expires_in: None,
        scopes,
        email: None,
        pair,
    };
    let setup = answer.pair.refresh_token.is_none();
    save_with_expiry(&state, target, answer, setup, expires_at).await
}

async fn save(state: &AdminState, target: Target, answer: TokenAnswer, setup: bool) -> Result<Response, ApiError> {
    let expires_at = answer.expires_in.map(|s| now_ms() + (s as i64).saturating_mul(1000));
    save_with_expiry(state, target, answer, setup, expires_at).await
}

/// Reads the profile (tier, email), seals the tokens and stores the account.
async fn save_with_expiry(
    state: &AdminState,
    target: Target,
    answer: TokenAnswer,
    setup: bool,
    expires_at: Option<i64>,
) -> Result<Response, ApiError> {
    let now = now_ms();
    let mut meta = OAuthMeta {
        expires_at,
        scopes: answer.scopes,
        setup_token: setup,
        tier: None,
        email: answer.email,
        issued_at: now,
        refreshed_at: None,
        profile_checked_at: None,
    };
    let usable_now = expires_at.is_none_or(|e| e > now);
    if usable_now {
        match state
            .reloader
            .oauth
            .profile(&answer.pair.access_token, target.proxy())
            .await
        {
            Ok((tier, email)) => {
                meta.tier = tier;
                meta.email = email.or(meta.email);
                meta.profile_checked_at = Some(now);
            }
            // Setup tokens cannot read the profile (inference scope only); the tier stays unknown.
            Err(e) => {
                tracing::info!(error = %e, "the OAuth profile could not be read; the subscription tier stays unknown")
            }
        }
    }
    match target {
        Target::New(input) => {
            let account = AccountDefinition {
                settings: input.settings,
                credential: AccountCredential::OAuth(answer.pair),
                proxy: input.proxy,
            };
            let mut record = new_record(state, account)?;
            record.oauth = Some(meta);
            insert(state, record).await
        }
        Target::Existing(record, _) => {
            let mut record = *record;
            record.secret = state.secrets.seal(&answer.pair.to_secret());
            record.oauth = Some(meta);
            let id = record.id.clone();
            let record = write(state, move |st| async move {
                st.store.put_account(&record).await.map_err(store_error)?;
                // New tokens: whatever refused the old ones no longer applies.
                st.reloader
                    .coord
                    .clear_account_health(&record.id)
                    .await
                    .map_err(store_error)?;
                Ok(record)
            })
            .await?;
            tracing::info!(account = %id, "admin gave an account new OAuth tokens");
            Ok(Json(stored_view(state, &record)?).into_response())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_oauth_account_takes_the_settings_of_any_account_but_its_kind_and_credential() {
        let body = |v: Value| Bytes::from(v.to_string());
        let fields = ["authorization_id", "code"];
        let (taken, input) = fields_or_existing(
            &body(json!({"authorization_id": "x", "code": "c", "name": " sub ", "priority": 5, "proxy": "socks5://127.0.0.1:1080"})),
            &fields,
        )
        .unwrap();
        assert_eq!(taken.len(), 2);
        let input = input.unwrap();
        assert_eq!(input.settings.kind, AccountKind::ClaudeOauth);
        assert_eq!((input.settings.name.as_str(), input.settings.priority), ("sub", 5));
        assert!(input.proxy.is_some());
        for bad in [
            json!({"name": "a", "kind": "claude-console"}),
            json!({"name": "a", "api_key": "k"}),
            json!({"name": "a", "region": "us-east-1"}),
            json!({"name": "a", "nope": 1}),
            json!({"name": "a", "quota_reset": "25:00"}),
            json!({"account_id": "x", "name": "a"}),
        ] {
            let e = fields_or_existing(&body(bad.clone()), &fields).unwrap_err();
            assert_eq!(e.0, StatusCode::BAD_REQUEST, "{bad}: {}", e.2);
        }
        let (_, none) = fields_or_existing(&body(json!({"account_id": "x", "code": "c"})), &fields).unwrap();
        assert!(none.is_none());
    }

    #[test]
    fn expiry_accepts_ms_seconds_and_rfc3339() {
        assert_eq!(
            expiry(Some(json!(1_764_000_000_000_i64))).unwrap(),
            Some(1_764_000_000_000)
        );
        assert_eq!(expiry(Some(json!(1_764_000_000))).unwrap(), Some(1_764_000_000_000));
        assert_eq!(expiry(Some(json!("1764000000"))).unwrap(), Some(1_764_000_000_000));
        assert_eq!(
            expiry(Some(json!("2025-11-24T16:00:00Z"))).unwrap(),
            Some(1_764_000_000_000)
        );
        assert_eq!(expiry(None).unwrap(), None);
        assert!(expiry(Some(json!("soon"))).is_err());
        // Found by fuzzing the admin API: a large negative number overflowed (a dropped
        // connection in debug builds); it reads as long expired.
        assert_eq!(expiry(Some(json!(-1e18))).unwrap(), Some(i64::MIN));
        assert_eq!(expiry(Some(json!(i64::MIN))).unwrap(), Some(i64::MIN));
        assert!(expiry(Some(json!([1]))).is_err());
    }
}
