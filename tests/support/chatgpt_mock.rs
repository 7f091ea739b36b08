//! A mock of what a ChatGPT subscription (`openai-oauth`) account talks to, on a real socket:
//! OpenAI's sign-in page (`GET /oauth/authorize`), its token endpoint (`POST /oauth/token`: the
//! authorization code with PKCE and rotating refresh tokens, form bodies only) and the Codex
//! backend (`POST /responses`, `/responses/compact`), which takes only a live access token and
//! the ChatGPT account id the token was issued for, and answers the golden Responses stream.
//!
//! Access tokens and id tokens are JWTs (unsigned: a random signature part) with OpenAI's auth
//! claim (`https://api.openai.com/auth`: `chatgpt_account_id`, `chatgpt_plan_type`); their random
//! parts are long enough that a masked form cannot contain them. Every request is recorded.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, Version};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::mock::Seen;
use super::oauth_mock::{follow_sign_in, now_ms, oauth_error, random_alnum, secret_core};
use super::serve::{Served, serve};

/// Codex CLI's public OAuth client.
pub const CLIENT_ID: &str = "app_EMoamEEZ73f0CkXaXp7hrann";
/// The redirect registered for that client.
pub const REDIRECT_URI: &str = "http://localhost:1455/auth/callback";
pub const SCOPES: &str = "openid profile email offline_access";
/// The ChatGPT account (workspace) every token of this mock acts for.
pub const ACCOUNT_ID: &str = "c0ffee00-1234-4abc-9def-0123456789ab";
pub const PLAN: &str = "pro";
pub const EMAIL: &str = "codex-user@example.com";
/// The golden Responses stream the backend answers.
pub const RESPONSES_SSE: &[u8] = include_bytes!("../fixtures/responses/openai-responses-stream.sse");
const AUTH_CLAIM: &str = "https://api.openai.com/auth";

/// One request to the token endpoint.
#[derive(Clone, Debug)]
pub struct TokenRequest {
    /// `grant_type` of the form (empty when the body was no form).
    pub grant_type: String,
    pub form: HashMap<String, String>,
    pub headers: HeaderMap,
    /// The status the mock answered (0 while the answer is pending).
    pub status: u16,
}

impl TokenRequest {
    pub fn field(&self, name: &str) -> Option<String> {
        self.form.get(name).cloned()
    }
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.get(name).map(|v| v.to_str().unwrap_or("").to_string())
    }
}

struct PendingCode {
    challenge: String,
    redirect_uri: String,
    used: bool,
}

struct Inner {
    codes: HashMap<String, PendingCode>,
    /// The one refresh token valid now for each grant.
    grants: Vec<Option<String>>,
    refresh_grant: HashMap<String, usize>,
    /// Access token → (expires at ms, revoked).
    access: HashMap<String, (i64, bool)>,
    minted: u64,
    issued: Vec<String>,
    latest_access: Option<String>,
    latest_refresh: Option<String>,
    refreshes: usize,
    exchanges: usize,
    refresh_delay: Duration,
    refresh_failure: Option<(u16, String)>,
    access_ttl: u64,
    token_requests: Vec<TokenRequest>,
    authorize_requests: Vec<HashMap<String, String>>,
    responses: Vec<Seen>,
}

type Shared = Arc<Mutex<Inner>>;

pub struct ChatGptMock {
    pub addr: SocketAddr,
    state: Shared,
    _served: Served,
}

/// An unsigned JWT with these claims and a random 64-character signature part.
pub fn jwt(claims: &Value) -> String {
    let enc = |v: &Value| URL_SAFE_NO_PAD.encode(v.to_string());
    format!(
        "{}.{}.{}",
        enc(&json!({"alg": "RS256", "typ": "JWT"})),
        enc(claims),
        random_alnum(64)
    )
}

/// The auth claim of this mock's tokens.
fn auth_claim() -> Value {
    json!({"chatgpt_account_id": ACCOUNT_ID, "chatgpt_plan_type": PLAN, "chatgpt_user_id": "user-mock"})
}

