use serde_json::{Value, json};

use super::*;
use crate::usage::TokenUsage;

const CREATED: i64 = 1_795_781_428;

fn convert(answer: Value) -> (Value, TokenUsage) {
    let (bytes, usage) = response_from_messages_at(answer.to_string().as_bytes(), "gpt-4o", CREATED).unwrap();
    (serde_json::from_slice(&bytes).unwrap(), usage)
}

fn error(status: u16, body: &[u8]) -> Value {
    serde_json::from_slice(&error_from_anthropic(status, body)).unwrap()
}

#[test]
fn a_text_answer_with_cache_usage() {
    let (out, usage) = convert(json!({
        "id": "msg_01abc",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-5-20250929",
        "content": [{"type": "text", "text": "Hello "}, {"type": "text", "text": "there."}],
        "stop_reason": "end_turn",
        "stop_sequence": null,
        "usage": {
            "input_tokens": 21,
            "cache_creation_input_tokens": 300,
            "cache_read_input_tokens": 3,
            "cache_creation": {"ephemeral_5m_input_tokens": 100, "ephemeral_1h_input_tokens": 200},
            "output_tokens": 7,
        },
    }));
    assert_eq!(
        out,
        json!({
            "id": "chatcmpl-msg_01abc",
            "object": "chat.completion",
            "created": CREATED,
            "model": "gpt-4o",
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": "Hello there."},
                "logprobs": null,
                "finish_reason": "stop",
            }],
            "usage": {
                "prompt_tokens": 324,
                "completion_tokens": 7,
                "total_tokens": 331,
                "prompt_tokens_details": {"cached_tokens": 3},
            },
        })
    );
    assert_eq!(
        usage,
        TokenUsage {
            input: 21,
            output: 7,
            cache_read: 3,
            cache_write_5m: 100,
            cache_write_1h: 200,
            reasoning: 0,
            billing: crate::usage::Billing::NONE,
        }
    );
}

#[test]
fn a_cache_write_without_its_split_counts_as_5m() {
    let (out, usage) = convert(json!({
        "id": "msg_1",
        "content": [{"type": "text", "text": "x"}],
        "stop_reason": "max_tokens",
        "usage": {"input_tokens": 5, "cache_creation_input_tokens": 40, "output_tokens": 2},
    }));
    assert_eq!(usage.cache_write_5m, 40);
    assert_eq!(usage.cache_write_1h, 0);
    assert_eq!(out["usage"]["prompt_tokens"], 45);
    assert_eq!(out["choices"][0]["finish_reason"], "length");
}

