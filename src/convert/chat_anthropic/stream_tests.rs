use bytes::Bytes;
use serde_json::{Value, json};

use super::*;
use crate::usage::TokenUsage;

/// The recorded Anthropic streams (text; text then one tool call).
const TEXT_STREAM: &[u8] = include_bytes!("../../../tests/fixtures/responses/anthropic-messages-stream.sse");
const TOOL_STREAM: &[u8] = include_bytes!("../../../tests/fixtures/responses/anthropic-messages-stream-tool-use.sse");

/// What they must become, with `include_usage`, for the client model [`MODEL`] at [`CREATED`].
const TEXT_CHAT: &[u8] = include_bytes!("../../../tests/fixtures/responses/anthropic-messages-stream.chat.sse");
const TOOL_CHAT: &[u8] =
    include_bytes!("../../../tests/fixtures/responses/anthropic-messages-stream-tool-use.chat.sse");

const MODEL: &str = "claude-sonnet-4-5";
const CREATED: i64 = 1_795_781_428;

/// The recorded usage: input 21, cache write 5 (all 5m), cache read 3, output 7.
const GOLDEN_USAGE: TokenUsage = TokenUsage {
    input: 21,
    output: 7,
    cache_read: 3,
    cache_write_5m: 5,
    cache_write_1h: 0,
    reasoning: 0,
    billing: crate::usage::Billing::NONE,
};

/// Everything a run tells, for comparing runs.
#[derive(Debug, PartialEq)]
struct Run {
    /// What each push returned, then what finish returned.
    pushed: Vec<Bytes>,
    finished: Bytes,
    usage: TokenUsage,
    failed: bool,
    stop: bool,
}

impl Run {
    /// All the bytes the client got.
    fn sse(&self) -> Vec<u8> {
        let mut all: Vec<u8> = self.pushed.iter().flat_map(|b| b.iter().copied()).collect();
        all.extend_from_slice(&self.finished);
        all
    }

    fn text(&self) -> String {
        String::from_utf8(self.sse()).unwrap()
    }

    /// The JSON of every `data:` chunk but `[DONE]`.
    fn chunks(&self) -> Vec<Value> {
        let text = self.text();
        assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
        assert_eq!(text.matches("data: [DONE]").count(), 1, "{text}");
        text.split("\n\n")
            .filter(|e| !e.is_empty() && *e != "data: [DONE]")
            .map(|e| serde_json::from_str(e.strip_prefix("data: ").unwrap()).unwrap())
            .collect()
    }

    /// The concatenated `delta.content` of the chunks.
    fn content(&self) -> String {
        self.chunks()
            .iter()
            .filter_map(|c| c["choices"][0]["delta"]["content"].as_str().map(str::to_owned))
            .collect()
    }
}

fn run_with(parts: &[&[u8]], include_usage: bool) -> Run {
    let mut t = MessagesSseToChat::with_created(MODEL, include_usage, CREATED);
    let pushed = parts.iter().map(|p| t.push(p)).collect();
    let finished = t.finish();
    Run {
        pushed,
        finished,
        usage: t.usage(),
        failed: t.failed(),
        stop: t.saw_message_stop(),
    }
}

fn run(parts: &[&[u8]]) -> Run {
    run_with(parts, true)
}

/// An SSE stream of the given events (`event:` named by each JSON's `type`).
fn sse(events: &[Value]) -> Vec<u8> {
    events
        .iter()
        .map(|e| format!("event: {}\ndata: {e}\n\n", e["type"].as_str().unwrap()))
        .collect::<String>()
        .into_bytes()
}

fn message_start(id: &str) -> Value {
    json!({"type":"message_start","message":{"id":id,"type":"message","role":"assistant","model":"claude-x","content":[],"stop_reason":null,"usage":{"input_tokens":10,"output_tokens":1}}})
}

fn text_delta(index: u64, text: &str) -> Value {
    json!({"type":"content_block_delta","index":index,"delta":{"type":"text_delta","text":text}})
}

fn message_end(stop_reason: &str, output: u64) -> [Value; 2] {
    [
        json!({"type":"message_delta","delta":{"stop_reason":stop_reason,"stop_sequence":null},"usage":{"output_tokens":output}}),
        json!({"type":"message_stop"}),
    ]
}

