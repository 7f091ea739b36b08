//! A mock Google upstream on a real socket serving both Gemini wires, recording every request:
//!
//! - **Gemini API** (`gemini-api` accounts): `POST /{v1,v1beta}/models/{model}:generateContent`
//!   (one `GenerateContentResponse` as JSON), `:streamGenerateContent?alt=sse` (SSE chunks shaped
//!   like `tests/fixtures/responses/gemini-stream-alt-sse.sse`: the text in pieces, each chunk
//!   with the usage so far, the last with all of it and `finishReason`; without `alt=sse` a JSON
//!   array of the same chunks) and `:countTokens` (`{"totalTokens": n}`). The key must be in
//!   `x-goog-api-key`. The model is echoed as `modelVersion`.
//! - **Code Assist** (`gemini-oauth` accounts): `POST /v1internal:generateContent |
//!   streamGenerateContent | countTokens` with `Authorization: Bearer <token>`, each answer wrapped
//!   as `{"response": {…}, "traceId": "…"}` (SSE lines `data: {"response": {…}, "traceId": …}`);
//!   a generation must name the mock's project. The setup calls are served too:
//!   `loadCodeAssist`, `onboardUser` (a long-running operation, `GET
//!   /v1internal/operations/{id}` to poll it), `retrieveUserQuota`, `listExperiments`,
//!   `recordCodeAssistMetrics`.
//! - **Google OAuth**, for a relay that refreshes a `gemini-oauth` account's token: `POST /token`
//!   (refresh grant) and `GET /oauth2/v2/userinfo`.
//!
//! Google's error shape `{"error": {"code", "message", "status", "details"?}}` answers a wrong
//! key or token (401 `UNAUTHENTICATED`), a malformed request (400 `INVALID_ARGUMENT`; the Gemini
//! API also refuses unknown top-level fields, as Google's JSON parser does), another project
//! (403 `PERMISSION_DENIED`) and an unknown path (404 `NOT_FOUND`).
//!
//! Real clients cannot send test headers, so behaviour is set per mock with the builder
//! ([`GeminiMock::builder`]) and, for failures, also while it runs ([`GeminiMock::fail_next`]):
//! - [`GeminiMockBuilder::tool_call`]: a tool round trip. A generation whose request declares a
//!   function of that name and whose last turn carries no `functionResponse` is answered with a
//!   `functionCall` part (with an `id`) calling it with the given arguments; once the
//!   `functionResponse` comes, with text.
//! - [`GeminiMockBuilder::fail_next`]: the next `n` content calls (generation and countTokens,
//!   either wire) get that status and body ([`resource_exhausted`], [`unavailable`],
//!   [`invalid_argument`], [`google_error`]).
//! - [`GeminiMockBuilder::first_event_delay`]: a silent pause between a stream's head and its
//!   first event.
//! - [`GeminiMockBuilder::usage`]: the token counts of every answer ([`DEFAULT_USAGE`] unless
//!   set), so a test knows exactly what the relay must count.
//!
//! A generation asking for JSON by schema (`generationConfig.responseJsonSchema`, as Gemini CLI's
//! model router does) is answered with a JSON text that fits the schema (the lowest number, the
//! first enum value), so the router picks a small model as it did in the recordings.
//!
//! Every request is recorded ([`GeminiMock::requests`]) before anything is checked; every answer
//! to a content call is recorded too ([`GeminiMock::answers`]: model, status, usage, tool call).
#![allow(dead_code)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, Uri};
use axum::response::Response;
use futures_util::stream;
use serde_json::{Value, json};

use super::serve::{Served, serve};

/// The `gemini-api` key the mock accepts unless told another.
pub const API_KEY: &str = "AIzaSy-mock-upstream-gemini-key-0123456";
/// The Google access token the Code Assist side accepts unless told another.
pub const ACCESS_TOKEN: &str = "ya29.mock-google-access-token-0123456789";
/// The Google refresh token the mock's token endpoint accepts unless told another.
pub const REFRESH_TOKEN: &str = "1//mock-google-refresh-token-0123456789";
/// The scopes of Gemini CLI's Google sign-in.
pub const SCOPES: &str = "https://www.googleapis.com/auth/cloud-platform https://www.googleapis.com/auth/userinfo.email https://www.googleapis.com/auth/userinfo.profile openid";
/// The e-mail of the mock's Google user.
pub const EMAIL: &str = "mock-user@example.com";
/// The Code Assist project of the mock's user unless told another.
pub const PROJECT: &str = "mock-project-4242";
/// The answer text unless told another.
pub const TEXT: &str = "Hello from the Gemini mock upstream!";
/// The text of the thought part a stream starts with when the usage has thoughts.
pub const THOUGHT: &str = "**Answering** The user wants a greeting.";
/// The `totalTokens` of countTokens answers unless told another.
pub const COUNT_TOKENS: u64 = 4321;

