//! A mock of what a Claude subscription (OAuth) account talks to, on a real socket: the sign-in
//! page (`GET /oauth/authorize`), the token endpoint (`POST /v1/oauth/token`, authorization code
//! with PKCE and rotating refresh tokens), the profile and usage endpoints (`/api/oauth/profile`,
//! `/api/oauth/usage`) and the Messages API as it answers OAuth bearer tokens.
//!
//! Tokens look like the real ones (`sk-ant-oat01-…`, `sk-ant-ort01-…`) and are long enough that
//! a masked form cannot contain them. Every request is recorded for assertions.
//!
//! It serves plain HTTP/1.1 ([`MockOAuth::start`]) or HTTPS with HTTP/2 by ALPN
//! ([`MockOAuth::start_tls`]); every URL helper follows the scheme and host of [`MockOAuth::url`].
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, Version};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use rand::Rng;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::mock::{Seen, json_for, stream_for};
use super::serve::{Served, TestCa, serve, serve_tls};

/// The OAuth client id of Claude Code.
pub const CLIENT_ID: &str = "9d1c250a-e61b-44d9-88ed-5944d1962f5e";
/// The beta flag the Messages API requires next to an OAuth bearer token.
pub const OAUTH_BETA: &str = "oauth-2025-04-20";
/// The subscriber's e-mail address in token and profile answers.
pub const EMAIL: &str = "subscriber@example.com";
pub const ACCOUNT_UUID: &str = "4f7c0a52-1c1e-4b8e-9d55-6a0e1f3b2c11";
pub const ORG_UUID: &str = "b2e5d1f0-7a34-4c8d-a1e2-93f0c6d4e8a7";
/// The scopes `issue_tokens` grants (Claude Code's sign-in scopes).
pub const DEFAULT_SCOPES: &str =
    "org:create_api_key user:profile user:inference user:sessions:claude_code user:mcp_servers user:file_upload";
/// The answer of `GET /api/oauth/usage`.
pub fn usage_answer() -> Value {
    json!({
        "five_hour": {"utilization": 42.0, "resets_at": "2026-11-27T20:00:00Z"},
        "seven_day": {"utilization": 17.0, "resets_at": "2026-12-01T00:00:00Z"},
        "seven_day_opus": null,
        "seven_day_sonnet": {"utilization": 3.0, "resets_at": "2026-12-01T00:00:00Z"}
    })
}

/// One request to the token endpoint.
#[derive(Clone, Debug)]
pub struct TokenRequest {
    /// `grant_type` from the body (empty when the body was not JSON or had none).
    pub grant_type: String,
    /// The body as JSON (`Null` when it was not JSON).
    pub body: Value,
    pub raw_body: Bytes,
    pub headers: HeaderMap,
    /// The HTTP version the request came in with.
    pub version: Version,
    /// The status the mock answered (0 while the answer is pending).
    pub status: u16,
}

impl TokenRequest {
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.get(name).map(|v| v.to_str().unwrap_or("").to_string())
    }
    pub fn field(&self, name: &str) -> Option<String> {
        self.body[name].as_str().map(String::from)
    }
}

struct PendingCode {
    client_id: String,
    challenge: String,
    redirect_uri: String,
    scope: String,
    state: String,
    used: bool,
}

struct Grant {
    /// The one refresh token that is valid for this grant now (none for setup tokens).
    refresh: Option<String>,
    scope: String,
}

struct AccessToken {
    expires_at_ms: i64,
    revoked: bool,
}

struct Inner {
    codes: HashMap<String, PendingCode>,
    grants: Vec<Grant>,
    access: HashMap<String, AccessToken>,
    /// Every refresh token ever issued, to its grant.
    refresh_grant: HashMap<String, usize>,
    minted: u64,
    issued: Vec<String>,
    latest_access: Option<String>,
    latest_refresh: Option<String>,
    refreshes: usize,
    exchanges: usize,
    refresh_delay: Duration,
    refresh_failure: Option<(u16, String)>,
    tier: String,
    access_ttl: u64,
    token_requests: Vec<TokenRequest>,
    authorize_requests: Vec<HashMap<String, String>>,
    messages: Vec<Seen>,
    profile_requests: Vec<Seen>,
    usage_requests: Vec<Seen>,
    unknown: Vec<Seen>,
}

