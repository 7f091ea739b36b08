//! A mock Anthropic upstream on a real socket, speaking the recorded formats
//! (`tests/fixtures/responses/`). Behaviour is steered per request by `x-mock-*` headers, which
//! the relay forwards like any unknown header:
//! - `x-mock-status: N`: answer N with an Anthropic error body (and `retry-after: 7` on 429)
//! - `x-mock-delay-ms: N`: wait before the response head
//! - `x-mock-chunk: N` / `x-mock-chunk-delay-ms: N`: split the SSE answer into N-byte writes
//! - `x-mock-truncate: N`: send only the first N bytes of the stream, then close
//! - `x-mock-stall-after: N`: send N bytes, then stay silent
//! - `x-mock-padding: N`: about N bytes of `ping` events (16 KiB each) after `message_start`
//! - `x-mock-answer-header: name=value` (repeatable): add that header to a successful answer
//! - `x-mock-tool`: the tool-use golden stream, or for a JSON answer [`json_tool_for`]
//! - `x-mock-usage: {json}`: fields merged into the answer's `usage` (a JSON answer's, a stream's
//!   final `message_delta`'s); `x-mock-usage-start: {json}` merges into a stream's
//!   `message_start` usage
//!
//! It records every request it receives (method, path, headers, body, HTTP version). It serves
//! plain HTTP/1.1 ([`MockUpstream::start`]) or HTTPS with HTTP/2 by ALPN
//! ([`MockUpstream::start_tls`]).
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, Version};
use axum::response::{IntoResponse, Response};
use futures_util::stream;

use super::serve::{Served, TestCa, serve, serve_tls};

pub const SSE: &[u8] = include_bytes!("../fixtures/responses/anthropic-messages-stream.sse");
pub const SSE_TOOL: &[u8] = include_bytes!("../fixtures/responses/anthropic-messages-stream-tool-use.sse");
/// The model name inside the golden streams.
pub const GOLDEN_MODEL: &str = "claude-sonnet-4-5";

#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub path_and_query: String,
    /// The authority of the request target: `:authority` on HTTP/2 (`None` for an HTTP/1.1
    /// origin-form target, whose authority is the `Host` header).
    pub authority: Option<String>,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// The HTTP version the request came in with.
    pub version: Version,
}

impl Seen {
    pub fn new(method: &Method, uri: &Uri, version: Version, headers: &HeaderMap, body: &Bytes) -> Seen {
        Seen {
            method: method.to_string(),
            path_and_query: uri.path_and_query().map(|p| p.to_string()).unwrap_or_default(),
            authority: uri.authority().map(|a| a.to_string()),
            headers: headers.clone(),
            body: body.clone(),
            version,
        }
    }
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.get(name).map(|v| v.to_str().unwrap_or("").to_string())
    }
    /// The token of `Authorization: Bearer <token>`.
    pub fn bearer(&self) -> Option<String> {
        self.header("authorization")
            .and_then(|v| v.strip_prefix("Bearer ").map(String::from))
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

#[derive(Default)]
pub struct MockState {
    pub seen: Mutex<Vec<Seen>>,
    /// Answer every request with this status (overrides `x-mock-status`).
    pub fixed_status: Mutex<Option<u16>>,
    /// Extra headers on every answer (e.g. `anthropic-ratelimit-unified-*`).
    pub extra_headers: Mutex<Vec<(String, String)>>,
    /// The error message of fixed-status answers.
    pub error_message: Mutex<Option<String>>,
    /// An error answer's body exactly (instead of the one built from the status and message).
    pub error_body: Mutex<Option<String>>,
    /// A 429 without its usual `retry-after: 7`.
    pub no_retry_after: Mutex<bool>,
}

pub struct MockUpstream {
    pub addr: SocketAddr,
    pub state: Arc<MockState>,
    url: String,
    _served: Served,
}

impl MockUpstream {
    /// `http://127.0.0.1:<port>`, or `https://localhost:<port>` for a TLS mock.
    pub fn url(&self) -> String {
        self.url.clone()
    }
    pub fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }
    pub fn hits(&self) -> usize {
        self.state.seen.lock().unwrap().len()
    }
    /// Connections accepted so far (a TLS mock; 0 for a plain one).
    pub fn connections(&self) -> usize {
        self._served.connections.load(std::sync::atomic::Ordering::Relaxed)
    }
    pub fn set_status(&self, s: Option<u16>) {
        *self.state.fixed_status.lock().unwrap() = s;
    }
    pub fn set_headers(&self, h: &[(&str, &str)]) {
        *self.state.extra_headers.lock().unwrap() = h.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    }
    pub fn set_error_message(&self, m: &str) {
        *self.state.error_message.lock().unwrap() = Some(m.to_string());
    }
    pub fn set_error_body(&self, b: &str) {
        *self.state.error_body.lock().unwrap() = Some(b.to_string());
    }
    pub fn set_no_retry_after(&self) {
        *self.state.no_retry_after.lock().unwrap() = true;
    }

    fn router(state: &Arc<MockState>) -> Router {
        Router::new()
            .fallback(handle)
            .layer(axum::extract::DefaultBodyLimit::disable())
            .with_state(state.clone())
    }

    /// A plain HTTP/1.1 mock.
    pub async fn start() -> MockUpstream {
        let state = Arc::new(MockState::default());
        let served = serve(Self::router(&state)).await;
        MockUpstream {
            addr: served.addr,
            url: format!("http://{}", served.addr),
            state,
            _served: served,
        }
    }

    /// An HTTPS mock with `ca`'s certificate for `localhost`, speaking HTTP/2 to clients that
    /// offer ALPN `h2`.
    pub async fn start_tls(ca: &TestCa) -> MockUpstream {
        let state = Arc::new(MockState::default());
        let served = serve_tls(Self::router(&state), ca).await;
        MockUpstream {
            addr: served.addr,
            url: format!("https://localhost:{}", served.addr.port()),
            state,
            _served: served,
        }
    }
}