/// Whole, every two-way split, a sample of three-way splits and byte by byte give the same bytes
/// and usage.
fn assert_split_invariant(stream: &[u8]) {
    let whole = run(&[stream]);
    let expected = whole.sse();
    for at in 0..=stream.len() {
        let split = run(&[&stream[..at], &stream[at..]]);
        assert_eq!(split.sse(), expected, "split at {at}");
        assert_eq!(split.usage, whole.usage, "split at {at}");
        assert_eq!((split.failed, split.stop), (whole.failed, whole.stop), "split at {at}");
    }
    let step = (stream.len() / 40).max(1);
    for a in (0..=stream.len()).step_by(step) {
        for b in (a..=stream.len()).step_by(step + 3) {
            let split = run(&[&stream[..a], &stream[a..b], &stream[b..]]);
            assert_eq!(split.sse(), expected, "split at {a} and {b}");
            assert_eq!(split.usage, whole.usage, "split at {a} and {b}");
        }
    }
    let bytewise: Vec<&[u8]> = stream.chunks(1).collect();
    let r = run(&bytewise);
    assert_eq!(r.sse(), expected, "byte by byte");
    assert_eq!(r.usage, whole.usage, "byte by byte");
}

#[test]
fn the_recorded_text_stream_becomes_the_golden_chat_sse() {
    let r = run(&[TEXT_STREAM]);
    assert_eq!(r.text(), std::str::from_utf8(TEXT_CHAT).unwrap());
    // Events that arrive together leave together.
    assert_eq!(r.pushed, vec![Bytes::from_static(TEXT_CHAT)]);
    assert!(r.finished.is_empty());
    assert_eq!(r.usage, GOLDEN_USAGE);
    assert!(!r.failed);
    assert!(r.stop);
    assert_eq!(r.content(), "Hello from mock upstream!");
}

#[test]
fn the_recorded_tool_stream_becomes_the_golden_chat_sse() {
    let r = run(&[TOOL_STREAM]);
    assert_eq!(r.text(), std::str::from_utf8(TOOL_CHAT).unwrap());
    assert_eq!(r.pushed, vec![Bytes::from_static(TOOL_CHAT)]);
    assert!(r.finished.is_empty());
    assert_eq!(r.usage, GOLDEN_USAGE);
    assert!(!r.failed && r.stop);
}

#[test]
fn golden_chunks_have_the_chat_shape() {
    for stream in [TEXT_STREAM, TOOL_STREAM] {
        let r = run(&[stream]);
        let chunks = r.chunks();
        for c in &chunks {
            assert!(c["id"].as_str().unwrap().starts_with("chatcmpl-msg_mock"), "{c}");
            assert_eq!(c["object"], "chat.completion.chunk");
            assert_eq!(c["created"], CREATED);
            assert_eq!(c["model"], MODEL);
        }
        assert_eq!(
            chunks[0]["choices"][0]["delta"],
            json!({"role":"assistant","content":""})
        );
        let last = chunks.last().unwrap();
        assert_eq!(last["choices"], json!([]));
        assert_eq!(
            last["usage"],
            json!({"prompt_tokens":29,"completion_tokens":7,"total_tokens":36,"prompt_tokens_details":{"cached_tokens":3}})
        );
    }
}