/// The token counts of an answer, in Gemini's terms: `prompt` includes `cached`; `thoughts` are
/// apart from `candidates`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub prompt: u64,
    pub candidates: u64,
    pub thoughts: u64,
    pub cached: u64,
}

pub const DEFAULT_USAGE: Usage = Usage {
    prompt: 1200,
    candidates: 34,
    thoughts: 56,
    cached: 1000,
};

impl Usage {
    pub fn total(&self) -> u64 {
        self.prompt + self.candidates + self.thoughts
    }

    /// The final `usageMetadata` of an answer.
    pub fn metadata(&self) -> Value {
        let mut m = json!({
            "promptTokenCount": self.prompt,
            "candidatesTokenCount": self.candidates,
            "totalTokenCount": self.total(),
            "promptTokensDetails": [{"modality": "TEXT", "tokenCount": self.prompt}],
        });
        if self.thoughts > 0 {
            m["thoughtsTokenCount"] = json!(self.thoughts);
        }
        if self.cached > 0 {
            m["cachedContentTokenCount"] = json!(self.cached);
            m["cacheTokensDetails"] = json!([{"modality": "TEXT", "tokenCount": self.cached}]);
        }
        m
    }

    /// The `usageMetadata` of a chunk before the last: the prompt, and the thoughts once the
    /// thought part has gone out.
    fn partial_metadata(&self, thoughts_sent: bool) -> Value {
        let thoughts = if thoughts_sent { self.thoughts } else { 0 };
        let mut m = json!({
            "promptTokenCount": self.prompt,
            "totalTokenCount": self.prompt + thoughts,
            "promptTokensDetails": [{"modality": "TEXT", "tokenCount": self.prompt}],
        });
        if thoughts > 0 {
            m["thoughtsTokenCount"] = json!(thoughts);
        }
        m
    }

    /// The counts in the relay's terms: (input without the cached part, output with the
    /// thoughts, cache reads).
    pub fn relay_terms(&self) -> (u64, u64, u64) {
        (self.prompt - self.cached, self.candidates + self.thoughts, self.cached)
    }
}

/// Which upstream wire a request came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    /// `/{v1,v1beta}/models/{model}:{method}`
    Api,
    /// `/v1internal:{method}` and `/v1internal/operations/…`
    CodeAssist,
}

/// One request as the mock received it.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    pub headers: HeaderMap,
    /// The body as JSON (`Null` when empty or not JSON).
    pub body: Value,
    pub raw: Bytes,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.get(name).map(|v| v.to_str().unwrap_or("").to_string())
    }

    /// The token of `Authorization: Bearer <token>`.
    pub fn bearer(&self) -> Option<String> {
        self.header("authorization")
            .and_then(|v| v.strip_prefix("Bearer ").map(String::from))
    }

    /// `path?query`.
    pub fn target(&self) -> String {
        match &self.query {
            Some(q) => format!("{}?{q}", self.path),
            None => self.path.clone(),
        }
    }

    pub fn wire(&self) -> Option<Wire> {
        if self.path.starts_with("/v1internal") {
            Some(Wire::CodeAssist)
        } else if api_path(&self.path).is_some() {
            Some(Wire::Api)
        } else {
            None
        }
    }

    /// The RPC method: `generateContent`, `streamGenerateContent`, `countTokens`,
    /// `loadCodeAssist`, …
    pub fn rpc(&self) -> Option<String> {
        match self.wire()? {
            Wire::Api => api_path(&self.path).map(|(_, _, m)| m.to_string()),
            Wire::CodeAssist => self.path.strip_prefix("/v1internal:").map(String::from),
        }
    }

    /// Whether this is a generation (`generateContent` or `streamGenerateContent`).
    pub fn is_generation(&self) -> bool {
        matches!(self.rpc().as_deref(), Some("generateContent" | "streamGenerateContent"))
    }

    /// Whether this asked for a stream.
    pub fn is_stream(&self) -> bool {
        self.rpc().as_deref() == Some("streamGenerateContent")
    }

    /// The API version of a Gemini API path (`v1`, `v1beta`).
    pub fn api_version(&self) -> Option<String> {
        api_path(&self.path).map(|(v, _, _)| v.to_string())
    }

    /// The model: from the path (Gemini API) or the body (Code Assist; `models/` taken off the
    /// one of a countTokens request).
    pub fn model(&self) -> Option<String> {
        match self.wire()? {
            Wire::Api => api_path(&self.path).map(|(_, m, _)| m.to_string()),
            Wire::CodeAssist => self.body["model"]
                .as_str()
                .or_else(|| self.body["request"]["model"].as_str())
                .map(|m| m.strip_prefix("models/").unwrap_or(m).to_string()),
        }
    }

    /// The Code Assist `project` the request named.
    pub fn project(&self) -> Option<String> {
        self.body["project"].as_str().map(String::from)
    }

    /// The Gemini request: the body (Gemini API) or its `request` (Code Assist).
    pub fn gemini(&self) -> &Value {
        match self.wire() {
            Some(Wire::CodeAssist) => &self.body["request"],
            _ => &self.body,
        }
    }

    /// The request's turns.
    pub fn contents(&self) -> Vec<Value> {
        self.gemini()["contents"].as_array().cloned().unwrap_or_default()
    }

    /// The `functionResponse` parts of the last turn.
    pub fn function_responses(&self) -> Vec<Value> {
        last_turn_parts(self.gemini())
            .into_iter()
            .filter_map(|p| p.get("functionResponse").cloned())
            .collect()
    }

    /// The names of the functions the request declares.
    pub fn function_names(&self) -> Vec<String> {
        declared_functions(self.gemini())
    }

    /// Every text part of every turn, joined by newlines.
    pub fn all_text(&self) -> String {
        let mut out = Vec::new();
        for c in self.contents() {
            for p in c["parts"].as_array().into_iter().flatten() {
                if let Some(t) = p["text"].as_str() {
                    out.push(t.to_string());
                }
            }
        }
        out.join("\n")
    }
}

