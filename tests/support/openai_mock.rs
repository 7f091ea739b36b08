//! A mock OpenAI-compatible upstream on a real socket: the OpenAI API (or any server speaking it
//! under a path prefix) or an Azure OpenAI resource. It speaks the recorded formats
//! (`tests/fixtures/responses/openai-*.sse`):
//!
//! - OpenAI ([`OpenAiMock::openai`], Bearer key): `POST {prefix}/chat/completions` and
//!   `POST {prefix}/responses`;
//! - Azure ([`OpenAiMock::azure`], `api-key` header): `POST
//!   /openai/deployments/{deployment}/chat/completions?api-version=<dated>`, `POST
//!   /openai/v1/chat/completions` and `POST /openai/v1/responses` (model = deployment in the
//!   body), `POST /openai/responses?api-version=<dated>`.
//!
//! Chat Completions: a `chat.completion` JSON ([`chat_json`]: cached and reasoning tokens in its
//! usage), or with `stream: true` the golden chunk stream ([`chat_stream`]), its model set to the
//! request's, its usage-only chunk sent only when the request asked
//! `stream_options.include_usage` (and without `"usage":null` in the other chunks then, as
//! OpenAI does). `stream_options` without `stream: true` is refused with 400, as OpenAI does.
//! Responses: the golden event stream ([`responses_stream`]; the function-call one with
//! `x-mock-tool`), or the completed response object as JSON when not streamed.
//!
//! Every request is recorded ([`OpenAiMock::seen`]) before anything is checked. Faults are asked
//! for per mock ([`OpenAiMock::set_fault`], [`OpenAiMock::set_headers`],
//! [`OpenAiMock::set_delay`]) or per request by headers, which the relay forwards like any
//! unknown header:
//! - `x-mock-status: N` with `x-mock-error-code: rate_limit_exceeded | insufficient_quota |
//!   invalid_api_key | server_error | …` (default: the usual code for N) and
//!   `x-mock-retry-after: S`: an error in OpenAI's shape ([`error_body`])
//! - `x-mock-answer-header: name=value` (repeatable): that header on the answer
//! - `x-mock-delay-ms: N`: wait before the response head (a slow first byte)
//! - `x-mock-truncate: N`: only the first N bytes of the stream, then the end
//! - `x-mock-cut-before: TEXT`: the stream ends just before the first event containing TEXT
//!   (e.g. `response.completed`, `[DONE]`)
//! - `x-mock-abort`: the stream (cut or truncated as asked) ends by breaking the connection
//!   instead of ending cleanly
//! - `x-mock-chunk: N` / `x-mock-chunk-delay-ms: N`: the stream in N-byte writes, paced
//! - `x-mock-tool`: the function-call Responses stream
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, Uri, Version};
use axum::response::Response;
use futures_util::stream;

use super::mock::Seen;
use super::serve::{Served, serve};

pub const CHAT_SSE: &[u8] = include_bytes!("../fixtures/responses/openai-chat-stream-include-usage.sse");
pub const RESPONSES_SSE: &[u8] = include_bytes!("../fixtures/responses/openai-responses-stream.sse");
pub const RESPONSES_SSE_TOOL: &[u8] = include_bytes!("../fixtures/responses/openai-responses-stream-function-call.sse");
/// The model name inside the golden streams.
pub const GOLDEN_MODEL: &str = "gpt-5";

/// The usage of the golden streams: prompt tokens (cached included), cached, completion.
pub const STREAM_USAGE: Tokens = Tokens {
    prompt: 24,
    cached: 3,
    completion: 7,
    reasoning: 0,
};
/// The usage of [`chat_json`].
pub const JSON_USAGE: Tokens = Tokens {
    prompt: 1200,
    cached: 1024,
    completion: 300,
    reasoning: 256,
};

/// Token counts in OpenAI's terms: `prompt` includes `cached`, `completion` includes `reasoning`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tokens {
    pub prompt: u64,
    pub cached: u64,
    pub completion: u64,
    pub reasoning: u64,
}

