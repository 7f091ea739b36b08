//! A test of one account from the admin panel: one small request, sent the way a relayed one
//! would be (the account's wire, credentials, model map and outbound proxy), whose progress is
//! reported line by line as it happens.
//!
//! The request is a Chat Completions request, which every wire can take; the answer goes through
//! the same adapter as a Chat client's, so one reader finds the reply text whatever the wire.
//! Nothing of it reaches the scheduler: a failed test neither marks the account nor is charged
//! to a key.

use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use pingora::http::RequestHeader;
use serde_json::{Value, json};
use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::Relay;
use super::dispatch::{code_assist_project, oauth_credential, outgoing, read_error_body, send};
use super::headers;
use crate::convert;
use crate::convert::answer::{self, Answer, StreamAdapter};
use crate::providers::{self, Call, Operation, Target};
use crate::scheduler::Account;
use crate::store::AccountKind;

/// The output limit of a test request.
const MAX_TOKENS: u64 = 32;

/// The most of a non-streamed answer read.
const MAX_BODY: usize = 1 << 20;

/// The model a test asks for when the administrator names none: one the account lists (the
/// family's cheap model when listed, else the first by name), else the cheap model of the
/// account's family.
pub fn default_model(account: &Account) -> String {
    let cheap = match account.kind {
        AccountKind::OpenAi | AccountKind::AzureOpenAi => "gpt-4o-mini",
        AccountKind::OpenAiOauth => "gpt-5",
        AccountKind::GeminiApi | AccountKind::GeminiOauth => "gemini-2.5-flash",
        AccountKind::Ccr => "ccr,claude-haiku-4-5",
        _ => "claude-haiku-4-5",
    };
    if let Some(models) = &account.models {
        if models.contains(cheap) {
            return cheap.to_string();
        }
        if let Some(first) = models.iter().min() {
            return first.clone();
        }
    }
    cheap.to_string()
}

/// Whether the account can be tested: an account that forwards its clients' credentials has
/// none of its own to test with.
pub fn testable(account: &Account) -> Result<(), String> {
    let provider = providers::provider(account.kind);
    if provider.forwards_client_credentials() {
        return Err(format!(
            "a {} account forwards its clients' credentials and has none of its own to test",
            account.kind.as_str()
        ));
    }
    if convert::conversion(Operation::Chat, provider.wire()).is_none() {
        return Err(format!("{} accounts cannot be tested", account.kind.as_str()));
    }
    Ok(())
}

/// Where the lines of a test go: NDJSON, each line flushed as it is written.
pub struct Lines<W>(pub W);

impl<W: AsyncWrite + Unpin + Send> Lines<W> {
    /// Writes one line; `false` when nobody reads any more (the test then stops).
    async fn line(&mut self, v: Value) -> bool {
        let mut b = v.to_string().into_bytes();
        b.push(b'\n');
        self.0.write_all(&b).await.is_ok() && self.0.flush().await.is_ok()
    }
}