impl Default for Inner {
    fn default() -> Self {
        Inner {
            codes: HashMap::new(),
            grants: Vec::new(),
            access: HashMap::new(),
            refresh_grant: HashMap::new(),
            minted: 0,
            issued: Vec::new(),
            latest_access: None,
            latest_refresh: None,
            refreshes: 0,
            exchanges: 0,
            refresh_delay: Duration::ZERO,
            refresh_failure: None,
            tier: "max".into(),
            access_ttl: 3600,
            token_requests: Vec::new(),
            authorize_requests: Vec::new(),
            messages: Vec::new(),
            profile_requests: Vec::new(),
            usage_requests: Vec::new(),
            unknown: Vec::new(),
        }
    }
}

type Shared = Arc<Mutex<Inner>>;

pub struct MockOAuth {
    pub addr: SocketAddr,
    state: Shared,
    url: String,
    /// The CA that signed a TLS mock's certificate, for [`MockOAuth::sign_in`].
    ca_pem: Option<String>,
    _served: Served,
}

impl MockOAuth {
    fn router(state: &Shared) -> Router {
        Router::new()
            .route("/oauth/authorize", get(authorize))
            .route("/v1/oauth/token", post(token))
            .route("/api/oauth/profile", get(profile))
            .route("/api/oauth/usage", get(usage))
            .route("/v1/messages", post(messages))
            .route("/v1/messages/count_tokens", post(messages))
            .fallback(unknown)
            .layer(axum::extract::DefaultBodyLimit::disable())
            .with_state(state.clone())
    }

    /// A plain HTTP/1.1 mock.
    pub async fn start() -> MockOAuth {
        let state: Shared = Arc::new(Mutex::new(Inner::default()));
        let served = serve(Self::router(&state)).await;
        MockOAuth {
            addr: served.addr,
            url: format!("http://{}", served.addr),
            ca_pem: None,
            state,
            _served: served,
        }
    }

    /// An HTTPS mock with `ca`'s certificate for `localhost`, speaking HTTP/2 to clients that
    /// offer ALPN `h2`.
    pub async fn start_tls(ca: &TestCa) -> MockOAuth {
        let state: Shared = Arc::new(Mutex::new(Inner::default()));
        let served = serve_tls(Self::router(&state), ca).await;
        MockOAuth {
            addr: served.addr,
            url: format!("https://localhost:{}", served.addr.port()),
            ca_pem: Some(ca.ca_pem().to_string()),
            state,
            _served: served,
        }
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.state.lock().unwrap()
    }

    /// `http://127.0.0.1:<port>`, or `https://localhost:<port>` for a TLS mock.
    pub fn url(&self) -> String {
        self.url.clone()
    }
    pub fn authorize_url(&self) -> String {
        format!("{}/oauth/authorize", self.url())
    }
    pub fn token_url(&self) -> String {
        format!("{}/v1/oauth/token", self.url())
    }
    pub fn profile_url(&self) -> String {
        format!("{}/api/oauth/profile", self.url())
    }
    pub fn usage_url(&self) -> String {
        format!("{}/api/oauth/usage", self.url())
    }