/// Which API the mock plays.
#[derive(Debug, Clone)]
pub enum Flavor {
    /// The OpenAI API under `prefix` (`/v1`), `Authorization: Bearer <key>`.
    OpenAi { prefix: String },
    /// An Azure OpenAI resource, `api-key: <key>`, with its deployments as (deployment, model it
    /// runs): answers name the deployment's model, as Azure's do. With none, any deployment
    /// exists and answers name the model the request named.
    Azure { deployments: Vec<(String, String)> },
}

/// An error every request gets (after authentication).
#[derive(Debug, Clone)]
pub struct Fault {
    pub status: u16,
    /// OpenAI's `error.code`: `rate_limit_exceeded`, `insufficient_quota`, `invalid_api_key`, …
    pub code: String,
    /// Headers on the error answer (`retry-after`, `x-ratelimit-reset-requests`, …).
    pub headers: Vec<(String, String)>,
}

impl Fault {
    pub fn new(status: u16, code: &str) -> Fault {
        Fault {
            status,
            code: code.to_string(),
            headers: Vec::new(),
        }
    }
    pub fn header(mut self, name: &str, value: &str) -> Fault {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }
}

pub struct OpenAiMockState {
    pub flavor: Flavor,
    pub key: String,
    pub seen: Mutex<Vec<Seen>>,
    pub fault: Mutex<Option<Fault>>,
    pub extra_headers: Mutex<Vec<(String, String)>>,
    pub delay: Mutex<Option<Duration>>,
    /// Every body this mock answered with, in order (streams as sent, truncation included).
    pub answers: Mutex<Vec<Bytes>>,
}

pub struct OpenAiMock {
    pub addr: SocketAddr,
    pub state: Arc<OpenAiMockState>,
    _served: Served,
}

impl OpenAiMock {
    /// The OpenAI API under `/v1` accepting `Authorization: Bearer <key>`; accounts use
    /// [`OpenAiMock::base_url`] (`http://…/v1`).
    pub async fn openai(key: &str) -> OpenAiMock {
        Self::start(
            Flavor::OpenAi {
                prefix: "/v1".to_string(),
            },
            key,
        )
        .await
    }

    /// An Azure OpenAI resource accepting `api-key: <key>`, with these (deployment, model)
    /// pairs (any deployment when empty); accounts use [`OpenAiMock::url`].
    pub async fn azure(key: &str, deployments: &[(&str, &str)]) -> OpenAiMock {
        Self::start(
            Flavor::Azure {
                deployments: deployments
                    .iter()
                    .map(|(d, m)| (d.to_string(), m.to_string()))
                    .collect(),
            },
            key,
        )
        .await
    }

    pub async fn start(flavor: Flavor, key: &str) -> OpenAiMock {
        let state = Arc::new(OpenAiMockState {
            flavor,
            key: key.to_string(),
            seen: Mutex::default(),
            fault: Mutex::default(),
            extra_headers: Mutex::default(),
            delay: Mutex::default(),
            answers: Mutex::default(),
        });
        let router = Router::new()
            .fallback(handle)
            .layer(axum::extract::DefaultBodyLimit::disable())
            .with_state(state.clone());
        let served = serve(router).await;
        OpenAiMock {
            addr: served.addr,
            state,
            _served: served,
        }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
    /// The base URL an account names: the URL with the OpenAI prefix (`/v1`), or the resource
    /// URL for Azure.
    pub fn base_url(&self) -> String {
        match &self.state.flavor {
            Flavor::OpenAi { prefix } => format!("{}{prefix}", self.url()),
            Flavor::Azure { .. } => self.url(),
        }
    }
    pub fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }
    pub fn hits(&self) -> usize {
        self.state.seen.lock().unwrap().len()
    }
    pub fn answers(&self) -> Vec<Bytes> {
        self.state.answers.lock().unwrap().clone()
    }
    pub fn set_fault(&self, f: Option<Fault>) {
        *self.state.fault.lock().unwrap() = f;
    }
    pub fn set_headers(&self, h: &[(&str, &str)]) {
        *self.state.extra_headers.lock().unwrap() = h.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    }
    pub fn set_delay(&self, d: Option<Duration>) {
        *self.state.delay.lock().unwrap() = d;
    }
}

