use serde_json::{Value, json};

use super::*;
use crate::usage::TokenUsage;

/// The complete answers equivalent to the recorded streams, and what they must become.
const TEXT: &[u8] = include_bytes!("../../../tests/fixtures/responses/gemini-generate-content.json");
const CALL: &[u8] = include_bytes!("../../../tests/fixtures/responses/gemini-generate-content-function-call.json");
const TEXT_CHAT: &str = include_str!("../../../tests/fixtures/responses/gemini-stream-alt-sse.chat.json");
const CALL_CHAT: &str = include_str!("../../../tests/fixtures/responses/gemini-stream-function-call.chat.json");

pub(super) const MODEL: &str = "my-gemini";
pub(super) const CREATED: i64 = 1_795_781_428;

/// The recorded usages: 24 prompt tokens (3 cached), 7 out; 57 prompt tokens, 21 + 18 thinking out.
pub(super) const TEXT_USAGE: TokenUsage = TokenUsage {
    input: 21,
    output: 7,
    cache_read: 3,
    cache_write_5m: 0,
    cache_write_1h: 0,
    reasoning: 0,
    billing: crate::usage::Billing::NONE,
};
pub(super) const CALL_USAGE: TokenUsage = TokenUsage {
    input: 57,
    output: 39,
    cache_read: 0,
    cache_write_5m: 0,
    cache_write_1h: 0,
    reasoning: 18,
    billing: crate::usage::Billing::NONE,
};

/// `text` with each generated tool call id (`call_` and 24 hex digits) written as 24 zeros, as
/// the goldens have them.
pub(super) fn normalise(text: &str) -> String {
    const PREFIX: &str = "\"call_";
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(PREFIX) {
        let (head, tail) = rest.split_at(at + PREFIX.len());
        out.push_str(head);
        let hex = tail.bytes().take_while(u8::is_ascii_hexdigit).count();
        if hex == 24 && tail.as_bytes().get(24) == Some(&b'"') {
            out.push_str(&"0".repeat(24));
            rest = &tail[24..];
        } else {
            rest = tail;
        }
    }
    out.push_str(rest);
    out
}

fn convert(body: &[u8]) -> (String, TokenUsage) {
    let (json, usage) = response_from_gemini_at(body, MODEL, CREATED).unwrap();
    (normalise(std::str::from_utf8(&json).unwrap()), usage)
}

fn envelope(body: &[u8]) -> Vec<u8> {
    let answer: Value = serde_json::from_slice(body).unwrap();
    json!({"response": answer, "traceId": "a1b2c3"})
        .to_string()
        .into_bytes()
}

#[test]
fn recorded_answers_as_completions() {
    assert_eq!(convert(TEXT), (TEXT_CHAT.trim_end().to_owned(), TEXT_USAGE));
    assert_eq!(convert(CALL), (CALL_CHAT.trim_end().to_owned(), CALL_USAGE));
}

#[test]
fn code_assist_envelopes_are_read_alike() {
    assert_eq!(convert(&envelope(TEXT)), (TEXT_CHAT.trim_end().to_owned(), TEXT_USAGE));
    assert_eq!(convert(&envelope(CALL)), (CALL_CHAT.trim_end().to_owned(), CALL_USAGE));
}

#[test]
fn generated_call_ids_differ_and_given_ones_are_kept() {
    let (a, _) = response_from_gemini(CALL, MODEL).unwrap();
    let (b, _) = response_from_gemini(CALL, MODEL).unwrap();
    assert_ne!(a, b);
    let body = json!({"candidates": [{"content": {"parts": [
        {"functionCall": {"id": "fc-1", "name": "a"}},
        {"functionCall": {"id": "fc-2", "name": "b", "args": {"x": [1, 2]}}},
    ]}, "finishReason": "STOP"}]});
    let (out, _) = response_from_gemini_at(body.to_string().as_bytes(), MODEL, CREATED).unwrap();
    let out: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(
        out["choices"][0]["message"],
        json!({"role": "assistant", "content": null, "tool_calls": [
            {"id": "fc-1", "type": "function", "function": {"name": "a", "arguments": "{}"}},
            {"id": "fc-2", "type": "function", "function": {"name": "b", "arguments": "{\"x\":[1,2]}"}},
        ]})
    );
    assert_eq!(out["choices"][0]["finish_reason"], "tool_calls");
    assert!(out["id"].as_str().unwrap().starts_with("chatcmpl-"));
}

