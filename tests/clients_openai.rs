#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The real OpenAI clients, unmodified, through the real relay binary: the openai Python SDK
//! (3.57.0) and Codex CLI (0.171.0), installed by `scripts/install-clients.sh` (the tests fail,
//! naming that script, when a client is missing).
//!
//! - The SDK runs a streamed chat with usage, a plain chat, a two-turn tool call and a streamed
//!   Responses call against an `openai` account on a scripted upstream, and the chat calls against
//!   a `claude-console` account on the Anthropic mock (converted both ways). What the SDK prints
//!   (content, tool call, finish reason, usage) is checked against what the upstream answered, and
//!   the usage the relay recorded against both.
//! - Codex runs `codex exec` with a custom provider pointing at the relay, executes the tool call
//!   the upstream asks for, and sends the result back in a second turn; the bytes Codex sent are
//!   compared with the bytes the upstream received.
//!
//! Clients are found at `${RELAY_VENV:-~/.cache/claude-relay/venv}/bin/python` and
//! `${RELAY_CLIENTS:-~/.cache/claude-relay/clients}/node/node_modules/.bin/codex`.

mod support;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::RelayProcess;
use support::clients::{self, clean_env, key_usage, keys_yaml, new_key, run};
use support::mock::{self, MockUpstream};
use support::scripted::{Reply, ScriptedUpstream};
use support::tee::Tee;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const OPENAI_PY_VERSION: &str = "3.57.0";
const CODEX_VERSION: &str = "0.171.0";

const CHAT_SSE: &str = include_str!("fixtures/responses/openai-chat-stream-include-usage.sse");
const RESPONSES_SSE: &str = include_str!("fixtures/responses/openai-responses-stream.sse");
const RESPONSES_CALL_SSE: &str = include_str!("fixtures/responses/openai-responses-stream-function-call.sse");

// ------------------------------------------------------------------------------------------
// Finding the clients
// ------------------------------------------------------------------------------------------

/// The virtualenv's python with the pinned openai SDK.
fn python() -> PathBuf {
    clients::python_with(&[("openai", OPENAI_PY_VERSION)])
}

/// The pinned Codex CLI.
fn codex() -> PathBuf {
    clients::node_client("codex", "Codex CLI", CODEX_VERSION)
}

/// Token counts in the relay's terms: input excludes cached prompt tokens (cache reads).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Recorded {
    input: u64,
    output: u64,
    cache_read: u64,
    cache_write: u64,
}

impl Recorded {
    fn of(totals: &Value, key: &str) -> Recorded {
        let t = &totals[format!("config.{key}")];
        let n = |f: &str| t[f].as_u64().unwrap_or_else(|| panic!("no {f} for {key}: {totals:#}"));
        Recorded {
            input: n("input_tokens"),
            output: n("output_tokens"),
            cache_read: n("cache_read_tokens"),
            cache_write: n("cache_write_5m_tokens") + n("cache_write_1h_tokens"),
        }
    }

    fn plus(self, o: Recorded) -> Recorded {
        Recorded {
            input: self.input + o.input,
            output: self.output + o.output,
            cache_read: self.cache_read + o.cache_read,
            cache_write: self.cache_write + o.cache_write,
        }
    }

    /// What the relay records for an OpenAI usage object (Chat or Responses names).
    fn from_openai(u: &Value) -> Recorded {
        let (prompt, completion, cached) = if u.get("prompt_tokens").is_some() {
            (
                &u["prompt_tokens"],
                &u["completion_tokens"],
                &u["prompt_tokens_details"]["cached_tokens"],
            )
        } else {
            (
                &u["input_tokens"],
                &u["output_tokens"],
                &u["input_tokens_details"]["cached_tokens"],
            )
        };
        let cached = cached.as_u64().unwrap_or(0);
        Recorded {
            input: prompt.as_u64().unwrap() - cached,
            output: completion.as_u64().unwrap(),
            cache_read: cached,
            cache_write: 0,
        }
    }

    /// What the relay records for an Anthropic usage object.
    fn from_anthropic(u: &Value) -> Recorded {
        let n = |f: &str| u[f].as_u64().unwrap_or(0);
        Recorded {
            input: n("input_tokens"),
            output: n("output_tokens"),
            cache_read: n("cache_read_input_tokens"),
            cache_write: n("cache_creation_input_tokens"),
        }
    }

    /// The Chat Completions usage a client is shown for these tokens: every prompt token
    /// (cached or not, written to the cache or not) in `prompt_tokens`, the cached ones repeated
    /// in `prompt_tokens_details.cached_tokens`.
    fn as_chat(self) -> (u64, u64, u64) {
        (
            self.input + self.cache_read + self.cache_write,
            self.output,
            self.cache_read,
        )
    }
}