/// The golden Chat stream for `model`: with `include_usage` as recorded (`"usage":null` on every
/// chunk, then the usage-only chunk); without, as OpenAI streams then (no `usage` member, no
/// usage chunk).
pub fn chat_stream(model: &str, include_usage: bool) -> Vec<u8> {
    let golden = String::from_utf8_lossy(CHAT_SSE).replace(
        &format!("\"model\":\"{GOLDEN_MODEL}\""),
        &format!("\"model\":{}", serde_json::to_string(model).unwrap()),
    );
    if include_usage {
        return golden.into_bytes();
    }
    let mut out = String::new();
    for event in golden.split_inclusive("\n\n") {
        if event.contains("\"choices\":[]") {
            continue;
        }
        out.push_str(&event.replace(",\"usage\":null", ""));
    }
    out.into_bytes()
}

/// The usage-only chunk of the golden Chat stream (its `data:` line and blank line), for `model`.
pub fn chat_usage_event(model: &str) -> String {
    let full = String::from_utf8(chat_stream(model, true)).unwrap();
    full.split_inclusive("\n\n")
        .find(|e| e.contains("\"choices\":[]"))
        .unwrap()
        .to_string()
}

/// A `chat.completion` for `model` with [`JSON_USAGE`].
pub fn chat_json(model: &str) -> serde_json::Value {
    let u = JSON_USAGE;
    serde_json::json!({
        "id": "chatcmpl-mockjson0123456789",
        "object": "chat.completion",
        "created": 1795781428,
        "model": model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": "Hello from mock upstream!", "refusal": null, "annotations": []},
            "logprobs": null,
            "finish_reason": "stop"
        }],
        "usage": {
            "prompt_tokens": u.prompt,
            "completion_tokens": u.completion,
            "total_tokens": u.prompt + u.completion,
            "prompt_tokens_details": {"cached_tokens": u.cached, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": u.reasoning, "audio_tokens": 0,
                                          "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}
        },
        "service_tier": "default",
        "system_fingerprint": "fp_mock"
    })
}

/// The golden Responses stream (text, or the function call) with the model set to `model`.
pub fn responses_stream(model: &str, tool: bool) -> Vec<u8> {
    String::from_utf8_lossy(if tool { RESPONSES_SSE_TOOL } else { RESPONSES_SSE })
        .replace(
            &format!("\"model\":\"{GOLDEN_MODEL}\""),
            &format!("\"model\":{}", serde_json::to_string(model).unwrap()),
        )
        .into_bytes()
}

/// The completed response object of the golden Responses stream, as a non-streamed answer.
pub fn responses_json(model: &str, tool: bool) -> serde_json::Value {
    let s = String::from_utf8(responses_stream(model, tool)).unwrap();
    let data = s
        .split("\n\n")
        .find(|e| e.starts_with("event: response.completed"))
        .and_then(|e| e.lines().find_map(|l| l.strip_prefix("data: ")))
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(data).unwrap();
    v["response"].clone()
}

/// OpenAI's error body for `code` (and the `type` OpenAI gives it).
pub fn error_body(status: u16, code: &str) -> serde_json::Value {
    let (kind, message, code_v) = match code {
        "rate_limit_exceeded" => (
            "requests",
            "Rate limit reached for gpt-5 in organization org-mock on requests per min (RPM): Limit 3, Used 3, Requested 1. Please try again in 20s.".to_string(),
            serde_json::json!(code),
        ),
        "insufficient_quota" => (
            "insufficient_quota",
            "You exceeded your current quota, please check your plan and billing details.".to_string(),
            serde_json::json!(code),
        ),
        "invalid_api_key" => (
            "invalid_request_error",
            "Incorrect API key provided: sk-mock***. You can find your API key at https://platform.openai.com/account/api-keys.".to_string(),
            serde_json::json!(code),
        ),
        "server_error" => (
            "server_error",
            "The server had an error while processing your request. Sorry about that!".to_string(),
            serde_json::Value::Null,
        ),
        "model_not_found" => (
            "invalid_request_error",
            "The model does not exist or you do not have access to it.".to_string(),
            serde_json::json!(code),
        ),
        other => ("invalid_request_error", format!("mock {status} {other}"), serde_json::json!(other)),
    };
    serde_json::json!({"error": {"message": message, "type": kind, "param": null, "code": code_v}})
}

