//! The OpenAI dialects through the real binary: Chat Completions and Responses clients (recorded
//! requests of the OpenAI SDK and Codex CLI) against mock OpenAI, Azure OpenAI, Anthropic and
//! Bedrock upstreams on sockets. What the upstream receives, what the client gets back, usage and
//! cost, failover and account health, key limits, stickiness, errors, the model list and the Codex
//! rate-limit windows.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::io::Write as _;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::bedrock_mock::{BedrockCreds, BedrockMock};
use support::mock::{MockUpstream, Seen};
use support::openai_mock::{
    Fault, JSON_USAGE, OpenAiMock, STREAM_USAGE, Tokens, chat_json, chat_stream, chat_usage_event, responses_stream,
};
use support::{ALICE, RelayProcess, account_yaml, client, eventually, fixture, metric};

const OA_KEY: &str = "sk-mock-openai-upstream-0001";
const OA_KEY_2: &str = "sk-mock-openai-upstream-0002";
const AZ_KEY: &str = "azure-mock-upstream-key-0001";
const AZ_KEY_2: &str = "azure-mock-upstream-key-0002";

/// gpt-5's prices in `conf/pricing.json`, in nano-USD per token (gpt-5-codex and the dated
/// gpt-5 have the same).
const GPT5_INPUT: u64 = 1_250;
const GPT5_CACHE_READ: u64 = 125;
const GPT5_OUTPUT: u64 = 10_000;

/// claude-sonnet-4-5's prices in `conf/pricing.json` (nano-USD per token): input, cache read,
/// cache write 5m, output.
const SONNET: [u64; 4] = [3_000, 300, 3_750, 15_000];
/// The same for its Bedrock id in the US geography.
const SONNET_US_PRICES: [u64; 4] = [3_300, 330, 4_125, 16_500];
/// The Bedrock id `claude-sonnet-4-5` becomes in `us-east-1`.
const SONNET_US: &str = "us.anthropic.claude-sonnet-4-5-20250929-v1:0";

/// What an OpenAI answer with these tokens costs on gpt-5 (`prompt` includes the cached tokens).
fn gpt5_cost(t: Tokens) -> u64 {
    (t.prompt - t.cached) * GPT5_INPUT + t.cached * GPT5_CACHE_READ + t.completion * GPT5_OUTPUT
}

/// What the golden Anthropic answer (21 input, 3 cache read, 5 cache write, 7 output) costs.
fn anthropic_cost(p: [u64; 4]) -> u64 {
    21 * p[0] + 3 * p[1] + 5 * p[2] + 7 * p[3]
}

fn openai_yaml(name: &str, mock: &OpenAiMock, extra: &str) -> String {
    format!(
        "  - {{ name: {name}, kind: openai, base_url: \"{}\", api_key: {}{extra} }}\n",
        mock.base_url(),
        mock.state.key
    )
}

fn azure_yaml(name: &str, mock: &OpenAiMock, extra: &str) -> String {
    format!(
        "  - {{ name: {name}, kind: azure-openai, base_url: \"{}\", api_key: {}{extra} }}\n",
        mock.base_url(),
        mock.state.key
    )
}

async fn post_as(
    relay: &RelayProcess,
    key: &str,
    path: &str,
    body: impl Into<reqwest::Body>,
    headers: &[(&str, &str)],
) -> reqwest::Response {
    let mut req = client()
        .post(format!("{}{path}", relay.base()))
        .bearer_auth(key)
        .header("content-type", "application/json");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.body(body).send().await.unwrap()
}

async fn post(relay: &RelayProcess, path: &str, body: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    post_as(relay, ALICE, path, body.to_string(), headers).await
}

/// Status, headers and body of an answer, read whole.
async fn read(r: reqwest::Response) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let body = r.bytes().await.unwrap().to_vec();
    (status, headers, body)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn json_of(b: &[u8]) -> Value {
    serde_json::from_slice(b).unwrap_or_else(|e| panic!("not JSON ({e}): {}", text(b)))
}

fn content_type(h: &reqwest::header::HeaderMap) -> String {
    h.get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default()
}

