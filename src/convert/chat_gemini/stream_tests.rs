use bytes::Bytes;
use serde_json::{Value, json};

use super::response_tests::{CALL_USAGE, CREATED, MODEL, TEXT_USAGE, normalise};
use super::*;
use crate::usage::TokenUsage;

/// The recorded Gemini stream (text) and one written on it (a thought, text, a function call).
const TEXT: &[u8] = include_bytes!("../../../tests/fixtures/responses/gemini-stream-alt-sse.sse");
const CALL: &[u8] = include_bytes!("../../../tests/fixtures/responses/gemini-stream-function-call.sse");

/// What they must become for a client that streams with `include_usage`, model [`MODEL`].
const TEXT_CHAT: &str = include_str!("../../../tests/fixtures/responses/gemini-stream-alt-sse.chat.sse");
const CALL_CHAT: &str = include_str!("../../../tests/fixtures/responses/gemini-stream-function-call.chat.sse");

fn converter(include_usage: bool, envelope: bool) -> GeminiSseToChat {
    GeminiSseToChat::with_created(MODEL, include_usage, envelope, CREATED)
}

/// Converts `stream` split at `cuts`; returns every non-empty output, the final one included.
fn run(t: &mut GeminiSseToChat, stream: &[u8], cuts: &[usize]) -> Vec<Bytes> {
    let mut out = Vec::new();
    let mut at = 0;
    for &cut in cuts.iter().chain([&stream.len()]) {
        out.push(t.push(&stream[at..cut]));
        at = cut;
    }
    out.push(t.finish());
    out.retain(|b| !b.is_empty());
    out
}

fn text_of(parts: &[Bytes]) -> String {
    normalise(std::str::from_utf8(&parts.concat()).unwrap())
}

fn to_crlf(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() * 2);
    for &b in bytes {
        if b == b'\n' {
            out.push(b'\r');
        }
        out.push(b);
    }
    out
}

/// The stream as Code Assist sends it: each event in `{"response": …, "traceId": …}`.
fn enveloped(stream: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for line in stream.split_inclusive(|&b| b == b'\n') {
        match line.strip_prefix(b"data: ") {
            Some(data) => {
                let answer: Value = serde_json::from_slice(data.trim_ascii_end()).unwrap();
                out.extend_from_slice(format!("data: {}\n", json!({"response": answer, "traceId": "t-1"})).as_bytes());
            }
            None => out.extend_from_slice(line),
        }
    }
    out
}

/// The stream gives `expected`, in one piece when it comes whole (events arriving together leave
/// together), at every two-way split, byte by byte, with CRLF line ends, and in Code Assist's
/// envelope.
fn assert_converts(stream: &[u8], include_usage: bool, expected: &str, usage: TokenUsage) {
    let mut t = converter(include_usage, false);
    let whole = run(&mut t, stream, &[]);
    assert_eq!(whole.len(), 1, "{whole:?}");
    assert_eq!(text_of(&whole), expected);
    assert_eq!(t.usage(), usage);
    assert!(!t.failed());
    for (variant, envelope) in [
        (stream.to_vec(), false),
        (to_crlf(stream), false),
        (enveloped(stream), true),
    ] {
        for k in 0..=variant.len() {
            let mut t = converter(include_usage, envelope);
            assert_eq!(text_of(&run(&mut t, &variant, &[k])), expected, "split at {k}");
            assert_eq!(t.usage(), usage, "split at {k}");
            assert!(!t.failed());
        }
        let mut t = converter(include_usage, envelope);
        let bytes: Vec<usize> = (1..variant.len()).collect();
        assert_eq!(text_of(&run(&mut t, &variant, &bytes)), expected);
    }
}

#[test]
fn recorded_text_stream_as_chat_chunks() {
    assert_converts(TEXT, true, TEXT_CHAT, TEXT_USAGE);
}

#[test]
fn function_call_stream_as_chat_chunks() {
    assert_converts(CALL, true, CALL_CHAT, CALL_USAGE);
}

/// The golden chunks without the usage chunk.
fn without_usage(chat: &str) -> String {
    chat.split_inclusive("\n\n")
        .filter(|event| !event.contains("\"usage\":"))
        .collect()
}

#[test]
fn no_usage_chunk_unless_asked() {
    assert_converts(TEXT, false, &without_usage(TEXT_CHAT), TEXT_USAGE);
    assert_converts(CALL, false, &without_usage(CALL_CHAT), CALL_USAGE);
}

#[test]
fn generated_call_ids_are_unique() {
    let once = || String::from_utf8(run(&mut converter(true, false), CALL, &[]).concat()).unwrap();
    assert_ne!(once(), once());
}

#[test]
fn new_stamps_the_time_of_conversion() {
    let before = chrono::Utc::now().timestamp();
    let mut t = GeminiSseToChat::new(MODEL, false, false);
    let out = events_of(std::str::from_utf8(&t.push(TEXT)).unwrap());
    let created = out[0]["created"].as_i64().unwrap();
    assert!(created >= before && created <= chrono::Utc::now().timestamp());
}