/// Runs a test of `account` with `model` (the name a client would ask for; the account's model
/// map applies) and `prompt`. The last line is `done` or `error`.
pub async fn run<W: AsyncWrite + Unpin + Send>(
    relay: &Relay,
    account: Arc<Account>,
    model: &str,
    prompt: &str,
    out: &mut Lines<W>,
) {
    let started = Instant::now();
    let ms = |t: Instant| t.elapsed().as_millis() as u64;
    let upstream_model = account.upstream_model(model).to_string();
    let provider = providers::provider(account.kind);
    let Some((conversion, upstream_op)) = convert::conversion(Operation::Chat, provider.wire()) else {
        out.line(error(format!("{} accounts cannot be tested", account.kind.as_str())))
            .await;
        return;
    };
    let body = Bytes::from(
        json!({
            "model": model,
            "messages": [{"role": "user", "content": prompt}],
            "max_completion_tokens": MAX_TOKENS,
            "stream": true,
            "stream_options": {"include_usage": true},
        })
        .to_string(),
    );
    let parsed = match super::body::parse_with_headers(&body, true, None) {
        Ok(p) => p,
        Err(e) => {
            out.line(error(e.message())).await;
            return;
        }
    };
    let o = match outgoing(conversion, upstream_op, &body, &parsed, &upstream_model) {
        Ok(o) => o,
        Err(e) => {
            out.line(error(format!("the test request cannot be sent to this account: {e}")))
                .await;
            return;
        }
    };
    let (live, _) = match oauth_credential(relay, &account).await {
        Ok(c) => c,
        Err(e) => {
            out.line(error(e.message())).await;
            return;
        }
    };
    let project = match code_assist_project(relay, &account, live.as_ref()).await {
        Ok(p) => p,
        Err(e) => {
            out.line(error(e.message())).await;
            return;
        }
    };
    let client = match client_head() {
        Ok(h) => h,
        Err(e) => {
            out.line(error(format!("building the test request: {e}"))).await;
            return;
        }
    };
    let call = Call {
        op: upstream_op,
        client: &client,
        query: o.query.unwrap_or(None),
        body: &o.body,
        upstream_model: &upstream_model,
        stream: o.stream,
    };
    let target = Target {
        base: &account.base,
        credential: &account.credential,
        live: live.as_ref(),
        project: project.as_deref().map(String::as_str),
    };
    let mut prepared = match provider.prepare(&relay.providers, &call, &target) {
        Ok(p) => p,
        Err(e) => {
            out.line(error(e.to_string())).await;
            return;
        }
    };
    if let Err(e) = prepared.head.append_header(headers::HOPS, relay.hop_id.as_str()) {
        out.line(error(format!("building the test request: {e}"))).await;
        return;
    }
    let wire_model = prepared.wire_model.take().unwrap_or_else(|| upstream_model.clone());
    if !out
        .line(json!({"type": "start", "model": model, "upstream_model": wire_model}))
        .await
    {
        return;
    }
    let sent = Instant::now();
    let (mut up, _peer) = match send(relay, &account, &prepared.head, &prepared.body).await {
        Ok(s) => s,
        Err(e) => {
            out.line(error(e.message())).await;
            return;
        }
    };
    let ttfb_ms = ms(sent);
    let Some(head) = up.response_header().cloned() else {
        out.line(error("the upstream sent no response head".into())).await;
        return;
    };
    let status = head.status.as_u16();
    if !out
        .line(json!({"type": "status", "status": status, "ttfb_ms": ttfb_ms}))
        .await
    {
        return;
    }
    let done = |ok: bool, usage: Option<crate::usage::TokenUsage>, message: Option<String>| {
        let mut d = json!({"type": "done", "ok": ok, "status": status, "duration_ms": ms(started)});
        if let Some(u) = usage.filter(|u| u.input > 0 || u.output > 0) {
            d["usage"] = json!({"input_tokens": u.input, "output_tokens": u.output});
        }
        if let Some(m) = message {
            d["message"] = Value::String(m);
        }
        d
    };
    if !(200..300).contains(&status) {
        let raw = read_error_body(relay, &mut up).await;
        out.line(done(false, None, Some(error_message(&raw, status)))).await;
        return;
    }
    if !answer::is_stream(prepared.response, status, &head.headers) {
        let raw = read_whole(relay, &mut up).await;
        let v: Value = serde_json::from_slice(&raw).unwrap_or(Value::Null);
        let text = json_text(&v);
        if !text.is_empty() && !out.line(json!({"type": "text", "text": text})).await {
            return;
        }
        out.line(done(true, None, None)).await;
        return;
    }
    let answer = Answer {
        kind: prepared.response,
        conversion,
        client_model: model,
        rename: None,
        include_usage: true,
        strip_usage: o.strip_usage,
        collect: false,
    };
    let mut adapter = StreamAdapter::new(&answer);
    let mut lines = ChatLines::default();
    let idle = relay.config.timeouts.stream_idle.0;
    loop {
        let chunk = match tokio::time::timeout(idle, up.read_response_body()).await {
            Ok(Ok(Some(c))) => adapter.push(c),
            Ok(Ok(None)) => {
                let last = adapter.finish();
                if let Some(b) = last {
                    lines.feed(&b);
                }
                break;
            }
            Ok(Err(e)) => {
                out.line(done(
                    false,
                    Some(adapter.usage()),
                    Some(format!("the stream broke: {e}")),
                ))
                .await;
                return;
            }
            Err(_) => {
                let m = format!("the stream was silent for {}s", idle.as_secs());
                out.line(done(false, Some(adapter.usage()), Some(m))).await;
                return;
            }
        };
        if let Some(b) = chunk {
            lines.feed(&b);
        }
        for text in lines.texts.drain(..) {
            if !out.line(json!({"type": "text", "text": text})).await {
                return;
            }
        }
    }
    for text in lines.texts.drain(..) {
        if !out.line(json!({"type": "text", "text": text})).await {
            return;
        }
    }
    let ok = lines.error.is_none();
    out.line(done(ok, Some(adapter.usage()), lines.error)).await;
}

fn error(message: String) -> Value {
    json!({"type": "error", "message": message})
}

/// The head of the Chat Completions request the test stands for.
fn client_head() -> pingora::Result<RequestHeader> {
    let mut h = RequestHeader::build("POST", b"/v1/chat/completions", Some(2))?;
    h.insert_header(http::header::CONTENT_TYPE, "application/json")?;
    h.insert_header(
        http::header::USER_AGENT,
        concat!("claude-relay/", env!("CARGO_PKG_VERSION")),
    )?;
    Ok(h)
}