/// Asserts an error in OpenAI's shape (`{"error":{"message","type","code"}}`, no Anthropic
/// `type: error`) and returns it.
fn assert_openai_error(status: u16, got_status: u16, body: &[u8], what: &str) -> Value {
    assert_eq!(got_status, status, "{what}: {}", text(body));
    let v = json_of(body);
    assert!(v.get("type").is_none(), "{what}: an Anthropic-shaped error: {v}");
    assert!(
        v["error"]["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{what}: {v}"
    );
    assert!(v["error"]["type"].is_string(), "{what}: {v}");
    v
}

/// The usage totals of one subject, once `requests` requests are counted.
async fn totals(relay: &RelayProcess, dimension: &str, id: &str, requests: u64) -> Value {
    let token = relay.admin_token().await;
    let got = eventually(|| async {
        let v: Value = client()
            .get(format!(
                "{}/admin/api/usage?dimension={dimension}&id={id}&granularity=minute",
                relay.admin()
            ))
            .bearer_auth(&token)
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        (v["totals"]["requests"] == requests).then(|| v["totals"].clone())
    })
    .await;
    // Nothing more arrives later.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let again: Value = client()
        .get(format!(
            "{}/admin/api/usage?dimension={dimension}&id={id}&granularity=minute",
            relay.admin()
        ))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(again["totals"], got, "usage still moving");
    got
}

/// Asserts input (without cache), cache read, cache write (5m), output and cost totals.
fn assert_usage(t: &Value, input: u64, cache_read: u64, cache_write: u64, output: u64, cost_nanos: u64) {
    assert_eq!(t["input_tokens"], input, "input: {t}");
    assert_eq!(t["cache_read_tokens"], cache_read, "cache read: {t}");
    assert_eq!(t["cache_write_5m_tokens"], cache_write, "cache write: {t}");
    assert_eq!(t["output_tokens"], output, "output: {t}");
    assert_eq!(t["cost_nanos"], cost_nanos, "cost: {t}");
    assert_eq!(t["unpriced_requests"], 0, "{t}");
}

/// An account's admin view (`config.<name>`).
async fn account_view(relay: &RelayProcess, token: &str, name: &str) -> Value {
    let r = client()
        .get(format!("{}/admin/api/accounts/config.{name}", relay.admin()))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn assert_near(v: &Value, want: i64, slack_ms: i64, what: &str) {
    let got = v.as_i64().unwrap_or_else(|| panic!("{what}: not a number: {v}"));
    assert!((got - want).abs() <= slack_ms, "{what}: {got}, want about {want}");
}

/// The client's request as the recorded fixture has it: (path, headers, raw body).
fn recorded(name: &str, index: usize) -> (String, Vec<(String, String)>, String) {
    let (_, path, _, headers, body) = fixture(name).swap_remove(index);
    (path, headers, body.unwrap())
}

/// The recorded headers to replay: all but the connection's own and the recorded key.
fn replayable(headers: &[(String, String)]) -> Vec<(String, String)> {
    headers
        .iter()
        .filter(|(k, _)| {
            !["host", "content-length", "authorization", "connection"].contains(&k.to_ascii_lowercase().as_str())
        })
        .cloned()
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Chat Completions streams as read by a client

/// What a Chat Completions chunk stream carries.
#[derive(Debug, Default)]
struct ChatStream {
    ids: Vec<String>,
    models: Vec<String>,
    role: Option<String>,
    text: String,
    /// (id, name, arguments) by tool call index.
    tool_calls: Vec<(String, String, String)>,
    finish: Vec<String>,
    /// The usage-only chunk's usage.
    usage: Option<Value>,
    /// `data: [DONE]` came last.
    done: bool,
}

fn read_chat_stream(body: &[u8]) -> ChatStream {
    let s = text(body);
    let mut out = ChatStream::default();
    let lines: Vec<&str> = s.lines().filter_map(|l| l.strip_prefix("data: ")).collect();
    for (i, data) in lines.iter().enumerate() {
        if *data == "[DONE]" {
            assert_eq!(i, lines.len() - 1, "[DONE] is not last: {s}");
            out.done = true;
            continue;
        }
        let v: Value = serde_json::from_str(data).unwrap_or_else(|e| panic!("bad chunk {data}: {e}"));
        assert_eq!(v["object"], "chat.completion.chunk", "{v}");
        out.ids.push(v["id"].as_str().unwrap_or_default().to_string());
        out.models.push(v["model"].as_str().unwrap_or_default().to_string());
        let choices = v["choices"].as_array().unwrap_or_else(|| panic!("no choices: {v}"));
        if choices.is_empty() {
            assert!(v["usage"].is_object(), "a chunk without choices nor usage: {v}");
            out.usage = Some(v["usage"].clone());
            continue;
        }
        let c = &choices[0];
        assert_eq!(c["index"], 0, "{v}");
        let d = &c["delta"];
        if let Some(r) = d["role"].as_str() {
            out.role.get_or_insert(r.to_string());
        }
        if let Some(t) = d["content"].as_str() {
            out.text.push_str(t);
        }
        for tc in d["tool_calls"].as_array().into_iter().flatten() {
            let idx = tc["index"]
                .as_u64()
                .unwrap_or_else(|| panic!("tool call without index: {v}")) as usize;
            if idx == out.tool_calls.len() {
                out.tool_calls.push((String::new(), String::new(), String::new()));
            }
            let entry = &mut out.tool_calls[idx];
            if let Some(id) = tc["id"].as_str() {
                entry.0 = id.to_string();
                assert_eq!(tc["type"], "function", "{v}");
            }
            if let Some(n) = tc["function"]["name"].as_str() {
                entry.1.push_str(n);
            }
            if let Some(a) = tc["function"]["arguments"].as_str() {
                entry.2.push_str(a);
            }
        }
        if let Some(f) = c["finish_reason"].as_str() {
            out.finish.push(f.to_string());
        }
    }
    out
}

impl ChatStream {
    /// One id and the client's model on every chunk, `[DONE]` at the end, the role given.
    fn assert_well_formed(&self, model: &str) {
        assert!(!self.ids.is_empty(), "no chunks");
        assert!(!self.ids[0].is_empty(), "chunks without id");
        assert!(self.ids.iter().all(|i| *i == self.ids[0]), "ids differ: {:?}", self.ids);
        assert!(self.models.iter().all(|m| m == model), "models: {:?}", self.models);
        assert_eq!(self.role.as_deref(), Some("assistant"));
        assert!(self.done, "no [DONE]");
    }
}

/// The text of an Anthropic content value: a string or text blocks.
fn anthropic_text(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(blocks) => blocks
            .iter()
            .filter(|b| b["type"] == "text")
            .map(|b| b["text"].as_str().unwrap_or_default())
            .collect(),
        _ => String::new(),
    }
}

// ---------------------------------------------------------------------------------------------
// The mock itself

#[tokio::test]
async fn openai_mock_speaks_openai_and_azure() {
    let oa = OpenAiMock::openai(OA_KEY).await;
    let c = client();
    let url = format!("{}/chat/completions", oa.base_url());
    let body = r#"{"model":"gpt-5","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    let r = c.post(&url).bearer_auth("sk-wrong").body(body).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(json_of(&r.bytes().await.unwrap())["error"]["code"], "invalid_api_key");
    let r = c.post(&url).bearer_auth(OA_KEY).body(body).send().await.unwrap();
    let (status, _, b) = read(r).await;
    assert_eq!(status, 200);
    assert!(!text(&b).contains("usage"), "usage not asked: {}", text(&b));
    assert_eq!(b, chat_stream("gpt-5", false));
    let asked = r#"{"model":"gpt-5","stream":true,"stream_options":{"include_usage":true},"messages":[]}"#;
    let b = c
        .post(&url)
        .bearer_auth(OA_KEY)
        .body(asked)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(
        &b[..],
        include_bytes!("fixtures/responses/openai-chat-stream-include-usage.sse")
    );
    let wrong = r#"{"model":"gpt-5","stream_options":{"include_usage":true},"messages":[]}"#;
    let r = c.post(&url).bearer_auth(OA_KEY).body(wrong).send().await.unwrap();
    assert_eq!(r.status(), 400, "stream_options without stream");
    let r = c
        .post(&url)
        .bearer_auth(OA_KEY)
        .header("x-mock-status", "429")
        .header("x-mock-error-code", "insufficient_quota")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(
        json_of(&r.bytes().await.unwrap())["error"]["type"],
        "insufficient_quota"
    );

    let az = OpenAiMock::azure(AZ_KEY, &[("dep", "gpt-5-2025-08-07")]).await;
    let chat = |path: &str| format!("{}{path}", az.url());
    let b = r#"{"messages":[{"role":"user","content":"hi"}]}"#;
    for (path, key, want) in [
        (
            "/openai/deployments/dep/chat/completions?api-version=2024-10-21",
            AZ_KEY,
            200,
        ),
        (
            "/openai/deployments/dep/chat/completions?api-version=2024-10-21",
            "nope",
            401,
        ),
        (
            "/openai/deployments/dep/chat/completions?api-version=preview",
            AZ_KEY,
            400,
        ),
        ("/openai/deployments/dep/chat/completions", AZ_KEY, 400),
        (
            "/openai/deployments/other/chat/completions?api-version=2024-10-21",
            AZ_KEY,
            404,
        ),
    ] {
        let r = c.post(chat(path)).header("api-key", key).body(b).send().await.unwrap();
        assert_eq!(r.status(), want, "{path} with {key}");
    }
    let r = c
        .post(chat("/openai/v1/responses"))
        .header("api-key", AZ_KEY)
        .body(r#"{"model":"dep","input":"hi"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(json_of(&r.bytes().await.unwrap())["object"], "response");
    let r = c
        .post(chat("/openai/responses"))
        .header("api-key", AZ_KEY)
        .body(r#"{"model":"dep","input":"hi"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400, "the dated Responses path needs a dated api-version");
    assert_eq!(az.hits(), 7);
}

// ---------------------------------------------------------------------------------------------
// Chat Completions to `openai` accounts

async fn openai_relay(mock: &OpenAiMock) -> RelayProcess {
    RelayProcess::start(&format!(
        "accounts:\n{}",
        openai_yaml("oa", mock, ", model_map: { gpt-5: gpt-5-2025-08-07 }")
    ))
    .await
}

#[tokio::test]
async fn chat_streams_to_openai_with_usage_asked_for_and_hidden_unless_the_client_asked() {
    let mock = OpenAiMock::openai(OA_KEY).await;
    let relay = openai_relay(&mock).await;

    // The client did not ask for usage: the relay asks, bills, and hides the usage chunk.
    let body = r#"{"model":"gpt-5","stream":true,"messages":[{"role":"user","content":"say hi"}],"temperature":0.2}"#;
    let (status, h, got) = read(post(&relay, "/openai/v1/chat/completions", body, &[]).await).await;
    assert_eq!(status, 200, "{}", text(&got));
    assert!(content_type(&h).starts_with("text/event-stream"), "{h:?}");
    let upstream_sent = text(&mock.answers()[0]);
    assert!(upstream_sent.contains("\"model\":\"gpt-5-2025-08-07\""));
    assert!(upstream_sent.contains(&chat_usage_event("gpt-5-2025-08-07")));
    let want = text(&chat_stream("gpt-5", true)).replace(&chat_usage_event("gpt-5"), "");
    assert_eq!(
        text(&got),
        want,
        "the upstream's chunks, its model named as asked, no usage chunk"
    );

    let s = &mock.seen()[0];
    assert_eq!(s.path_and_query, "/v1/chat/completions");
    assert_eq!(s.header("authorization").as_deref(), Some(&*format!("Bearer {OA_KEY}")));
    let sent = s.json();
    assert_eq!(sent["model"], "gpt-5-2025-08-07");
    assert_eq!(sent["stream_options"], json!({"include_usage": true}));
    let mut rest = sent.clone();
    rest.as_object_mut().unwrap().remove("stream_options");
    rest["model"] = json!("gpt-5");
    assert_eq!(rest, json_of(body.as_bytes()), "nothing else changes");

    // The OpenAI SDK's recorded request, which asks for usage: every chunk comes back.
    let (path, headers, body) = recorded("sdk-openai", 0);
    assert_eq!(path, "/v1/chat/completions");
    let hs: Vec<(String, String)> = replayable(&headers);
    let hs: Vec<(&str, &str)> = hs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let (status, _, got) = read(post(&relay, &path, &body, &hs).await).await;
    assert_eq!(status, 200, "{}", text(&got));
    assert_eq!(
        got,
        include_bytes!("fixtures/responses/openai-chat-stream-include-usage.sse").to_vec(),
        "exactly the upstream's chunks, the usage chunk included"
    );
    let s = &mock.seen()[1];
    assert_eq!(
        text(&s.body),
        body.replacen("\"model\": \"gpt-5\"", "\"model\": \"gpt-5-2025-08-07\"", 1),
        "only the model value changes"
    );
    assert_eq!(s.header("x-stainless-package-version").as_deref(), Some("3.57.0"));
    assert_eq!(s.header("user-agent").as_deref(), Some("OpenAI/Python 3.57.0"));

    // `include_usage: false` is the same as not asking.
    let body = r#"{"model":"gpt-5","stream":true,"stream_options":{"include_usage":false},"messages":[{"role":"user","content":"say hi"}]}"#;
    let (status, _, got) = read(post(&relay, "/api/v1/chat/completions", body, &[]).await).await;
    assert_eq!(status, 200, "{}", text(&got));
    assert_eq!(text(&got), want);
    assert_eq!(mock.seen()[2].json()["stream_options"], json!({"include_usage": true}));

    // The upstream breaks the stream: the client gets what came, then an error chunk and
    // `[DONE]`; the request counts as an error.
    let body = r#"{"model":"gpt-5","stream":true,"messages":[{"role":"user","content":"say hi"}]}"#;
    let cut = [
        ("x-mock-cut-before", "\"finish_reason\":\"stop\""),
        ("x-mock-abort", "1"),
    ];
    let (status, _, got) = read(post(&relay, "/openai/v1/chat/completions", body, &cut).await).await;
    assert_eq!(status, 200);
    let came = text(&mock.answers()[3]).replace("\"model\":\"gpt-5-2025-08-07\"", "\"model\":\"gpt-5\"");
    let got = text(&got);
    assert!(got.starts_with(&came), "{got}");
    let tail: Vec<&str> = got[came.len()..].lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(tail.len(), 2, "{got}");
    let err: Value = serde_json::from_str(tail[0].strip_prefix("data: ").unwrap()).unwrap();
    assert!(err["error"]["message"].is_string(), "{err}");
    assert_eq!(tail[1], "data: [DONE]");

    let t = totals(&relay, "key", "config.alice", 4).await;
    let u = STREAM_USAGE;
    assert_usage(
        &t,
        3 * (u.prompt - u.cached),
        3 * u.cached,
        0,
        3 * u.completion,
        3 * gpt5_cost(u),
    );
    assert_eq!(t["errors"], 1);
    let by_model = totals(&relay, "model", "gpt-5-2025-08-07", 4).await;
    assert_eq!(by_model["cost_nanos"], 3 * gpt5_cost(u), "priced as the upstream model");
}

#[tokio::test]
async fn chat_json_to_openai_passes_the_answer_and_bills_cached_and_reasoning_tokens() {
    let mock = OpenAiMock::openai(OA_KEY).await;
    let relay = openai_relay(&mock).await;
    let (path, headers, body) = recorded("sdk-openai", 1);
    let hs: Vec<(String, String)> = replayable(&headers);
    let hs: Vec<(&str, &str)> = hs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert_eq!(path, "/v1/chat/completions");
    for p in [
        "/v1/chat/completions",
        "/api/v1/chat/completions",
        "/openai/chat/completions",
    ] {
        let (status, h, got) = read(post(&relay, p, &body, &hs).await).await;
        assert_eq!(status, 200, "{p}: {}", text(&got));
        assert!(content_type(&h).starts_with("application/json"), "{h:?}");
        assert_eq!(
            json_of(&got),
            chat_json("gpt-5"),
            "{p}: the upstream's answer, named as asked"
        );
    }
    for s in mock.seen() {
        assert_eq!(s.path_and_query, "/v1/chat/completions");
        let sent = s.json();
        assert_eq!(sent["model"], "gpt-5-2025-08-07");
        assert!(
            sent.get("stream_options").is_none(),
            "no usage asked of a JSON answer: {sent}"
        );
    }
    let t = totals(&relay, "key", "config.alice", 3).await;
    let u = JSON_USAGE;
    assert_usage(
        &t,
        3 * (u.prompt - u.cached),
        3 * u.cached,
        0,
        3 * u.completion,
        3 * gpt5_cost(u),
    );
}

// ---------------------------------------------------------------------------------------------
// Responses, byte for byte

#[tokio::test]
async fn codex_responses_pass_byte_for_byte_with_codex_headers_and_usage() {
    let mock = OpenAiMock::openai(OA_KEY).await;
    let relay = RelayProcess::start(&format!("accounts:\n{}", openai_yaml("oa", &mock, ""))).await;
    let (path, headers, body) = recorded("codex", 0);
    assert_eq!(path, "/v1/responses");
    let client_json = json_of(body.as_bytes());
    let tool_types: Vec<&str> = client_json["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["type"].as_str().unwrap())
        .collect();
    assert!(tool_types.contains(&"namespace") && tool_types.contains(&"web_search"));
    let mut hs = replayable(&headers);
    hs.push(("openai-organization".into(), "org-client".into()));
    hs.push(("openai-project".into(), "proj_client".into()));
    let hs: Vec<(&str, &str)> = hs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();

    for (i, path) in ["/openai/v1/responses", "/v1/responses"].into_iter().enumerate() {
        let (status, h, got) = read(post(&relay, path, &body, &hs).await).await;
        assert_eq!(status, 200, "{path}: {}", text(&got));
        assert!(content_type(&h).starts_with("text/event-stream"), "{h:?}");
        assert_eq!(got, mock.answers()[i].to_vec(), "{path}: the upstream's bytes");
        assert_eq!(got, responses_stream("gpt-5-codex", false));
        assert!(
            h.get("openai-organization").is_none(),
            "the upstream's organization is hidden"
        );
        assert_eq!(h["x-request-id"], "req_mock_openai");

        let s = &mock.seen()[i];
        assert_eq!(s.path_and_query, "/v1/responses");
        assert_eq!(&s.body[..], body.as_bytes(), "{path}: the client's body, byte for byte");
        assert_eq!(s.json()["tools"], client_json["tools"]);
        assert_eq!(s.json()["model"], "gpt-5-codex");
        for name in [
            "session-id",
            "thread-id",
            "originator",
            "x-client-request-id",
            "x-codex-beta-features",
            "x-codex-window-id",
            "x-codex-turn-metadata",
            "user-agent",
            "accept",
        ] {
            let sent = headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
            assert!(sent.is_some(), "{name} is in the recording");
            assert_eq!(s.header(name), sent, "{name} reaches the upstream");
        }
        assert_eq!(s.header("openai-organization"), None);
        assert_eq!(s.header("openai-project"), None);
        assert_eq!(s.header("authorization").as_deref(), Some(&*format!("Bearer {OA_KEY}")));
        assert_no_relay_key(s);
    }

    let t = totals(&relay, "model", "gpt-5-codex", 2).await;
    let u = STREAM_USAGE;
    assert_usage(
        &t,
        2 * (u.prompt - u.cached),
        2 * u.cached,
        0,
        2 * u.completion,
        2 * gpt5_cost(u),
    );
}

fn assert_no_relay_key(s: &Seen) {
    for (name, value) in &s.headers {
        assert!(
            !value.to_str().unwrap_or("").contains(ALICE),
            "the relay key travels upstream in {name}"
        );
    }
    assert!(!s.path_and_query.contains(ALICE));
    assert!(!text(&s.body).contains(ALICE));
}

#[tokio::test]
async fn responses_function_calls_json_answers_and_broken_streams() {
    let mock = OpenAiMock::openai(OA_KEY).await;
    let relay = RelayProcess::start(&format!("accounts:\n{}", openai_yaml("oa", &mock, ""))).await;
    let (_, headers, sdk_body) = recorded("sdk-openai", 2);
    let hs: Vec<(String, String)> = replayable(&headers);
    let mut hs: Vec<(&str, &str)> = hs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();

    let (status, _, got) = read(post(&relay, "/openai/responses", &sdk_body, &hs).await).await;
    assert_eq!(status, 200, "{}", text(&got));
    assert_eq!(got, responses_stream("gpt-5", false));

    hs.push(("x-mock-tool", "1"));
    let (status, _, got) = read(post(&relay, "/openai/v1/responses", &sdk_body, &hs).await).await;
    assert_eq!(status, 200);
    assert_eq!(
        got,
        responses_stream("gpt-5", true),
        "the function-call events, untouched"
    );

    let json_body = r#"{"model":"gpt-5","input":"say hi","store":false}"#;
    let (status, h, got) = read(post(&relay, "/api/v1/responses", json_body, &[]).await).await;
    assert_eq!(status, 200);
    assert!(content_type(&h).starts_with("application/json"));
    assert_eq!(got, mock.answers()[2].to_vec(), "the upstream's JSON, byte for byte");
    assert_eq!(json_of(&got)["object"], "response");

    // The upstream breaks the stream before `response.completed`: the client gets what came and
    // then Responses' own error event; the request counts as an error.
    let (status, _, got) = read(
        post(
            &relay,
            "/v1/responses",
            &sdk_body,
            &[("x-mock-cut-before", "response.completed"), ("x-mock-abort", "1")],
        )
        .await,
    )
    .await;
    assert_eq!(status, 200);
    let sent = mock.answers()[3].to_vec();
    assert!(!text(&sent).contains("response.completed"));
    assert!(got.starts_with(&sent), "{}", text(&got));
    let tail = text(&got[sent.len()..]);
    assert!(tail.starts_with("event: error\ndata: "), "{tail}");
    let err: Value = serde_json::from_str(tail.lines().nth(1).unwrap().strip_prefix("data: ").unwrap()).unwrap();
    assert_eq!(err["type"], "error", "{err}");

    let t = totals(&relay, "key", "config.alice", 4).await;
    let u = STREAM_USAGE;
    assert_usage(
        &t,
        3 * (u.prompt - u.cached),
        3 * u.cached,
        0,
        3 * u.completion,
        3 * gpt5_cost(u),
    );
    assert_eq!(t["errors"], 1, "{t}");
}

// ---------------------------------------------------------------------------------------------
// Azure OpenAI

#[tokio::test]
async fn azure_accounts_address_deployments_and_api_versions() {
    // Azure's answers name the model a deployment runs.
    let dated = OpenAiMock::azure(AZ_KEY, &[("gpt5-prod", "gpt-5-2025-08-07")]).await;
    let v1 = OpenAiMock::azure(AZ_KEY_2, &[("mini-prod", "gpt-5-mini-2025-08-07")]).await;
    let relay = RelayProcess::start(&format!(
        "accounts:\n{}{}",
        azure_yaml(
            "az-dated",
            &dated,
            ", api_version: 2025-04-01-preview, deployments: { gpt-5: gpt5-prod }, models: [gpt-5]"
        ),
        azure_yaml(
            "az-v1",
            &v1,
            ", deployments: { gpt-5-mini: mini-prod }, models: [gpt-5-mini]"
        ),
    ))
    .await;

    // Chat on a dated API version: the deployment path, the version, the key in `api-key`.
    let chat = r#"{"model":"gpt-5","stream":true,"messages":[{"role":"user","content":"say hi"}]}"#;
    let (status, _, got) = read(post(&relay, "/openai/v1/chat/completions", chat, &[]).await).await;
    assert_eq!(status, 200, "{}", text(&got));
    let runs = "gpt-5-2025-08-07";
    let want = text(&chat_stream(runs, true)).replace(&chat_usage_event(runs), "");
    assert_eq!(text(&got), want, "the upstream's chunks but the usage chunk");
    let s = &dated.seen()[0];
    assert_eq!(
        s.path_and_query,
        "/openai/deployments/gpt5-prod/chat/completions?api-version=2025-04-01-preview"
    );
    assert_eq!(s.header("api-key").as_deref(), Some(AZ_KEY));
    assert_eq!(s.header("authorization"), None);
    assert_no_relay_key(s);
    assert_eq!(s.json()["stream_options"], json!({"include_usage": true}));

    // Responses on a dated API version: `/openai/responses?api-version=…`, the deployment in the
    // body.
    let resp = r#"{"model":"gpt-5","stream":true,"input":"say hi"}"#;
    let (status, _, got) = read(post(&relay, "/v1/responses", resp, &[]).await).await;
    assert_eq!(status, 200, "{}", text(&got));
    assert_eq!(got, dated.answers()[1].to_vec());
    assert_eq!(got, responses_stream(runs, false));
    let s = &dated.seen()[1];
    assert_eq!(s.path_and_query, "/openai/responses?api-version=2025-04-01-preview");
    assert_eq!(text(&s.body), resp.replace("\"gpt-5\"", "\"gpt5-prod\""));
    assert_eq!(s.header("api-key").as_deref(), Some(AZ_KEY));

    // The v1 API: `/openai/v1/responses` with the deployment in the body, no version.
    let resp = r#"{"model":"gpt-5-mini","stream":true,"input":"say hi"}"#;
    let (status, _, got) = read(post(&relay, "/openai/v1/responses", resp, &[]).await).await;
    assert_eq!(status, 200, "{}", text(&got));
    assert_eq!(got, v1.answers()[0].to_vec());
    let s = &v1.seen()[0];
    assert_eq!(s.path_and_query, "/openai/v1/responses");
    assert_eq!(s.json()["model"], "mini-prod");
    assert_eq!(s.header("api-key").as_deref(), Some(AZ_KEY_2));

    // Chat on the v1 API: `/openai/v1/chat/completions`, the deployment in the body.
    let chat = r#"{"model":"gpt-5-mini","messages":[{"role":"user","content":"say hi"}]}"#;
    let (status, _, got) = read(post(&relay, "/openai/v1/chat/completions", chat, &[]).await).await;
    assert_eq!(status, 200, "{} (sent to {})", text(&got), v1.seen()[1].path_and_query);
    let s = &v1.seen()[1];
    assert_eq!(s.path_and_query, "/openai/v1/chat/completions");
    assert_eq!(s.json()["model"], "mini-prod");
    assert_eq!(
        json_of(&got),
        chat_json("gpt-5-mini-2025-08-07"),
        "the upstream's answer"
    );
    assert_eq!(dated.hits(), 2);
    assert_eq!(v1.hits(), 2);

    // Billed by the models the client asked for, not by the deployments' names.
    let (s, j) = (STREAM_USAGE, JSON_USAGE);
    let t = totals(&relay, "model", "gpt-5", 2).await;
    assert_usage(
        &t,
        2 * (s.prompt - s.cached),
        2 * s.cached,
        0,
        2 * s.completion,
        2 * gpt5_cost(s),
    );
    let t = totals(&relay, "model", "gpt-5-mini", 2).await;
    let mini = |t: Tokens| (t.prompt - t.cached) * 250 + t.cached * 25 + t.completion * 2_000;
    assert_usage(
        &t,
        (s.prompt - s.cached) + (j.prompt - j.cached),
        s.cached + j.cached,
        0,
        s.completion + j.completion,
        mini(s) + mini(j),
    );
}

// ---------------------------------------------------------------------------------------------
// Failover and account health

const CHAT_JSON: &str = r#"{"model":"gpt-5","messages":[{"role":"user","content":"say hi"}]}"#;

#[tokio::test]
async fn an_openai_500_fails_over_to_azure_and_cools_the_account_down() {
    let oa = OpenAiMock::openai(OA_KEY).await;
    let az = OpenAiMock::azure(AZ_KEY, &[]).await;
    oa.set_fault(Some(Fault::new(500, "server_error")));
    let relay = RelayProcess::start(&format!(
        "scheduler: {{ failover: {{ evidence_keys: 1 }} }}\naccounts:\n{}{}",
        openai_yaml("oa", &oa, ", priority: 10"),
        azure_yaml("az", &az, ", priority: 20, api_version: 2024-10-21"),
    ))
    .await;
    let token = relay.admin_token().await;
    let before = now_ms();
    let (status, h, got) = read(post(&relay, "/openai/v1/chat/completions", CHAT_JSON, &[]).await).await;
    assert_eq!(status, 200, "{}", text(&got));
    assert!(h.get("x-relay-error-source").is_none());
    assert_eq!(json_of(&got)["model"], "gpt-5");
    assert_eq!((oa.hits(), az.hits()), (1, 1));
    assert_eq!(
        az.seen()[0].path_and_query,
        "/openai/deployments/gpt-5/chat/completions?api-version=2024-10-21",
        "a model without a deployment entry goes to the deployment of its name"
    );

    let v = account_view(&relay, &token, "oa").await;
    assert_eq!(v["health"]["state"], "cooling_down", "{v}");
    assert!(v["health"]["reason"].as_str().unwrap().contains("500"), "{v}");
    assert_near(
        &v["health"]["until"],
        before + 5 * 60_000,
        10_000,
        "500 cooldown (5xx: 5m)",
    );
    assert_eq!(account_view(&relay, &token, "az").await["health"]["state"], "active");

    let (status, _, _) = read(post(&relay, "/openai/v1/chat/completions", CHAT_JSON, &[]).await).await;
    assert_eq!(status, 200);
    assert_eq!((oa.hits(), az.hits()), (1, 2), "the cooled account is skipped");
}

#[tokio::test]
async fn openai_429s_and_401s_bench_accounts_by_what_they_say() {
    let limited = OpenAiMock::openai(OA_KEY).await;
    limited.set_fault(Some(Fault::new(429, "rate_limit_exceeded").header("retry-after", "20")));
    let reset = OpenAiMock::openai(OA_KEY_2).await;
    reset.set_fault(Some(
        Fault::new(429, "rate_limit_exceeded")
            .header("x-ratelimit-reset-requests", "45s")
            .header("x-ratelimit-reset-tokens", "1m30s"),
    ));
    let badkey = OpenAiMock::openai("sk-the-right-key").await;
    let az = OpenAiMock::azure(AZ_KEY, &[]).await;
    let badkey_yaml = format!(
        "  - {{ name: badkey, kind: openai, base_url: \"{}\", api_key: sk-a-revoked-key, priority: 12 }}\n",
        badkey.base_url()
    );
    let relay = RelayProcess::start(&format!(
        "scheduler: {{ failover: {{ max_attempts: 4 }} }}\naccounts:\n{}{}{}{}",
        openai_yaml("limited", &limited, ", priority: 10"),
        openai_yaml("reset", &reset, ", priority: 11"),
        badkey_yaml,
        azure_yaml("az", &az, ", priority: 20, api_version: 2024-10-21"),
    ))
    .await;
    let token = relay.admin_token().await;
    let before = now_ms();
    let (status, _, got) = read(post(&relay, "/v1/chat/completions", CHAT_JSON, &[]).await).await;
    assert_eq!(status, 200, "{}", text(&got));
    assert_eq!((limited.hits(), reset.hits(), badkey.hits(), az.hits()), (1, 1, 1, 1));
    let v = account_view(&relay, &token, "limited").await;
    assert_eq!(v["health"]["state"], "cooling_down", "{v}");
    assert_near(&v["health"]["until"], before + 20_000, 5_000, "retry-after: 20");
    let v = account_view(&relay, &token, "reset").await;
    assert_eq!(v["health"]["state"], "cooling_down", "{v}");
    assert_near(
        &v["health"]["until"],
        before + 90_000,
        5_000,
        "the later x-ratelimit-reset-*",
    );
    let v = account_view(&relay, &token, "badkey").await;
    assert_eq!(v["health"]["state"], "unauthorized", "{v}");

    // Everything but Azure is out of the pool now.
    let (status, _, _) = read(post(&relay, "/v1/chat/completions", CHAT_JSON, &[]).await).await;
    assert_eq!(status, 200);
    assert_eq!((limited.hits(), reset.hits(), badkey.hits(), az.hits()), (1, 1, 1, 2));
}

#[tokio::test]
async fn insufficient_quota_parks_the_account_until_an_admin_resets_it() {
    let oa = OpenAiMock::openai(OA_KEY).await;
    let az = OpenAiMock::azure(AZ_KEY, &[]).await;
    oa.set_fault(Some(Fault::new(429, "insufficient_quota")));
    let relay = RelayProcess::start(&format!(
        "accounts:\n{}{}",
        openai_yaml("oa", &oa, ", priority: 10"),
        azure_yaml("az", &az, ", priority: 20"),
    ))
    .await;
    let token = relay.admin_token().await;
    let resp = r#"{"model":"gpt-5","stream":true,"input":"say hi"}"#;
    let (status, _, got) = read(post(&relay, "/openai/v1/responses", resp, &[]).await).await;
    assert_eq!(status, 200, "{}", text(&got));
    assert_eq!(got, az.answers()[0].to_vec());
    assert_eq!(az.seen()[0].path_and_query, "/openai/v1/responses");
    let v = account_view(&relay, &token, "oa").await;
    assert_eq!(v["health"]["state"], "over_quota", "{v}");
    assert_eq!(v["health"]["until"], Value::Null, "{v}");
    assert!(v["health"]["reason"].as_str().unwrap().contains("insufficient_quota"));

    oa.set_fault(None);
    read(post(&relay, "/openai/v1/responses", resp, &[]).await).await;
    assert_eq!((oa.hits(), az.hits()), (1, 2), "parked, whatever the time");
    let r = client()
        .post(format!("{}/admin/api/accounts/config.oa/reset", relay.admin()))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    eventually(|| async {
        let v = account_view(&relay, &token, "oa").await;
        (v["health"]["state"] == "active").then_some(())
    })
    .await;
    let (status, _, _) = read(post(&relay, "/openai/v1/responses", resp, &[]).await).await;
    assert_eq!(status, 200);
    assert_eq!((oa.hits(), az.hits()), (2, 2), "back after the reset");
}

// ---------------------------------------------------------------------------------------------
// Key limits on the OpenAI routes

/// A distinct valid client key per name.
fn key_of(name: &str) -> String {
    let hex: String = name.bytes().map(|b| format!("{b:02x}")).collect();
    format!("cr_{hex:0>64}")
}

#[tokio::test]
async fn key_limits_hold_on_openai_routes() {
    let mock = OpenAiMock::openai(OA_KEY).await;
    let (one, rw, tok) = (key_of("one"), key_of("rw"), key_of("tok"));
    let relay = RelayProcess::start(&format!(
        "accounts:\n{}api_keys:\n  - {{ name: one, key: {one}, concurrency: {{ limit: 1 }} }}\n  - {{ name: rw, key: {rw}, rate_limit: {{ window_minutes: 1, requests: 2 }} }}\n  - {{ name: tok, key: {tok}, rate_limit: {{ window_minutes: 1, tokens: 30 }} }}\n",
        openai_yaml("oa", &mock, ""),
    ))
    .await;
    let chat = r#"{"model":"gpt-5","stream":true,"messages":[{"role":"user","content":"say hi"}]}"#;
    let refused = |status: u16, h: &reqwest::header::HeaderMap, b: &[u8], what: &str| {
        let v = assert_openai_error(429, status, b, what);
        assert_eq!(v["error"]["type"], "rate_limit_error", "{what}: {v}");
        assert_eq!(h["x-relay-error-source"], "relay", "{what}");
        assert!(h.get("retry-after").is_some(), "{what}: {h:?}");
    };

    // Concurrency: a slow stream holds the key's one slot.
    let slow = {
        let base = relay.base();
        let one = one.clone();
        tokio::spawn(async move {
            let r = client()
                .post(format!("{base}/openai/v1/chat/completions"))
                .bearer_auth(one)
                .header("x-mock-chunk", "100")
                .header("x-mock-chunk-delay-ms", "150")
                .body(chat)
                .send()
                .await
                .unwrap();
            read(r).await
        })
    };
    eventually(|| async { (mock.hits() == 1).then_some(()) }).await;
    let (status, h, b) =
        read(post_as(&relay, &one, "/v1/responses", r#"{"model":"gpt-5","input":"hi"}"#, &[]).await).await;
    refused(status, &h, &b, "second request while the first streams");
    assert_eq!(mock.hits(), 1, "a refused request never reaches the upstream");
    let (status, _, b) = slow.await.unwrap();
    assert_eq!(status, 200);
    assert!(text(&b).ends_with("data: [DONE]\n\n"));
    let (status, _, _) = read(post_as(&relay, &one, "/v1/chat/completions", chat, &[]).await).await;
    assert_eq!(status, 200, "the slot is free again");

    // Requests per window.
    for _ in 0..2 {
        let (status, _, _) = read(
            post_as(
                &relay,
                &rw,
                "/openai/v1/responses",
                r#"{"model":"gpt-5","input":"hi"}"#,
                &[],
            )
            .await,
        )
        .await;
        assert_eq!(status, 200);
    }
    let hits = mock.hits();
    let (status, h, b) = read(post_as(&relay, &rw, "/openai/v1/chat/completions", chat, &[]).await).await;
    refused(status, &h, &b, "third request in the window");
    assert_eq!(mock.hits(), hits);

    // Tokens per window, charged from the usage the relay read (31 tokens > 30). Both requests
    // must fall in one fixed minute: not started in the last seconds of one.
    let into_minute = chrono::Utc::now().timestamp() % 60;
    if into_minute > 50 {
        tokio::time::sleep(std::time::Duration::from_secs((61 - into_minute) as u64)).await;
    }
    let (status, _, _) = read(post_as(&relay, &tok, "/openai/v1/chat/completions", chat, &[]).await).await;
    assert_eq!(status, 200);
    let t = totals(&relay, "key", "config.tok", 1).await;
    assert_eq!(t["input_tokens"], STREAM_USAGE.prompt - STREAM_USAGE.cached, "{t}");
    let (status, h, b) = read(post_as(&relay, &tok, "/openai/v1/chat/completions", chat, &[]).await).await;
    refused(status, &h, &b, "over the token window");
    assert_eq!(mock.hits(), hits + 1);
}

// ---------------------------------------------------------------------------------------------
// Chat Completions converted for Claude accounts

const TOOLS: &str = r#"[{"type":"function","function":{"name":"Read","description":"Read a file","parameters":{"type":"object","properties":{"file_path":{"type":"string"}},"required":["file_path"]}}}]"#;

fn chat_text_body(stream: bool) -> String {
    let opts = if stream {
        r#","stream":true,"stream_options":{"include_usage":true}"#
    } else {
        ""
    };
    format!(
        r#"{{"model":"claude-sonnet-4-5"{opts},"messages":[{{"role":"system","content":"You are terse."}},{{"role":"user","content":"say hi"}}]}}"#
    )
}

fn chat_tool_body(stream: bool) -> String {
    let opts = if stream {
        r#","stream":true,"stream_options":{"include_usage":true}"#
    } else {
        ""
    };
    format!(
        r#"{{"model":"claude-sonnet-4-5"{opts},"max_tokens":512,"tools":{TOOLS},"tool_choice":"auto","messages":[{{"role":"user","content":"read /tmp/x"}}]}}"#
    )
}

/// Turn 2 of the tool round trip: the assistant's call and the tool's result.
fn chat_tool_result_body() -> String {
    format!(
        r#"{{"model":"claude-sonnet-4-5","max_tokens":512,"tools":{TOOLS},"messages":[{{"role":"user","content":"read /tmp/x"}},{{"role":"assistant","content":null,"tool_calls":[{{"id":"toolu_mockfec7e44682624ba7a9a26294","type":"function","function":{{"name":"Read","arguments":"{{\"file_path\":\"/tmp/x\"}}"}}}}]}},{{"role":"tool","tool_call_id":"toolu_mockfec7e44682624ba7a9a26294","content":"hello world"}}]}}"#
    )
}

/// The usage a Chat client gets for the golden Anthropic answer: prompt tokens count the cache
/// reads and writes, cached tokens the reads.
fn assert_chat_usage(u: &Value) {
    assert_eq!(u["prompt_tokens"], 29, "{u}");
    assert_eq!(u["completion_tokens"], 7, "{u}");
    assert_eq!(u["total_tokens"], 36, "{u}");
    assert_eq!(u["prompt_tokens_details"]["cached_tokens"], 3, "{u}");
}

/// The Anthropic Messages request a converted text request must be.
fn assert_messages_request(sent: &Value, stream: bool) {
    assert!(sent["max_tokens"].as_u64().is_some_and(|n| n > 0), "{sent}");
    assert_eq!(sent["stream"].as_bool().unwrap_or(false), stream, "{sent}");
    assert!(sent.get("stream_options").is_none(), "{sent}");
    assert_eq!(anthropic_text(&sent["system"]), "You are terse.", "{sent}");
    let msgs = sent["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 1, "{sent}");
    assert_eq!(msgs[0]["role"], "user");
    assert_eq!(anthropic_text(&msgs[0]["content"]), "say hi");
}

/// The tools of a converted request and the round trip's second turn.
fn assert_tool_request(sent: &Value) {
    let tools = sent["tools"].as_array().unwrap_or_else(|| panic!("no tools: {sent}"));
    assert_eq!(tools.len(), 1);
    assert_eq!(tools[0]["name"], "Read");
    assert_eq!(tools[0]["description"], "Read a file");
    let params: Value = serde_json::from_str(TOOLS).unwrap();
    assert_eq!(tools[0]["input_schema"], params[0]["function"]["parameters"], "{sent}");
    assert_eq!(sent["max_tokens"], 512);
}

fn assert_tool_result_request(sent: &Value) {
    assert_tool_request(sent);
    let msgs = sent["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 3, "{sent}");
    assert_eq!(msgs[0]["role"], "user");
    assert_eq!(msgs[1]["role"], "assistant");
    let uses: Vec<&Value> = msgs[1]["content"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["type"] == "tool_use")
        .collect();
    assert_eq!(uses.len(), 1, "{sent}");
    assert_eq!(uses[0]["id"], "toolu_mockfec7e44682624ba7a9a26294");
    assert_eq!(uses[0]["name"], "Read");
    assert_eq!(uses[0]["input"], json!({"file_path": "/tmp/x"}));
    assert_eq!(msgs[2]["role"], "user");
    let results: Vec<&Value> = msgs[2]["content"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["type"] == "tool_result")
        .collect();
    assert_eq!(results.len(), 1, "{sent}");
    assert_eq!(results[0]["tool_use_id"], "toolu_mockfec7e44682624ba7a9a26294");
    assert_eq!(anthropic_text(&results[0]["content"]), "hello world");
}

fn assert_text_chunks(got: &[u8]) {
    let s = read_chat_stream(got);
    s.assert_well_formed("claude-sonnet-4-5");
    assert_eq!(s.text, "Hello from mock upstream!");
    assert_eq!(s.finish, ["stop"]);
    assert!(s.tool_calls.is_empty());
    assert_chat_usage(s.usage.as_ref().expect("the usage chunk the client asked for"));
}

fn assert_text_completion(v: &Value) {
    assert_eq!(v["object"], "chat.completion", "{v}");
    assert_eq!(v["model"], "claude-sonnet-4-5");
    assert!(v["id"].as_str().is_some_and(|s| !s.is_empty()), "{v}");
    let c = &v["choices"][0];
    assert_eq!(c["index"], 0);
    assert_eq!(c["message"]["role"], "assistant");
    assert_eq!(c["message"]["content"], "Hello from mock upstream!");
    assert_eq!(c["finish_reason"], "stop");
    assert_chat_usage(&v["usage"]);
}

fn assert_tool_chunks(got: &[u8]) {
    let s = read_chat_stream(got);
    s.assert_well_formed("claude-sonnet-4-5");
    assert_eq!(s.text, "Calling a tool.");
    assert_eq!(s.tool_calls.len(), 1, "{s:?}");
    let (id, name, args) = &s.tool_calls[0];
    assert_eq!(id, "toolu_mockfec7e44682624ba7a9a26294");
    assert_eq!(name, "Read");
    assert_eq!(
        serde_json::from_str::<Value>(args).unwrap(),
        json!({"file_path": "/tmp/x"})
    );
    assert_eq!(s.finish, ["tool_calls"]);
    assert_chat_usage(s.usage.as_ref().unwrap());
}

fn assert_tool_completion(v: &Value) {
    assert_eq!(v["object"], "chat.completion", "{v}");
    let c = &v["choices"][0];
    assert_eq!(c["finish_reason"], "tool_calls", "{v}");
    assert_eq!(c["message"]["content"], "Calling a tool.");
    let calls = c["message"]["tool_calls"].as_array().unwrap();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0]["id"], "toolu_mockfec7e44682624ba7a9a26294");
    assert_eq!(calls[0]["type"], "function");
    assert_eq!(calls[0]["function"]["name"], "Read");
    let args: Value = serde_json::from_str(calls[0]["function"]["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(args, json!({"file_path": "/tmp/x"}));
    assert_chat_usage(&v["usage"]);
}

#[tokio::test]
async fn chat_to_a_claude_console_account_converts_requests_and_answers() {
    let mock = MockUpstream::start().await;
    let relay = RelayProcess::start(&format!("accounts:\n{}", account_yaml("claude", &mock.url(), ""))).await;

    let (status, h, got) = read(post(&relay, "/openai/v1/chat/completions", &chat_text_body(true), &[]).await).await;
    assert_eq!(status, 200, "{}", text(&got));
    assert!(content_type(&h).starts_with("text/event-stream"), "{h:?}");
    assert_text_chunks(&got);
    let s = &mock.seen()[0];
    assert_eq!(s.path_and_query, "/v1/messages");
    assert_eq!(s.header("x-api-key").as_deref(), Some("sk-ant-api03-upstream-claude"));
    assert_eq!(s.header("authorization"), None);
    assert_eq!(s.header("anthropic-version").as_deref(), Some("2023-06-01"));
    assert_no_relay_key(s);
    assert_eq!(s.json()["model"], "claude-sonnet-4-5");
    assert_messages_request(&s.json(), true);

    // The Claude-only mount point, not streamed.
    let (status, h, got) = read(
        post(
            &relay,
            "/openai/claude/v1/chat/completions",
            &chat_text_body(false),
            &[],
        )
        .await,
    )
    .await;
    assert_eq!(status, 200, "{}", text(&got));
    assert!(content_type(&h).starts_with("application/json"), "{h:?}");
    assert_text_completion(&json_of(&got));
    assert_messages_request(&mock.seen()[1].json(), false);

    // A tool call, streamed and not, then its result sent back.
    let tool = [("x-mock-tool", "1")];
    let (status, _, got) = read(post(&relay, "/v1/chat/completions", &chat_tool_body(true), &tool).await).await;
    assert_eq!(status, 200, "{}", text(&got));
    assert_tool_chunks(&got);
    assert_tool_request(&mock.seen()[2].json());
    assert_eq!(mock.seen()[2].json()["tool_choice"], json!({"type": "auto"}));
    let (status, _, got) = read(post(&relay, "/v1/chat/completions", &chat_tool_body(false), &tool).await).await;
    assert_eq!(status, 200, "{}", text(&got));
    assert_tool_completion(&json_of(&got));
    let (status, _, got) = read(post(&relay, "/openai/chat/completions", &chat_tool_result_body(), &[]).await).await;
    assert_eq!(status, 200, "{}", text(&got));
    assert_text_completion(&json_of(&got));
    assert_tool_result_request(&mock.seen()[4].json());

    let t = totals(&relay, "key", "config.alice", 5).await;
    assert_usage(&t, 5 * 21, 5 * 3, 5 * 5, 5 * 7, 5 * anthropic_cost(SONNET));
}

#[tokio::test]
async fn chat_to_a_bedrock_account_converts_requests_and_answers() {
    let creds = BedrockCreds::example();
    let mock = BedrockMock::start(creds.clone()).await;
    let relay = RelayProcess::start(&format!(
        "accounts:\n  - {{ name: bedrock, kind: bedrock, region: {}, base_url: \"{}\", access_key_id: {}, secret_access_key: \"{}\" }}\n",
        creds.region,
        mock.url(),
        creds.access_key_id,
        creds.secret_access_key
    ))
    .await;
    let stream_path = "/model/us.anthropic.claude-sonnet-4-5-20250929-v1%3A0/invoke-with-response-stream";
    let invoke_path = "/model/us.anthropic.claude-sonnet-4-5-20250929-v1%3A0/invoke";

    let (status, _, got) = read(post(&relay, "/openai/v1/chat/completions", &chat_text_body(true), &[]).await).await;
    assert_eq!(status, 200, "{} {:?}", text(&got), mock.rejections());
    assert_text_chunks(&got);
    let s = &mock.seen()[0];
    assert_eq!(s.path_and_query, stream_path);
    let sent = s.json();
    assert_eq!(sent["anthropic_version"], "bedrock-2023-05-31", "{sent}");
    assert!(sent.get("model").is_none() && sent.get("stream").is_none(), "{sent}");
    assert_eq!(anthropic_text(&sent["system"]), "You are terse.", "{sent}");
    assert_eq!(anthropic_text(&sent["messages"][0]["content"]), "say hi");
    assert_no_relay_key(s);

    let (status, _, got) = read(post(&relay, "/v1/chat/completions", &chat_text_body(false), &[]).await).await;
    assert_eq!(status, 200, "{} {:?}", text(&got), mock.rejections());
    assert_text_completion(&json_of(&got));
    assert_eq!(mock.seen()[1].path_and_query, invoke_path);

    let tool = [("x-mock-tool", "1")];
    let (status, _, got) = read(post(&relay, "/v1/chat/completions", &chat_tool_body(true), &tool).await).await;
    assert_eq!(status, 200, "{} {:?}", text(&got), mock.rejections());
    assert_tool_chunks(&got);
    assert_tool_request(&mock.seen()[2].json());
    let (status, _, got) = read(post(&relay, "/v1/chat/completions", &chat_tool_body(false), &tool).await).await;
    assert_eq!(status, 200, "{} {:?}", text(&got), mock.rejections());
    assert_tool_completion(&json_of(&got));
    let (status, _, got) = read(post(&relay, "/openai/v1/chat/completions", &chat_tool_result_body(), &[]).await).await;
    assert_eq!(status, 200, "{} {:?}", text(&got), mock.rejections());
    assert_tool_result_request(&mock.seen()[4].json());
    assert!(mock.rejections().is_empty(), "{:?}", mock.rejections());

    let t = totals(&relay, "model", SONNET_US, 5).await;
    assert_usage(&t, 5 * 21, 5 * 3, 5 * 5, 5 * 7, 5 * anthropic_cost(SONNET_US_PRICES));
}

// ---------------------------------------------------------------------------------------------
// Sticky sessions

#[tokio::test]
async fn openai_conversations_stick_to_their_account() {
    let a = OpenAiMock::openai(OA_KEY).await;
    let b = OpenAiMock::openai(OA_KEY_2).await;
    let relay = RelayProcess::start(&format!(
        "accounts:\n{}{}",
        openai_yaml("a", &a, ", priority: 10"),
        openai_yaml("b", &b, ", priority: 10"),
    ))
    .await;
    // Which account served each of `n` requests.
    async fn served(
        relay: &RelayProcess,
        a: &OpenAiMock,
        b: &OpenAiMock,
        n: usize,
        path: &str,
        body: &str,
        headers: &[(&str, &str)],
    ) -> Vec<char> {
        let mut out = Vec::new();
        for _ in 0..n {
            let (ha, hb) = (a.hits(), b.hits());
            let (status, _, got) = read(post(relay, path, body, headers).await).await;
            assert_eq!(status, 200, "{}", text(&got));
            out.push(match (a.hits() - ha, b.hits() - hb) {
                (1, 0) => 'a',
                (0, 1) => 'b',
                other => panic!("hits {other:?}"),
            });
        }
        out
    }
    let resp = r#"{"model":"gpt-5","stream":true,"input":"hi"}"#;
    // Without a session the two accounts share the requests.
    let free = served(&relay, &a, &b, 4, "/v1/responses", resp, &[]).await;
    assert!(free.contains(&'a') && free.contains(&'b'), "{free:?}");

    for (what, body, headers) in [
        (
            "prompt_cache_key",
            r#"{"model":"gpt-5","stream":true,"input":"hi","prompt_cache_key":"conv-1"}"#,
            vec![],
        ),
        ("session-id header", resp, vec![("session-id", "conv-2")]),
        ("session_id header", resp, vec![("session_id", "conv-3")]),
    ] {
        let got = served(&relay, &a, &b, 4, "/openai/v1/responses", body, &headers).await;
        assert!(got.iter().all(|c| *c == got[0]), "{what}: {got:?}");
    }
    // Chat requests with a session header stick too.
    let chat = r#"{"model":"gpt-5","messages":[{"role":"user","content":"hi"}]}"#;
    let got = served(
        &relay,
        &a,
        &b,
        4,
        "/openai/v1/chat/completions",
        chat,
        &[("session-id", "conv-4")],
    )
    .await;
    assert!(got.iter().all(|c| *c == got[0]), "chat: {got:?}");
}

// ---------------------------------------------------------------------------------------------
// Errors

fn gzip(b: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(b).unwrap();
    e.finish().unwrap()
}

/// Sends a raw WebSocket upgrade request and returns the status line and how long it took.
async fn websocket_get(relay: &RelayProcess, path: &str, key: Option<&str>) -> (String, Duration) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let started = Instant::now();
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", relay.port)).await.unwrap();
    let auth = key
        .map(|k| format!("authorization: Bearer {k}\r\n"))
        .unwrap_or_default();
    let req = format!(
        "GET {path} HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: Upgrade\r\nupgrade: websocket\r\nsec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nopenai-beta: responses_websockets=2026-02-06\r\n{auth}\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("no answer to the upgrade")
        .unwrap();
    let head = String::from_utf8_lossy(&buf[..n]).into_owned();
    (head, started.elapsed())
}

#[tokio::test]
async fn refusals_come_in_openai_shape() {
    let mock = OpenAiMock::openai(OA_KEY).await;
    let relay = RelayProcess::start(&format!(
        "timeouts: {{ response_head: 2s }}\naccounts:\n{}",
        openai_yaml("oa", &mock, ", models: [gpt-5]")
    ))
    .await;
    let c = client();
    let chat_url = format!("{}/openai/v1/chat/completions", relay.base());

    // A model no account serves: 404 naming it.
    let body = r#"{"model":"gpt-4.1-nano","messages":[{"role":"user","content":"hi"}]}"#;
    let (status, h, b) = read(post(&relay, "/openai/v1/chat/completions", body, &[]).await).await;
    let v = assert_openai_error(404, status, &b, "unknown model");
    assert!(v["error"]["message"].as_str().unwrap().contains("gpt-4.1-nano"), "{v}");
    assert_eq!(h["x-relay-error-source"], "relay");
    let (status, _, b) =
        read(post(&relay, "/v1/responses", r#"{"model":"gpt-4.1-nano","input":"hi"}"#, &[]).await).await;
    assert_openai_error(404, status, &b, "unknown model on Responses");
    // A GPT model on the Claude-only mount point.
    let (status, _, b) = read(post(&relay, "/openai/claude/v1/chat/completions", CHAT_JSON, &[]).await).await;
    let v = assert_openai_error(404, status, &b, "gpt on the Claude mount point");
    assert!(v["error"]["message"].as_str().unwrap().contains("gpt-5"), "{v}");

    // A path the relay does not serve under the OpenAI mount point.
    let (status, _, b) =
        read(post(&relay, "/openai/v1/embeddings", r#"{"model":"gpt-5","input":"x"}"#, &[]).await).await;
    let v = assert_openai_error(404, status, &b, "an unknown OpenAI path");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("/openai/v1/embeddings"),
        "{v}"
    );

    // Malformed JSON, no key, a wrong key.
    let (status, _, b) = read(post(&relay, "/openai/v1/chat/completions", "{not json", &[]).await).await;
    let v = assert_openai_error(400, status, &b, "bad JSON");
    assert_eq!(v["error"]["type"], "invalid_request_error");
    let r = c.post(&chat_url).body(CHAT_JSON).send().await.unwrap();
    let (status, _, b) = read(r).await;
    let v = assert_openai_error(401, status, &b, "no key");
    assert_eq!(v["error"]["code"], "invalid_api_key", "{v}");
    let (status, _, b) = read(post_as(&relay, "cr_not_a_key_000", "/v1/responses", "{}", &[]).await).await;
    assert_openai_error(401, status, &b, "wrong key");
    assert_eq!(mock.hits(), 0, "no refusal reaches the upstream");

    // Codex's WebSocket attempt is refused at once, key or not.
    for (path, key) in [("/v1/responses", Some(ALICE)), ("/openai/v1/responses", None)] {
        let (head, took) = websocket_get(&relay, path, key).await;
        assert!(head.starts_with("HTTP/1.1 426"), "{path}: {head}");
        assert!(took < Duration::from_secs(2), "{path}: {took:?}");
        let body = head.split("\r\n\r\n").nth(1).unwrap_or_default();
        assert!(body.contains("\"error\""), "{head}");
    }

    // Compressed request bodies go upstream decoded.
    let enc_body = br#"{"model":"gpt-5","messages":[{"role":"user","content":"compressed"}]}"#;
    for (enc, data) in [
        ("gzip", gzip(enc_body)),
        ("zstd", zstd::encode_all(&enc_body[..], 3).unwrap()),
    ] {
        let (status, _, b) = read(
            post_as(
                &relay,
                ALICE,
                "/openai/v1/chat/completions",
                data,
                &[("content-encoding", enc)],
            )
            .await,
        )
        .await;
        assert_eq!(status, 200, "{enc}: {}", text(&b));
        let s = mock.seen().pop().unwrap();
        assert_eq!(&s.body[..], &enc_body[..], "{enc}");
        assert_eq!(s.header("content-encoding"), None);
    }

    // An upstream refusal that is the request's: passed through, status and body, as OpenAI said it.
    let (status, h, b) = read(
        post(
            &relay,
            "/openai/v1/chat/completions",
            CHAT_JSON,
            &[
                ("x-mock-status", "400"),
                ("x-mock-error-code", "context_length_exceeded"),
            ],
        )
        .await,
    )
    .await;
    let v = assert_openai_error(400, status, &b, "upstream 400");
    assert_eq!(v["error"]["code"], "context_length_exceeded");
    assert_eq!(h["x-relay-error-source"], "upstream");
    assert_eq!(
        text(&b),
        support::openai_mock::error_body(400, "context_length_exceeded").to_string(),
        "the upstream's body, as it was"
    );

    // No answer head within `timeouts.response_head`: 504 in OpenAI's shape.
    let (status, h, b) = read(
        post(
            &relay,
            "/openai/v1/chat/completions",
            CHAT_JSON,
            &[("x-mock-delay-ms", "4000")],
        )
        .await,
    )
    .await;
    assert_openai_error(504, status, &b, "slow upstream");
    assert_eq!(h["x-relay-error-source"], "relay");

    // The only account rate limited: the client gets OpenAI's 429 as it was, `retry-after` kept.
    let (status, h, b) = read(
        post(
            &relay,
            "/v1/responses",
            r#"{"model":"gpt-5","input":"hi"}"#,
            &[("x-mock-status", "429"), ("x-mock-retry-after", "7")],
        )
        .await,
    )
    .await;
    let v = assert_openai_error(429, status, &b, "upstream 429");
    assert_eq!(v["error"]["code"], "rate_limit_exceeded");
    assert_eq!(h["retry-after"], "7");
    assert_eq!(h["x-relay-error-source"], "upstream");
}

// ---------------------------------------------------------------------------------------------
// Models

#[tokio::test]
async fn model_lists_in_openai_shape_follow_the_key() {
    let oa = OpenAiMock::openai(OA_KEY).await;
    let anthropic = MockUpstream::start().await;
    let nogpt = key_of("nogpt");
    let relay = RelayProcess::start(&format!(
        "accounts:\n{}{}api_keys:\n  - {{ name: alice, key: {ALICE} }}\n  - {{ name: nogpt, key: {nogpt}, model_blacklist: [gpt-5-mini] }}\n",
        openai_yaml("oa", &oa, ", models: [gpt-5, gpt-5-mini]"),
        account_yaml("claude", &anthropic.url(), ", models: [claude-sonnet-4-5]"),
    ))
    .await;
    let get = |path: &str, key: Option<&str>| {
        let mut r = client().get(format!("{}{path}", relay.base()));
        if let Some(k) = key {
            r = r.bearer_auth(k);
        }
        async move { read(r.send().await.unwrap()).await }
    };
    let ids = |v: &Value| -> Vec<String> {
        v["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap().to_string())
            .collect()
    };

    let (status, _, b) = get("/openai/v1/models", Some(ALICE)).await;
    assert_eq!(status, 200, "{}", text(&b));
    let v = json_of(&b);
    assert_eq!(v["object"], "list");
    assert_eq!(ids(&v), ["claude-sonnet-4-5", "gpt-5", "gpt-5-mini"]);
    for m in v["data"].as_array().unwrap() {
        assert_eq!(m["object"], "model", "{m}");
        assert!(m["created"].is_i64() || m["created"].is_u64(), "{m}");
        let owner = if m["id"].as_str().unwrap().starts_with("gpt") {
            "openai"
        } else {
            "anthropic"
        };
        assert_eq!(m["owned_by"], owner, "{m}");
    }
    let (_, _, b) = get("/openai/v1/models", Some(&nogpt)).await;
    assert_eq!(
        ids(&json_of(&b)),
        ["claude-sonnet-4-5", "gpt-5"],
        "the blacklisted model is not listed"
    );
    let (_, _, b) = get("/openai/claude/v1/models", Some(ALICE)).await;
    assert_eq!(ids(&json_of(&b)), ["claude-sonnet-4-5"]);
    let (status, _, b) = get("/openai/v1/models", None).await;
    assert_openai_error(401, status, &b, "models without a key");

    // The shared path reads in both SDKs' shapes.
    let (status, _, b) = get("/v1/models", Some(ALICE)).await;
    assert_eq!(status, 200);
    let v = json_of(&b);
    assert_eq!(v["object"], "list");
    assert_eq!(v["has_more"], false);
    assert_eq!(v["first_id"], "claude-sonnet-4-5");
    for m in v["data"].as_array().unwrap() {
        assert_eq!(m["object"], "model");
        assert_eq!(m["type"], "model");
        assert!(
            m["owned_by"].is_string() && m["display_name"].is_string() && m["created_at"].is_string(),
            "{m}"
        );
    }
    // Without `anthropic-version` (an OpenAI SDK at `…/v1`), the models of Chat Completions;
    // an Anthropic client gets the models its Messages requests can reach.
    assert_eq!(ids(&v), ["claude-sonnet-4-5", "gpt-5", "gpt-5-mini"]);
    let r = client()
        .get(format!("{}/v1/models", relay.base()))
        .bearer_auth(ALICE)
        .header("anthropic-version", "2023-06-01")
        .send()
        .await
        .unwrap();
    let (status, _, b) = read(r).await;
    assert_eq!(status, 200);
    assert_eq!(ids(&json_of(&b)), ["claude-sonnet-4-5"]);

    let (status, _, b) = get("/openai/v1/models/gpt-5", Some(ALICE)).await;
    assert_eq!(status, 200, "{}", text(&b));
    assert_eq!(json_of(&b)["id"], "gpt-5");
    assert_eq!(json_of(&b)["object"], "model");
    let (status, _, b) = get("/openai/v1/models/gpt-4.1-nano", Some(ALICE)).await;
    let v = assert_openai_error(404, status, &b, "an unknown model id");
    assert!(v["error"]["message"].as_str().unwrap().contains("gpt-4.1-nano"), "{v}");
    let (status, _, b) = get("/openai/v1/models/gpt-5-mini", Some(&nogpt)).await;
    assert_openai_error(404, status, &b, "a model the key may not use");
    assert_eq!(oa.hits() + anthropic.hits(), 0);
}

// ---------------------------------------------------------------------------------------------
// Codex rate-limit windows

#[tokio::test]
async fn codex_rate_limit_headers_show_in_the_account_view_and_metrics() {
    let mock = OpenAiMock::openai(OA_KEY).await;
    mock.set_headers(&[
        ("x-codex-primary-used-percent", "42.5"),
        ("x-codex-primary-window-minutes", "300"),
        ("x-codex-primary-reset-after-seconds", "600"),
        ("x-codex-secondary-used-percent", "10"),
        ("x-codex-secondary-window-minutes", "10080"),
        ("x-codex-secondary-reset-after-seconds", "86400"),
    ]);
    let relay = RelayProcess::start(&format!("accounts:\n{}", openai_yaml("oa", &mock, ""))).await;
    let token = relay.admin_token().await;
    let before = account_view(&relay, &token, "oa").await;
    assert_eq!(before["ratelimit"], Value::Null);

    let started_s = now_ms() / 1000;
    let (status, _, _) = read(
        post(
            &relay,
            "/v1/responses",
            r#"{"model":"gpt-5","stream":true,"input":"hi"}"#,
            &[],
        )
        .await,
    )
    .await;
    assert_eq!(status, 200);
    let v = account_view(&relay, &token, "oa").await;
    let rl = &v["ratelimit"];
    assert_eq!(rl["five_hour_utilization"], 0.425, "{v}");
    assert_eq!(rl["seven_day_utilization"], 0.1, "{v}");
    assert_eq!(rl["status"], "allowed", "{v}");
    assert_near(&rl["five_hour_reset"], started_s + 600, 5, "five_hour_reset");
    assert_near(&rl["seven_day_reset"], started_s + 86_400, 5, "seven_day_reset");
    assert_eq!(v["health"]["state"], "active");

    for (window, want) in [("5h", 0.425), ("7d", 0.1)] {
        let line = format!("relay_account_utilization_ratio{{account=\"oa\",window=\"{window}\"}}");
        let got = eventually(|| async { metric(&relay, &line).await }).await;
        assert!((got - want).abs() < 1e-9, "{line} = {got}, want {want}");
    }
}