    /// Requests with `grant_type: refresh_token` received (refused ones included).
    pub fn refresh_count(&self) -> usize {
        self.inner().refreshes
    }
    /// Requests with `grant_type: authorization_code` received (refused ones included).
    pub fn exchange_count(&self) -> usize {
        self.inner().exchanges
    }
    pub fn token_requests(&self) -> Vec<TokenRequest> {
        self.inner().token_requests.clone()
    }
    /// The query of every sign-in request, as received.
    pub fn authorize_requests(&self) -> Vec<HashMap<String, String>> {
        self.inner().authorize_requests.clone()
    }
    /// Refresh requests wait this long before they are checked and answered.
    pub fn set_refresh_delay(&self, d: Duration) {
        self.inner().refresh_delay = d;
    }
    /// Answers every refresh request with this status and JSON body (`None`: normal behaviour).
    pub fn fail_refresh(&self, failure: Option<(u16, String)>) {
        self.inner().refresh_failure = failure;
    }
    /// The subscription the profile endpoint reports: `max`, `pro`, `free` (or another name).
    pub fn set_tier(&self, tier: &str) {
        self.inner().tier = tier.to_string();
    }
    /// The lifetime of access tokens issued from now on (seconds, default 3600).
    pub fn set_access_ttl(&self, secs: u64) {
        self.inner().access_ttl = secs;
    }
    /// Every access token issued so far stops working for the API, profile and usage endpoints;
    /// refresh tokens stay valid.
    pub fn revoke_access_tokens(&self) {
        for t in self.inner().access.values_mut() {
            t.revoked = true;
        }
    }
    /// Mints a valid pair with Claude Code's scopes directly: (access, refresh, expires_at ms).
    pub fn issue_tokens(&self, ttl_secs: u64) -> (String, String, i64) {
        let mut inner = self.inner();
        inner.grants.push(Grant {
            refresh: None,
            scope: DEFAULT_SCOPES.to_string(),
        });
        let grant = inner.grants.len() - 1;
        let (access, refresh, expires_at_ms) = mint(&mut inner, grant, ttl_secs, true);
        (access, refresh.unwrap(), expires_at_ms)
    }
    /// The access token minted last.
    pub fn latest_access_token(&self) -> Option<String> {
        self.inner().latest_access.clone()
    }
    /// The refresh token minted last.
    pub fn latest_refresh_token(&self) -> Option<String> {
        self.inner().latest_refresh.clone()
    }
    /// Every access and refresh token the mock ever minted.
    pub fn issued_tokens(&self) -> Vec<String> {
        self.inner().issued.clone()
    }
    /// Whether the API would take this access token now.
    pub fn access_valid(&self, token: &str) -> bool {
        access_ok(&self.inner(), token)
    }
    /// Requests to `/v1/messages` and `/v1/messages/count_tokens`, refused ones included.
    pub fn messages(&self) -> Vec<Seen> {
        self.inner().messages.clone()
    }
    pub fn profile_requests(&self) -> Vec<Seen> {
        self.inner().profile_requests.clone()
    }
    pub fn usage_requests(&self) -> Vec<Seen> {
        self.inner().usage_requests.clone()
    }
    pub fn usage_calls(&self) -> usize {
        self.inner().usage_requests.len()
    }
    /// Requests to paths the mock does not serve (answered 404).
    pub fn unknown_requests(&self) -> Vec<Seen> {
        self.inner().unknown.clone()
    }

    /// The issued tokens that `text` reveals: the whole token or the middle of its random part.
    pub fn leaked_in(&self, text: &str) -> Vec<String> {
        self.issued_tokens()
            .into_iter()
            .filter(|t| text.contains(t.as_str()) || text.contains(secret_core(t)))
            .collect()
    }

    /// Signs in at `authorize_url` (as a person following the relay's link would) without
    /// following the redirect: (code, state, Location).
    pub async fn sign_in(&self, authorize_url: &str) -> (String, String, String) {
        follow_sign_in(authorize_url, self.ca_pem.as_deref()).await
    }
}

/// Opens a sign-in link as a person would (trusting `ca_pem` when given) without following the
/// redirect, which the sign-in must answer: (code, state, Location).
pub async fn follow_sign_in(authorize_url: &str, ca_pem: Option<&str>) -> (String, String, String) {
    let mut http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10));
    if let Some(pem) = ca_pem {
        http = http.add_root_certificate(reqwest::Certificate::from_pem(pem.as_bytes()).unwrap());
    }
    let http = http.build().unwrap();
    let r = http.get(authorize_url).send().await.unwrap();
    let status = r.status();
    let location = r.headers().get("location").map(|v| v.to_str().unwrap().to_string());
    let text = r.text().await.unwrap_or_default();
    assert_eq!(status, 302, "sign-in at {authorize_url} refused: {text}");
    let location = location.expect("Location header");
    let u = url::Url::parse(&location).unwrap();
    let q: HashMap<String, String> = u.query_pairs().into_owned().collect();
    (q["code"].clone(), q["state"].clone(), location)
}

/// The middle of a minted token's random part (after its last `-` or `.`): present in any display
/// that shows too much.
pub fn secret_core(token: &str) -> &str {
    let random = token.rsplit(['-', '.']).next().unwrap_or(token);
    if random.len() >= 48 { &random[16..48] } else { token }
}

pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64
}

pub fn random_alnum(n: usize) -> String {
    rand::thread_rng()
        .sample_iter(&rand::distributions::Alphanumeric)
        .take(n)
        .map(char::from)
        .collect()
}