/// One answer to a content call.
#[derive(Debug, Clone)]
pub struct Answered {
    pub wire: Wire,
    /// `generateContent`, `streamGenerateContent` or `countTokens`.
    pub rpc: String,
    pub model: String,
    pub status: u16,
    /// The usage of a successful generation.
    pub usage: Option<Usage>,
    /// The `functionCall` part of an answer that called a tool.
    pub function_call: Option<Value>,
    /// The answer's text (thoughts apart), empty for a tool call or an error.
    pub text: String,
}

/// A failure the next content calls get.
#[derive(Debug, Clone)]
struct Failure {
    status: u16,
    body: Value,
}

#[derive(Debug, Clone)]
struct Config {
    api_key: String,
    access_token: String,
    refresh_token: String,
    project: String,
    usage: Usage,
    text: String,
    count_tokens: u64,
    tool: Option<(String, Value)>,
    first_event_delay: Option<Duration>,
    chunk_delay: Option<Duration>,
    onboarded: bool,
    onboard_pending: bool,
}

pub struct GeminiMockState {
    cfg: Config,
    requests: Mutex<Vec<Request>>,
    answers: Mutex<Vec<Answered>>,
    failures: Mutex<VecDeque<Failure>>,
    /// Whether `loadCodeAssist` names the user's tier and project.
    onboarded: Mutex<bool>,
    /// Onboarding operations: name, and whether done.
    operations: Mutex<Vec<(String, bool)>>,
    serial: Mutex<u64>,
}

pub struct GeminiMock {
    pub addr: SocketAddr,
    pub state: Arc<GeminiMockState>,
    _served: Served,
}

/// Settings of a [`GeminiMock`] before it starts.
pub struct GeminiMockBuilder {
    cfg: Config,
    failures: VecDeque<Failure>,
}

impl GeminiMockBuilder {
    /// The `x-goog-api-key` the Gemini API side accepts ([`API_KEY`] by default).
    pub fn api_key(mut self, key: &str) -> Self {
        self.cfg.api_key = key.to_string();
        self
    }
    /// The bearer token the Code Assist side accepts ([`ACCESS_TOKEN`] by default).
    pub fn access_token(mut self, token: &str) -> Self {
        self.cfg.access_token = token.to_string();
        self
    }
    /// The refresh token the token endpoint accepts ([`REFRESH_TOKEN`] by default).
    pub fn refresh_token(mut self, token: &str) -> Self {
        self.cfg.refresh_token = token.to_string();
        self
    }
    /// The user's Code Assist project ([`PROJECT`] by default).
    pub fn project(mut self, project: &str) -> Self {
        self.cfg.project = project.to_string();
        self
    }
    /// The usage of every generation ([`DEFAULT_USAGE`] by default).
    pub fn usage(mut self, usage: Usage) -> Self {
        self.cfg.usage = usage;
        self
    }
    /// The text of every answer ([`TEXT`] by default).
    pub fn text(mut self, text: &str) -> Self {
        self.cfg.text = text.to_string();
        self
    }
    /// The `totalTokens` of countTokens answers ([`COUNT_TOKENS`] by default).
    pub fn count_tokens(mut self, n: u64) -> Self {
        self.cfg.count_tokens = n;
        self
    }
    /// A tool round trip: a generation that declares the function `name` and whose last turn has
    /// no `functionResponse` is answered with a call of it with `args`.
    pub fn tool_call(mut self, name: &str, args: Value) -> Self {
        self.cfg.tool = Some((name.to_string(), args));
        self
    }
    /// A silent pause between a stream's head and its first event.
    pub fn first_event_delay(mut self, d: Duration) -> Self {
        self.cfg.first_event_delay = Some(d);
        self
    }
    /// A pause between a stream's events.
    pub fn chunk_delay(mut self, d: Duration) -> Self {
        self.cfg.chunk_delay = Some(d);
        self
    }
    /// The next `n` content calls get `status` with `body` (see [`resource_exhausted`],
    /// [`unavailable`], [`invalid_argument`]).
    pub fn fail_next(mut self, n: usize, status: u16, body: Value) -> Self {
        for _ in 0..n {
            self.failures.push_back(Failure {
                status,
                body: body.clone(),
            });
        }
        self
    }
    /// The user has no tier yet: `loadCodeAssist` offers the free tier and names no project
    /// until `onboardUser` has run.
    pub fn not_onboarded(mut self) -> Self {
        self.cfg.onboarded = false;
        self
    }
    /// `onboardUser` answers an operation not done yet; polling it finishes it.
    pub fn onboard_pending(mut self) -> Self {
        self.cfg.onboard_pending = true;
        self
    }