fn num(h: &HeaderMap, name: &str) -> Option<u64> {
    h.get(name)?.to_str().ok()?.parse().ok()
}

/// The JSON object of header `name`, if the request has it.
fn usage_patch(h: &HeaderMap, name: &str) -> Option<serde_json::Map<String, serde_json::Value>> {
    let v: serde_json::Value = serde_json::from_str(h.get(name)?.to_str().ok()?).ok()?;
    v.as_object().cloned()
}

fn merge(usage: &mut serde_json::Value, patch: &serde_json::Map<String, serde_json::Value>) {
    if let Some(u) = usage.as_object_mut() {
        for (k, v) in patch {
            u.insert(k.clone(), v.clone());
        }
    }
}

/// The stream with `start` merged into `message_start`'s usage and `end` into the final
/// `message_delta`'s.
pub fn patch_stream_usage(
    stream: &[u8],
    start: Option<&serde_json::Map<String, serde_json::Value>>,
    end: Option<&serde_json::Map<String, serde_json::Value>>,
) -> Vec<u8> {
    let text = String::from_utf8_lossy(stream);
    let mut out = String::with_capacity(text.len() + 256);
    for line in text.split_inclusive('\n') {
        let Some(data) = line.strip_prefix("data: ") else {
            out.push_str(line);
            continue;
        };
        let mut v: serde_json::Value = match serde_json::from_str(data.trim_end()) {
            Ok(v) => v,
            Err(_) => {
                out.push_str(line);
                continue;
            }
        };
        match (v["type"].as_str(), start, end) {
            (Some("message_start"), Some(p), _) => merge(&mut v["message"]["usage"], p),
            (Some("message_delta"), _, Some(p)) => merge(&mut v["usage"], p),
            _ => {
                out.push_str(line);
                continue;
            }
        }
        out.push_str("data: ");
        out.push_str(&v.to_string());
        out.push('\n');
    }
    out.into_bytes()
}

/// The golden stream with the model replaced by the one requested (as the real API echoes it).
pub fn stream_for(model: &str, tool: bool) -> Vec<u8> {
    let golden = String::from_utf8_lossy(if tool { SSE_TOOL } else { SSE }).to_string();
    golden
        .replace(
            &format!("\"model\":\"{GOLDEN_MODEL}\""),
            &format!("\"model\":{}", serde_json::to_string(model).unwrap()),
        )
        .into_bytes()
}

/// A non-streaming answer with the same usage as the golden stream.
pub fn json_for(model: &str) -> serde_json::Value {
    serde_json::json!({
        "id": "msg_mock", "type": "message", "role": "assistant", "model": model,
        "content": [{"type": "text", "text": "Hello from mock upstream!"}],
        "stop_reason": "end_turn", "stop_sequence": null,
        "usage": {"input_tokens": 21, "cache_creation_input_tokens": 5, "cache_read_input_tokens": 3,
                  "cache_creation": {"ephemeral_5m_input_tokens": 5, "ephemeral_1h_input_tokens": 0},
                  "output_tokens": 7}
    })
}

/// A non-streaming tool-use answer: the tool-use golden stream's content and usage.
pub fn json_tool_for(model: &str) -> serde_json::Value {
    serde_json::json!({
        "id": "msg_mocktool", "type": "message", "role": "assistant", "model": model,
        "content": [{"type": "text", "text": "Calling a tool."},
                    {"type": "tool_use", "id": "toolu_mockfec7e44682624ba7a9a26294", "name": "Read",
                     "input": {"file_path": "/tmp/x"}}],
        "stop_reason": "tool_use", "stop_sequence": null,
        "usage": {"input_tokens": 21, "cache_creation_input_tokens": 5, "cache_read_input_tokens": 3,
                  "cache_creation": {"ephemeral_5m_input_tokens": 5, "ephemeral_1h_input_tokens": 0},
                  "output_tokens": 7}
    })
}