/// Mints an access token (and a refresh token when `with_refresh`, replacing the grant's current
/// one): (access, refresh, expires_at ms).
fn mint(inner: &mut Inner, grant: usize, ttl_secs: u64, with_refresh: bool) -> (String, Option<String>, i64) {
    inner.minted += 1;
    let n = inner.minted;
    let access = format!("sk-ant-oat01-mock-{n}-{}", random_alnum(64));
    let expires_at_ms = now_ms() + (ttl_secs as i64) * 1000;
    inner.access.insert(
        access.clone(),
        AccessToken {
            expires_at_ms,
            revoked: false,
        },
    );
    inner.issued.push(access.clone());
    inner.latest_access = Some(access.clone());
    let refresh = with_refresh.then(|| format!("sk-ant-ort01-mock-{n}-{}", random_alnum(64)));
    if let Some(r) = &refresh {
        inner.refresh_grant.insert(r.clone(), grant);
        inner.issued.push(r.clone());
        inner.latest_refresh = Some(r.clone());
    }
    inner.grants[grant].refresh = refresh.clone();
    (access, refresh, expires_at_ms)
}

fn token_answer(access: &str, refresh: Option<&str>, ttl_secs: u64, scope: &str) -> Value {
    let mut v = json!({
        "access_token": access,
        "expires_in": ttl_secs,
        "token_type": "Bearer",
        "scope": scope,
        "account": {"uuid": ACCOUNT_UUID, "email_address": EMAIL},
        "organization": {"uuid": ORG_UUID, "name": "Mock Subscriber's Organization"}
    });
    if let Some(r) = refresh {
        v["refresh_token"] = json!(r);
    }
    v
}

pub fn oauth_error(status: u16, error: &str, description: &str) -> Response {
    (
        StatusCode::from_u16(status).unwrap(),
        axum::Json(json!({"error": error, "error_description": description})),
    )
        .into_response()
}

fn api_error(status: u16, kind: &str, message: &str) -> Response {
    (
        StatusCode::from_u16(status).unwrap(),
        axum::Json(
            json!({"type": "error", "error": {"type": kind, "message": message}, "request_id": "req_oauth_mock"}),
        ),
    )
        .into_response()
}

fn access_ok(inner: &Inner, token: &str) -> bool {
    inner
        .access
        .get(token)
        .is_some_and(|t| !t.revoked && t.expires_at_ms > now_ms())
}

/// The bearer token of `Authorization`, if any.
fn bearer(headers: &HeaderMap) -> Option<String> {
    let v = headers.get("authorization")?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim().to_string())
}

/// Whether any `anthropic-beta` header lists the OAuth flag.
fn has_oauth_beta(headers: &HeaderMap) -> bool {
    headers
        .get_all("anthropic-beta")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|f| f.trim() == OAUTH_BETA)
}

async fn authorize(State(state): State<Shared>, uri: Uri) -> Response {
    let q: HashMap<String, String> = url::form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
        .into_owned()
        .collect();
    let mut inner = state.lock().unwrap();
    inner.authorize_requests.push(q.clone());
    let get = |k: &str| q.get(k).map(String::as_str).unwrap_or("");
    let problems = [
        (get("client_id") != CLIENT_ID, "unknown client_id"),
        (get("response_type") != "code", "response_type must be code"),
        (
            get("code_challenge_method") != "S256",
            "code_challenge_method must be S256",
        ),
        (get("code_challenge").is_empty(), "code_challenge missing"),
        (get("state").is_empty(), "state missing"),
        (get("redirect_uri").is_empty(), "redirect_uri missing"),
        (get("scope").is_empty(), "scope missing"),
    ];
    if let Some((_, why)) = problems.iter().find(|(bad, _)| *bad) {
        return (StatusCode::BAD_REQUEST, format!("mock sign-in: {why}")).into_response();
    }
    let Ok(mut location) = url::Url::parse(get("redirect_uri")) else {
        return (StatusCode::BAD_REQUEST, "mock sign-in: redirect_uri is not a URL").into_response();
    };
    let code = random_alnum(40);
    inner.codes.insert(
        code.clone(),
        PendingCode {
            client_id: get("client_id").to_string(),
            challenge: get("code_challenge").to_string(),
            redirect_uri: get("redirect_uri").to_string(),
            scope: get("scope").to_string(),
            state: get("state").to_string(),
            used: false,
        },
    );
    location
        .query_pairs_mut()
        .append_pair("code", &code)
        .append_pair("state", get("state"));
    Response::builder()
        .status(302)
        .header("location", location.as_str())
        .body(Body::empty())
        .unwrap()
}