    pub async fn start(self) -> GeminiMock {
        let state = Arc::new(GeminiMockState {
            onboarded: Mutex::new(self.cfg.onboarded),
            cfg: self.cfg,
            requests: Mutex::default(),
            answers: Mutex::default(),
            failures: Mutex::new(self.failures),
            operations: Mutex::default(),
            serial: Mutex::default(),
        });
        let router = Router::new()
            .fallback(handle)
            .layer(axum::extract::DefaultBodyLimit::disable())
            .with_state(state.clone());
        let served = serve(router).await;
        GeminiMock {
            addr: served.addr,
            state,
            _served: served,
        }
    }
}

impl GeminiMock {
    pub fn builder() -> GeminiMockBuilder {
        GeminiMockBuilder {
            cfg: Config {
                api_key: API_KEY.to_string(),
                access_token: ACCESS_TOKEN.to_string(),
                refresh_token: REFRESH_TOKEN.to_string(),
                project: PROJECT.to_string(),
                usage: DEFAULT_USAGE,
                text: TEXT.to_string(),
                count_tokens: COUNT_TOKENS,
                tool: None,
                first_event_delay: None,
                chunk_delay: None,
                onboarded: true,
                onboard_pending: false,
            },
            failures: VecDeque::new(),
        }
    }

    /// A mock with the default settings.
    pub async fn start() -> GeminiMock {
        Self::builder().start().await
    }

    /// `http://127.0.0.1:<port>`: the `base_url` of accounts of either kind.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
    pub fn api_key(&self) -> &str {
        &self.state.cfg.api_key
    }
    pub fn access_token(&self) -> &str {
        &self.state.cfg.access_token
    }
    pub fn refresh_token(&self) -> &str {
        &self.state.cfg.refresh_token
    }
    /// The URL of the mock's Google token endpoint.
    pub fn token_url(&self) -> String {
        format!("{}/token", self.url())
    }
    pub fn project(&self) -> &str {
        &self.state.cfg.project
    }
    pub fn usage(&self) -> Usage {
        self.state.cfg.usage
    }
    pub fn text(&self) -> &str {
        &self.state.cfg.text
    }

    /// Every request so far, in order.
    pub fn requests(&self) -> Vec<Request> {
        self.state.requests.lock().unwrap().clone()
    }
    /// The generations so far (either wire), in order.
    pub fn generations(&self) -> Vec<Request> {
        self.requests().into_iter().filter(Request::is_generation).collect()
    }
    /// Every answer to a content call so far, in order.
    pub fn answers(&self) -> Vec<Answered> {
        self.state.answers.lock().unwrap().clone()
    }
    /// The next `n` content calls get `status` with `body`.
    pub fn fail_next(&self, n: usize, status: u16, body: Value) {
        let mut f = self.state.failures.lock().unwrap();
        for _ in 0..n {
            f.push_back(Failure {
                status,
                body: body.clone(),
            });
        }
    }
}

/// Google's error body.
pub fn google_error(code: u16, status: &str, message: &str) -> Value {
    json!({"error": {"code": code, "message": message, "status": status}})
}

