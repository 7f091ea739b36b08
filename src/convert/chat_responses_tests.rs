use serde_json::{Value, json};

use super::*;

const TEXT: &[u8] = include_bytes!("../../tests/fixtures/responses/openai-responses-stream.sse");
const CALL: &[u8] = include_bytes!("../../tests/fixtures/responses/openai-responses-stream-function-call.sse");
const TEXT_CHAT: &str = include_str!("../../tests/fixtures/responses/openai-responses-stream.chat.sse");
const CALL_CHAT: &str = include_str!("../../tests/fixtures/responses/openai-responses-stream-function-call.chat.sse");
const TEXT_JSON: &str = include_str!("../../tests/fixtures/responses/openai-responses-stream.chat.json");
const CALL_JSON: &str = include_str!("../../tests/fixtures/responses/openai-responses-stream-function-call.chat.json");

const MODEL: &str = "my-gpt-5";

const GOLDEN: TokenUsage = TokenUsage {
    input: 21,
    output: 7,
    cache_read: 3,
    cache_write_5m: 0,
    cache_write_1h: 0,
    reasoning: 0,
    billing: crate::usage::Billing::NONE,
};

// --- request ------------------------------------------------------------------------------------

fn convert(chat: Value) -> (Value, ChatFacts) {
    let (body, facts) = request_to_responses(chat.to_string().as_bytes(), "gpt-5-codex").unwrap();
    (serde_json::from_slice(&body).unwrap(), facts)
}

fn refused(chat: Value) -> String {
    request_to_responses(chat.to_string().as_bytes(), "m").unwrap_err().0
}

#[test]
fn a_plain_request_is_streamed_unstored_with_the_accounts_model() {
    let (body, facts) = request_to_responses(
        br#"{"model":"my-gpt-5","messages":[{"role":"user","content":"say hi"}],"stream":true,"stream_options":{"include_usage":true}}"#,
        "gpt-5-codex",
    )
    .unwrap();
    assert_eq!(
        std::str::from_utf8(&body).unwrap(),
        r#"{"model":"gpt-5-codex","input":[{"type":"message","role":"user","content":[{"type":"input_text","text":"say hi"}]}],"store":false,"stream":true}"#
    );
    assert_eq!(
        facts,
        ChatFacts {
            stream: true,
            include_usage: true
        }
    );
    let (body, facts) = convert(json!({"model":"x","messages":[{"role":"user","content":"hi"}]}));
    assert_eq!(
        (body["stream"].clone(), body["store"].clone()),
        (json!(true), json!(false))
    );
    assert_eq!(
        facts,
        ChatFacts {
            stream: false,
            include_usage: false
        }
    );
}

#[test]
fn system_and_developer_messages_stay_in_place_as_developer_messages() {
    let (body, _) = convert(json!({
        "model": "x",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "one"},
            {"role": "developer", "content": [{"type": "text", "text": "Answer in French."}, {"type": "text", "text": "Politely."}]},
            {"role": "user", "content": "two"}
        ]
    }));
    assert_eq!(
        body["input"],
        json!([
            {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "Be brief."}]},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "one"}]},
            {"type": "message", "role": "developer", "content": [
                {"type": "input_text", "text": "Answer in French."},
                {"type": "input_text", "text": "Politely."}
            ]},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "two"}]}
        ])
    );
    assert!(body.get("instructions").is_none());
}