/// The id token of a sign-in: the e-mail and the auth claim.
pub fn id_token() -> String {
    jwt(&json!({
        "iss": "https://auth.openai.com", "aud": [CLIENT_ID], "email": EMAIL, "email_verified": true,
        "exp": now_ms() / 1000 + 3600, AUTH_CLAIM: auth_claim()
    }))
}

/// Mints an access token and a new refresh token for `grant`: (access, refresh, expires_at ms).
fn mint(inner: &mut Inner, grant: usize, ttl_secs: u64) -> (String, String, i64) {
    inner.minted += 1;
    let expires_at_ms = now_ms() + (ttl_secs as i64) * 1000;
    let access = jwt(&json!({
        "iss": "https://auth.openai.com", "jti": inner.minted, "exp": expires_at_ms / 1000,
        "scp": ["openid", "profile", "email", "offline_access"], AUTH_CLAIM: auth_claim()
    }));
    let refresh = format!("rt-mock-{}-{}", inner.minted, random_alnum(64));
    inner.access.insert(access.clone(), (expires_at_ms, false));
    inner.refresh_grant.insert(refresh.clone(), grant);
    inner.grants[grant] = Some(refresh.clone());
    inner.issued.push(access.clone());
    inner.issued.push(refresh.clone());
    inner.latest_access = Some(access.clone());
    inner.latest_refresh = Some(refresh.clone());
    (access, refresh, expires_at_ms)
}