/// The `data:` payloads of an SSE text, as JSON (`[DONE]` left out).
fn sse_data(sse: &str) -> Vec<Value> {
    sse.lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(str::trim)
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap())
        .collect()
}

/// The usage of the last Chat chunk that has one.
fn chat_sse_usage(sse: &str) -> Value {
    sse_data(sse)
        .into_iter()
        .rev()
        .find(|c| c["usage"].is_object())
        .map(|c| c["usage"].clone())
        .expect("a usage chunk")
}

/// The `response.completed` event of a Responses stream.
fn responses_completed(sse: &str) -> Value {
    sse_data(sse)
        .into_iter()
        .find(|e| e["type"] == "response.completed")
        .expect("response.completed")
}

/// The text of an Anthropic SSE stream and its final usage (`message_start`'s, updated by
/// `message_delta`'s).
fn anthropic_sse(sse: &[u8]) -> (String, Value) {
    let mut text = String::new();
    let mut usage = serde_json::Map::new();
    for e in sse_data(std::str::from_utf8(sse).unwrap()) {
        match e["type"].as_str() {
            Some("message_start") => usage.extend(e["message"]["usage"].as_object().unwrap().clone()),
            Some("message_delta") => usage.extend(e["usage"].as_object().unwrap().clone()),
            Some("content_block_delta") if e["delta"]["type"] == "text_delta" => {
                text.push_str(e["delta"]["text"].as_str().unwrap());
            }
            _ => {}
        }
    }
    (text, Value::Object(usage))
}

/// The tool call of an Anthropic SSE stream: (id, name, input as JSON).
fn anthropic_sse_tool(sse: &[u8]) -> (String, String, Value) {
    let mut call = None;
    let mut args = String::new();
    for e in sse_data(std::str::from_utf8(sse).unwrap()) {
        if e["type"] == "content_block_start" && e["content_block"]["type"] == "tool_use" {
            let b = &e["content_block"];
            call = Some((
                b["id"].as_str().unwrap().to_string(),
                b["name"].as_str().unwrap().to_string(),
            ));
        }
        if e["delta"]["type"] == "input_json_delta" {
            args.push_str(e["delta"]["partial_json"].as_str().unwrap());
        }
    }
    let (id, name) = call.expect("a tool_use block");
    (id, name, serde_json::from_str(&args).unwrap())
}

// ------------------------------------------------------------------------------------------
// The OpenAI Python SDK
// ------------------------------------------------------------------------------------------

/// Runs the steps named in `cfg["steps"]` with the real SDK and prints one JSON object with what
/// each step saw (or the error it raised).
const SDK_SCRIPT: &str = r#"
import json, sys, traceback
import openai
from openai import OpenAI

cfg = json.load(open(sys.argv[1]))
out = {"openai_version": openai.__version__}
model = cfg["model"]
TOOLS = [{"type": "function", "function": {
    "name": "Read", "description": "Read a file",
    "parameters": {"type": "object", "properties": {"file_path": {"type": "string"}},
                   "required": ["file_path"]}}}]

def client(step):
    return OpenAI(base_url=cfg["base_url"], api_key=cfg["keys"][step], max_retries=0, timeout=20)

def dump(u):
    return None if u is None else u.model_dump()

def read_chat_stream(stream):
    r = {"content": "", "finish_reason": None, "usage": None, "chunks": 0, "calls": {}, "model": None}
    for ch in stream:
        r["chunks"] += 1
        r["model"] = ch.model
        if ch.usage is not None:
            r["usage"] = dump(ch.usage)
        for c in ch.choices:
            d = c.delta
            if d.content:
                r["content"] += d.content
            for tc in d.tool_calls or []:
                call = r["calls"].setdefault(str(tc.index), {"id": None, "name": "", "arguments": ""})
                if tc.id:
                    call["id"] = tc.id
                if tc.function and tc.function.name:
                    call["name"] += tc.function.name
                if tc.function and tc.function.arguments:
                    call["arguments"] += tc.function.arguments
            if c.finish_reason:
                r["finish_reason"] = c.finish_reason
    r["calls"] = [r["calls"][k] for k in sorted(r["calls"], key=int)]
    return r

def chat_stream():
    s = client("chat_stream").chat.completions.create(
        model=model, messages=[{"role": "user", "content": "say hi"}],
        stream=True, stream_options={"include_usage": True})
    return read_chat_stream(s)

def chat():
    r = client("chat").chat.completions.create(
        model=model, messages=[{"role": "user", "content": "say hi"}])
    m = r.choices[0].message
    return {"content": m.content, "finish_reason": r.choices[0].finish_reason,
            "usage": dump(r.usage), "model": r.model, "object": r.object}