async fn token(State(state): State<Shared>, version: Version, headers: HeaderMap, body: Bytes) -> Response {
    let parsed: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let grant_type = parsed["grant_type"].as_str().unwrap_or("").to_string();
    let (index, delay) = {
        let mut inner = state.lock().unwrap();
        match grant_type.as_str() {
            "refresh_token" => inner.refreshes += 1,
            "authorization_code" => inner.exchanges += 1,
            _ => {}
        }
        inner.token_requests.push(TokenRequest {
            grant_type: grant_type.clone(),
            body: parsed.clone(),
            raw_body: body.clone(),
            headers: headers.clone(),
            version,
            status: 0,
        });
        let delay = if grant_type == "refresh_token" {
            inner.refresh_delay
        } else {
            Duration::ZERO
        };
        (inner.token_requests.len() - 1, delay)
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let mut inner = state.lock().unwrap();
    let response = answer_token(&mut inner, &grant_type, &parsed);
    inner.token_requests[index].status = response.status().as_u16();
    response
}

fn answer_token(inner: &mut Inner, grant_type: &str, body: &Value) -> Response {
    if !body.is_object() {
        return oauth_error(400, "invalid_request", "the body must be a JSON object");
    }
    let field = |k: &str| body[k].as_str().unwrap_or("").to_string();
    if field("client_id") != CLIENT_ID {
        return oauth_error(400, "invalid_client", "unknown client_id");
    }
    match grant_type {
        "authorization_code" => {
            let code = field("code");
            let Some(pending) = inner.codes.get(&code) else {
                return oauth_error(400, "invalid_grant", "Invalid 'code' in request.");
            };
            if pending.used {
                return oauth_error(400, "invalid_grant", "The authorization code was already used.");
            }
            let digest = Sha256::digest(field("code_verifier").as_bytes());
            let computed = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest);
            if computed != pending.challenge {
                return oauth_error(400, "invalid_grant", "code_verifier does not match the code_challenge");
            }
            if field("redirect_uri") != pending.redirect_uri {
                return oauth_error(400, "invalid_grant", "redirect_uri does not match the authorization");
            }
            if pending.client_id != CLIENT_ID {
                return oauth_error(400, "invalid_grant", "client_id does not match the authorization");
            }
            if field("state") != pending.state {
                return oauth_error(400, "invalid_grant", "state does not match the authorization");
            }
            let expires_in = match &body["expires_in"] {
                Value::Null => None,
                v => match v.as_u64() {
                    Some(n) if n > 0 => Some(n),
                    _ => return oauth_error(400, "invalid_request", "expires_in must be a positive integer"),
                },
            };
            let scope = pending.scope.clone();
            if let Some(p) = inner.codes.get_mut(&code) {
                p.used = true;
            }
            inner.grants.push(Grant {
                refresh: None,
                scope: scope.clone(),
            });
            let grant = inner.grants.len() - 1;
            let ttl = expires_in.unwrap_or(inner.access_ttl);
            let (access, refresh, _) = mint(inner, grant, ttl, expires_in.is_none());
            axum::Json(token_answer(&access, refresh.as_deref(), ttl, &scope)).into_response()
        }
        "refresh_token" => {
            if let Some((status, failure)) = inner.refresh_failure.clone() {
                return Response::builder()
                    .status(status)
                    .header("content-type", "application/json")
                    .body(Body::from(failure))
                    .unwrap();
            }
            let presented = field("refresh_token");
            let Some(&grant) = inner.refresh_grant.get(&presented) else {
                return oauth_error(400, "invalid_grant", "Refresh token not found or invalid");
            };
            if inner.grants[grant].refresh.as_deref() != Some(presented.as_str()) {
                return oauth_error(400, "invalid_grant", "Refresh token has already been used");
            }
            let ttl = inner.access_ttl;
            let scope = inner.grants[grant].scope.clone();
            let (access, refresh, _) = mint(inner, grant, ttl, true);
            axum::Json(token_answer(&access, refresh.as_deref(), ttl, &scope)).into_response()
        }
        _ => oauth_error(
            400,
            "unsupported_grant_type",
            "grant_type must be authorization_code or refresh_token",
        ),
    }
}