impl ChatGptMock {
    pub async fn start() -> ChatGptMock {
        let state: Shared = Arc::new(Mutex::new(Inner {
            codes: HashMap::new(),
            grants: Vec::new(),
            refresh_grant: HashMap::new(),
            access: HashMap::new(),
            minted: 0,
            issued: Vec::new(),
            latest_access: None,
            latest_refresh: None,
            refreshes: 0,
            exchanges: 0,
            refresh_delay: Duration::ZERO,
            refresh_failure: None,
            access_ttl: 3600,
            token_requests: Vec::new(),
            authorize_requests: Vec::new(),
            responses: Vec::new(),
        }));
        let router = Router::new()
            .route("/oauth/authorize", get(authorize))
            .route("/oauth/token", post(token))
            .route("/responses", post(responses))
            .route("/responses/compact", post(responses))
            .layer(axum::extract::DefaultBodyLimit::disable())
            .with_state(state.clone());
        let served = serve(router).await;
        ChatGptMock {
            addr: served.addr,
            state,
            _served: served,
        }
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.state.lock().unwrap()
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
    pub fn authorize_url(&self) -> String {
        format!("{}/oauth/authorize", self.url())
    }
    pub fn token_url(&self) -> String {
        format!("{}/oauth/token", self.url())
    }

    /// Refresh requests received (refused ones included).
    pub fn refresh_count(&self) -> usize {
        self.inner().refreshes
    }
    /// Code exchanges received (refused ones included).
    pub fn exchange_count(&self) -> usize {
        self.inner().exchanges
    }
    pub fn token_requests(&self) -> Vec<TokenRequest> {
        self.inner().token_requests.clone()
    }
    pub fn authorize_requests(&self) -> Vec<HashMap<String, String>> {
        self.inner().authorize_requests.clone()
    }
    /// Requests to the Codex backend, refused ones included.
    pub fn responses(&self) -> Vec<Seen> {
        self.inner().responses.clone()
    }
    pub fn set_refresh_delay(&self, d: Duration) {
        self.inner().refresh_delay = d;
    }
    /// Answers every refresh with this status and JSON body (`None`: normal behaviour).
    pub fn fail_refresh(&self, failure: Option<(u16, String)>) {
        self.inner().refresh_failure = failure;
    }
    /// Every access token issued so far stops working; refresh tokens stay valid.
    pub fn revoke_access_tokens(&self) {
        for t in self.inner().access.values_mut() {
            t.1 = true;
        }
    }
    /// Mints a valid pair directly, as a Codex sign-in elsewhere would have: (access, refresh,
    /// id token, expires_at ms).
    pub fn issue_tokens(&self, ttl_secs: u64) -> (String, String, String, i64) {
        let mut inner = self.inner();
        inner.grants.push(None);
        let grant = inner.grants.len() - 1;
        let (access, refresh, expires_at) = mint(&mut inner, grant, ttl_secs);
        let id = id_token();
        inner.issued.push(id.clone());
        (access, refresh, id, expires_at)
    }
    pub fn latest_access_token(&self) -> Option<String> {
        self.inner().latest_access.clone()
    }
    pub fn latest_refresh_token(&self) -> Option<String> {
        self.inner().latest_refresh.clone()
    }
    /// Whether the backend would take this access token now.
    pub fn access_valid(&self, token: &str) -> bool {
        access_ok(&self.inner(), token)
    }
    /// The issued tokens that `text` reveals: the whole token or the middle of its random part.
    pub fn leaked_in(&self, text: &str) -> Vec<String> {
        self.inner()
            .issued
            .iter()
            .filter(|t| text.contains(t.as_str()) || text.contains(secret_core(t)))
            .cloned()
            .collect()
    }

    /// Signs in at `authorize_url` as a person following the relay's link would, without
    /// following the redirect: (code, state, Location).
    pub async fn sign_in(&self, authorize_url: &str) -> (String, String, String) {
        follow_sign_in(authorize_url, None).await
    }
}

fn access_ok(inner: &Inner, token: &str) -> bool {
    inner
        .access
        .get(token)
        .is_some_and(|(exp, revoked)| !revoked && *exp > now_ms())
}

async fn authorize(State(state): State<Shared>, uri: Uri) -> Response {
    let q: HashMap<String, String> = url::form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
        .into_owned()
        .collect();
    let mut inner = state.lock().unwrap();
    inner.authorize_requests.push(q.clone());
    let get = |k: &str| q.get(k).map(String::as_str).unwrap_or("");
    let wrong = [
        ("response_type", "code"),
        ("client_id", CLIENT_ID),
        ("redirect_uri", REDIRECT_URI),
        ("code_challenge_method", "S256"),
        ("id_token_add_organizations", "true"),
        ("codex_cli_simplified_flow", "true"),
    ]
    .into_iter()
    .find(|(k, v)| get(k) != *v);
    if let Some((k, _)) = wrong {
        return (StatusCode::BAD_REQUEST, format!("mock: wrong or missing `{k}`")).into_response();
    }
    if get("code_challenge").len() != 43 || get("state").is_empty() || get("scope").is_empty() {
        return (StatusCode::BAD_REQUEST, "mock: challenge, state and scope are required").into_response();
    }
    let code = format!("ac_{}", random_alnum(48));
    inner.codes.insert(
        code.clone(),
        PendingCode {
            challenge: get("code_challenge").to_string(),
            redirect_uri: get("redirect_uri").to_string(),
            used: false,
        },
    );
    let mut location = url::Url::parse(REDIRECT_URI).unwrap();
    location
        .query_pairs_mut()
        .append_pair("code", &code)
        .append_pair("scope", get("scope"))
        .append_pair("state", get("state"));
    Response::builder()
        .status(302)
        .header("location", location.as_str())
        .body(Body::empty())
        .unwrap()
}

async fn token(State(state): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let is_form = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.starts_with("application/x-www-form-urlencoded"));
    let form: HashMap<String, String> = if is_form {
        url::form_urlencoded::parse(&body).into_owned().collect()
    } else {
        HashMap::new()
    };
    let grant_type = form.get("grant_type").cloned().unwrap_or_default();
    let index = {
        let mut inner = state.lock().unwrap();
        match grant_type.as_str() {
            "refresh_token" => inner.refreshes += 1,
            "authorization_code" => inner.exchanges += 1,
            _ => {}
        }
        inner.token_requests.push(TokenRequest {
            grant_type: grant_type.clone(),
            form: form.clone(),
            headers: headers.clone(),
            status: 0,
        });
        inner.token_requests.len() - 1
    };
    if grant_type == "refresh_token" {
        let delay = state.lock().unwrap().refresh_delay;
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
    }
    let mut inner = state.lock().unwrap();
    let response = token_answer(&mut inner, is_form, &grant_type, &form);
    inner.token_requests[index].status = response.status().as_u16();
    response
}