fn completion(body: Value) -> Value {
    let (out, _) = response_from_gemini_at(body.to_string().as_bytes(), MODEL, CREATED).unwrap();
    serde_json::from_slice(&out).unwrap()
}

#[test]
fn candidates_are_choices() {
    let out = completion(json!({
        "candidates": [
            {"content": {"parts": [{"text": "B"}]}, "finishReason": "MAX_TOKENS", "index": 1},
            {"content": {"parts": [{"text": "A"}, {"text": "a"}]}, "finishReason": "STOP", "index": 0},
            {"finishReason": "SAFETY", "index": 2},
        ],
        "responseId": "r1",
    }));
    assert_eq!(out["id"], "chatcmpl-r1");
    assert_eq!(
        out["choices"],
        json!([
            {"index": 0, "message": {"role": "assistant", "content": "Aa"}, "logprobs": null, "finish_reason": "stop"},
            {"index": 1, "message": {"role": "assistant", "content": "B"}, "logprobs": null, "finish_reason": "length"},
            {"index": 2, "message": {"role": "assistant", "content": null}, "logprobs": null, "finish_reason": "content_filter"},
        ])
    );
    assert_eq!(
        out["usage"],
        json!({"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0, "prompt_tokens_details": {"cached_tokens": 0}, "completion_tokens_details": {"reasoning_tokens": 0}})
    );
}

#[test]
fn a_refused_prompt_is_a_filtered_choice() {
    let out = completion(json!({
        "promptFeedback": {"blockReason": "PROHIBITED_CONTENT"},
        "usageMetadata": {"promptTokenCount": 9, "totalTokenCount": 9},
    }));
    assert_eq!(
        out["choices"],
        json!([{"index": 0, "message": {"role": "assistant", "content": null}, "logprobs": null, "finish_reason": "content_filter"}])
    );
    assert_eq!(out["usage"]["prompt_tokens"], 9);
}

#[test]
fn finish_reasons() {
    for (reason, called, expected) in [
        ("STOP", false, "stop"),
        ("STOP", true, "tool_calls"),
        ("MAX_TOKENS", true, "length"),
        ("SAFETY", false, "content_filter"),
        ("RECITATION", false, "content_filter"),
        ("BLOCKLIST", false, "content_filter"),
        ("PROHIBITED_CONTENT", false, "content_filter"),
        ("SPII", false, "content_filter"),
        ("IMAGE_SAFETY", false, "content_filter"),
        ("MALFORMED_FUNCTION_CALL", false, "stop"),
        ("OTHER", true, "stop"),
    ] {
        assert_eq!(finish_reason(Some(reason), called), expected, "{reason}");
    }
    assert_eq!(finish_reason(None, true), "tool_calls");
    assert_eq!(finish_reason(None, false), "stop");
}

#[test]
fn what_is_not_an_answer_is_an_error() {
    let refuse = |body: &[u8]| response_from_gemini(body, MODEL).unwrap_err().0;
    assert_eq!(refuse(b"[]"), "the upstream answer is not a JSON object");
    assert!(refuse(b"{\"candidates\": 3}").starts_with("the upstream answer is not a Gemini response"));
    assert_eq!(
        refuse(br#"{"error":{"code":429,"message":"Quota exceeded","status":"RESOURCE_EXHAUSTED"}}"#),
        "the upstream answer is an error, not a Gemini response: Quota exceeded"
    );
    assert_eq!(
        refuse(br#"{"response":{"error":{"code":500,"message":"boom"}}}"#),
        "the upstream answer is an error, not a Gemini response: boom"
    );
}

#[test]
fn compact_json_strips_only_whitespace_outside_strings() {
    assert!(matches!(compact_json(r#"{"a":"b c"}"#), std::borrow::Cow::Borrowed(_)));
    assert_eq!(
        compact_json("{\n  \"a\": \"b \\\" c\",\n  \"d\": [1, 2],\t\"é\": \"x y\"\n}"),
        "{\"a\":\"b \\\" c\",\"d\":[1,2],\"é\":\"x y\"}"
    );
    assert_eq!(compact_json(r#"{"a": "\\"}"#), r#"{"a":"\\"}"#);
}

// --- errors ---------------------------------------------------------------------------------------

fn error(status: u16, body: &str) -> Value {
    serde_json::from_slice(&error_from_gemini(status, body.as_bytes())).unwrap()
}

#[test]
fn google_errors_become_openai_errors() {
    let cases = [
        (
            400,
            r#"{"error":{"code":400,"message":"Invalid value at 'contents'","status":"INVALID_ARGUMENT","details":[{"@type":"type.googleapis.com/google.rpc.BadRequest"}]}}"#,
            json!({"message": "Invalid value at 'contents'", "type": "invalid_request_error", "param": null, "code": null}),
        ),
        (
            400,
            r#"{"error":{"code":400,"message":"User location is not supported for the API use.","status":"FAILED_PRECONDITION"}}"#,
            json!({"message": "User location is not supported for the API use.", "type": "invalid_request_error", "param": null, "code": null}),
        ),
        (
            401,
            r#"{"error":{"code":401,"message":"Request had invalid authentication credentials.","status":"UNAUTHENTICATED"}}"#,
            json!({"message": "Request had invalid authentication credentials.", "type": "authentication_error", "param": null, "code": null}),
        ),
        (
            403,
            r#"{"error":{"code":403,"message":"The caller does not have permission","status":"PERMISSION_DENIED"}}"#,
            json!({"message": "The caller does not have permission", "type": "permission_error", "param": null, "code": null}),
        ),
        (
            404,
            r#"{"error":{"code":404,"message":"models/gemini-9 is not found for API version v1beta","status":"NOT_FOUND"}}"#,
            json!({"message": "models/gemini-9 is not found for API version v1beta", "type": "invalid_request_error", "param": null, "code": "model_not_found"}),
        ),
        (
            429,
            r#"[{"error":{"code":429,"message":"Resource has been exhausted (e.g. check quota).","status":"RESOURCE_EXHAUSTED"}}]"#,
            json!({"message": "Resource has been exhausted (e.g. check quota).", "type": "rate_limit_error", "param": null, "code": "rate_limit_exceeded"}),
        ),
        (
            500,
            r#"{"error":{"code":500,"message":"An internal error has occurred.","status":"INTERNAL"}}"#,
            json!({"message": "An internal error has occurred.", "type": "server_error", "param": null, "code": null}),
        ),
        (
            503,
            r#"{"error":{"code":503,"message":"The model is overloaded. Please try again later.","status":"UNAVAILABLE"}}"#,
            json!({"message": "The model is overloaded. Please try again later.", "type": "server_error", "param": null, "code": null}),
        ),
        (
            504,
            r#"{"error":{"code":504,"message":"Deadline expired.","status":"DEADLINE_EXCEEDED"}}"#,
            json!({"message": "Deadline expired.", "type": "server_error", "param": null, "code": "timeout"}),
        ),
    ];
    for (status, body, expected) in cases {
        assert_eq!(error(status, body), json!({"error": expected}), "{body}");
    }
}

#[test]
fn other_error_bodies_are_named_by_their_status() {
    assert_eq!(
        error(502, "<html>Bad Gateway</html>"),
        json!({"error": {"message": "The upstream answered HTTP 502 Bad Gateway", "type": "server_error", "param": null, "code": null}})
    );
    assert_eq!(
        error(429, ""),
        json!({"error": {"message": "The upstream answered HTTP 429 Too Many Requests", "type": "rate_limit_error", "param": null, "code": "rate_limit_exceeded"}})
    );
    // The status named in the body wins over the HTTP status; without one, the error's code.
    assert_eq!(
        error(
            400,
            r#"{"error":{"code":400,"message":"slow down","status":"RESOURCE_EXHAUSTED"}}"#
        )["error"]["type"],
        "rate_limit_error"
    );
    assert_eq!(
        error(500, r#"{"error":{"code":403,"message":"no"}}"#)["error"]["type"],
        "permission_error"
    );
    assert_eq!(
        error(400, r#"{"error":{"message":""}}"#)["error"]["message"],
        "The upstream answered HTTP 400 Bad Request"
    );
}