/// The auth check of the profile and usage endpoints.
fn oauth_api_refusal(inner: &Inner, headers: &HeaderMap) -> Option<Response> {
    if !has_oauth_beta(headers) {
        return Some(api_error(
            401,
            "authentication_error",
            "OAuth authentication is currently not supported.",
        ));
    }
    match bearer(headers) {
        Some(t) if access_ok(inner, &t) => None,
        _ => Some(api_error(401, "authentication_error", "OAuth token has expired.")),
    }
}

async fn profile(
    State(state): State<Shared>,
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
) -> Response {
    let mut inner = state.lock().unwrap();
    inner
        .profile_requests
        .push(Seen::new(&method, &uri, version, &headers, &Bytes::new()));
    if let Some(r) = oauth_api_refusal(&inner, &headers) {
        return r;
    }
    let tier = inner.tier.clone();
    let org_type = match tier.as_str() {
        "max" => "claude_max".to_string(),
        "pro" => "claude_pro".to_string(),
        "free" => "claude_free".to_string(),
        other => format!("claude_{other}"),
    };
    axum::Json(json!({
        "account": {
            "uuid": ACCOUNT_UUID,
            "email": EMAIL,
            "email_address": EMAIL,
            "full_name": "Mock Subscriber",
            "display_name": "Mock",
            "has_claude_max": tier == "max",
            "has_claude_pro": tier == "pro",
            "created_at": "2025-01-01T00:00:00Z"
        },
        "organization": {
            "uuid": ORG_UUID,
            "name": "Mock Subscriber's Organization",
            "organization_type": org_type,
            "billing_type": "stripe_subscription",
            "rate_limit_tier": format!("default_claude_{tier}"),
            "has_extra_usage_enabled": false
        }
    }))
    .into_response()
}

async fn usage(
    State(state): State<Shared>,
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
) -> Response {
    let mut inner = state.lock().unwrap();
    inner
        .usage_requests
        .push(Seen::new(&method, &uri, version, &headers, &Bytes::new()));
    if let Some(r) = oauth_api_refusal(&inner, &headers) {
        return r;
    }
    axum::Json(usage_answer()).into_response()
}

async fn messages(
    State(state): State<Shared>,
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    {
        let mut inner = state.lock().unwrap();
        inner.messages.push(Seen::new(&method, &uri, version, &headers, &body));
        if headers.contains_key("x-api-key") {
            return api_error(
                400,
                "invalid_request_error",
                "mock: x-api-key must not be sent with an OAuth token",
            );
        }
        if let Some(r) = oauth_api_refusal(&inner, &headers) {
            return r;
        }
    }
    let now_s = now_ms() / 1000;
    let ratelimit = [
        ("anthropic-ratelimit-unified-status", "allowed".to_string()),
        ("anthropic-ratelimit-unified-5h-utilization", "0.25".to_string()),
        ("anthropic-ratelimit-unified-7d-utilization", "0.5".to_string()),
        ("anthropic-ratelimit-unified-5h-reset", (now_s + 3600).to_string()),
        ("anthropic-ratelimit-unified-7d-reset", (now_s + 86_400).to_string()),
    ];
    let req: Value = serde_json::from_slice(&body).unwrap_or_default();
    let model = req["model"].as_str().unwrap_or("unknown").to_string();
    let mut b = Response::builder().status(200).header("request-id", "req_oauth_mock");
    for (k, v) in &ratelimit {
        b = b.header(*k, v.as_str());
    }
    if uri.path().ends_with("/count_tokens") {
        return b
            .header("content-type", "application/json")
            .body(Body::from(json!({"input_tokens": 42}).to_string()))
            .unwrap();
    }
    if req["stream"].as_bool() == Some(true) {
        return b
            .header("content-type", "text/event-stream; charset=utf-8")
            .header("cache-control", "no-cache")
            .body(Body::from(stream_for(&model, false)))
            .unwrap();
    }
    b.header("content-type", "application/json")
        .body(Body::from(json_for(&model).to_string()))
        .unwrap()
}

async fn unknown(
    State(state): State<Shared>,
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    state
        .lock()
        .unwrap()
        .unknown
        .push(Seen::new(&method, &uri, version, &headers, &body));
    (StatusCode::NOT_FOUND, "oauth mock: unknown path").into_response()
}