/// Events of a Gemini stream, written as SSE.
fn sse(events: &[Value]) -> Vec<u8> {
    events
        .iter()
        .map(|data| format!("data: {data}\r\n\r\n"))
        .collect::<String>()
        .into_bytes()
}

/// The data of a converted stream, parsed (`[DONE]` as a string).
fn events_of(out: &str) -> Vec<Value> {
    out.split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .map(|d| serde_json::from_str(d).unwrap_or_else(|_| json!(d)))
        .collect()
}

/// Each chunk's choices as (index, delta, finish_reason), `usage` for the usage chunk, `DONE`
/// for the end, the error for an error chunk.
fn summary(out: &str) -> Vec<Value> {
    events_of(out)
        .into_iter()
        .flat_map(|e| {
            if e.get("error").is_some() || e.is_string() {
                return vec![e];
            }
            let choices = e["choices"].as_array().cloned().unwrap_or_default();
            if choices.is_empty() {
                return vec![json!({"usage": e["usage"]})];
            }
            choices
                .into_iter()
                .map(|c| json!([c["index"], c["delta"], c["finish_reason"]]))
                .collect()
        })
        .collect()
}

fn convert(events: &[Value], include_usage: bool) -> (String, GeminiSseToChat) {
    let mut t = converter(include_usage, false);
    let out = text_of(&run(&mut t, &sse(events), &[]));
    (out, t)
}

fn candidate(index: u32, parts: Value, finish: Option<&str>) -> Value {
    let mut c = json!({"content": {"parts": parts, "role": "model"}, "index": index});
    if let Some(finish) = finish {
        c["finishReason"] = json!(finish);
    }
    c
}