/// The `error.code` usual for a status.
fn default_code(status: u16) -> &'static str {
    match status {
        429 => "rate_limit_exceeded",
        401 => "invalid_api_key",
        404 => "model_not_found",
        s if s >= 500 => "server_error",
        _ => "invalid_request_error",
    }
}

fn json_answer(status: u16, v: &serde_json::Value, headers: &[(String, String)]) -> Response {
    let mut b = Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("x-request-id", "req_mock_openai");
    for (k, v) in headers {
        b = b.header(k.as_str(), v.as_str());
    }
    b.body(Body::from(v.to_string())).unwrap()
}

fn num(h: &HeaderMap, name: &str) -> Option<u64> {
    h.get(name)?.to_str().ok()?.parse().ok()
}

fn text<'h>(h: &'h HeaderMap, name: &str) -> Option<&'h str> {
    h.get(name)?.to_str().ok()
}

/// Whether `v` is a dated `api-version` (`2024-10-21`, `2025-04-01-preview`).
pub fn dated_api_version(v: &str) -> bool {
    let b = v.as_bytes();
    b.len() >= 10
        && b[..10].iter().enumerate().all(|(i, c)| {
            if i == 4 || i == 7 {
                *c == b'-'
            } else {
                c.is_ascii_digit()
            }
        })
        && (b.len() == 10 || &v[10..] == "-preview")
}

fn query_param(uri: &Uri, name: &str) -> Option<String> {
    uri.query()?.split('&').find_map(|p| {
        let (k, v) = p.split_once('=').unwrap_or((p, ""));
        (k == name).then(|| v.to_string())
    })
}

/// What a request path asks for.
enum Op {
    Chat,
    Responses,
}

/// The operation and, on Azure's deployment path, the deployment; or the error answer.
fn route(state: &OpenAiMockState, uri: &Uri) -> Result<(Op, Option<String>), Box<Response>> {
    let path = uri.path();
    let not_found = || {
        json_answer(
            404,
            &serde_json::json!({"error": {"code": "404", "message": "Resource not found"}}),
            &[],
        )
    };
    match &state.flavor {
        Flavor::OpenAi { prefix } => match path.strip_prefix(prefix.as_str()) {
            Some("/chat/completions") => Ok((Op::Chat, None)),
            Some("/responses") => Ok((Op::Responses, None)),
            _ => Err(Box::new(json_answer(
                404,
                &serde_json::json!({"error": {"message": format!("Invalid URL (POST {path})"), "type": "invalid_request_error", "param": null, "code": null}}),
                &[],
            ))),
        },
        Flavor::Azure { .. } => {
            let version = query_param(uri, "api-version");
            let dated = version.as_deref().is_some_and(dated_api_version);
            let unsupported = || {
                json_answer(
                    400,
                    &serde_json::json!({"error": {"code": "BadRequest", "message": "API version not supported"}}),
                    &[],
                )
            };
            if let Some(rest) = path.strip_prefix("/openai/deployments/")
                && let Some(deployment) = rest.strip_suffix("/chat/completions")
                && !deployment.contains('/')
            {
                if !dated {
                    return Err(Box::new(unsupported()));
                }
                return Ok((Op::Chat, Some(deployment.to_string())));
            }
            match path {
                // The v1 API takes no version, or `preview`.
                "/openai/v1/chat/completions" | "/openai/v1/responses"
                    if version.as_deref().is_some_and(|v| v != "preview") =>
                {
                    Err(Box::new(unsupported()))
                }
                "/openai/v1/chat/completions" => Ok((Op::Chat, None)),
                "/openai/v1/responses" => Ok((Op::Responses, None)),
                "/openai/responses" if dated => Ok((Op::Responses, None)),
                "/openai/responses" => Err(Box::new(unsupported())),
                _ => Err(Box::new(not_found())),
            }
        }
    }
}