#[test]
fn user_images_and_files() {
    let (body, _) = convert(json!({
        "model": "x",
        "messages": [{"role": "user", "content": [
            {"type": "text", "text": "What is this?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "high"}},
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
            {"type": "file", "file": {"filename": "a.pdf", "file_data": "data:application/pdf;base64,JVBERi0="}}
        ]}]
    }));
    assert_eq!(
        body["input"][0]["content"],
        json!([
            {"type": "input_text", "text": "What is this?"},
            {"type": "input_image", "image_url": "data:image/png;base64,iVBORw0KGgo=", "detail": "high"},
            {"type": "input_image", "image_url": "https://example.com/cat.jpg"},
            {"type": "input_file", "file_data": "data:application/pdf;base64,JVBERi0=", "filename": "a.pdf"}
        ])
    );
}

#[test]
fn tools_and_tool_choice() {
    let (body, _) = convert(json!({
        "model": "x",
        "messages": [{"role": "user", "content": "ls"}],
        "tools": [
            {"type": "function", "function": {"name": "exec_command", "description": "Runs a command.", "parameters": {"type": "object", "properties": {"cmd": {"type": "string"}}, "required": ["cmd"]}, "strict": true}},
            {"type": "function", "function": {"name": "now"}}
        ],
        "tool_choice": {"type": "function", "function": {"name": "exec_command"}},
        "parallel_tool_calls": false
    }));
    assert_eq!(
        body["tools"],
        json!([
            {"type": "function", "name": "exec_command", "description": "Runs a command.", "parameters": {"type": "object", "properties": {"cmd": {"type": "string"}}, "required": ["cmd"]}, "strict": true},
            {"type": "function", "name": "now", "parameters": {"type": "object", "properties": {}}, "strict": false}
        ])
    );
    assert_eq!(body["tool_choice"], json!({"type": "function", "name": "exec_command"}));
    assert_eq!(body["parallel_tool_calls"], json!(false));
    for mode in ["auto", "none", "required"] {
        let (body, _) = convert(json!({"model": "x", "messages": [], "tool_choice": mode}));
        assert_eq!(body["tool_choice"], json!(mode));
    }
}

#[test]
fn a_tool_round_trip_keeps_its_order() {
    let (body, _) = convert(json!({
        "model": "x",
        "messages": [
            {"role": "user", "content": "List, then date."},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "exec_command", "arguments": "{\"cmd\":\"ls\"}"}},
                {"id": "call_2", "type": "function", "function": {"name": "exec_command", "arguments": "{\"cmd\":\"date\"}"}}
            ]},
            {"role": "tool", "tool_call_id": "call_1", "content": "a.txt\nb.txt"},
            {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "Mon"}, {"type": "text", "text": "day"}]},
            {"role": "assistant", "content": "Two files; Monday.", "tool_calls": []},
            {"role": "assistant", "content": "", "refusal": "I can't."}
        ]
    }));
    assert_eq!(
        body["input"],
        json!([
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "List, then date."}]},
            {"type": "function_call", "call_id": "call_1", "name": "exec_command", "arguments": "{\"cmd\":\"ls\"}"},
            {"type": "function_call", "call_id": "call_2", "name": "exec_command", "arguments": "{\"cmd\":\"date\"}"},
            {"type": "function_call_output", "call_id": "call_1", "output": "a.txt\nb.txt"},
            {"type": "function_call_output", "call_id": "call_2", "output": "Monday"},
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Two files; Monday."}]},
            {"type": "message", "role": "assistant", "content": [{"type": "refusal", "refusal": "I can't."}]}
        ])
    );
}

#[test]
fn response_format_verbosity_reasoning_and_cache_key() {
    let schema = json!({"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"], "additionalProperties": false});
    let (body, _) = convert(json!({
        "model": "x",
        "messages": [],
        "response_format": {"type": "json_schema", "json_schema": {"name": "count", "schema": schema, "strict": true}},
        "verbosity": "low",
        "reasoning_effort": "high",
        "prompt_cache_key": "session-1"
    }));
    assert_eq!(
        body["text"],
        json!({"format": {"type": "json_schema", "name": "count", "schema": schema, "strict": true}, "verbosity": "low"})
    );
    assert_eq!(body["reasoning"], json!({"effort": "high"}));
    assert_eq!(body["prompt_cache_key"], json!("session-1"));
    let (body, _) = convert(json!({"model": "x", "messages": [], "response_format": {"type": "json_object"}}));
    assert_eq!(body["text"], json!({"format": {"type": "json_object"}}));
    let (body, _) = convert(json!({"model": "x", "messages": [], "response_format": {"type": "text"}}));
    assert!(body.get("text").is_none());
}