def tool():
    c = client("tool")
    messages = [{"role": "user", "content": "What is in /tmp/x?"}]
    first = read_chat_stream(c.chat.completions.create(
        model=model, messages=messages, tools=TOOLS, stream=True,
        stream_options={"include_usage": True}, extra_headers=cfg.get("tool_headers") or None))
    calls = first["calls"]
    messages.append({"role": "assistant", "content": first["content"] or None, "tool_calls": [
        {"id": k["id"], "type": "function", "function": {"name": k["name"], "arguments": k["arguments"]}}
        for k in calls]})
    for k in calls:
        messages.append({"role": "tool", "tool_call_id": k["id"], "content": cfg["tool_result"]})
    r = c.chat.completions.create(model=model, messages=messages, tools=TOOLS)
    return {"first": first, "second": {"content": r.choices[0].message.content,
            "finish_reason": r.choices[0].finish_reason, "usage": dump(r.usage)}}

def responses():
    s = client("responses").responses.create(model=model, input="say hi", stream=True)
    r = {"events": [], "delta_text": "", "output_text": None, "status": None, "usage": None}
    for ev in s:
        r["events"].append(ev.type)
        if ev.type == "response.output_text.delta":
            r["delta_text"] += ev.delta
        if ev.type == "response.completed":
            r["output_text"] = ev.response.output_text
            r["status"] = ev.response.status
            r["usage"] = dump(ev.response.usage)
    return r

for step in cfg["steps"]:
    try:
        out[step] = globals()[step]()
    except Exception as e:
        out[step] = {"error": {"class": type(e).__name__, "status": getattr(e, "status_code", None),
                               "message": str(e), "trace": traceback.format_exc()}}
print(json.dumps(out))
"#;

/// Runs [`SDK_SCRIPT`] with `cfg` and returns its JSON, failing on any step's error.
async fn run_sdk(cfg: Value) -> Value {
    let py = python();
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("sdk.py");
    let cfg_path = dir.path().join("cfg.json");
    std::fs::write(&script, SDK_SCRIPT).unwrap();
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let mut cmd = tokio::process::Command::new(py);
    cmd.arg(&script).arg(&cfg_path).current_dir(dir.path());
    clean_env(&mut cmd);
    cmd.env("PYTHONDONTWRITEBYTECODE", "1");
    let r = run(cmd, "the openai SDK script").await;
    assert!(
        r.status.success(),
        "the SDK script failed ({}):\n{}\n{}",
        r.status,
        r.stdout,
        r.stderr
    );
    let out: Value = serde_json::from_str(r.stdout.lines().last().unwrap_or(""))
        .unwrap_or_else(|e| panic!("SDK output is not JSON ({e}):\n{}\n{}", r.stdout, r.stderr));
    assert_eq!(out["openai_version"], OPENAI_PY_VERSION);
    for step in cfg["steps"].as_array().unwrap() {
        let s = &out[step.as_str().unwrap()];
        assert!(s["error"].is_null(), "SDK step {step} failed: {s:#}");
    }
    eprintln!("SDK script took {:?}", r.elapsed);
    out
}

/// The SDK's view of a Chat usage: (prompt, completion, cached), and `total` checked.
fn sdk_chat_usage(u: &Value) -> (u64, u64, u64) {
    let p = u["prompt_tokens"].as_u64().unwrap_or_else(|| panic!("no usage: {u}"));
    let c = u["completion_tokens"].as_u64().unwrap();
    assert_eq!(u["total_tokens"].as_u64(), Some(p + c), "{u}");
    (p, c, u["prompt_tokens_details"]["cached_tokens"].as_u64().unwrap_or(0))
}

fn upstream_chat_usage(u: &Value) -> (u64, u64, u64) {
    (
        u["prompt_tokens"].as_u64().unwrap(),
        u["completion_tokens"].as_u64().unwrap(),
        u["prompt_tokens_details"]["cached_tokens"].as_u64().unwrap_or(0),
    )
}

/// A Chat Completions stream (OpenAI's chunk format) that calls `Read` on `/tmp/x`, with a
/// usage chunk.
fn chat_tool_call_sse(call_id: &str, usage: &Value) -> String {
    let chunk = |delta: Value, finish: Value| {
        json!({"id": "chatcmpl-scripted-tool", "object": "chat.completion.chunk", "created": 1_795_781_428,
               "model": "gpt-5", "system_fingerprint": "fp_scripted",
               "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}], "usage": null})
    };
    let mut events = vec![
        chunk(
            json!({"role": "assistant", "content": null, "tool_calls": [{"index": 0, "id": call_id, "type": "function",
                   "function": {"name": "Read", "arguments": ""}}]}),
            Value::Null,
        ),
        chunk(
            json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"file_path\""}}]}),
            Value::Null,
        ),
        chunk(
            json!({"tool_calls": [{"index": 0, "function": {"arguments": ": \"/tmp/x\"}"}}]}),
            Value::Null,
        ),
        chunk(json!({}), json!("tool_calls")),
    ];
    let mut last = chunk(json!({}), Value::Null);
    last["choices"] = json!([]);
    last["usage"] = usage.clone();
    events.push(last);
    let mut s = String::new();
    for e in events {
        s.push_str(&format!("data: {e}\n\n"));
    }
    s.push_str("data: [DONE]\n\n");
    s
}