/// `None` when the request carries the mock's key; the 401 answer otherwise.
fn authenticate(state: &OpenAiMockState, headers: &HeaderMap) -> Option<Response> {
    match &state.flavor {
        Flavor::OpenAi { .. } => {
            let ok = text(headers, "authorization")
                .and_then(|v| v.strip_prefix("Bearer "))
                .is_some_and(|k| k == state.key);
            (!ok).then(|| json_answer(401, &error_body(401, "invalid_api_key"), &[]))
        }
        Flavor::Azure { .. } => {
            let ok = text(headers, "api-key").is_some_and(|k| k == state.key);
            (!ok).then(|| {
                json_answer(
                    401,
                    &serde_json::json!({"error": {"code": "401", "message": "Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide a valid key for an active subscription and use a correct regional API endpoint for your resource."}}),
                    &[],
                )
            })
        }
    }
}

async fn handle(
    State(state): State<Arc<OpenAiMockState>>,
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    state
        .seen
        .lock()
        .unwrap()
        .push(Seen::new(&method, &uri, version, &headers, &body));
    let delay = num(&headers, "x-mock-delay-ms")
        .map(Duration::from_millis)
        .or(*state.delay.lock().unwrap());
    if let Some(d) = delay {
        tokio::time::sleep(d).await;
    }
    if method != Method::POST {
        return json_answer(
            405,
            &serde_json::json!({"error": {"message": "mock: POST only", "type": "invalid_request_error", "param": null, "code": null}}),
            &[],
        );
    }
    let (op, deployment) = match route(&state, &uri) {
        Ok(r) => r,
        Err(answer) => return *answer,
    };
    if let Some(denied) = authenticate(&state, &headers) {
        return denied;
    }
    let mut answer_headers: Vec<(String, String)> = vec![
        ("openai-processing-ms".into(), "12".into()),
        ("x-ratelimit-limit-requests".into(), "500".into()),
        ("x-ratelimit-remaining-requests".into(), "499".into()),
    ];
    match &state.flavor {
        Flavor::OpenAi { .. } => {
            answer_headers.push(("openai-organization".into(), "org-mock".into()));
            answer_headers.push(("openai-project".into(), "proj_mock".into()));
            answer_headers.push(("openai-version".into(), "2020-10-01".into()));
        }
        Flavor::Azure { .. } => {
            answer_headers.push(("apim-request-id".into(), "00000000-mock-azure".into()));
        }
    }
    answer_headers.extend(state.extra_headers.lock().unwrap().iter().cloned());
    answer_headers.extend(
        headers
            .get_all("x-mock-answer-header")
            .iter()
            .filter_map(|v| v.to_str().ok()?.split_once('='))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string())),
    );

    let fault = state.fault.lock().unwrap().clone().or_else(|| {
        let status = num(&headers, "x-mock-status")? as u16;
        let code = text(&headers, "x-mock-error-code").unwrap_or(default_code(status));
        let mut f = Fault::new(status, code);
        if let Some(s) = text(&headers, "x-mock-retry-after") {
            f = f.header("retry-after", s);
        }
        Some(f)
    });
    if let Some(f) = fault {
        let mut h = answer_headers.clone();
        h.extend(f.headers.iter().cloned());
        return json_answer(f.status, &error_body(f.status, &f.code), &h);
    }

    let req: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(v @ serde_json::Value::Object(_)) => v,
        _ => {
            return json_answer(
                400,
                &serde_json::json!({"error": {"message": "We could not parse the JSON body of your request.", "type": "invalid_request_error", "param": null, "code": null}}),
                &answer_headers,
            );
        }
    };
    let invalid = |message: &str, param: &str| {
        json_answer(
            400,
            &serde_json::json!({"error": {"message": message, "type": "invalid_request_error", "param": param, "code": null}}),
            &answer_headers,
        )
    };
    let mut model = match (req["model"].as_str(), &deployment) {
        (Some(m), _) => m.to_string(),
        (None, Some(d)) => d.clone(),
        (None, None) => return invalid("you must provide a model parameter", "model"),
    };
    if let Flavor::Azure { deployments } = &state.flavor
        && !deployments.is_empty()
    {
        // The deployment is in the path, else the body's model names it.
        let name = deployment.as_deref().unwrap_or(&model);
        match deployments.iter().find(|(d, _)| d == name) {
            Some((_, runs)) => model = runs.clone(),
            None => {
                return json_answer(
                    404,
                    &serde_json::json!({"error": {"code": "DeploymentNotFound", "message": "The API deployment for this resource does not exist."}}),
                    &answer_headers,
                );
            }
        }
    }
    let streamed = req["stream"].as_bool() == Some(true);
    let (full, content_type) = match op {
        Op::Chat => {
            if !req["messages"].is_array() {
                return invalid("Missing required parameter: 'messages'.", "messages");
            }
            if !req["stream_options"].is_null() && !streamed {
                return invalid(
                    "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
                    "stream_options",
                );
            }
            if !streamed {
                return finish_json(&state, &chat_json(&model), &answer_headers);
            }
            let include_usage = req["stream_options"]["include_usage"].as_bool() == Some(true);
            (chat_stream(&model, include_usage), "text/event-stream; charset=utf-8")
        }
        Op::Responses => {
            let tool = headers.contains_key("x-mock-tool");
            if !streamed {
                return finish_json(&state, &responses_json(&model, tool), &answer_headers);
            }
            (responses_stream(&model, tool), "text/event-stream; charset=utf-8")
        }
    };
    let mut full = full;
    if let Some(cut) = text(&headers, "x-mock-cut-before") {
        let s = String::from_utf8(full.clone()).unwrap();
        let mut kept = String::new();
        for event in s.split_inclusive("\n\n") {
            if event.contains(cut) {
                break;
            }
            kept.push_str(event);
        }
        full = kept.into_bytes();
    }
    if let Some(n) = num(&headers, "x-mock-truncate") {
        full.truncate(n as usize);
    }
    state.answers.lock().unwrap().push(Bytes::from(full.clone()));
    let chunk = num(&headers, "x-mock-chunk").unwrap_or(full.len().max(1) as u64).max(1) as usize;
    let pause = Duration::from_millis(num(&headers, "x-mock-chunk-delay-ms").unwrap_or(0));
    let parts: Vec<Bytes> = full.chunks(chunk).map(Bytes::copy_from_slice).collect();
    let abort = headers.contains_key("x-mock-abort");
    let s = stream::unfold(
        (parts.into_iter(), true, false),
        move |(mut it, first, done)| async move {
            if done {
                return None;
            }
            if !first && !pause.is_zero() {
                tokio::time::sleep(pause).await;
            }
            match it.next() {
                Some(b) => Some((Ok::<Bytes, std::io::Error>(b), (it, false, false))),
                None if abort => {
                    // What was sent reaches the peer before the connection breaks.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    Some((
                        Err(std::io::Error::new(
                            std::io::ErrorKind::ConnectionReset,
                            "mock: aborted",
                        )),
                        (it, false, true),
                    ))
                }
                None => None,
            }
        },
    );
    let mut r = Response::builder()
        .status(200)
        .header("content-type", content_type)
        .header("cache-control", "no-cache")
        .header("x-request-id", "req_mock_openai")
        .body(Body::from_stream(s))
        .unwrap();
    add_headers(&mut r, &answer_headers);
    r
}

fn finish_json(state: &OpenAiMockState, v: &serde_json::Value, headers: &[(String, String)]) -> Response {
    let body = v.to_string();
    state.answers.lock().unwrap().push(Bytes::from(body.clone()));
    let mut r = Response::builder()
        .status(200)
        .header("content-type", "application/json")
        .header("x-request-id", "req_mock_openai")
        .body(Body::from(body))
        .unwrap();
    add_headers(&mut r, headers);
    r
}

fn add_headers(r: &mut Response, headers: &[(String, String)]) {
    for (k, v) in headers {
        r.headers_mut().append(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
}