#[test]
fn parameters_the_codex_backend_refuses_are_left_out() {
    let (body, _) = convert(json!({
        "model": "x",
        "messages": [],
        "max_tokens": 100,
        "max_completion_tokens": 200,
        "temperature": 0.2,
        "top_p": 0.9,
        "user": "u-1",
        "seed": 7,
        "n": 1,
        "stop": null,
        "logprobs": false,
        "metadata": {"a": "b"},
        "some_future_field": {"x": 1}
    }));
    assert_eq!(
        body,
        json!({"model": "gpt-5-codex", "input": [], "store": false, "stream": true})
    );
}

#[test]
fn what_cannot_be_converted_is_refused_by_name() {
    let user = json!([{"role": "user", "content": "hi"}]);
    let cases = [
        (json!({"messages": user, "n": 2}), "`n`"),
        (json!({"messages": user, "stop": ["\n"]}), "`stop`"),
        (json!({"messages": user, "stop": "END"}), "`stop`"),
        (json!({"messages": user, "logprobs": true}), "`logprobs`"),
        (json!({"messages": user, "modalities": ["text", "audio"]}), "audio"),
        (json!({"messages": user, "functions": []}), "`functions`"),
        (
            json!({"messages": [{"role": "function", "name": "f", "content": "x"}]}),
            "messages[0]",
        ),
        (json!({"messages": [{"role": "critic", "content": "x"}]}), "`critic`"),
        (
            json!({"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "", "format": "wav"}}]}]}),
            "input_audio",
        ),
        (
            json!({"messages": [{"role": "system", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}),
            "image_url",
        ),
        (
            json!({"messages": user, "tools": [{"type": "custom", "custom": {"name": "grammar"}}]}),
            "tools[0]",
        ),
        (
            json!({"messages": user, "tool_choice": {"type": "allowed_tools", "allowed_tools": {"mode": "auto", "tools": []}}}),
            "allowed_tools",
        ),
        (
            json!({"messages": [{"role": "assistant", "tool_calls": [{"id": "c", "type": "custom", "custom": {"name": "g", "input": ""}}]}]}),
            "custom",
        ),
        (json!({"messages": [{"role": "tool", "content": "x"}]}), "tool_call_id"),
    ];
    for (chat, names) in cases {
        let error = refused(chat.clone());
        assert!(error.contains(names), "{chat}: {error}");
    }
}

#[test]
fn an_invalid_request_names_where() {
    let error = refused(json!({"messages": [{"role": "user", "content": 5}]}));
    assert!(error.contains("content"), "{error}");
    let error = refused(json!({"messages": [{"role": 1}]}));
    assert!(error.contains("messages[0].role"), "{error}");
    assert!(request_to_responses(b"{\"messages\":[]} x", "m").is_err());
    assert!(request_to_responses(b"[]", "m").is_err());
}

// --- answer ---------------------------------------------------------------------------------------

/// Converts `stream` split at `cuts`; returns every non-empty output and the final one.
fn run(t: &mut ResponsesSseToChat, stream: &[u8], cuts: &[usize]) -> Vec<Bytes> {
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
    String::from_utf8(parts.concat()).unwrap()
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

/// The stream without its `event:` lines: every data line says its type itself.
fn unnamed(stream: &[u8]) -> Vec<u8> {
    stream
        .split_inclusive(|&b| b == b'\n')
        .filter(|line| !line.starts_with(b"event:"))
        .flatten()
        .copied()
        .collect()
}

/// The stream gives `expected` whole (in one piece: events arriving together leave together),
/// at every two-way split, byte by byte, with CRLF lines and without event names.
fn assert_converts(stream: &[u8], mode: Mode, include_usage: bool, expected: &str) {
    let mut t = ResponsesSseToChat::new(MODEL, include_usage, mode);
    let whole = run(&mut t, stream, &[]);
    assert_eq!(whole.len(), 1, "{whole:?}");
    assert_eq!(text_of(&whole), expected);
    assert_eq!(t.usage(), GOLDEN);
    assert!(!t.failed());
    assert_eq!(t.error_status(), None);
    for variant in [stream.to_vec(), to_crlf(stream), unnamed(stream)] {
        for k in 0..=variant.len() {
            let mut t = ResponsesSseToChat::new(MODEL, include_usage, mode);
            assert_eq!(text_of(&run(&mut t, &variant, &[k])), expected, "split at {k}");
            assert_eq!(t.usage(), GOLDEN);
        }
        let mut t = ResponsesSseToChat::new(MODEL, include_usage, mode);
        let bytes: Vec<usize> = (1..variant.len()).collect();
        assert_eq!(text_of(&run(&mut t, &variant, &bytes)), expected);
    }
}

#[test]
fn recorded_text_stream_as_chat_chunks() {
    assert_converts(TEXT, Mode::Stream, true, TEXT_CHAT);
}

#[test]
fn recorded_function_call_stream_as_chat_chunks() {
    assert_converts(CALL, Mode::Stream, true, CALL_CHAT);
}

/// The golden chunks without the usage chunk.
fn without_usage(chat: &str) -> String {
    chat.split_inclusive("\n\n")
        .filter(|event| !event.contains("\"usage\":"))
        .collect()
}

#[test]
fn no_usage_chunk_unless_asked() {
    assert_converts(TEXT, Mode::Stream, false, &without_usage(TEXT_CHAT));
    assert_converts(CALL, Mode::Stream, false, &without_usage(CALL_CHAT));
}

#[test]
fn recorded_streams_collected_as_one_completion() {
    assert_converts(TEXT, Mode::Collect, false, TEXT_JSON.trim_end());
    assert_converts(CALL, Mode::Collect, true, CALL_JSON.trim_end());
}

#[test]
fn nothing_is_emitted_while_collecting() {
    let mut t = ResponsesSseToChat::new(MODEL, true, Mode::Collect);
    assert!(t.push(TEXT).is_empty());
    assert!(!t.finish().is_empty());
    // A second finish writes nothing more.
    assert!(t.finish().is_empty());
}

#[test]
fn created_can_be_pinned() {
    let mut t = ResponsesSseToChat::new(MODEL, true, Mode::Stream);
    t.set_created(7);
    let out = text_of(&run(&mut t, TEXT, &[]));
    assert_eq!(out, TEXT_CHAT.replace("\"created\":1795781428", "\"created\":7"));
}

/// Events of a stream: (event, data) pairs written as SSE.
fn sse(events: &[(&str, Value)]) -> Vec<u8> {
    events
        .iter()
        .map(|(name, data)| format!("event: {name}\ndata: {data}\n\n"))
        .collect::<String>()
        .into_bytes()
}

fn created(id: &str) -> (&'static str, Value) {
    (
        "response.created",
        json!({"type": "response.created", "response": {"id": id, "created_at": 100, "status": "in_progress", "output": [], "usage": null}}),
    )
}

/// The data lines of a converted stream, parsed (`[DONE]` as a string).
fn events_of(out: &str) -> Vec<Value> {
    out.split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .map(|d| serde_json::from_str(d).unwrap_or_else(|_| json!(d)))
        .collect()
}

#[test]
fn reasoning_is_skipped_refusals_and_incomplete_answers_kept() {
    let stream = sse(&[
        created("r1"),
        (
            "response.output_item.added",
            json!({"type": "response.output_item.added", "output_index": 0, "item": {"id": "rs_1", "type": "reasoning", "summary": []}}),
        ),
        (
            "response.reasoning_summary_text.delta",
            json!({"type": "response.reasoning_summary_text.delta", "item_id": "rs_1", "delta": "Thinking"}),
        ),
        (
            "response.output_item.done",
            json!({"type": "response.output_item.done", "output_index": 0, "item": {"id": "rs_1", "type": "reasoning", "encrypted_content": "gAAAA"}}),
        ),
        (
            "response.refusal.delta",
            json!({"type": "response.refusal.delta", "item_id": "m1", "output_index": 1, "delta": "No."}),
        ),
        (
            "response.output_text.delta",
            json!({"type": "response.output_text.delta", "item_id": "m1", "output_index": 1, "delta": "Hé"}),
        ),
        (
            "response.incomplete",
            json!({"type": "response.incomplete", "response": {"id": "r1", "status": "incomplete", "incomplete_details": {"reason": "max_output_tokens"}, "usage": {"input_tokens": 10, "output_tokens": 5, "output_tokens_details": {"reasoning_tokens": 4}}}}),
        ),
    ]);
    let mut t = ResponsesSseToChat::new(MODEL, true, Mode::Stream);
    let events = events_of(&text_of(&run(&mut t, &stream, &[])));
    let deltas: Vec<Value> = events.iter().map(|e| e["choices"][0]["delta"].clone()).collect();
    assert_eq!(
        deltas[..3],
        [
            json!({"role": "assistant", "content": ""}),
            json!({"refusal": "No."}),
            json!({"content": "Hé"})
        ]
    );
    assert_eq!(events[3]["choices"][0]["finish_reason"], json!("length"));
    assert_eq!(
        events[4]["usage"],
        json!({"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15, "prompt_tokens_details": {"cached_tokens": 0}, "completion_tokens_details": {"reasoning_tokens": 4}})
    );
    assert_eq!(events[5], json!("[DONE]"));
    assert_eq!(events.len(), 6);
    assert_eq!(events[0]["id"], json!("chatcmpl-r1"));
    assert_eq!(events[0]["created"], json!(100));

    let mut t = ResponsesSseToChat::new(MODEL, false, Mode::Collect);
    let body: Value = serde_json::from_slice(&run(&mut t, &stream, &[])[0]).unwrap();
    assert_eq!(
        body["choices"][0],
        json!({"index": 0, "message": {"role": "assistant", "content": "Hé", "refusal": "No."}, "logprobs": null, "finish_reason": "length"})
    );
    assert_eq!(body["usage"]["completion_tokens_details"]["reasoning_tokens"], json!(4));
}

#[test]
fn parallel_function_calls_keep_their_indices() {
    let added = |i: u64, id: &str, call: &str| {
        (
            "response.output_item.added",
            json!({"type": "response.output_item.added", "output_index": i, "item": {"id": id, "type": "function_call", "call_id": call, "name": "f", "arguments": ""}}),
        )
    };
    let delta = |i: u64, id: &str, d: &str| {
        (
            "response.function_call_arguments.delta",
            json!({"type": "response.function_call_arguments.delta", "item_id": id, "output_index": i, "delta": d}),
        )
    };
    let stream = sse(&[
        created("r2"),
        added(1, "fc_a", "call_a"),
        added(2, "fc_b", "call_b"),
        delta(2, "fc_b", "{\"b\":1}"),
        delta(1, "fc_a", "{\"a\":"),
        delta(1, "fc_a", "2}"),
        // Arguments given whole only: sent at `done`.
        added(3, "fc_c", "call_c"),
        (
            "response.function_call_arguments.done",
            json!({"type": "response.function_call_arguments.done", "item_id": "fc_c", "output_index": 3, "arguments": "{}"}),
        ),
        // Already streamed: `done` repeats nothing.
        (
            "response.function_call_arguments.done",
            json!({"type": "response.function_call_arguments.done", "item_id": "fc_a", "output_index": 1, "arguments": "{\"a\":2}"}),
        ),
        (
            "response.completed",
            json!({"type": "response.completed", "response": {"id": "r2", "status": "completed", "usage": {"input_tokens": 1, "output_tokens": 2}}}),
        ),
    ]);
    let mut t = ResponsesSseToChat::new(MODEL, false, Mode::Stream);
    let events = events_of(&text_of(&run(&mut t, &stream, &[])));
    let calls: Vec<Value> = events
        .iter()
        .filter_map(|e| e["choices"][0]["delta"].get("tool_calls").cloned())
        .map(|c| c[0].clone())
        .collect();
    assert_eq!(
        calls,
        [
            json!({"index": 0, "id": "call_a", "type": "function", "function": {"name": "f", "arguments": ""}}),
            json!({"index": 1, "id": "call_b", "type": "function", "function": {"name": "f", "arguments": ""}}),
            json!({"index": 1, "function": {"arguments": "{\"b\":1}"}}),
            json!({"index": 0, "function": {"arguments": "{\"a\":"}}),
            json!({"index": 0, "function": {"arguments": "2}"}}),
            json!({"index": 2, "id": "call_c", "type": "function", "function": {"name": "f", "arguments": ""}}),
            json!({"index": 2, "function": {"arguments": "{}"}}),
        ]
    );
    assert_eq!(
        events[events.len() - 2]["choices"][0]["finish_reason"],
        json!("tool_calls")
    );

    let mut t = ResponsesSseToChat::new(MODEL, false, Mode::Collect);
    let body: Value = serde_json::from_slice(&run(&mut t, &stream, &[])[0]).unwrap();
    let args: Vec<Value> = body["choices"][0]["message"]["tool_calls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["function"]["arguments"].clone())
        .collect();
    assert_eq!(args, [json!("{\"a\":2}"), json!("{\"b\":1}"), json!("{}")]);
    assert_eq!(body["choices"][0]["message"]["content"], Value::Null);
}

#[test]
fn a_failed_response_becomes_an_error() {
    let stream = sse(&[
        created("r3"),
        (
            "response.output_text.delta",
            json!({"type": "response.output_text.delta", "item_id": "m", "output_index": 0, "delta": "Hel"}),
        ),
        (
            "response.failed",
            json!({"type": "response.failed", "response": {"id": "r3", "status": "failed", "error": {"code": "rate_limit_exceeded", "message": "Too many requests"}, "usage": {"input_tokens": 9, "output_tokens": 1}}}),
        ),
        // Nothing after the failure is converted.
        (
            "response.output_text.delta",
            json!({"type": "response.output_text.delta", "item_id": "m", "output_index": 0, "delta": "lo"}),
        ),
    ]);
    for k in 0..=stream.len() {
        let mut t = ResponsesSseToChat::new(MODEL, true, Mode::Stream);
        let events = events_of(&text_of(&run(&mut t, &stream, &[k])));
        assert_eq!(events.len(), 4, "split at {k}");
        assert_eq!(
            events[2],
            json!({"error": {"message": "Too many requests", "type": "server_error", "param": null, "code": "rate_limit_exceeded"}})
        );
        assert_eq!(events[3], json!("[DONE]"));
        assert!(t.failed());
        assert_eq!(t.usage().input, 9);
        assert_eq!(
            t.upstream_error(),
            Some(("rate_limit_exceeded".to_owned(), "Too many requests".to_owned()))
        );
    }
    let mut t = ResponsesSseToChat::new(MODEL, true, Mode::Collect);
    let out = run(&mut t, &stream, &[]);
    let body: Value = serde_json::from_slice(&out[0]).unwrap();
    assert_eq!(body["error"]["code"], json!("rate_limit_exceeded"));
    assert_eq!(t.error_status(), Some(429));
}

#[test]
fn an_error_event_becomes_an_error() {
    let stream = sse(&[(
        "error",
        json!({"type": "error", "code": "context_length_exceeded", "message": "Too long", "param": "input", "sequence_number": 0}),
    )]);
    let mut t = ResponsesSseToChat::new(MODEL, false, Mode::Stream);
    let events = events_of(&text_of(&run(&mut t, &stream, &[])));
    assert_eq!(
        events,
        [
            json!({"error": {"message": "Too long", "type": "server_error", "param": null, "code": "context_length_exceeded"}}),
            json!("[DONE]")
        ]
    );
    let mut t = ResponsesSseToChat::new(MODEL, false, Mode::Collect);
    run(&mut t, &stream, &[]);
    assert_eq!(t.error_status(), Some(400));
    // Nested, as some servers write it.
    let stream = b"data: {\"type\":\"error\",\"error\":{\"type\":\"invalid_request_error\",\"code\":null,\"message\":\"Bad\"}}\n\n";
    let mut t = ResponsesSseToChat::new(MODEL, false, Mode::Collect);
    let body: Value = serde_json::from_slice(&run(&mut t, stream, &[])[0]).unwrap();
    assert_eq!(
        body,
        json!({"error": {"message": "Bad", "type": "invalid_request_error", "param": null, "code": null}})
    );
    assert_eq!(t.error_status(), Some(400));
}

#[test]
fn a_cut_stream_ends_with_an_error() {
    let end = memchr::memmem::find(TEXT, b"event: response.output_text.done").unwrap();
    let mut t = ResponsesSseToChat::new(MODEL, true, Mode::Stream);
    let out = text_of(&run(&mut t, &TEXT[..end], &[]));
    let events = events_of(&out);
    assert_eq!(events.len(), 7);
    assert_eq!(events[4]["choices"][0]["delta"]["content"], json!("upstream!"));
    assert_eq!(events[5]["error"]["type"], json!("server_error"));
    assert_eq!(events[6], json!("[DONE]"));
    assert!(t.failed());
    let mut t = ResponsesSseToChat::new(MODEL, true, Mode::Collect);
    let body: Value = serde_json::from_slice(&run(&mut t, &TEXT[..end], &[])[0]).unwrap();
    assert!(body["error"]["message"].as_str().unwrap().contains("ended"));
    assert_eq!(t.error_status(), Some(502));
    // Nothing at all.
    let mut t = ResponsesSseToChat::new(MODEL, true, Mode::Stream);
    assert_eq!(events_of(&text_of(&run(&mut t, b"", &[]))).len(), 2);
}

#[test]
fn an_over_long_final_event_still_ends_the_answer() {
    let pad = "x".repeat(MAX_LINE);
    let stream = [
        &TEXT[..memchr::memmem::find(TEXT, b"event: response.completed").unwrap()],
        format!(
            "event: response.completed\ndata: {{\"type\":\"response.completed\",\"response\":{{\"id\":\"r\",\"output\":[{{\"text\":\"{pad}\"}}],\"usage\":{{\"input_tokens\":24,\"input_tokens_details\":{{\"cached_tokens\":3}},\"output_tokens\":7}}}}}}\n\n"
        )
        .as_bytes(),
    ]
    .concat();
    for size in [4096, stream.len()] {
        let mut t = ResponsesSseToChat::new(MODEL, true, Mode::Stream);
        let mut out = Vec::new();
        for chunk in stream.chunks(size) {
            out.extend_from_slice(&t.push(chunk));
        }
        out.extend_from_slice(&t.finish());
        assert_eq!(String::from_utf8(out).unwrap(), TEXT_CHAT, "chunks of {size}");
    }
}

#[test]
fn a_responses_object_as_a_completion() {
    // The `response` of each recording's `response.completed` event.
    for (stream, expected) in [(TEXT, TEXT_JSON), (CALL, CALL_JSON)] {
        let line = stream
            .split(|&b| b == b'\n')
            .find(|l| l.starts_with(b"data: {\"type\":\"response.completed\""))
            .unwrap();
        let event: Value = serde_json::from_slice(&line[6..]).unwrap();
        let body = serde_json::to_vec(&event["response"]).unwrap();
        let (out, usage) = response_from_responses(&body, MODEL).unwrap();
        assert_eq!(std::str::from_utf8(&out).unwrap(), expected.trim_end());
        assert_eq!(usage, GOLDEN);
    }
    let failed = br#"{"id":"r","status":"failed","error":{"code":"server_error","message":"Boom"},"output":[]}"#;
    assert!(response_from_responses(failed, MODEL).unwrap_err().0.contains("Boom"));
    assert!(response_from_responses(b"<html>", MODEL).is_err());
}

/// Found by the property test: with the usage taken from a reader of the whole chunk, an answer
/// ended by one final event reported the usage of a later one when both arrived together.
#[test]
fn the_usage_is_the_one_of_the_event_that_ends_the_answer() {
    let stream = sse(&[
        created("r4"),
        (
            "response.output_text.delta",
            json!({"type": "response.completed", "response": {"usage": {"input_tokens": 1, "output_tokens": 1}}}),
        ),
        (
            "response.completed",
            json!({"type": "response.completed", "response": {"usage": {"input_tokens": 24, "output_tokens": 7}}}),
        ),
    ]);
    for k in 0..=stream.len() {
        let mut t = ResponsesSseToChat::new(MODEL, true, Mode::Stream);
        let events = events_of(&text_of(&run(&mut t, &stream, &[k])));
        assert_eq!(events[2]["usage"]["prompt_tokens"], json!(1), "split at {k}");
        assert_eq!(t.usage().input, 1);
    }
}

mod props {
    use proptest::prelude::*;

    use super::*;
    use crate::test_props::{chunks, config, cuts};

    /// Lines of the recordings and pieces of them, for streams that reach the converter's states.
    fn soup() -> impl Strategy<Value = Vec<u8>> {
        let lines: Vec<Vec<u8>> = [TEXT, CALL]
            .iter()
            .flat_map(|s| s.split_inclusive(|&b| b == b'\n'))
            .map(<[u8]>::to_vec)
            .chain(
                [
                    "event: error\n",
                    "data: {\"type\":\"error\",\"code\":\"x\",\"message\":\"y\"}\n",
                    "data: {\"type\":\"response.failed\",\"response\":{\"error\":{\"code\":\"c\",\"message\":\"m\"}}}\n",
                    "data: {\"type\":\"response.output_text.delta\",\"delta\":\"h\\u00e9\"}\n",
                    "data: ",
                    "event:",
                    "\r\n",
                    "\n",
                    "\r",
                ]
                .iter()
                .map(|s| s.as_bytes().to_vec()),
            )
            .collect();
        let piece = prop_oneof![
            6 => prop::sample::select(lines),
            1 => prop::collection::vec(any::<u8>(), 0..8),
        ];
        prop::collection::vec(piece, 0..30).prop_map(|v| v.concat())
    }

    fn soup_and_cuts() -> impl Strategy<Value = (Vec<u8>, Vec<usize>)> {
        soup().prop_flat_map(|b| {
            let n = b.len();
            (Just(b), cuts(n))
        })
    }

    fn convert(parts: &[&[u8]], mode: Mode) -> (Vec<u8>, bool, TokenUsage) {
        let mut t = ResponsesSseToChat::new(MODEL, true, mode);
        t.set_created(1);
        let mut out = Vec::new();
        for part in parts {
            out.extend_from_slice(&t.push(part));
        }
        out.extend_from_slice(&t.finish());
        // Ids made up when the stream never names its response differ from run to run.
        let out = String::from_utf8_lossy(&out).into_owned();
        let out = match out.find("chatcmpl-") {
            Some(_) if !out.contains("chatcmpl-resp_") => String::new(),
            _ => out,
        };
        (out.into_bytes(), t.failed(), t.usage())
    }

    proptest! {
        #![proptest_config(config(64))]

        #[test]
        fn any_chunking_converts_as_when_whole((bytes, at) in soup_and_cuts()) {
            for mode in [Mode::Stream, Mode::Collect] {
                prop_assert_eq!(convert(&chunks(&bytes, &at), mode), convert(&[&bytes], mode));
            }
        }
    }
}
