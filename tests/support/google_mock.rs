//! A mock of what a Google account for Gemini Code Assist (`gemini-oauth`) talks to, on a real
//! socket: Google's sign-in page (`GET /o/oauth2/v2/auth`), its token endpoint (`POST /token`:
//! the authorization code with PKCE, and refresh tokens that do not rotate, form bodies with the
//! client's id and secret), and Code Assist (`POST /v1internal:loadCodeAssist`, `:onboardUser`,
//! `GET /v1internal/operations/…`, `:generateContent`, `:streamGenerateContent`), which takes only
//! a live access token.
//!
//! Access tokens look like Google's (`ya29.…`), refresh tokens too (`1//…`); id tokens are
//! unsigned JWTs naming the e-mail. Their random parts are long enough that a masked form cannot
//! contain them. Every request is recorded.
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

use super::chatgpt_mock::jwt;
use super::mock::Seen;
use super::oauth_mock::{follow_sign_in, now_ms, oauth_error, random_alnum, secret_core};
use super::serve::{Served, serve};

/// Gemini CLI's OAuth client (an installed application's; its secret is public by design).
pub const CLIENT_ID: &str = "681255809395-oo8ft2oprdrnp9e3aqf6av3hmdib135j.apps.googleusercontent.com";
pub const CLIENT_SECRET: &str = "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";
/// Code Assist's page that shows the code, the redirect registered for that client.
pub const REDIRECT_URI: &str = "https://codeassist.google.com/authcode";
pub const SCOPES: &str = "https://www.googleapis.com/auth/cloud-platform https://www.googleapis.com/auth/userinfo.email https://www.googleapis.com/auth/userinfo.profile";
pub const EMAIL: &str = "gemini-user@example.com";
/// The project `loadCodeAssist` names for an account Code Assist knows.
pub const PROJECT: &str = "helpful-sun-a1b2c3";
/// The project onboarding gives an account Code Assist did not know.
pub const ONBOARDED_PROJECT: &str = "eager-moon-d4e5f6";
/// The Gemini stream golden, as Code Assist wraps each chunk (`{"response": …}`).
pub fn code_assist_sse() -> String {
    let gemini = include_str!("../fixtures/responses/gemini-stream-alt-sse.sse");
    gemini
        .lines()
        .map(|l| match l.strip_prefix("data: ") {
            Some(d) => format!("data: {{\"response\":{d},\"traceId\":\"mock-trace\"}}"),
            None => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

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

/// How Code Assist knows the accounts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Setup {
    /// `loadCodeAssist` names [`PROJECT`].
    Known,
    /// `loadCodeAssist` names no tier nor project; onboarding on the default tier (`free-tier`)
    /// gives [`ONBOARDED_PROJECT`] after this many polls of the operation.
    Onboarding { polls: usize },
}

struct PendingCode {
    challenge: String,
    redirect_uri: String,
    used: bool,
}

struct Inner {
    codes: HashMap<String, PendingCode>,
    refresh_tokens: Vec<String>,
    /// Access token → (expires at ms, revoked).
    access: HashMap<String, (i64, bool)>,
    issued: Vec<String>,
    latest_access: Option<String>,
    refreshes: usize,
    exchanges: usize,
    refresh_delay: Duration,
    refresh_failure: Option<(u16, String)>,
    access_ttl: u64,
    setup: Setup,
    operation_polls: usize,
    load_delay: Duration,
    token_requests: Vec<TokenRequest>,
    authorize_requests: Vec<HashMap<String, String>>,
    /// Every Code Assist request: setup methods and generation alike.
    code_assist: Vec<Seen>,
}

type Shared = Arc<Mutex<Inner>>;

pub struct GoogleMock {
    pub addr: SocketAddr,
    state: Shared,
    _served: Served,
}

/// The id token of a sign-in or refresh: the e-mail.
pub fn id_token() -> String {
    jwt(&json!({
        "iss": "https://accounts.google.com", "aud": CLIENT_ID, "sub": "104200000000000000001",
        "email": EMAIL, "email_verified": true, "exp": now_ms() / 1000 + 3600
    }))
}

fn mint_access(inner: &mut Inner, ttl_secs: u64) -> (String, i64) {
    let access = format!("ya29.mock-{}", random_alnum(96));
    let expires_at_ms = now_ms() + (ttl_secs as i64) * 1000;
    inner.access.insert(access.clone(), (expires_at_ms, false));
    inner.issued.push(access.clone());
    inner.latest_access = Some(access.clone());
    (access, expires_at_ms)
}

fn mint_refresh(inner: &mut Inner) -> String {
    let refresh = format!("1//mock-{}", random_alnum(96));
    inner.refresh_tokens.push(refresh.clone());
    inner.issued.push(refresh.clone());
    refresh
}

impl GoogleMock {
    pub async fn start() -> GoogleMock {
        let state: Shared = Arc::new(Mutex::new(Inner {
            codes: HashMap::new(),
            refresh_tokens: Vec::new(),
            access: HashMap::new(),
            issued: Vec::new(),
            latest_access: None,
            refreshes: 0,
            exchanges: 0,
            refresh_delay: Duration::ZERO,
            refresh_failure: None,
            access_ttl: 3600,
            setup: Setup::Known,
            operation_polls: 0,
            load_delay: Duration::ZERO,
            token_requests: Vec::new(),
            authorize_requests: Vec::new(),
            code_assist: Vec::new(),
        }));
        let router = Router::new()
            .route("/o/oauth2/v2/auth", get(authorize))
            .route("/token", post(token))
            .fallback(code_assist)
            .layer(axum::extract::DefaultBodyLimit::disable())
            .with_state(state.clone());
        let served = serve(router).await;
        GoogleMock {
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
        format!("{}/o/oauth2/v2/auth", self.url())
    }
    pub fn token_url(&self) -> String {
        format!("{}/token", self.url())
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
    /// Code Assist requests to `method` (`loadCodeAssist`, `onboardUser`, `generateContent`,
    /// `streamGenerateContent`; `operations` for the polls of an operation), refused ones
    /// included.
    pub fn code_assist(&self, method: &str) -> Vec<Seen> {
        self.inner()
            .code_assist
            .iter()
            .filter(|s| method_of(&s.path_and_query) == method)
            .cloned()
            .collect()
    }
    pub fn set_setup(&self, setup: Setup) {
        self.inner().setup = setup;
    }
    /// `loadCodeAssist` answers this much later.
    pub fn set_load_delay(&self, d: Duration) {
        self.inner().load_delay = d;
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
    /// Mints a valid pair directly, as Gemini CLI's sign-in elsewhere would have: (access,
    /// refresh, id token, expires_at ms).
    pub fn issue_tokens(&self, ttl_secs: u64) -> (String, String, String, i64) {
        let mut inner = self.inner();
        let (access, expires_at) = mint_access(&mut inner, ttl_secs);
        let refresh = mint_refresh(&mut inner);
        let id = id_token();
        inner.issued.push(id.clone());
        (access, refresh, id, expires_at)
    }
    pub fn latest_access_token(&self) -> Option<String> {
        self.inner().latest_access.clone()
    }
    /// Whether Code Assist would take this access token now.
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
    /// following the redirect (to the page that shows the code): (code, state, Location).
    pub async fn sign_in(&self, authorize_url: &str) -> (String, String, String) {
        follow_sign_in(authorize_url, None).await
    }
}

/// The method of a Code Assist path: `/v1internal:loadCodeAssist` → `loadCodeAssist`;
/// `/v1internal/operations/…` → `operations`.
fn method_of(path_and_query: &str) -> &str {
    let path = path_and_query.split('?').next().unwrap_or("");
    if let Some(m) = path.strip_prefix("/v1internal:") {
        return m;
    }
    if path.starts_with("/v1internal/operations/") {
        return "operations";
    }
    ""
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
        ("access_type", "offline"),
        ("scope", SCOPES),
    ]
    .into_iter()
    .find(|(k, v)| get(k) != *v);
    if let Some((k, _)) = wrong {
        return (StatusCode::BAD_REQUEST, format!("mock: wrong or missing `{k}`")).into_response();
    }
    if get("code_challenge").len() != 43 || get("state").is_empty() {
        return (StatusCode::BAD_REQUEST, "mock: challenge and state are required").into_response();
    }
    let code = format!("4/0Ab{}", random_alnum(64));
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
        .append_pair("state", get("state"))
        .append_pair("code", &code)
        .append_pair("scope", get("scope"));
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
    if field("client_id") != CLIENT_ID || field("client_secret") != CLIENT_SECRET {
        return oauth_error(401, "invalid_client", "The OAuth client was not found.");
    }
    let refresh = match grant_type {
        "authorization_code" => {
            let code = field("code");
            let Some(pending) = inner.codes.get(&code) else {
                return oauth_error(400, "invalid_grant", "Malformed auth code.");
            };
            if pending.used {
                return oauth_error(400, "invalid_grant", "Bad Request");
            }
            let computed = URL_SAFE_NO_PAD.encode(Sha256::digest(field("code_verifier").as_bytes()));
            if computed != pending.challenge {
                return oauth_error(400, "invalid_grant", "Invalid code verifier.");
            }
            if field("redirect_uri") != pending.redirect_uri {
                return oauth_error(400, "redirect_uri_mismatch", "Bad Request");
            }
            if let Some(p) = inner.codes.get_mut(&code) {
                p.used = true;
            }
            Some(mint_refresh(inner))
        }
        "refresh_token" => {
            if let Some((status, failure)) = inner.refresh_failure.clone() {
                return Response::builder()
                    .status(status)
                    .header("content-type", "application/json")
                    .body(Body::from(failure))
                    .unwrap();
            }
            if !inner.refresh_tokens.contains(&field("refresh_token")) {
                return oauth_error(400, "invalid_grant", "Token has been expired or revoked.");
            }
            // Google keeps the refresh token: the answer has none.
            None
        }
        _ => return oauth_error(400, "unsupported_grant_type", "mock: unsupported grant_type"),
    };
    let ttl = inner.access_ttl;
    let (access, _) = mint_access(inner, ttl);
    let id = id_token();
    inner.issued.push(id.clone());
    let mut answer = json!({
        "access_token": access,
        "expires_in": ttl,
        "scope": SCOPES,
        "token_type": "Bearer",
        "id_token": id,
    });
    if let Some(r) = refresh {
        answer["refresh_token"] = json!(r);
    }
    axum::Json(answer).into_response()
}

fn google_error(status: u16, message: &str, reason: &str) -> Response {
    (
        StatusCode::from_u16(status).unwrap(),
        axum::Json(json!({"error": {"code": status, "message": message, "status": reason}})),
    )
        .into_response()
}

const METADATA: &str = r#"{"ideType":"IDE_UNSPECIFIED","platform":"PLATFORM_UNSPECIFIED","pluginType":"GEMINI"}"#;

async fn code_assist(
    State(state): State<Shared>,
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let seen = Seen::new(&method, &uri, version, &headers, &body);
    let m = method_of(&seen.path_and_query).to_string();
    let load_delay = {
        let mut inner = state.lock().unwrap();
        inner.code_assist.push(seen);
        inner.load_delay
    };
    if m == "loadCodeAssist" && !load_delay.is_zero() {
        tokio::time::sleep(load_delay).await;
    }
    let mut inner = state.lock().unwrap();
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if !access_ok(&inner, token) {
        return google_error(
            401,
            "Request had invalid authentication credentials. Expected OAuth 2 access token.",
            "UNAUTHENTICATED",
        );
    }
    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let metadata: Value = serde_json::from_str(METADATA).unwrap();
    let post = method == Method::POST;
    match m.as_str() {
        "loadCodeAssist" if post => {
            if v["metadata"] != metadata {
                return google_error(400, "mock: Gemini CLI's metadata is expected", "INVALID_ARGUMENT");
            }
            let tiers = json!([
                {"id": "standard-tier", "name": "Gemini Code Assist", "userDefinedCloudaicompanionProject": true},
                {"id": "free-tier", "name": "Gemini Code Assist for individuals", "isDefault": true}
            ]);
            match inner.setup {
                Setup::Known => axum::Json(json!({
                    "currentTier": {"id": "free-tier", "name": "Gemini Code Assist for individuals"},
                    "allowedTiers": tiers,
                    "cloudaicompanionProject": PROJECT,
                    "gcpManaged": false
                }))
                .into_response(),
                Setup::Onboarding { .. } => axum::Json(json!({"allowedTiers": tiers})).into_response(),
            }
        }
        "onboardUser" if post => {
            if v["tierId"] != "free-tier" || v["metadata"] != metadata {
                return google_error(400, "mock: onboard on free-tier with the metadata", "INVALID_ARGUMENT");
            }
            inner.operation_polls = 0;
            axum::Json(json!({"name": "operations/onboard-mock-1", "done": false})).into_response()
        }
        "operations" if method == Method::GET => {
            if !uri.path().ends_with("/operations/onboard-mock-1") {
                return google_error(404, "mock: unknown operation", "NOT_FOUND");
            }
            inner.operation_polls += 1;
            let Setup::Onboarding { polls } = inner.setup else {
                return google_error(404, "mock: no onboarding", "NOT_FOUND");
            };
            if inner.operation_polls < polls {
                return axum::Json(json!({"name": "operations/onboard-mock-1", "done": false})).into_response();
            }
            axum::Json(json!({
                "name": "operations/onboard-mock-1",
                "done": true,
                "response": {
                    "@type": "type.googleapis.com/google.internal.cloud.code.v1internal.OnboardUserResponse",
                    "cloudaicompanionProject": {"id": ONBOARDED_PROJECT, "name": ONBOARDED_PROJECT}
                }
            }))
            .into_response()
        }
        "generateContent" | "streamGenerateContent" if post => {
            let project = v["project"].as_str().unwrap_or("");
            if project != PROJECT && project != ONBOARDED_PROJECT {
                return google_error(403, "mock: the account's project is expected", "PERMISSION_DENIED");
            }
            if m == "streamGenerateContent" {
                return Response::builder()
                    .status(200)
                    .header("content-type", "text/event-stream")
                    .body(Body::from(code_assist_sse()))
                    .unwrap();
            }
            axum::Json(json!({
                "response": {
                    "candidates": [{"content": {"parts": [{"text": "Hello from mock upstream!"}], "role": "model"}, "finishReason": "STOP", "index": 0}],
                    "usageMetadata": {"promptTokenCount": 24, "candidatesTokenCount": 7, "totalTokenCount": 31},
                    "modelVersion": "gemini-2.5-pro"
                },
                "traceId": "mock-trace"
            }))
            .into_response()
        }
        _ => google_error(404, "mock: unknown method", "NOT_FOUND"),
    }
}