fn token_answer(inner: &mut Inner, is_form: bool, grant_type: &str, form: &HashMap<String, String>) -> Response {
    if !is_form {
        return oauth_error(400, "invalid_request", "mock: the token endpoint takes form bodies");
    }
    let field = |k: &str| form.get(k).cloned().unwrap_or_default();
    if field("client_id") != CLIENT_ID {
        return oauth_error(401, "invalid_client", "Unknown client");
    }
    let grant = match grant_type {
        "authorization_code" => {
            let code = field("code");
            let Some(pending) = inner.codes.get(&code) else {
                return oauth_error(400, "invalid_grant", "Invalid authorization code");
            };
            if pending.used {
                return oauth_error(400, "invalid_grant", "Authorization code already used");
            }
            let computed = URL_SAFE_NO_PAD.encode(Sha256::digest(field("code_verifier").as_bytes()));
            if computed != pending.challenge {
                return oauth_error(400, "invalid_grant", "code_verifier does not match the challenge");
            }
            if field("redirect_uri") != pending.redirect_uri {
                return oauth_error(400, "invalid_grant", "redirect_uri does not match");
            }
            if let Some(p) = inner.codes.get_mut(&code) {
                p.used = true;
            }
            inner.grants.push(None);
            inner.grants.len() - 1
        }
        "refresh_token" => {
            if let Some((status, failure)) = inner.refresh_failure.clone() {
                return Response::builder()
                    .status(status)
                    .header("content-type", "application/json")
                    .body(Body::from(failure))
                    .unwrap();
            }
            if field("scope").is_empty() {
                return oauth_error(400, "invalid_request", "mock: scope is required");
            }
            let presented = field("refresh_token");
            let Some(&grant) = inner.refresh_grant.get(&presented) else {
                return oauth_error(400, "invalid_grant", "Refresh token not found");
            };
            if inner.grants[grant].as_deref() != Some(presented.as_str()) {
                return oauth_error(400, "refresh_token_reused", "Refresh token has already been used");
            }
            grant
        }
        _ => return oauth_error(400, "unsupported_grant_type", "mock: unsupported grant_type"),
    };
    let ttl = inner.access_ttl;
    let (access, refresh, _) = mint(inner, grant, ttl);
    let id = id_token();
    inner.issued.push(id.clone());
    axum::Json(json!({
        "id_token": id,
        "access_token": access,
        "refresh_token": refresh,
        "expires_in": ttl,
        "token_type": "Bearer",
        "scope": SCOPES,
    }))
    .into_response()
}

fn backend_error(status: u16, code: &str, message: &str) -> Response {
    (
        StatusCode::from_u16(status).unwrap(),
        axum::Json(json!({"error": {"message": message, "type": "invalid_request_error", "code": code}})),
    )
        .into_response()
}

async fn responses(
    State(state): State<Shared>,
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    {
        let mut inner = state.lock().unwrap();
        inner.responses.push(Seen::new(&method, &uri, version, &headers, &body));
        let token = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if !access_ok(&inner, token) {
            return backend_error(401, "token_expired", "Provided authentication token is expired.");
        }
        if headers.get("chatgpt-account-id").and_then(|v| v.to_str().ok()) != Some(ACCOUNT_ID) {
            return backend_error(
                403,
                "account_mismatch",
                "mock: chatgpt-account-id is not the token's account",
            );
        }
        // The Codex backend streams only.
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        if v["stream"] != json!(true) {
            return backend_error(400, "invalid_request", "Stream must be set to true");
        }
    }
    let now_s = now_ms() / 1000;
    Response::builder()
        .status(200)
        .header("content-type", "text/event-stream")
        .header("x-codex-primary-used-percent", "12.5")
        .header("x-codex-primary-reset-after-seconds", "3600")
        .header("x-codex-secondary-used-percent", "40")
        .header("x-codex-secondary-reset-at", (now_s + 86_400).to_string())
        .body(Body::from(RESPONSES_SSE))
        .unwrap()
}
