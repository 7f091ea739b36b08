//! Connecting subscriptions through OAuth: what the endpoints of every OAuth kind share (the
//! account fields of a sign-in, the target account, the sealed save, the masked view), and the
//! endpoints of Claude subscriptions (`claude-oauth` accounts; ChatGPT's are in
//! [`super::openai_oauth`]):
//! - `POST /admin/api/accounts/claude-oauth/authorize` starts an authorization (`flow`: `oauth`,
//!   the default, or `setup-token`) and answers the URL to open and an opaque authorization id;
//! - `POST /admin/api/accounts/claude-oauth/exchange` takes that id and the code (bare, `code#state`
//!   or the whole callback URL), exchanges it and stores the account;
//! - `POST /admin/api/accounts/claude-oauth/import` stores tokens obtained elsewhere (Claude Code's
//!   `~/.claude/.credentials.json`, for migrations).
//!
//! Both of the last two take the usual account fields, or `account_id` to give an existing
//! account of the kind new tokens (which also clears an `unauthorized` mark). Tokens are sealed
//! at once and only ever shown masked.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::AdminState;
use super::access::Actor;
use super::accounts::{AccountView, field_error, insert_view, new_record, stored_view};
use super::routes::{ApiError, bad_request, conflict, from_value, json_body, not_found, store_error, write};
use crate::accounts::{AccountCredential, AccountDefinition, AccountInput, CredentialFields, ProxyUrl, stored};
use crate::credentials::authorize::{self, Pending, Started};
use crate::credentials::{Live, OAuthError, TokenPair};
use crate::outbound::OutboundProxy;
use crate::providers::anthropic_oauth::flow::{self, Flow, TokenAnswer};
use crate::secrets::mask;
use crate::store::{AccountKind, AccountRecord, OAuthMeta};

pub(super) fn now_ms() -> i64 {
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
    /// `openai-oauth`: the ChatGPT account the tokens act for (sent as `chatgpt-account-id`).
    pub chatgpt_account_id: Option<String>,
    /// `openai-oauth`: the ChatGPT plan the id token names.
    pub plan: Option<String>,
    /// `gemini-oauth`: the Code Assist project the account's requests go to (its `project_id`,
    /// else the one found for it); `None` until found.
    pub project_id: Option<String>,
}