#[test]
fn tool_use_blocks_become_tool_calls() {
    let (out, usage) = convert(json!({
        "id": "msg_tools",
        "type": "message",
        "content": [
            {"type": "thinking", "thinking": "Need both cities.", "signature": "sig"},
            {"type": "redacted_thinking", "data": "xyz"},
            {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
            {"type": "tool_use", "id": "toolu_2", "name": "get_time", "input": {}},
        ],
        "stop_reason": "tool_use",
        "usage": {"input_tokens": 50, "output_tokens": 30},
    }));
    assert_eq!(
        out["choices"][0],
        json!({
            "index": 0,
            "message": {
                "role": "assistant",
                "content": null,
                "reasoning_content": "Need both cities.",
                "tool_calls": [
                    {"id": "toolu_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
                    {"id": "toolu_2", "type": "function", "function": {"name": "get_time", "arguments": "{}"}},
                ],
            },
            "logprobs": null,
            "finish_reason": "tool_calls",
        })
    );
    assert_eq!(out["usage"]["prompt_tokens"], 50);
    assert_eq!(out["usage"]["total_tokens"], 80);
    assert_eq!(usage.input, 50);
}

#[test]
fn text_and_tool_use_together() {
    let (out, _) = convert(json!({
        "id": "msg_2",
        "content": [
            {"type": "text", "text": "Let me check."},
            {"type": "tool_use", "id": "toolu_9", "name": "read", "input": {"path": "/a \"b\""}},
        ],
        "stop_reason": "tool_use",
        "usage": {"input_tokens": 1, "output_tokens": 1},
    }));
    let message = &out["choices"][0]["message"];
    assert_eq!(message["content"], "Let me check.");
    let arguments = message["tool_calls"][0]["function"]["arguments"].as_str().unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(arguments).unwrap(),
        json!({"path": "/a \"b\""})
    );
}

#[test]
fn finish_reasons() {
    for (stop, finish) in [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
        ("pause_turn", "stop"),
    ] {
        let (out, _) = convert(json!({"id": "m", "content": [], "stop_reason": stop, "usage": {}}));
        assert_eq!(out["choices"][0]["finish_reason"], finish, "{stop}");
        assert_eq!(out["choices"][0]["message"]["content"], Value::Null);
    }
}

#[test]
fn the_clock_gives_created_by_default() {
    let before = chrono::Utc::now().timestamp();
    let (bytes, _) = response_from_messages(br#"{"id":"m","content":[],"stop_reason":"end_turn"}"#, "x").unwrap();
    let out: Value = serde_json::from_slice(&bytes).unwrap();
    let created = out["created"].as_i64().unwrap();
    assert!(created >= before && created <= chrono::Utc::now().timestamp());
    assert_eq!(out["usage"]["total_tokens"], 0);
}

#[test]
fn a_body_that_is_not_a_messages_answer_is_an_error() {
    assert!(response_from_messages(b"<html>", "x").is_err());
    assert!(response_from_messages(b"[]", "x").is_err());
    let e = response_from_messages(
        br#"{"type":"error","error":{"type":"api_error","message":"boom"}}"#,
        "x",
    )
    .unwrap_err();
    assert!(e.0.contains("error"), "{e}");
}

#[test]
fn anthropic_error_types_map_to_openai_errors() {
    for (status, kind, openai, code) in [
        (400, "invalid_request_error", "invalid_request_error", Value::Null),
        (401, "authentication_error", "authentication_error", Value::Null),
        (403, "permission_error", "permission_error", Value::Null),
        (
            413,
            "request_too_large",
            "invalid_request_error",
            json!("request_too_large"),
        ),
        (
            429,
            "rate_limit_error",
            "rate_limit_error",
            json!("rate_limit_exceeded"),
        ),
        (402, "billing_error", "insufficient_quota", json!("insufficient_quota")),
        (500, "api_error", "server_error", Value::Null),
        (504, "timeout_error", "server_error", json!("timeout")),
        (529, "overloaded_error", "server_error", json!("overloaded")),
    ] {
        let body = json!({"type": "error", "error": {"type": kind, "message": format!("{kind} happened")}, "request_id": "req_1"});
        assert_eq!(
            error(status, body.to_string().as_bytes()),
            json!({"error": {"message": format!("{kind} happened"), "type": openai, "param": null, "code": code}}),
            "{kind}"
        );
    }
}

#[test]
fn not_found_names_a_missing_model() {
    let body = br#"{"type":"error","error":{"type":"not_found_error","message":"model: claude-nope"}}"#;
    assert_eq!(
        error(404, body),
        json!({"error": {"message": "model: claude-nope", "type": "invalid_request_error", "param": null, "code": "model_not_found"}})
    );
    let body = br#"{"type":"error","error":{"type":"not_found_error","message":"Not found"}}"#;
    assert_eq!(error(404, body)["error"]["code"], "not_found");
}

#[test]
fn unknown_error_types_and_other_bodies_follow_the_status() {
    let body = br#"{"type":"error","error":{"type":"brand_new_error","message":"slow down"}}"#;
    assert_eq!(
        error(429, body),
        json!({"error": {"message": "slow down", "type": "rate_limit_error", "param": null, "code": "rate_limit_exceeded"}})
    );
    assert_eq!(
        error(418, br#"{"message":"teapot"}"#)["error"]["type"],
        "invalid_request_error"
    );
    assert_eq!(
        error(503, br#"{"error":"unavailable"}"#)["error"]["message"],
        "unavailable"
    );
}

#[test]
fn a_non_json_error_body_gets_a_message_from_the_status() {
    assert_eq!(
        error(502, b"<html><body>Bad gateway</body></html>"),
        json!({"error": {"message": "The upstream answered HTTP 502 Bad Gateway", "type": "server_error", "param": null, "code": null}})
    );
    assert_eq!(
        error(529, b""),
        json!({"error": {"message": "The upstream answered HTTP 529", "type": "server_error", "param": null, "code": "overloaded"}})
    );
    assert_eq!(error(401, b"nope")["error"]["type"], "authentication_error");
}