/// A non-streamed Chat Completions answer.
fn chat_json(content: &str, usage: &Value) -> Value {
    json!({
        "id": "chatcmpl-scripted", "object": "chat.completion", "created": 1_795_781_428, "model": "gpt-5",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content, "refusal": null,
                     "annotations": []}, "logprobs": null, "finish_reason": "stop"}],
        "usage": usage, "service_tier": "default", "system_fingerprint": "fp_scripted"
    })
}

fn chat_usage(prompt: u64, completion: u64, cached: u64) -> Value {
    json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
           "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
           "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                         "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}})
}

#[tokio::test]
async fn openai_sdk_on_an_openai_account() {
    python();
    let tool_result = format!("tool-result-{}", uuid::Uuid::new_v4().simple());
    let call_id = "call_scripted_read_1";
    // Each call answers with usage numbers of its own, so the per-key records tell them apart.
    let json_usage = chat_usage(40, 9, 0);
    let tool1_usage = chat_usage(55, 12, 16);
    let tool2_usage = chat_usage(71, 5, 48);
    let upstream = ScriptedUpstream::start(vec![
        Reply::sse(CHAT_SSE),
        Reply::json(&chat_json("Plain hello from upstream.", &json_usage)),
        Reply::sse(chat_tool_call_sse(call_id, &tool1_usage)),
        Reply::json(&chat_json("The file says it.", &tool2_usage)),
        Reply::sse(RESPONSES_SSE),
    ])
    .await;
    let steps = ["chat_stream", "chat", "tool", "responses"];
    let keys: Vec<(String, String)> = steps.iter().map(|s| (s.to_string(), new_key())).collect();
    let key_refs: Vec<(&str, &str)> = keys.iter().map(|(n, k)| (n.as_str(), k.as_str())).collect();
    let relay = RelayProcess::start(&format!(
        "{}accounts:\n  - {{ name: oai, kind: openai, base_url: \"{}/v1\", api_key: sk-upstream-oai }}\n",
        keys_yaml(&key_refs),
        upstream.url()
    ))
    .await;
    let tee = Tee::start(([127, 0, 0, 1], relay.port).into()).await;

    let out = run_sdk(json!({
        "base_url": format!("{}/openai/v1", tee.url()),
        "model": "gpt-5",
        "keys": keys.iter().map(|(n, k)| (n.clone(), json!(k))).collect::<serde_json::Map<String, Value>>(),
        "steps": steps,
        "tool_result": tool_result,
    }))
    .await;

    // Streamed chat: the golden stream's text, finish reason and usage chunk.
    let golden = sse_data(CHAT_SSE);
    let golden_text: String = golden
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    let s = &out["chat_stream"];
    assert_eq!(s["content"], golden_text.as_str(), "{s:#}");
    assert_eq!(s["finish_reason"], "stop");
    assert_eq!(s["model"], "gpt-5");
    assert_eq!(
        sdk_chat_usage(&s["usage"]),
        upstream_chat_usage(&chat_sse_usage(CHAT_SSE))
    );
    // Plain chat.
    let c = &out["chat"];
    assert_eq!(c["content"], "Plain hello from upstream.");
    assert_eq!(c["finish_reason"], "stop");
    assert_eq!(c["object"], "chat.completion");
    assert_eq!(sdk_chat_usage(&c["usage"]), upstream_chat_usage(&json_usage));
    // Tool call, then the answer to its result.
    let t = &out["tool"];
    assert_eq!(t["first"]["finish_reason"], "tool_calls", "{t:#}");
    let calls = t["first"]["calls"].as_array().unwrap();
    assert_eq!(calls.len(), 1, "{t:#}");
    assert_eq!(calls[0]["id"], call_id);
    assert_eq!(calls[0]["name"], "Read");
    let args: Value = serde_json::from_str(calls[0]["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(args, json!({"file_path": "/tmp/x"}));
    assert_eq!(sdk_chat_usage(&t["first"]["usage"]), upstream_chat_usage(&tool1_usage));
    assert_eq!(t["second"]["content"], "The file says it.");
    assert_eq!(sdk_chat_usage(&t["second"]["usage"]), upstream_chat_usage(&tool2_usage));
    // Responses: every event of the golden stream, in order, and its usage.
    let r = &out["responses"];
    let golden_events: Vec<Value> = sse_data(RESPONSES_SSE).iter().map(|e| e["type"].clone()).collect();
    assert_eq!(r["events"], Value::Array(golden_events), "{r:#}");
    let completed = responses_completed(RESPONSES_SSE);
    let final_text = completed["response"]["output"][0]["content"][0]["text"]
        .as_str()
        .unwrap();
    assert_eq!(r["delta_text"], final_text);
    assert_eq!(r["output_text"], final_text);
    assert_eq!(r["status"], "completed");
    let up_usage = &completed["response"]["usage"];
    for f in ["input_tokens", "output_tokens", "total_tokens"] {
        assert_eq!(r["usage"][f], up_usage[f], "{f}: {r:#}");
    }
    assert_eq!(
        r["usage"]["input_tokens_details"]["cached_tokens"],
        up_usage["input_tokens_details"]["cached_tokens"]
    );

    // The upstream saw each call once, with the account's key, and exactly the bytes the SDK sent.
    let seen = upstream.seen();
    let sent = tee.requests();
    assert_eq!(upstream.remaining(), 0);
    assert_eq!(
        seen.len(),
        5,
        "{:?}",
        seen.iter().map(|s| &s.path_and_query).collect::<Vec<_>>()
    );
    assert_eq!(sent.len(), 5);
    let paths: Vec<&str> = seen.iter().map(|s| s.path_and_query.as_str()).collect();
    assert_eq!(
        paths,
        [
            "/v1/chat/completions",
            "/v1/chat/completions",
            "/v1/chat/completions",
            "/v1/chat/completions",
            "/v1/responses"
        ]
    );
    for (i, (up, client)) in seen.iter().zip(&sent).enumerate() {
        assert_eq!(up.header("authorization").as_deref(), Some("Bearer sk-upstream-oai"));
        assert!(
            client.header("user-agent").unwrap_or("").starts_with("OpenAI/Python"),
            "{:?}",
            client.headers
        );
        for (_, key) in &keys {
            assert!(
                up.headers
                    .values()
                    .all(|v| !v.to_str().unwrap_or("").contains(key.as_str())),
                "request {i} carried a client key upstream"
            );
        }
        assert_eq!(
            up.body.as_ref(),
            client.body.as_slice(),
            "request {i} ({}) was not passed byte for byte",
            client.target
        );
    }
    let turn2 = seen[3].json();
    let msgs = turn2["messages"].as_array().unwrap();
    assert_eq!(msgs.last().unwrap()["role"], "tool");
    assert_eq!(msgs.last().unwrap()["tool_call_id"], call_id);
    assert_eq!(msgs.last().unwrap()["content"], tool_result.as_str());

    // What the relay recorded for each key is what the upstream reported.
    let totals = key_usage(
        &relay,
        &[("chat_stream", 1), ("chat", 1), ("tool", 2), ("responses", 1)],
    )
    .await;
    assert_eq!(
        Recorded::of(&totals, "chat_stream"),
        Recorded::from_openai(&chat_sse_usage(CHAT_SSE))
    );
    assert_eq!(Recorded::of(&totals, "chat"), Recorded::from_openai(&json_usage));
    assert_eq!(
        Recorded::of(&totals, "tool"),
        Recorded::from_openai(&tool1_usage).plus(Recorded::from_openai(&tool2_usage))
    );
    assert_eq!(Recorded::of(&totals, "responses"), Recorded::from_openai(up_usage));
    for (name, _) in &keys {
        assert_eq!(totals[format!("config.{name}")]["errors"], 0, "{totals:#}");
    }
}

#[tokio::test]
async fn openai_sdk_on_a_claude_account_is_converted() {
    python();
    let mock = MockUpstream::start().await;
    let tool_result = format!("tool-result-{}", uuid::Uuid::new_v4().simple());
    let steps = ["chat_stream", "chat", "tool"];
    let keys: Vec<(String, String)> = steps.iter().map(|s| (s.to_string(), new_key())).collect();
    let key_refs: Vec<(&str, &str)> = keys.iter().map(|(n, k)| (n.as_str(), k.as_str())).collect();
    let relay = RelayProcess::start(&format!(
        "{}accounts:\n{}",
        keys_yaml(&key_refs),
        support::account_yaml("claude", &mock.url(), "")
    ))
    .await;
    let model = mock::GOLDEN_MODEL;

    let out = run_sdk(json!({
        "base_url": format!("{}/openai/v1", relay.base()),
        "model": model,
        "keys": keys.iter().map(|(n, k)| (n.clone(), json!(k))).collect::<serde_json::Map<String, Value>>(),
        "steps": steps,
        "tool_result": tool_result,
        "tool_headers": {"x-mock-tool": "1"},
    }))
    .await;

    let stream = mock::stream_for(model, false);
    let (text, stream_usage) = anthropic_sse(&stream);
    let json_answer = mock::json_for(model);
    let json_usage = json_answer["usage"].clone();
    let tool_stream = mock::stream_for(model, true);
    let (tool_text, tool_usage) = anthropic_sse(&tool_stream);
    let (tool_id, tool_name, tool_input) = anthropic_sse_tool(&tool_stream);

    // Streamed chat, converted from the Anthropic stream.
    let s = &out["chat_stream"];
    assert_eq!(s["content"], text.as_str(), "{s:#}");
    assert_eq!(s["finish_reason"], "stop");
    assert_eq!(s["model"], model);
    assert_eq!(
        sdk_chat_usage(&s["usage"]),
        Recorded::from_anthropic(&stream_usage).as_chat(),
        "{s:#}"
    );
    // Plain chat.
    let c = &out["chat"];
    assert_eq!(c["content"], json_answer["content"][0]["text"], "{c:#}");
    assert_eq!(c["finish_reason"], "stop");
    assert_eq!(c["object"], "chat.completion");
    assert_eq!(
        sdk_chat_usage(&c["usage"]),
        Recorded::from_anthropic(&json_usage).as_chat()
    );
    // Tool use becomes a tool call; its result goes back as a tool_result.
    let t = &out["tool"];
    assert_eq!(t["first"]["content"], tool_text.as_str(), "{t:#}");
    assert_eq!(t["first"]["finish_reason"], "tool_calls");
    let calls = t["first"]["calls"].as_array().unwrap();
    assert_eq!(calls.len(), 1, "{t:#}");
    assert_eq!(calls[0]["id"], tool_id.as_str());
    assert_eq!(calls[0]["name"], tool_name.as_str());
    let args: Value = serde_json::from_str(calls[0]["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(args, tool_input);
    assert_eq!(
        sdk_chat_usage(&t["first"]["usage"]),
        Recorded::from_anthropic(&tool_usage).as_chat()
    );
    assert_eq!(t["second"]["content"], json_answer["content"][0]["text"]);
    assert_eq!(t["second"]["finish_reason"], "stop");

    // The upstream got Anthropic Messages requests with the account's key.
    let seen = mock.seen();
    assert_eq!(
        seen.len(),
        4,
        "{:?}",
        seen.iter().map(|s| &s.path_and_query).collect::<Vec<_>>()
    );
    for (i, up) in seen.iter().enumerate() {
        assert!(up.path_and_query.starts_with("/v1/messages"), "{}", up.path_and_query);
        assert_eq!(
            up.header("x-api-key").as_deref(),
            Some("sk-ant-api03-upstream-claude"),
            "request {i}"
        );
        for (_, key) in &keys {
            assert!(
                up.headers
                    .values()
                    .all(|v| !v.to_str().unwrap_or("").contains(key.as_str())),
                "request {i} carried a client key upstream"
            );
        }
        let b = up.json();
        assert_eq!(b["model"], model);
        assert!(b["messages"].is_array(), "request {i}: {b}");
        assert!(b["max_tokens"].as_u64().is_some_and(|n| n > 0), "request {i}: {b}");
    }
    assert_eq!(seen[0].json()["stream"], true);
    assert_ne!(seen[1].json()["stream"], true);
    let tools = seen[2].json()["tools"].clone();
    assert_eq!(tools[0]["name"], "Read", "{tools}");
    assert_eq!(tools[0]["input_schema"]["properties"]["file_path"]["type"], "string");
    // Turn 2: the assistant's tool_use, then the user's tool_result carrying the SDK's result.
    let turn2 = seen[3].json();
    let msgs = turn2["messages"].as_array().unwrap();
    let last = msgs.last().unwrap();
    assert_eq!(last["role"], "user", "{turn2}");
    let result = last["content"]
        .as_array()
        .and_then(|blocks| blocks.iter().find(|b| b["type"] == "tool_result"))
        .unwrap_or_else(|| panic!("no tool_result block: {last}"));
    assert_eq!(result["tool_use_id"], tool_id.as_str());
    assert!(result["content"].to_string().contains(&tool_result), "{result}");
    let assistant = &msgs[msgs.len() - 2];
    assert_eq!(assistant["role"], "assistant");
    let tool_use = assistant["content"]
        .as_array()
        .and_then(|blocks| blocks.iter().find(|b| b["type"] == "tool_use"))
        .unwrap_or_else(|| panic!("no tool_use block: {assistant}"));
    assert_eq!(tool_use["id"], tool_id.as_str());
    assert_eq!(tool_use["input"], tool_input);

    // The relay recorded the Anthropic usage, which is what the SDK was shown.
    let totals = key_usage(&relay, &[("chat_stream", 1), ("chat", 1), ("tool", 2)]).await;
    assert_eq!(
        Recorded::of(&totals, "chat_stream"),
        Recorded::from_anthropic(&stream_usage)
    );
    assert_eq!(Recorded::of(&totals, "chat"), Recorded::from_anthropic(&json_usage));
    assert_eq!(
        Recorded::of(&totals, "tool"),
        Recorded::from_anthropic(&tool_usage).plus(Recorded::from_anthropic(&json_usage))
    );
}

// ------------------------------------------------------------------------------------------
// Codex CLI
// ------------------------------------------------------------------------------------------

/// Whether something accepts connections at `addr` (Codex waits forever on a refused one).
async fn listening(addr: std::net::SocketAddr) -> bool {
    matches!(
        tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr)).await,
        Ok(Ok(_))
    )
}

#[tokio::test]
async fn codex_exec_runs_a_tool_round_trip_through_the_relay() {
    let codex = codex();
    // Turn 1: the golden function-call stream, asking to run `cat hello.txt`.
    let call_sse = RESPONSES_CALL_SSE.replace(r#"\"ls\""#, r#"\"cat hello.txt\""#);
    assert_eq!(call_sse.matches(r#"cat hello.txt"#).count(), 4, "the fixture changed");
    let call = responses_completed(&call_sse)["response"]["output"][0].clone();
    assert_eq!(call["type"], "function_call");
    let upstream = ScriptedUpstream::start(vec![Reply::sse(call_sse.clone()), Reply::sse(RESPONSES_SSE)]).await;
    let key = new_key();
    let relay = RelayProcess::start(&format!(
        "{}accounts:\n  - {{ name: oai, kind: openai, base_url: \"{}/v1\", api_key: sk-upstream-codex }}\n",
        keys_yaml(&[("codex", &key)]),
        upstream.url()
    ))
    .await;
    let tee = Tee::start(([127, 0, 0, 1], relay.port).into()).await;
    assert!(listening(tee.addr).await, "nothing listens at {}", tee.url());

    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let work = dir.path().join("work");
    std::fs::create_dir_all(&home).unwrap();
    std::fs::create_dir_all(&work).unwrap();
    let secret = format!("codex-secret-{}", uuid::Uuid::new_v4().simple());
    std::fs::write(work.join("hello.txt"), format!("{secret}\n")).unwrap();
    std::fs::write(
        home.join("config.toml"),
        format!(
            r#"model = "gpt-5-codex"
model_provider = "relay"
[model_providers.relay]
name = "relay"
base_url = "{}/v1"
env_key = "RELAY_API_KEY"
wire_api = "responses"
request_max_retries = 1
stream_max_retries = 1
stream_idle_timeout_ms = 20000
"#,
            tee.url()
        ),
    )
    .unwrap();
    let last = dir.path().join("last.txt");
    let mut cmd = tokio::process::Command::new(&codex);
    cmd.args(["exec", "--skip-git-repo-check", "-o"])
        .arg(&last)
        .arg("Show me what hello.txt says.")
        .current_dir(&work)
        .env("CODEX_HOME", &home)
        .env("HOME", &home)
        .env("RELAY_API_KEY", &key)
        .env("TERM", "dumb");
    clean_env(&mut cmd);
    let r = run(cmd, "codex exec").await;
    let transcript = format!("stdout:\n{}\nstderr:\n{}", r.stdout, r.stderr);
    assert!(r.status.success(), "codex exec failed ({}):\n{transcript}", r.status);
    eprintln!("codex exec took {:?}", r.elapsed);

    // The final message of turn 2 is Codex's answer.
    let completed = responses_completed(RESPONSES_SSE);
    let final_text = completed["response"]["output"][0]["content"][0]["text"]
        .as_str()
        .unwrap();
    let answer = std::fs::read_to_string(&last).unwrap_or_default();
    assert_eq!(answer.trim(), final_text, "{transcript}");

    // Two requests reached the upstream, with the account's key, as Codex sent them.
    let seen = upstream.seen();
    let sent = tee.requests();
    assert_eq!(
        sent.iter()
            .map(|r| format!("{} {}", r.method, r.target))
            .collect::<Vec<_>>(),
        ["POST /v1/responses", "POST /v1/responses"],
        "{transcript}"
    );
    assert_eq!(seen.len(), 2, "{transcript}");
    assert_eq!(upstream.remaining(), 0);
    for (i, (up, client)) in seen.iter().zip(&sent).enumerate() {
        assert_eq!(up.method, "POST");
        assert_eq!(up.path_and_query, "/v1/responses");
        assert_eq!(up.header("authorization").as_deref(), Some("Bearer sk-upstream-codex"));
        assert_eq!(client.header("authorization"), Some(format!("Bearer {key}").as_str()));
        assert!(
            client.header("user-agent").unwrap_or("").starts_with("codex_exec/"),
            "{:?}",
            client.headers
        );
        assert!(
            up.headers.values().all(|v| !v.to_str().unwrap_or("").contains(&key)),
            "request {i} carried the client key upstream"
        );
        assert_eq!(
            up.body.as_ref(),
            client.body.as_slice(),
            "request {i}: the body was not passed byte for byte"
        );
        // Codex's own shape, untouched.
        let b = up.json();
        assert_eq!(b["model"], "gpt-5-codex");
        assert_eq!(b["stream"], true);
        assert_eq!(b["store"], false);
        let cache_key = b["prompt_cache_key"].as_str().expect("prompt_cache_key");
        assert_eq!(up.header("session-id").as_deref(), Some(cache_key));
        let tools = b["tools"].as_array().expect("tools");
        let namespace = tools
            .iter()
            .find(|t| t["type"] == "namespace")
            .unwrap_or_else(|| panic!("no namespace tool: {tools:?}"));
        assert!(namespace.as_object().unwrap().len() > 1, "{namespace}");
        assert!(tools.iter().any(|t| t["type"] == "web_search"), "{tools:?}");
        assert!(
            tools
                .iter()
                .any(|t| t["type"] == "function" && t["name"] == "exec_command")
        );
    }
    // Turn 2 carries the call and what running it printed.
    let turn2 = seen[1].json();
    let input = turn2["input"].as_array().unwrap();
    let [.., fc, output] = input.as_slice() else {
        panic!("turn 2 input too short: {turn2}");
    };
    assert_eq!(fc["type"], "function_call", "{fc}");
    assert_eq!(fc["call_id"], call["call_id"]);
    assert_eq!(fc["name"], "exec_command");
    let args: Value = serde_json::from_str(fc["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(args, json!({"cmd": "cat hello.txt"}));
    assert_eq!(output["type"], "function_call_output", "{output}");
    assert_eq!(output["call_id"], call["call_id"]);
    let printed = output["output"].as_str().unwrap_or("");
    assert!(
        printed.contains(&secret),
        "the tool output lacks the file's content (was the command sandboxed away?): {output}\n{transcript}"
    );

    // Both turns were recorded with the upstream's usage.
    let totals = key_usage(&relay, &[("codex", 2)]).await;
    let expected = Recorded::from_openai(&responses_completed(&call_sse)["response"]["usage"])
        .plus(Recorded::from_openai(&completed["response"]["usage"]));
    assert_eq!(Recorded::of(&totals, "codex"), expected, "{totals:#}");
    assert_eq!(totals["config.codex"]["errors"], 0);
}

/// Codex's built-in provider first tries the Responses WebSocket transport; the relay refuses
/// the upgrade at once with 426, so Codex falls back to HTTPS without waiting.
#[tokio::test]
async fn codex_websocket_upgrade_is_refused_at_once() {
    let upstream = ScriptedUpstream::start(vec![]).await;
    let key = new_key();
    let relay = RelayProcess::start(&format!(
        "{}accounts:\n  - {{ name: oai, kind: openai, base_url: \"{}/v1\", api_key: sk-upstream-ws }}\n",
        keys_yaml(&[("codex", &key)]),
        upstream.url()
    ))
    .await;
    let recorded = support::fixture("codex-websocket-upgrade");
    let (method, path, _, headers, _) = &recorded[0];
    assert_eq!((method.as_str(), path.as_str()), ("GET", "/v1/responses"));
    let mut req = format!("GET {path} HTTP/1.1\r\n");
    for (name, value) in headers {
        let value = match name.as_str() {
            "host" => format!("127.0.0.1:{}", relay.port),
            "authorization" => format!("Bearer {key}"),
            _ => value.clone(),
        };
        req.push_str(&format!("{name}: {value}\r\n"));
    }
    req.push_str("\r\n");
    assert!(req.contains("upgrade: websocket"), "{req}");

    for _ in 0..3 {
        let started = Instant::now();
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", relay.port)).await.unwrap();
        s.write_all(req.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        let head = tokio::time::timeout(Duration::from_secs(5), async {
            let mut chunk = [0u8; 4096];
            loop {
                let n = s.read(&mut chunk).await.unwrap();
                buf.extend_from_slice(&chunk[..n]);
                if n == 0 || buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    return String::from_utf8_lossy(&buf).to_string();
                }
            }
        })
        .await
        .expect("no answer to the WebSocket upgrade within 5 s");
        let elapsed = started.elapsed();
        assert!(head.starts_with("HTTP/1.1 426"), "{head}");
        assert!(elapsed < Duration::from_secs(2), "426 took {elapsed:?}");
        assert!(!head.to_ascii_lowercase().contains("sec-websocket-accept"), "{head}");
    }
    assert!(upstream.seen().is_empty(), "the upgrade reached the upstream");
}