/// A 429 `RESOURCE_EXHAUSTED` as the Gemini API sends it, with a `RetryInfo` of `retry_delay`
/// (`"30s"`).
pub fn resource_exhausted(retry_delay: &str) -> Value {
    let mut e = google_error(
        429,
        "RESOURCE_EXHAUSTED",
        "You exceeded your current quota, please check your plan and billing details.",
    );
    e["error"]["details"] = json!([
        {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [{
            "quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests",
            "quotaId": "GenerateRequestsPerMinutePerProjectPerModel-FreeTier",
            "quotaDimensions": {"location": "global", "model": "gemini-2.5-flash"},
            "quotaValue": "10"}]},
        {"@type": "type.googleapis.com/google.rpc.Help", "links": [{
            "description": "Learn more about Gemini API quotas",
            "url": "https://ai.google.dev/gemini-api/docs/rate-limits"}]},
        {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": retry_delay}
    ]);
    e
}

/// A 503 `UNAVAILABLE`.
pub fn unavailable() -> Value {
    google_error(503, "UNAVAILABLE", "The model is overloaded. Please try again later.")
}

/// A 400 `INVALID_ARGUMENT` with `message`.
pub fn invalid_argument(message: &str) -> Value {
    google_error(400, "INVALID_ARGUMENT", message)
}

/// `(version, model, method)` of `/{v1,v1beta}/models/{model}:{method}`.
fn api_path(path: &str) -> Option<(&str, &str, &str)> {
    let (version, rest) = path.strip_prefix('/')?.split_once("/models/")?;
    if !matches!(version, "v1" | "v1beta" | "v1alpha") {
        return None;
    }
    let (model, method) = rest.split_once(':')?;
    (!model.is_empty() && !model.contains('/')).then_some((version, model, method))
}

fn last_turn_parts(req: &Value) -> Vec<Value> {
    req["contents"]
        .as_array()
        .and_then(|c| c.last())
        .and_then(|c| c["parts"].as_array())
        .cloned()
        .unwrap_or_default()
}

fn declared_functions(req: &Value) -> Vec<String> {
    let mut names = Vec::new();
    for tool in req["tools"].as_array().into_iter().flatten() {
        let decls = tool
            .get("functionDeclarations")
            .or_else(|| tool.get("function_declarations"));
        for d in decls.and_then(Value::as_array).into_iter().flatten() {
            if let Some(n) = d["name"].as_str() {
                names.push(n.to_string());
            }
        }
    }
    names
}

fn json_answer(status: u16, v: &Value) -> Response {
    Response::builder()
        .status(status)
        .header("content-type", "application/json; charset=UTF-8")
        .header("server", "ESF")
        .body(Body::from(v.to_string()))
        .unwrap()
}

fn error(code: u16, status: &str, message: &str) -> Response {
    json_answer(code, &google_error(code, status, message))
}

/// The top-level fields of a Gemini API `GenerateContentRequest` (both JSON spellings).
const GENERATE_FIELDS: [&str; 17] = [
    "model",
    "contents",
    "tools",
    "toolConfig",
    "tool_config",
    "safetySettings",
    "safety_settings",
    "systemInstruction",
    "system_instruction",
    "generationConfig",
    "generation_config",
    "cachedContent",
    "cached_content",
    "labels",
    "serviceTier",
    "service_tier",
    "store",
];

/// Why a Gemini request cannot be served, if it cannot; `strict`: unknown top-level fields are
/// refused (the Gemini API); Code Assist's inner request carries fields of its own
/// (`session_id`).
fn check_generate(req: &Value, strict: bool) -> Result<(), String> {
    let Some(obj) = req.as_object() else {
        return Err("Invalid JSON payload received. Expected an object.".into());
    };
    if strict && let Some(unknown) = obj.keys().find(|k| !GENERATE_FIELDS.contains(&k.as_str())) {
        return Err(format!(
            "Invalid JSON payload received. Unknown name \"{unknown}\": Cannot find field."
        ));
    }
    let Some(contents) = obj.get("contents").and_then(Value::as_array) else {
        return Err("* GenerateContentRequest.contents: contents is not specified".into());
    };
    if contents.is_empty() {
        return Err("* GenerateContentRequest.contents: contents is not specified".into());
    }
    for (i, c) in contents.iter().enumerate() {
        match c["role"].as_str() {
            None | Some("user" | "model" | "function") => {}
            Some(r) => {
                return Err(format!(
                    "Please use a valid role: user, model. (contents[{i}].role = {r:?})"
                ));
            }
        }
        let parts = c["parts"].as_array();
        if parts.is_none_or(|p| p.is_empty()) {
            return Err(format!(
                "* GenerateContentRequest.contents[{i}].parts: contents.parts must not be empty."
            ));
        }
        for (j, p) in parts.into_iter().flatten().enumerate() {
            let data = [
                "text",
                "inlineData",
                "functionCall",
                "functionResponse",
                "fileData",
                "executableCode",
                "codeExecutionResult",
                "inline_data",
                "function_call",
                "function_response",
                "file_data",
            ];
            if !data.iter().any(|k| p.get(*k).is_some()) {
                return Err(format!(
                    "* GenerateContentRequest.contents[{i}].parts[{j}].data: required oneof field 'data' must have one initialized field"
                ));
            }
        }
    }
    Ok(())
}

/// A JSON value fitting a (Gemini or JSON Schema) schema: the first enum value, the lowest
/// number, every property of an object.
fn fit_schema(schema: &Value) -> Value {
    if let Some(first) = schema["enum"].as_array().and_then(|e| e.first()) {
        return first.clone();
    }
    match schema["type"].as_str().map(str::to_ascii_lowercase).as_deref() {
        Some("object") => {
            let mut m = serde_json::Map::new();
            for (k, v) in schema["properties"].as_object().into_iter().flatten() {
                m.insert(k.clone(), fit_schema(v));
            }
            Value::Object(m)
        }
        Some("array") => json!([]),
        Some("integer" | "number") => json!(1),
        Some("boolean") => json!(false),
        _ => json!("Simple request, answered by the mock."),
    }
}

/// What a generation answers: text (with a leading thought when the usage has thoughts), or a
/// function call.
struct Plan {
    text: String,
    thought: Option<String>,
    call: Option<Value>,
}

fn plan(cfg: &Config, req: &Value, serial: u64) -> Plan {
    let schema = req["generationConfig"]["responseJsonSchema"]
        .as_object()
        .or_else(|| req["generationConfig"]["responseSchema"].as_object());
    if let Some(schema) = schema {
        return Plan {
            text: fit_schema(&Value::Object(schema.clone())).to_string(),
            thought: None,
            call: None,
        };
    }
    let thought = (cfg.usage.thoughts > 0).then(|| THOUGHT.to_string());
    if let Some((name, args)) = &cfg.tool {
        let answered = last_turn_parts(req).iter().any(|p| p.get("functionResponse").is_some());
        if !answered && declared_functions(req).iter().any(|n| n == name) {
            return Plan {
                text: String::new(),
                thought,
                call: Some(json!({"name": name, "args": args, "id": format!("{name}_mock_{serial}")})),
            };
        }
    }
    Plan {
        text: cfg.text.clone(),
        thought,
        call: None,
    }
}

/// The answer's chunks: the thought, the text in up to four pieces (the call instead), each with
/// the usage so far; the last with all of it and `finishReason`.
fn chunks(plan: &Plan, usage: Usage, model: &str, response_id: &str) -> Vec<Value> {
    let mut parts_list: Vec<Vec<Value>> = Vec::new();
    if let Some(t) = &plan.thought {
        parts_list.push(vec![json!({"text": t, "thought": true})]);
    }
    if let Some(call) = &plan.call {
        parts_list.push(vec![
            json!({"functionCall": call, "thoughtSignature": "bW9jay10aG91Z2h0LXNpZ25hdHVyZQ=="}),
        ]);
    } else {
        for piece in split_text(&plan.text, 4) {
            parts_list.push(vec![json!({"text": piece})]);
        }
    }
    let n = parts_list.len();
    parts_list
        .into_iter()
        .enumerate()
        .map(|(i, parts)| {
            let last = i + 1 == n;
            let mut candidate = json!({"content": {"parts": parts, "role": "model"}, "index": 0});
            if last {
                candidate["finishReason"] = json!("STOP");
            }
            let usage_md = if last {
                usage.metadata()
            } else {
                usage.partial_metadata(plan.thought.is_some())
            };
            json!({
                "candidates": [candidate],
                "usageMetadata": usage_md,
                "modelVersion": model,
                "responseId": response_id,
            })
        })
        .collect()
}

/// The whole answer as one response.
fn whole(plan: &Plan, usage: Usage, model: &str, response_id: &str) -> Value {
    let mut parts = Vec::new();
    if let Some(t) = &plan.thought {
        parts.push(json!({"text": t, "thought": true}));
    }
    match &plan.call {
        Some(call) => parts.push(json!({"functionCall": call, "thoughtSignature": "bW9jay10aG91Z2h0LXNpZ25hdHVyZQ=="})),
        None => parts.push(json!({"text": plan.text})),
    }
    json!({
        "candidates": [{"content": {"parts": parts, "role": "model"}, "finishReason": "STOP", "index": 0}],
        "usageMetadata": usage.metadata(),
        "modelVersion": model,
        "responseId": response_id,
    })
}

/// `text` in up to `n` pieces, cut after spaces.
fn split_text(text: &str, n: usize) -> Vec<String> {
    let words: Vec<&str> = text.split_inclusive(' ').collect();
    if words.len() <= 1 {
        return vec![text.to_string()];
    }
    let per = words.len().div_ceil(n);
    words.chunks(per).map(|c| c.concat()).collect()
}

fn wrap(v: Value, trace: &str) -> Value {
    json!({"response": v, "traceId": trace})
}

async fn handle(
    State(state): State<Arc<GeminiMockState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let req = Request {
        method: method.to_string(),
        path: uri.path().to_string(),
        query: uri.query().map(String::from),
        headers: headers.clone(),
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
        raw: body.clone(),
    };
    state.requests.lock().unwrap().push(req.clone());
    let serial = {
        let mut s = state.serial.lock().unwrap();
        *s += 1;
        *s
    };
    let cfg = &state.cfg;
    if let Some(answer) = google_oauth(cfg, &req) {
        return answer;
    }
    let Some(wire) = req.wire() else {
        return error(404, "NOT_FOUND", &format!("mock: no such path {}", req.path));
    };

    // Authentication.
    match wire {
        Wire::Api => {
            let key = req.header("x-goog-api-key");
            if key.as_deref() != Some(cfg.api_key.as_str()) {
                return error(
                    401,
                    "UNAUTHENTICATED",
                    "Request had invalid authentication credentials. Expected a valid API key in x-goog-api-key.",
                );
            }
        }
        Wire::CodeAssist => {
            if req.bearer().as_deref() != Some(cfg.access_token.as_str()) {
                return error(
                    401,
                    "UNAUTHENTICATED",
                    "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid authentication credential.",
                );
            }
        }
    }

    // Code Assist's operations and setup calls.
    if wire == Wire::CodeAssist {
        if let Some(op) = req.path.strip_prefix("/v1internal/operations/") {
            if method != Method::GET {
                return error(405, "INVALID_ARGUMENT", "mock: GET an operation");
            }
            return operation(&state, op);
        }
        if method != Method::POST {
            return error(405, "INVALID_ARGUMENT", "mock: POST only");
        }
        if let Some(answer) = setup_call(&state, &req) {
            return answer;
        }
    } else if method != Method::POST {
        return error(405, "INVALID_ARGUMENT", "mock: POST only");
    }

    let rpc = req.rpc().unwrap_or_default();
    if !matches!(
        rpc.as_str(),
        "generateContent" | "streamGenerateContent" | "countTokens"
    ) {
        return error(404, "NOT_FOUND", &format!("mock: unknown method {rpc}"));
    }
    let model = req.model().unwrap_or_default();
    let record = |status: u16, usage: Option<Usage>, call: Option<Value>, text: String| {
        state.answers.lock().unwrap().push(Answered {
            wire,
            rpc: rpc.clone(),
            model: model.clone(),
            status,
            usage,
            function_call: call,
            text,
        });
    };
    if req.body.is_null() {
        record(400, None, None, String::new());
        return error(400, "INVALID_ARGUMENT", "Invalid JSON payload received.");
    }

    // The request's own checks.
    let checked = match (wire, rpc.as_str()) {
        (Wire::Api, "countTokens") => {
            if req.body["contents"].is_array() || req.body["generateContentRequest"].is_object() {
                Ok(())
            } else {
                Err("* CountTokensRequest.contents: contents is not specified".to_string())
            }
        }
        (Wire::Api, _) => check_generate(&req.body, true),
        (Wire::CodeAssist, "countTokens") => {
            if req.body["request"]["contents"].is_array() {
                Ok(())
            } else {
                Err("mock: countTokens needs request.contents".to_string())
            }
        }
        (Wire::CodeAssist, _) => {
            if model.is_empty() {
                Err("mock: the Code Assist request names no model".to_string())
            } else if !req.body["request"].is_object() {
                Err("mock: the Code Assist request has no `request`".to_string())
            } else {
                check_generate(&req.body["request"], false)
            }
        }
    };
    if let Err(message) = checked {
        record(400, None, None, String::new());
        return error(400, "INVALID_ARGUMENT", &message);
    }
    if wire == Wire::CodeAssist && rpc != "countTokens" {
        match req.project() {
            Some(p) if p == cfg.project => {}
            other => {
                record(403, None, None, String::new());
                return error(
                    403,
                    "PERMISSION_DENIED",
                    &format!("Permission denied on resource project {}.", other.unwrap_or_default()),
                );
            }
        }
    }

    // Failures asked for.
    let failure = state.failures.lock().unwrap().pop_front();
    if let Some(f) = failure {
        record(f.status, None, None, String::new());
        return json_answer(f.status, &f.body);
    }

    if rpc == "countTokens" {
        record(200, None, None, String::new());
        return json_answer(
            200,
            &json!({"totalTokens": cfg.count_tokens, "promptTokensDetails": [{"modality": "TEXT", "tokenCount": cfg.count_tokens}]}),
        );
    }

    let plan = plan(cfg, req.gemini(), serial);
    let usage = cfg.usage;
    record(200, Some(usage), plan.call.clone(), plan.text.clone());
    let response_id = format!("mock-response-{serial:04}");
    let trace = format!("mock-trace-{serial:04}");
    let sse = req
        .query
        .as_deref()
        .is_some_and(|q| q.split('&').any(|p| p == "alt=sse"));
    if rpc == "generateContent" {
        let v = whole(&plan, usage, &model, &response_id);
        return json_answer(
            200,
            &match wire {
                Wire::Api => v,
                Wire::CodeAssist => wrap(v, &trace),
            },
        );
    }
    let chunks: Vec<Value> = chunks(&plan, usage, &model, &response_id)
        .into_iter()
        .map(|c| match wire {
            Wire::Api => c,
            Wire::CodeAssist => wrap(c, &trace),
        })
        .collect();
    if !sse {
        return json_answer(200, &Value::Array(chunks));
    }
    let events: Vec<Bytes> = chunks.iter().map(|c| Bytes::from(format!("data: {c}\n\n"))).collect();
    let first = cfg.first_event_delay.unwrap_or_default();
    let between = cfg.chunk_delay.unwrap_or_default();
    let s = stream::unfold((events.into_iter(), true), move |(mut it, is_first)| async move {
        let pause = if is_first { first } else { between };
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
        it.next().map(|b| (Ok::<Bytes, std::io::Error>(b), (it, false)))
    });
    Response::builder()
        .status(200)
        .header("content-type", "text/event-stream")
        .header("content-disposition", "attachment")
        .header("server", "ESF")
        .body(Body::from_stream(s))
        .unwrap()
}

/// Google's OAuth endpoints, for a relay that refreshes or looks up a `gemini-oauth` account's
/// token: `POST /token` (a refresh grant with the mock's refresh token gives the mock's access
/// token) and `GET /oauth2/v2/userinfo`.
fn google_oauth(cfg: &Config, req: &Request) -> Option<Response> {
    match (req.method.as_str(), req.path.as_str()) {
        ("POST", "/token") => {
            let form: std::collections::HashMap<String, String> =
                url::form_urlencoded::parse(&req.raw).into_owned().collect();
            let grant = form.get("grant_type").map(String::as_str);
            let refresh = form.get("refresh_token").map(String::as_str);
            Some(
                if grant == Some("refresh_token") && refresh == Some(cfg.refresh_token.as_str()) {
                    json_answer(
                        200,
                        &json!({"access_token": cfg.access_token, "expires_in": 3599, "token_type": "Bearer",
                            "scope": SCOPES}),
                    )
                } else {
                    json_answer(
                        400,
                        &json!({"error": "invalid_grant", "error_description": "Bad Request"}),
                    )
                },
            )
        }
        ("GET", "/oauth2/v2/userinfo") => Some(if req.bearer().as_deref() == Some(cfg.access_token.as_str()) {
            json_answer(
                200,
                &json!({"id": "104200000000000000042", "email": EMAIL, "verified_email": true}),
            )
        } else {
            error(
                401,
                "UNAUTHENTICATED",
                "Request is missing required authentication credential.",
            )
        }),
        _ => None,
    }
}

/// The answer to a Code Assist setup call, or `None` for a content call.
fn setup_call(state: &GeminiMockState, req: &Request) -> Option<Response> {
    let cfg = &state.cfg;
    let rpc = req.rpc()?;
    let free_tier = json!({
        "id": "free-tier", "name": "Gemini Code Assist for individuals",
        "description": "Gemini Code Assist for individuals", "userDefinedCloudaicompanionProject": false,
        "isDefault": true
    });
    let standard_tier = json!({
        "id": "standard-tier", "name": "Gemini Code Assist",
        "description": "Unlimited coding assistant with the most powerful Gemini models",
        "userDefinedCloudaicompanionProject": true
    });
    let answer = match rpc.as_str() {
        "loadCodeAssist" => {
            if *state.onboarded.lock().unwrap() {
                json!({
                    "currentTier": standard_tier,
                    "allowedTiers": [standard_tier],
                    "cloudaicompanionProject": cfg.project,
                    "gcpManaged": false,
                    "manageSubscriptionUri": "https://accounts.google.com/AccountChooser"
                })
            } else {
                json!({"allowedTiers": [free_tier, standard_tier], "gcpManaged": false})
            }
        }
        "onboardUser" => {
            let mut ops = state.operations.lock().unwrap();
            let name = format!("operations/mock-onboard-{}", ops.len() + 1);
            ops.push((name.clone(), !cfg.onboard_pending));
            if cfg.onboard_pending {
                json!({"name": name, "done": false})
            } else {
                *state.onboarded.lock().unwrap() = true;
                onboarded_operation(cfg, &name)
            }
        }
        "retrieveUserQuota" => json!({"buckets": [
            {"remainingFraction": 1, "resetTime": "2099-01-01T00:00:00Z", "tokenType": "REQUESTS", "modelId": "gemini-2.5-pro"},
            {"remainingFraction": 1, "resetTime": "2099-01-01T00:00:00Z", "tokenType": "REQUESTS", "modelId": "gemini-2.5-flash"}
        ]}),
        "listExperiments" => json!({"experimentIds": [], "flags": []}),
        "recordCodeAssistMetrics" => json!({}),
        _ => return None,
    };
    Some(json_answer(200, &answer))
}

fn onboarded_operation(cfg: &Config, name: &str) -> Value {
    json!({
        "name": name,
        "done": true,
        "response": {
            "@type": "type.googleapis.com/google.internal.cloud.code.v1internal.OnboardUserResponse",
            "cloudaicompanionProject": {"id": cfg.project, "name": cfg.project}
        }
    })
}

/// Polling an onboarding operation finishes it.
fn operation(state: &GeminiMockState, id: &str) -> Response {
    let name = format!("operations/{id}");
    let mut ops = state.operations.lock().unwrap();
    let Some(op) = ops.iter_mut().find(|(n, _)| *n == name) else {
        return error(404, "NOT_FOUND", &format!("mock: no operation {name}"));
    };
    op.1 = true;
    *state.onboarded.lock().unwrap() = true;
    json_answer(200, &onboarded_operation(&state.cfg, &name))
}