#[test]
fn several_candidates_are_several_choices() {
    let (out, _) = convert(
        &[
            json!({"candidates": [candidate(0, json!([{"text": "A"}]), None), candidate(1, json!([{"text": "B"}]), None)], "responseId": "r"}),
            json!({"candidates": [candidate(1, json!([{"functionCall": {"id": "f1", "name": "f", "args": {}}}]), Some("STOP"))]}),
            json!({"candidates": [candidate(0, json!([{"text": "a"}]), Some("MAX_TOKENS"))], "usageMetadata": {"promptTokenCount": 4, "candidatesTokenCount": 6}}),
        ],
        true,
    );
    let start = json!({"role": "assistant", "content": ""});
    assert_eq!(
        summary(&out),
        vec![
            json!([0, start, null]),
            json!([0, {"content": "A"}, null]),
            json!([1, start, null]),
            json!([1, {"content": "B"}, null]),
            json!([1, {"tool_calls": [{"index": 0, "id": "f1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}, null]),
            json!([1, {}, "tool_calls"]),
            json!([0, {"content": "a"}, null]),
            json!([0, {}, "length"]),
            json!({"usage": {"prompt_tokens": 4, "completion_tokens": 6, "total_tokens": 10, "prompt_tokens_details": {"cached_tokens": 0}, "completion_tokens_details": {"reasoning_tokens": 0}}}),
            json!("[DONE]"),
        ]
    );
    assert!(out.contains("\"id\":\"chatcmpl-r\""));
}

#[test]
fn parallel_calls_keep_their_indices_and_a_given_id() {
    let (out, _) = convert(
        &[json!({"candidates": [candidate(0, json!([
            {"functionCall": {"name": "a", "args": {"x": 1}}, "thoughtSignature": "sig"},
            {"functionCall": {"id": "given", "name": "b"}},
        ]), Some("STOP"))]})],
        false,
    );
    let s = summary(&out);
    assert_eq!(
        s[1],
        json!([0, {"tool_calls": [{"index": 0, "id": "call_000000000000000000000000", "type": "function", "function": {"name": "a", "arguments": "{\"x\":1}"}}]}, null])
    );
    assert_eq!(
        s[2],
        json!([0, {"tool_calls": [{"index": 1, "id": "given", "type": "function", "function": {"name": "b", "arguments": "{}"}}]}, null])
    );
    assert_eq!(s[3], json!([0, {}, "tool_calls"]));
    assert_eq!(s[4], json!("[DONE]"));
}

#[test]
fn a_refused_prompt_ends_with_content_filter() {
    let (out, t) = convert(
        &[json!({"promptFeedback": {"blockReason": "SAFETY"}, "usageMetadata": {"promptTokenCount": 8}})],
        true,
    );
    assert_eq!(
        summary(&out),
        vec![
            json!([0, {"role": "assistant", "content": ""}, null]),
            json!([0, {}, "content_filter"]),
            json!({"usage": {"prompt_tokens": 8, "completion_tokens": 0, "total_tokens": 8, "prompt_tokens_details": {"cached_tokens": 0}, "completion_tokens_details": {"reasoning_tokens": 0}}}),
            json!("[DONE]"),
        ]
    );
    assert!(!t.failed());
}

#[test]
fn a_stream_cut_before_its_finish_reason_is_still_ended() {
    let (out, t) = convert(
        &[
            json!({"candidates": [candidate(0, json!([{"text": "Hel"}]), None)], "usageMetadata": {"promptTokenCount": 5}}),
        ],
        true,
    );
    assert_eq!(
        summary(&out),
        vec![
            json!([0, {"role": "assistant", "content": ""}, null]),
            json!([0, {"content": "Hel"}, null]),
            json!([0, {}, "stop"]),
            json!({"usage": {"prompt_tokens": 5, "completion_tokens": 0, "total_tokens": 5, "prompt_tokens_details": {"cached_tokens": 0}, "completion_tokens_details": {"reasoning_tokens": 0}}}),
            json!("[DONE]"),
        ]
    );
    assert!(!t.failed());

    // After a call, the missing finish reason is `tool_calls`.
    let (out, _) = convert(
        &[json!({"candidates": [candidate(0, json!([{"functionCall": {"id": "x", "name": "f"}}]), None)]})],
        false,
    );
    assert_eq!(summary(&out)[2], json!([0, {}, "tool_calls"]));

    // An empty stream is an empty answer.
    let mut t = converter(false, false);
    let out = text_of(&run(&mut t, b"", &[]));
    assert_eq!(
        summary(&out),
        vec![
            json!([0, {"role": "assistant", "content": ""}, null]),
            json!([0, {}, "stop"]),
            json!("[DONE]")
        ]
    );
    assert!(events_of(&out)[0]["id"].as_str().unwrap().starts_with("chatcmpl-"));
}

#[test]
fn a_last_event_without_its_line_end_is_read() {
    let mut t = converter(false, false);
    let stream = TEXT.trim_ascii_end();
    assert_eq!(text_of(&run(&mut t, stream, &[])), without_usage(TEXT_CHAT));
    assert_eq!(t.usage(), TEXT_USAGE);
}

#[test]
fn an_error_event_becomes_an_error_chunk_and_ends_the_stream() {
    let error = json!({"error": {"code": 429, "message": "Resource has been exhausted (e.g. check quota).", "status": "RESOURCE_EXHAUSTED"}});
    for envelope in [false, true] {
        let mut t = converter(true, envelope);
        let mut stream = sse(&[
            json!({"candidates": [candidate(0, json!([{"text": "Hi"}]), None)], "usageMetadata": {"promptTokenCount": 3}}),
            error.clone(),
        ]);
        stream.extend_from_slice(&sse(&[json!({"candidates": [candidate(0, json!([{"text": "more"}]), Some("STOP"))], "usageMetadata": {"promptTokenCount": 3, "candidatesTokenCount": 2}})]));
        if envelope {
            stream = enveloped(&stream.iter().copied().filter(|&b| b != b'\r').collect::<Vec<_>>());
        }
        let out = text_of(&run(&mut t, &stream, &[]));
        assert_eq!(
            summary(&out),
            vec![
                json!([0, {"role": "assistant", "content": ""}, null]),
                json!([0, {"content": "Hi"}, null]),
                json!({"error": {"message": "Resource has been exhausted (e.g. check quota).", "type": "rate_limit_error", "param": null, "code": "rate_limit_exceeded"}}),
                json!("[DONE]"),
            ],
            "envelope: {envelope}"
        );
        assert!(t.failed());
        // The usage is still read after the end.
        assert_eq!(t.usage().output, 2);
        assert!(t.push(b"data: {}\n\n").is_empty());
        assert!(t.finish().is_empty());
    }
}

#[test]
fn an_unreadable_event_fails_the_stream() {
    let mut t = converter(false, false);
    let out = text_of(&run(&mut t, b"data: {\"candidates\": [\n\n", &[]));
    assert_eq!(
        summary(&out),
        vec![
            json!({"error": {"message": "Upstream sent an unreadable stream event", "type": "server_error", "param": null, "code": null}}),
            json!("[DONE]"),
        ]
    );
    assert!(t.failed());
}

#[test]
fn an_oversized_event_fails_the_stream_but_its_usage_is_read() {
    let text = "x".repeat(super::stream::MAX_EVENT + 10);
    let line = format!(
        "data: {{\"candidates\":[{{\"content\":{{\"parts\":[{{\"text\":\"{text}\"}}]}}}}],\"usageMetadata\":{{\"promptTokenCount\":7,\"candidatesTokenCount\":70000}}}}\n\n"
    );
    let mut t = converter(false, false);
    let mut out = Vec::new();
    for piece in line.as_bytes().chunks(1 << 20) {
        out.push(t.push(piece));
    }
    out.push(t.finish());
    let out = text_of(&out);
    assert_eq!(
        summary(&out),
        vec![
            json!({"error": {"message": "Upstream stream event too large to convert", "type": "server_error", "param": null, "code": null}}),
            json!("[DONE]"),
        ]
    );
    assert!(t.failed());
    assert_eq!(t.usage().output, 70000);
}

#[test]
fn comments_and_other_fields_are_skipped() {
    let mut stream = b": keep-alive\nevent: message\nid: 1\n".to_vec();
    stream.extend_from_slice(TEXT);
    let mut t = converter(true, false);
    assert_eq!(text_of(&run(&mut t, &stream, &[])), TEXT_CHAT);
}