#[test]
fn without_include_usage_there_is_no_usage_chunk() {
    for (stream, golden) in [(TEXT_STREAM, TEXT_CHAT), (TOOL_STREAM, TOOL_CHAT)] {
        let r = run_with(&[stream], false);
        let golden = std::str::from_utf8(golden).unwrap();
        let without: String = golden
            .split_inclusive("\n\n")
            .filter(|e| !e.contains(r#""choices":[]"#))
            .collect();
        assert_ne!(without, golden);
        assert_eq!(r.text(), without);
        // The usage is still read.
        assert_eq!(r.usage, GOLDEN_USAGE);
    }
}

#[test]
fn every_split_of_the_recorded_streams_gives_the_same_output() {
    assert_split_invariant(TEXT_STREAM);
    assert_split_invariant(TOOL_STREAM);
    assert_eq!(run(&TEXT_STREAM.chunks(1).collect::<Vec<_>>()).sse(), TEXT_CHAT);
    assert_eq!(run(&TOOL_STREAM.chunks(1).collect::<Vec<_>>()).sse(), TOOL_CHAT);
}

#[test]
fn crlf_line_ends_read_like_lf() {
    for (stream, golden) in [(TEXT_STREAM, TEXT_CHAT), (TOOL_STREAM, TOOL_CHAT)] {
        let crlf = std::str::from_utf8(stream).unwrap().replace('\n', "\r\n");
        let r = run(&[crlf.as_bytes()]);
        assert_eq!(r.sse(), golden);
        assert_eq!(r.usage, GOLDEN_USAGE);
        // Including splits between `\r` and `\n`.
        assert_split_invariant(crlf.as_bytes());
    }
}

#[test]
fn splits_inside_utf8_sequences_keep_the_text() {
    let text = "héllo wörld — 世界 🎉";
    let mut events = vec![
        message_start("msg_utf8"),
        json!({"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}),
        text_delta(0, text),
        text_delta(0, "\"quoted\"\n"),
        json!({"type":"content_block_stop","index":0}),
    ];
    events.extend(message_end("end_turn", 9));
    let stream = sse(&events);
    let r = run(&[&stream]);
    assert_eq!(r.content(), format!("{text}\"quoted\"\n"));
    assert_split_invariant(&stream);
}

#[test]
fn two_tool_calls_keep_stable_indexes_ids_and_arguments() {
    let first_input = r#"{"path":"/tmp/a","limit":10}"#;
    let second_input = r#"{"query":"héllo \"x\"","tags":["a","b"]}"#;
    let mut events = vec![
        message_start("msg_tools"),
        json!({"type":"content_block_start","index":0,"content_block":{"type":"thinking","thinking":""}}),
        json!({"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"Two tools."}}),
        json!({"type":"content_block_delta","index":0,"delta":{"type":"signature_delta","signature":"sig"}}),
        json!({"type":"content_block_stop","index":0}),
        json!({"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"toolu_1","name":"read","input":{}}}),
        json!({"type":"content_block_start","index":2,"content_block":{"type":"tool_use","id":"toolu_2","name":"search","input":{}}}),
    ];
    // The two calls' input pieces interleave; each piece goes to its own call.
    let (a, b) = (first_input.split_at(7), second_input.split_at(11));
    for (index, piece) in [(1, a.0), (2, b.0), (1, ""), (1, a.1), (2, b.1)] {
        events.push(json!({"type":"content_block_delta","index":index,"delta":{"type":"input_json_delta","partial_json":piece}}));
    }
    events.push(json!({"type":"content_block_stop","index":1}));
    events.push(json!({"type":"content_block_stop","index":2}));
    events.extend(message_end("tool_use", 30));
    let stream = sse(&events);
    let r = run(&[&stream]);
    let chunks = r.chunks();

    let mut calls: Vec<(u64, String, String, String)> = Vec::new();
    let mut reasoning = String::new();
    for c in &chunks {
        let delta = &c["choices"][0]["delta"];
        if let Some(t) = delta["reasoning_content"].as_str() {
            reasoning.push_str(t);
        }
        assert!(delta.get("content").is_none() || delta["role"] == "assistant", "{c}");
        for call in delta["tool_calls"].as_array().into_iter().flatten() {
            let index = call["index"].as_u64().unwrap();
            if let Some(id) = call["id"].as_str() {
                assert_eq!(call["type"], "function");
                assert_eq!(call["function"]["arguments"], "");
                assert_eq!(index as usize, calls.len(), "indexes count calls from 0");
                calls.push((
                    index,
                    id.to_owned(),
                    call["function"]["name"].as_str().unwrap().to_owned(),
                    String::new(),
                ));
            } else {
                assert!(
                    call.get("type").is_none() && call["function"].get("name").is_none(),
                    "{call}"
                );
                calls[index as usize]
                    .3
                    .push_str(call["function"]["arguments"].as_str().unwrap());
            }
        }
    }
    assert_eq!(reasoning, "Two tools.");
    assert_eq!(
        calls,
        vec![
            (0, "toolu_1".to_owned(), "read".to_owned(), first_input.to_owned()),
            (1, "toolu_2".to_owned(), "search".to_owned(), second_input.to_owned()),
        ]
    );
    let finish = &chunks[chunks.len() - 2];
    assert_eq!(finish["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(finish["choices"][0]["delta"], json!({}));
    assert_split_invariant(&stream);
}

#[test]
fn a_tool_call_without_input_deltas_gets_an_object() {
    let mut events = vec![
        message_start("msg_noargs"),
        json!({"type":"content_block_start","index":0,"content_block":{"type":"tool_use","id":"toolu_a","name":"now","input":{}}}),
        json!({"type":"content_block_stop","index":0}),
        json!({"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"toolu_b","name":"echo","input":{"x":1}}}),
        json!({"type":"content_block_stop","index":1}),
    ];
    events.extend(message_end("tool_use", 5));
    let r = run(&[&sse(&events)]);
    let args: Vec<(u64, String)> = r
        .chunks()
        .iter()
        .flat_map(|c| {
            c["choices"][0]["delta"]["tool_calls"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .filter(|call| call.get("id").is_none())
        .map(|call| {
            (
                call["index"].as_u64().unwrap(),
                call["function"]["arguments"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(args, vec![(0, "{}".to_owned()), (1, r#"{"x":1}"#.to_owned())]);
}

#[test]
fn stop_reasons_become_finish_reasons() {
    for (stop, finish) in [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
        ("pause_turn", "stop"),
        ("model_context_window_exceeded", "length"),
    ] {
        let mut events = vec![message_start("msg_s"), text_delta(0, "x")];
        events.extend(message_end(stop, 2));
        let chunks = run(&[&sse(&events)]).chunks();
        assert_eq!(
            chunks[chunks.len() - 2]["choices"][0]["finish_reason"],
            finish,
            "{stop}"
        );
    }
}

#[test]
fn an_error_event_becomes_an_openai_error_then_done() {
    let mut stream = sse(&[message_start("msg_err"), text_delta(0, "partial")]);
    stream.extend_from_slice(
        b"event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n",
    );
    // Nothing after the error reaches the client.
    stream.extend(sse(&[text_delta(0, "more")]));
    let r = run(&[&stream]);
    assert!(r.failed);
    assert!(!r.stop);
    let text = r.text();
    assert!(
        text.ends_with(
            "data: {\"error\":{\"message\":\"Overloaded\",\"type\":\"server_error\",\"param\":null,\"code\":\"overloaded\"}}\n\ndata: [DONE]\n\n"
        ),
        "{text}"
    );
    assert!(!text.contains("more"));
    assert_eq!(r.usage.input, 10);
    assert_split_invariant(&stream);
}

#[test]
fn error_event_types_map_like_error_bodies() {
    for (kind, openai, code) in [
        ("rate_limit_error", "rate_limit_error", json!("rate_limit_exceeded")),
        ("api_error", "server_error", Value::Null),
        ("invalid_request_error", "invalid_request_error", Value::Null),
    ] {
        let stream = format!(
            "event: error\ndata: {{\"type\":\"error\",\"error\":{{\"type\":\"{kind}\",\"message\":\"m\"}}}}\n\n"
        );
        let r = run(&[stream.as_bytes()]);
        let chunks = r.chunks();
        assert_eq!(chunks.len(), 1);
        assert_eq!(
            chunks[0],
            json!({"error":{"message":"m","type":openai,"param":null,"code":code}})
        );
        assert!(r.failed);
    }
}

#[test]
fn a_stream_cut_before_its_stop_reason_ends_with_an_error() {
    let cut_error = "data: {\"error\":{\"message\":\"Upstream stream ended before the answer was complete\",\"type\":\"server_error\",\"param\":null,\"code\":null}}\n\ndata: [DONE]\n\n";
    let delta = b"event: message_delta";
    let end = TEXT_STREAM.windows(delta.len()).position(|w| w == delta).unwrap();
    // Cut anywhere after message_start and before message_delta, inside a line or not.
    let start = TEXT_STREAM.windows(2).position(|w| w == b"\n\n").unwrap() + 1;
    for at in start..end {
        let r = run(&[&TEXT_STREAM[..at]]);
        assert!(r.failed, "cut at {at}");
        assert!(!r.stop);
        assert!(r.text().ends_with(cut_error), "cut at {at}: {}", r.text());
        assert_eq!(r.text().matches("\"error\"").count(), 1, "cut at {at}");
        // Whatever content came in whole events reached the client.
        assert!("Hello from mock upstream!".starts_with(&r.content()));
        // The usage of message_start stays readable.
        assert_eq!(
            r.usage,
            TokenUsage {
                output: 1,
                ..GOLDEN_USAGE
            },
            "cut at {at}"
        );
    }
    // Nothing at all.
    let r = run(&[]);
    assert!(r.failed);
    assert!(r.pushed.is_empty());
    assert_eq!(r.chunks()[0]["error"]["type"], "server_error");
}

#[test]
fn a_stream_cut_after_its_stop_reason_is_completed() {
    let stop = b"event: message_stop";
    let at = TEXT_STREAM.windows(stop.len()).position(|w| w == stop).unwrap();
    let r = run(&[&TEXT_STREAM[..at]]);
    assert!(!r.failed);
    assert!(!r.stop);
    assert_eq!(r.sse(), TEXT_CHAT);
    assert_eq!(r.usage, GOLDEN_USAGE);
    // The usage and [DONE] come from finish.
    assert!(r.finished.starts_with(b"data: {\"id\":") && r.finished.ends_with(b"data: [DONE]\n\n"));
}

#[test]
fn a_last_event_without_its_blank_line_is_read_at_the_end() {
    let trimmed = TEXT_STREAM.strip_suffix(b"\n\n").unwrap();
    let r = run(&[trimmed]);
    assert_eq!(r.sse(), TEXT_CHAT);
    assert!(r.stop && !r.failed);
    assert_eq!(r.usage, GOLDEN_USAGE);
}

#[test]
fn pings_comments_and_unknown_events_are_skipped() {
    let mut stream = b": a comment\n\n".to_vec();
    stream.extend(sse(&[
        message_start("msg_p"),
        json!({"type":"ping"}),
        json!({"type":"something_new","index":0}),
        json!({"type":"content_block_start","index":0,"content_block":{"type":"server_tool_use","id":"srvtoolu_1","name":"web_search","input":{}}}),
        text_delta(0, "ok"),
    ]));
    stream.extend(sse(&message_end("end_turn", 3)));
    let r = run(&[&stream]);
    let chunks = r.chunks();
    assert_eq!(chunks.len(), 4, "{}", r.text());
    assert_eq!(r.content(), "ok");
    assert!(!r.failed);
}

#[test]
fn data_without_a_space_and_unnamed_events_are_read() {
    let stream = format!(
        "data:{}\n\ndata: {}\n\ndata:{}\n\ndata:{}\n\n",
        message_start("msg_d"),
        text_delta(0, "hi"),
        message_end("end_turn", 2)[0],
        message_end("end_turn", 2)[1],
    );
    let r = run(&[stream.as_bytes()]);
    assert_eq!(r.content(), "hi");
    assert!(r.stop && !r.failed);
    assert_eq!(r.usage.output, 2);
}

#[test]
fn an_unreadable_event_fails_the_stream() {
    let mut stream = sse(&[message_start("msg_u")]);
    stream.extend_from_slice(b"event: content_block_delta\ndata: {not json\n\n");
    let r = run(&[&stream]);
    assert!(r.failed);
    let chunks = r.chunks();
    assert_eq!(
        chunks.last().unwrap()["error"]["message"],
        "Upstream sent an unreadable stream event"
    );
}

#[test]
fn nothing_follows_done() {
    let mut stream = TEXT_STREAM.to_vec();
    stream.extend(sse(&[text_delta(0, "late")]));
    let mut t = MessagesSseToChat::with_created(MODEL, true, CREATED);
    assert_eq!(t.push(&stream), Bytes::from_static(TEXT_CHAT));
    assert!(t.push(&sse(&[text_delta(0, "later")])).is_empty());
    assert!(t.finish().is_empty());
    assert!(t.finish().is_empty());
    assert!(!t.failed());
}

#[test]
fn the_clock_gives_created_by_default() {
    let before = chrono::Utc::now().timestamp();
    let mut t = MessagesSseToChat::new("m", false);
    let out = t.push(TEXT_STREAM);
    let first: Value = serde_json::from_slice(
        out.split(|&b| b == b'\n')
            .next()
            .unwrap()
            .strip_prefix(b"data: ")
            .unwrap(),
    )
    .unwrap();
    let created = first["created"].as_i64().unwrap();
    assert!(created >= before && created <= chrono::Utc::now().timestamp());
}