async fn read_whole(relay: &Relay, up: &mut pingora::protocols::http::client::HttpSession) -> Bytes {
    let mut buf = BytesMut::new();
    let idle = relay.config.timeouts.stream_idle.0;
    while buf.len() < MAX_BODY {
        match tokio::time::timeout(idle, up.read_response_body()).await {
            Ok(Ok(Some(c))) => buf.extend_from_slice(&c[..c.len().min(MAX_BODY - buf.len())]),
            _ => break,
        }
    }
    buf.freeze()
}

/// The message of an upstream's error body, in any of the wires' shapes (Anthropic, OpenAI,
/// Google, AWS), else its start as text.
pub fn error_message(raw: &[u8], status: u16) -> String {
    let v: Value = serde_json::from_slice(raw).unwrap_or(Value::Null);
    let v = match &v {
        Value::Array(a) => a.first().cloned().unwrap_or(Value::Null),
        _ => v,
    };
    let found = v["error"]["message"]
        .as_str()
        .or_else(|| v["error"].as_str())
        .or_else(|| v["message"].as_str())
        .or_else(|| v["Message"].as_str())
        .or_else(|| v["detail"].as_str());
    let text = match found {
        Some(m) => m.trim().to_string(),
        None => String::from_utf8_lossy(raw).trim().to_string(),
    };
    if text.is_empty() {
        return format!("the upstream answered {status}");
    }
    text.chars().take(500).collect()
}

/// The reply text of a whole answer in any wire's shape.
fn json_text(v: &Value) -> String {
    let mut out = String::new();
    if let Some(c) = v["choices"][0]["message"]["content"].as_str() {
        out.push_str(c);
    }
    for part in v["content"].as_array().into_iter().flatten() {
        out.push_str(part["text"].as_str().unwrap_or_default());
    }
    let gemini = if v["response"].is_object() { &v["response"] } else { v };
    for part in gemini["candidates"][0]["content"]["parts"]
        .as_array()
        .into_iter()
        .flatten()
    {
        out.push_str(part["text"].as_str().unwrap_or_default());
    }
    out
}

/// Reads Chat Completions chunks (SSE) for their reply text and a failure the stream reports.
#[derive(Default)]
struct ChatLines {
    held: Vec<u8>,
    texts: Vec<String>,
    error: Option<String>,
}

impl ChatLines {
    fn feed(&mut self, bytes: &[u8]) {
        self.held.extend_from_slice(bytes);
        while let Some(end) = self.held.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.held.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line);
            let Some(data) = line.trim().strip_prefix("data:") else {
                continue;
            };
            let data = data.trim();
            if data == "[DONE]" {
                continue;
            }
            let Ok(v) = serde_json::from_str::<Value>(data) else {
                continue;
            };
            if v["error"].is_object() || v["error"].is_string() {
                self.error = Some(error_message(data.as_bytes(), 200));
                continue;
            }
            if let Some(t) = v["choices"][0]["delta"]["content"].as_str().filter(|t| !t.is_empty()) {
                self.texts.push(t.to_string());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_chunks_give_text_and_errors() {
        let mut l = ChatLines::default();
        l.feed(b"data: {\"choices\":[{\"delta\":{\"content\":\"Hel");
        assert!(l.texts.is_empty());
        l.feed(b"lo\"}}]}\n\ndata: {\"choices\":[{\"delta\":{\"content\":\" there\"}}]}\n\ndata: [DONE]\n\n");
        assert_eq!(l.texts, ["Hello", " there"]);
        assert!(l.error.is_none());
        l.feed(b"data: {\"error\":{\"message\":\"Overloaded\",\"type\":\"overloaded_error\"}}\n\n");
        assert_eq!(l.error.as_deref(), Some("Overloaded"));
    }

    #[test]
    fn error_messages_of_every_wire() {
        let anthropic = br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;
        assert_eq!(error_message(anthropic, 529), "Overloaded");
        let google = br#"[{"error":{"code":429,"message":"Quota exceeded","status":"RESOURCE_EXHAUSTED"}}]"#;
        assert_eq!(error_message(google, 429), "Quota exceeded");
        assert_eq!(error_message(br#"{"Message":"denied"}"#, 403), "denied");
        assert_eq!(error_message(b"bad gateway", 502), "bad gateway");
        assert_eq!(error_message(b"", 502), "the upstream answered 502");
    }

    #[test]
    fn whole_answers_give_text() {
        assert_eq!(json_text(&json!({"choices": [{"message": {"content": "hi"}}]})), "hi");
        assert_eq!(json_text(&json!({"content": [{"type": "text", "text": "hi"}]})), "hi");
        assert_eq!(
            json_text(&json!({"response": {"candidates": [{"content": {"parts": [{"text": "hi"}]}}]}})),
            "hi"
        );
    }
}