impl OAuthView {
    pub fn new(
        state: &AdminState,
        kind: AccountKind,
        id: &str,
        pair: &TokenPair,
        meta: Option<&OAuthMeta>,
    ) -> OAuthView {
        let cell = state.reloader.oauth.of(kind).and_then(|t| t.cell(id));
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
        let project_id = match kind {
            AccountKind::GeminiOauth => state
                .reloader
                .oauth
                .google
                .known_project(id)
                .map(|p| p.to_string())
                .or(m.project_id),
            _ => None,
        };
        OAuthView {
            project_id,
            access_token,
            refresh_token,
            expires_at,
            scopes: m.scopes,
            setup_token: m.setup_token || (meta.is_none() && pair.refresh_token.is_none()),
            tier: m.tier,
            email: m.email,
            refreshed_at: m.refreshed_at,
            usage: cell.and_then(|c| c.usage()),
            chatgpt_account_id: m.account_id,
            plan: m.plan,
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct AuthorizeRequest {
    #[serde(default)]
    flow: Flow,
}

pub async fn authorize(State(state): State<AdminState>, _actor: Actor, body: Bytes) -> Result<Response, ApiError> {
    let req: AuthorizeRequest = optional_body(&body)?;
    let cfg = &state.config.providers.anthropic.oauth;
    let started = flow::start(cfg, &state.secrets, req.flow, now_ms() / 1000);
    authorization(started, Some(json!(req.flow)))
}

/// The body of an authorize call that takes no options (it may be left out).
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct NoOptions {}

/// The authorize endpoint of a provider whose authorization takes no options: `start` builds it
/// from the admin state and the time (Unix seconds).
pub(super) async fn authorize_plain(
    state: &AdminState,
    body: &Bytes,
    start: impl FnOnce(&AdminState, i64) -> Result<Started, String>,
) -> Result<Response, ApiError> {
    let NoOptions {} = optional_body(body)?;
    authorization(start(state, now_ms() / 1000), None)
}

/// The token state of a pair a token endpoint just issued, which lives `expires_in` seconds.
pub(super) fn fresh_meta(expires_in: Option<u64>, scopes: Vec<String>) -> OAuthMeta {
    let now = now_ms();
    OAuthMeta {
        expires_at: expires_in.map(|s| now + (s as i64).saturating_mul(1000)),
        scopes,
        issued_at: now,
        ..OAuthMeta::default()
    }
}

/// A body that may be left out: its type's default then.
pub(super) fn optional_body<T: DeserializeOwned + Default>(body: &Bytes) -> Result<T, ApiError> {
    if body.trim_ascii().is_empty() {
        Ok(T::default())
    } else {
        json_body(body)
    }
}

/// The answer to an authorize call: the authorization id, the URL to open, when it expires (and
/// the flow, for providers that have several); a 500 when the URL cannot be built.
pub(super) fn authorization(started: Result<Started, String>, flow: Option<Value>) -> Result<Response, ApiError> {
    let a = started.map_err(|e| {
        tracing::error!(error = %e, "cannot build the authorize URL");
        ApiError(StatusCode::INTERNAL_SERVER_ERROR, "api_error", e)
    })?;
    let mut answer = json!({
        "authorization_id": a.id,
        "url": a.url,
        "expires_at": a.expires_at,
    });
    if let Some(f) = flow {
        answer["flow"] = f;
    }
    Ok(Json(answer).into_response())
}

/// Where new tokens go: a new account, or an existing one (`account_id`).
pub(super) enum Target {
    New(Box<AccountInput>),
    Existing(Box<AccountRecord>, Option<ProxyUrl>),
}

impl Target {
    pub(super) fn proxy(&self) -> Option<&OutboundProxy> {
        match self {
            Target::New(a) => a.proxy.as_ref(),
            Target::Existing(_, p) => p.as_ref(),
        }
        .map(ProxyUrl::proxy)
    }
}

pub(super) async fn target(
    state: &AdminState,
    kind: AccountKind,
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
        if settings.kind != kind {
            return Err(bad_request(format!(
                "account `{id}` is not a {} account",
                kind.as_str()
            )));
        }
        // Its tokens are fetched through its proxy, or not at all.
        let proxy = stored::proxy(&r, &state.secrets).map_err(|e| conflict(format!("account `{id}`: {e}")))?;
        return Ok(Target::Existing(Box::new(r), proxy));
    }
    let fields = fields.ok_or_else(|| bad_request("invalid body: missing field `name`"))?;
    Ok(Target::New(Box::new(fields)))
}

/// The new account's fields, unless the body names an existing account (then only the OAuth
/// fields, of `oauth_fields`, may be given). The account fields are those of any account but its
/// kind (`kind`) and credential.
pub(super) fn fields_or_existing(
    body: &Bytes,
    kind: AccountKind,
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
            "invalid body: `{k}` cannot be given here: the account is a {} account and its tokens come from this request",
            kind.as_str()
        )));
    }
    all.insert("kind".into(), Value::String(kind.as_str().into()));
    let input: AccountInput = from_value(Value::Object(all))?;
    input.settings.validate().map_err(field_error)?;
    Ok((taken, Some(input)))
}

pub(super) fn string_field(taken: &mut Map<String, Value>, name: &str) -> Result<Option<String>, ApiError> {
    match taken.remove(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.trim().to_string())),
        Some(_) => Err(bad_request(format!("invalid body at `{name}`: expected a string"))),
    }
}

/// What an exchange body says: the pending authorization (of the provider's flow `F`), the code,
/// and where the tokens go.
pub(super) struct Exchange<F> {
    pub pending: Pending<F>,
    pub code: String,
    pub target: Target,
}

/// Reads an exchange body for `kind`: the authorization must be one this relay issued for the
/// kind's flow and not expired, and a code that comes with a state must come with its state.
pub(super) async fn read_exchange<F: DeserializeOwned>(
    state: &AdminState,
    kind: AccountKind,
    body: &Bytes,
) -> Result<Exchange<F>, ApiError> {
    let (mut taken, fields) = fields_or_existing(body, kind, &["authorization_id", "code"])?;
    let id = string_field(&mut taken, "authorization_id")?
        .ok_or_else(|| bad_request("invalid body: missing field `authorization_id`"))?;
    let code = string_field(&mut taken, "code")?.ok_or_else(|| bad_request("invalid body: missing field `code`"))?;
    let pending = authorize::open(&state.secrets, &id, now_ms() / 1000).map_err(bad_request)?;
    let code = authorize::code_for(&pending, &code).map_err(bad_request)?;
    let target = target(state, kind, &mut taken, fields).await?;
    Ok(Exchange { pending, code, target })
}

/// The answer to a code the token endpoint did not take.
pub(super) fn exchange_error(e: OAuthError) -> ApiError {
    match e {
        OAuthError::Refused { .. } => bad_request(format!(
            "the token endpoint refused the code ({e}); codes are single-use and expire quickly: start again"
        )),
        OAuthError::Unavailable(m) => token_endpoint_down(m),
    }
}