async fn handle(
    State(state): State<Arc<MockState>>,
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
    if let Some(ms) = num(&headers, "x-mock-delay-ms") {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let fixed = *state.fixed_status.lock().unwrap();
    if let Some(status) = fixed.or_else(|| num(&headers, "x-mock-status").map(|s| s as u16)) {
        let kind = match status {
            429 => "rate_limit_error",
            529 => "overloaded_error",
            401 => "authentication_error",
            400 => "invalid_request_error",
            _ => "api_error",
        };
        let message = state
            .error_message
            .lock()
            .unwrap()
            .clone()
            .unwrap_or_else(|| format!("mock {status}"));
        let body = state.error_body.lock().unwrap().clone().unwrap_or_else(|| {
            serde_json::json!({"type": "error", "error": {"type": kind, "message": message}, "request_id": "req_mock"})
                .to_string()
        });
        let mut r = (
            StatusCode::from_u16(status).unwrap(),
            [("content-type", "application/json")],
            body,
        )
            .into_response();
        if status == 429 && !*state.no_retry_after.lock().unwrap() {
            r.headers_mut().insert("retry-after", "7".parse().unwrap());
        }
        r.headers_mut().insert("request-id", "req_mock".parse().unwrap());
        for (k, v) in state.extra_headers.lock().unwrap().iter() {
            r.headers_mut().insert(
                axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        return r;
    }
    let path = uri.path();
    if path.ends_with("/v1/messages/count_tokens") {
        return axum::Json(serde_json::json!({"input_tokens": 42})).into_response();
    }
    if !path.ends_with("/v1/messages") {
        return (StatusCode::NOT_FOUND, "mock: unknown path").into_response();
    }
    let req: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let model = req["model"].as_str().unwrap_or("unknown").to_string();
    let answer_headers: Vec<(String, String)> = headers
        .get_all("x-mock-answer-header")
        .iter()
        .filter_map(|v| v.to_str().ok()?.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let with_answer_headers = |mut r: Response| {
        for (k, v) in &answer_headers {
            r.headers_mut().append(
                axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        r
    };
    if req["stream"].as_bool() != Some(true) {
        let answer = if headers.contains_key("x-mock-tool") {
            json_tool_for(&model)
        } else {
            json_for(&model)
        };
        let mut answer = answer;
        if let Some(p) = usage_patch(&headers, "x-mock-usage") {
            merge(&mut answer["usage"], &p);
        }
        let mut r = axum::Json(answer).into_response();
        r.headers_mut().insert("request-id", "req_mock".parse().unwrap());
        return with_answer_headers(r);
    }
    let tool = headers.contains_key("x-mock-tool");
    let mut full = stream_for(&model, tool);
    let (start, end) = (
        usage_patch(&headers, "x-mock-usage-start"),
        usage_patch(&headers, "x-mock-usage"),
    );
    if start.is_some() || end.is_some() {
        full = patch_stream_usage(&full, start.as_ref(), end.as_ref());
    }
    if let Some(n) = num(&headers, "x-mock-padding") {
        let ping = format!(
            "event: ping\ndata: {{\"type\":\"ping\",\"padding\":\"{}\"}}\n\n",
            "a".repeat(16 * 1024 - 64)
        );
        let at = full.windows(2).position(|w| w == b"\n\n").map_or(0, |i| i + 2);
        let pad = ping.repeat((n as usize).div_ceil(ping.len()));
        full.splice(at..at, pad.into_bytes());
    }
    if let Some(n) = num(&headers, "x-mock-truncate") {
        full.truncate(n as usize);
    }
    let stall_after = num(&headers, "x-mock-stall-after").map(|n| n as usize);
    let chunk = num(&headers, "x-mock-chunk").unwrap_or(full.len().max(1) as u64).max(1) as usize;
    let delay = Duration::from_millis(num(&headers, "x-mock-chunk-delay-ms").unwrap_or(0));
    let mut parts: Vec<Bytes> = Vec::new();
    let limit = stall_after.unwrap_or(full.len()).min(full.len());
    for c in full[..limit].chunks(chunk) {
        parts.push(Bytes::copy_from_slice(c));
    }
    let stall = stall_after.is_some();
    let s = stream::unfold((parts.into_iter(), true), move |(mut it, first)| async move {
        if !first && !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        match it.next() {
            Some(b) => Some((Ok::<Bytes, std::io::Error>(b), (it, false))),
            None if stall => {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                None
            }
            None => None,
        }
    });
    with_answer_headers(
        Response::builder()
            .status(200)
            .header("content-type", "text/event-stream; charset=utf-8")
            .header("cache-control", "no-cache")
            .header("request-id", "req_mock")
            .header("anthropic-ratelimit-unified-status", "allowed")
            .body(Body::from_stream(s))
            .unwrap(),
    )
}