pub async fn exchange(State(state): State<AdminState>, _actor: Actor, body: Bytes) -> Result<Response, ApiError> {
    let x = read_exchange::<Flow>(&state, AccountKind::ClaudeOauth, &body).await?;
    let cfg = &state.config.providers.anthropic.oauth;
    let answer = flow::exchange(
        &state.reloader.oauth.claude.client,
        cfg,
        &x.pending,
        &x.code,
        x.target.proxy(),
    )
    .await
    .map_err(exchange_error)?;
    tracing::info!(flow = ?x.pending.flow, "OAuth code exchanged");
    let setup = x.pending.flow == Flow::SetupToken;
    save(&state, x.target, answer, setup).await
}

fn token_endpoint_down(m: String) -> ApiError {
    ApiError(
        StatusCode::BAD_GATEWAY,
        "upstream_error",
        format!("the token endpoint is unavailable: {m}"),
    )
}

/// `expires_at` as Unix ms, from ms, seconds or an RFC 3339 string.
pub(super) fn expiry(v: Option<Value>) -> Result<Option<i64>, ApiError> {
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

/// The `scopes` of an import: a list, or one space-separated string.
pub(super) fn scopes(taken: &mut Map<String, Value>) -> Result<Vec<String>, ApiError> {
    match taken.remove("scopes") {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(a)) => Ok(a.iter().filter_map(|s| s.as_str().map(String::from)).collect()),
        Some(Value::String(s)) => Ok(s.split_whitespace().map(String::from).collect()),
        Some(_) => Err(bad_request("invalid body at `scopes`: expected a list of strings")),
    }
}

/// An imported pair, refused when its access token cannot be sent in a header.
pub(super) fn imported_pair(
    access_token: String,
    refresh_token: Option<String>,
    expires_at: Option<i64>,
) -> Result<TokenPair, ApiError> {
    let pair = TokenPair {
        access_token,
        refresh_token,
    };
    Live::new(pair.clone(), expires_at, 0).map_err(|e| bad_request(format!("`access_token`: {e}")))?;
    Ok(pair)
}

pub async fn import(State(state): State<AdminState>, _actor: Actor, body: Bytes) -> Result<Response, ApiError> {
    const FIELDS: [&str; 5] = ["access_token", "refresh_token", "expires_at", "scopes", "claudeAiOauth"];
    let (mut taken, fields) = fields_or_existing(&body, AccountKind::ClaudeOauth, &FIELDS)?;
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
    let scopes = scopes(&mut taken)?;
    let pair = imported_pair(access, refresh, expires_at)?;
    let target = target(&state, AccountKind::ClaudeOauth, &mut taken, fields).await?;
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
        email: answer.email,
        issued_at: now,
        ..OAuthMeta::default()
    };
    let usable_now = expires_at.is_none_or(|e| e > now);
    if usable_now {
        match state
            .reloader
            .oauth
            .claude
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
    store_tokens(state, target, answer.pair, meta).await
}

/// Seals a pair and stores it with its meta: a new account (201), or the existing one's new tokens
/// (200), which clears whatever refused its old ones.
pub(super) async fn store_tokens(
    state: &AdminState,
    target: Target,
    pair: TokenPair,
    meta: OAuthMeta,
) -> Result<Response, ApiError> {
    let (status, view) = stored_tokens(state, target, pair, meta).await?;
    Ok((status, Json(view)).into_response())
}

/// [`store_tokens`], answering the status and the account's view.
pub(super) async fn stored_tokens(
    state: &AdminState,
    target: Target,
    pair: TokenPair,
    meta: OAuthMeta,
) -> Result<(StatusCode, AccountView), ApiError> {
    match target {
        Target::New(input) => {
            let account = AccountDefinition {
                settings: input.settings,
                credential: AccountCredential::OAuth(pair),
                proxy: input.proxy,
            };
            let mut record = new_record(state, account)?;
            record.oauth = Some(meta);
            Ok((StatusCode::CREATED, insert_view(state, record).await?))
        }
        Target::Existing(record, _) => {
            let mut record = *record;
            record.secret = state.secrets.seal(&pair.to_secret());
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
            Ok((StatusCode::OK, stored_view(state, &record)?))
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
            AccountKind::ClaudeOauth,
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
            let e = fields_or_existing(&body(bad.clone()), AccountKind::ClaudeOauth, &fields).unwrap_err();
            assert_eq!(e.0, StatusCode::BAD_REQUEST, "{bad}: {}", e.2);
        }
        let (_, none) = fields_or_existing(
            &body(json!({"account_id": "x", "code": "c"})),
            AccountKind::ClaudeOauth,
            &fields,
        )
        .unwrap();
        assert!(none.is_none());
        let (_, input) = fields_or_existing(&body(json!({"name": "c"})), AccountKind::OpenAiOauth, &[]).unwrap();
        assert_eq!(input.unwrap().settings.kind, AccountKind::OpenAiOauth);
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
