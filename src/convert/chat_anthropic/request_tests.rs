use serde_json::{Value, json};

use super::*;

const MODEL: &str = "claude-sonnet-4-5-20250929";

/// The Messages request made of `chat`, and the facts kept.
fn convert(chat: Value) -> (Value, ChatFacts) {
    let (bytes, facts) = request_to_messages(chat.to_string().as_bytes(), MODEL).unwrap();
    (serde_json::from_slice(&bytes).unwrap(), facts)
}

fn messages(chat: Value) -> Value {
    convert(chat).0
}

/// The message of the refusal of `chat`.
fn refused(chat: Value) -> String {
    request_to_messages(chat.to_string().as_bytes(), MODEL).unwrap_err().0
}

fn user(text: &str) -> Value {
    json!({"role": "user", "content": text})
}

#[test]
fn a_plain_request_keeps_model_messages_and_defaults() {
    let (out, facts) = convert(json!({
        "model": "gpt-4o",
        "messages": [user("Hi")],
    }));
    assert_eq!(
        out,
        json!({
            "model": MODEL,
            "max_tokens": DEFAULT_MAX_TOKENS,
            "messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}],
        })
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
fn stream_and_include_usage_are_kept() {
    let (out, facts) = convert(json!({
        "messages": [user("Hi")],
        "stream": true,
        "stream_options": {"include_usage": true},
    }));
    assert_eq!(out["stream"], true);
    assert_eq!(
        facts,
        ChatFacts {
            stream: true,
            include_usage: true
        }
    );
    let (out, facts) = convert(json!({"messages": [user("Hi")], "stream": false}));
    assert!(out.get("stream").is_none());
    assert!(!facts.stream && !facts.include_usage);
}

#[test]
fn system_and_developer_messages_join_the_system_prompt() {
    let out = messages(json!({
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "developer", "content": [{"type": "text", "text": "Answer in French."}, {"type": "text", "text": "No lists."}]},
            user("Hi"),
            {"role": "assistant", "content": "Salut"},
            {"role": "system", "content": "Be kind."},
            user("Again"),
        ],
    }));
    assert_eq!(
        out["system"],
        "You are terse.\n\nAnswer in French.\n\nNo lists.\n\nBe kind."
    );
    assert_eq!(
        out["messages"],
        json!([
            {"role": "user", "content": [{"type": "text", "text": "Hi"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "Salut"}]},
            {"role": "user", "content": [{"type": "text", "text": "Again"}]},
        ])
    );
}

#[test]
fn cache_control_on_a_system_part_makes_system_blocks() {
    let out = messages(json!({
        "messages": [
            {"role": "system", "content": [{"type": "text", "text": "Long rules", "cache_control": {"type": "ephemeral"}}]},
            {"role": "developer", "content": "More"},
            {"role": "user", "content": [{"type": "text", "text": "Q", "cache_control": {"type": "ephemeral", "ttl": "1h"}}]},
        ],
    }));
    assert_eq!(
        out["system"],
        json!([
            {"type": "text", "text": "Long rules", "cache_control": {"type": "ephemeral"}},
            {"type": "text", "text": "More"},
        ])
    );
    assert_eq!(
        out["messages"][0]["content"],
        json!([{"type": "text", "text": "Q", "cache_control": {"type": "ephemeral", "ttl": "1h"}}])
    );
}

#[test]
fn images_from_data_urls_and_http_urls() {
    let out = messages(json!({
        "messages": [{"role": "user", "content": [
            {"type": "text", "text": "What is this?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "high"}},
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
            {"type": "image_url", "image_url": {"url": "data:image/jpg;base64,/9j/4AAQ"}},
        ]}],
    }));
    assert_eq!(
        out["messages"][0]["content"],
        json!([
            {"type": "text", "text": "What is this?"},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
            {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
            {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "/9j/4AAQ"}},
        ])
    );
}

#[test]
fn unusable_images_are_refused() {
    let image = |url: &str| json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}]});
    let m = refused(image("data:image/svg+xml;base64,PHN2Zz4="));
    assert!(
        m.contains("messages[0].content[0]") && m.contains("image/svg+xml"),
        "{m}"
    );
    let m = refused(image("data:image/png,rawbytes"));
    assert!(m.contains("base64"), "{m}");
    let m = refused(image("ftp://example.com/a.png"));
    assert!(m.contains("data: URL or an http(s) URL"), "{m}");
}

#[test]
fn pdf_files_become_documents_and_other_files_are_refused() {
    let out = messages(json!({
        "messages": [{"role": "user", "content": [
            {"type": "file", "file": {"filename": "report.pdf", "file_data": "data:application/pdf;base64,JVBERi0x"}},
            {"type": "text", "text": "Summarise"},
        ]}],
    }));
    assert_eq!(
        out["messages"][0]["content"][0],
        json!({"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0x"}, "title": "report.pdf"})
    );
    let file = |file: Value| json!({"messages": [{"role": "user", "content": [{"type": "file", "file": file}]}]});
    let m = refused(file(json!({"file_id": "file-abc"})));
    assert!(m.contains("file_id") && m.contains("messages[0].content[0]"), "{m}");
    let m = refused(file(json!({"file_data": "data:text/csv;base64,YSxi"})));
    assert!(m.contains("text/csv"), "{m}");
}

#[test]
fn audio_input_is_refused() {
    let m = refused(json!({"messages": [{"role": "user", "content": [
        {"type": "text", "text": "Listen"},
        {"type": "input_audio", "input_audio": {"data": "UklGR", "format": "wav"}},
    ]}]}));
    assert!(m.contains("messages[0].content[1]") && m.contains("input_audio"), "{m}");
}

#[test]
fn tools_and_their_schemas() {
    let out = messages(json!({
        "messages": [user("Weather?")],
        "tools": [
            {"type": "function", "function": {
                "name": "get_weather",
                "description": "Weather for a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
                "strict": true,
            }},
            {"type": "function", "function": {"name": "now"}},
            {"type": "function", "function": {"name": "empty", "parameters": {}}},
        ],
    }));
    assert_eq!(
        out["tools"],
        json!([
            {"name": "get_weather", "description": "Weather for a city", "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}},
            {"name": "now", "input_schema": {"type": "object", "properties": {}}},
            {"name": "empty", "input_schema": {"type": "object"}},
        ])
    );
    assert!(out.get("tool_choice").is_none());
}

#[test]
fn non_function_tools_are_refused() {
    let m = refused(json!({"messages": [user("x")], "tools": [{"type": "custom", "custom": {"name": "grammar"}}]}));
    assert!(m.contains("tools[0]") && m.contains("custom"), "{m}");
}

#[test]
fn tool_choice_variants() {
    let tools = json!([
        {"type": "function", "function": {"name": "a"}},
        {"type": "function", "function": {"name": "b"}},
    ]);
    let choice = |choice: Value, parallel: Option<bool>| {
        let mut chat = json!({"messages": [user("x")], "tools": tools, "tool_choice": choice});
        if let Some(p) = parallel {
            chat["parallel_tool_calls"] = json!(p);
        }
        messages(chat)
    };
    assert_eq!(choice(json!("auto"), None)["tool_choice"], json!({"type": "auto"}));
    assert_eq!(choice(json!("none"), None)["tool_choice"], json!({"type": "none"}));
    assert_eq!(choice(json!("required"), None)["tool_choice"], json!({"type": "any"}));
    assert_eq!(
        choice(json!({"type": "function", "function": {"name": "b"}}), None)["tool_choice"],
        json!({"type": "tool", "name": "b"})
    );
    assert_eq!(
        choice(json!("required"), Some(false))["tool_choice"],
        json!({"type": "any", "disable_parallel_tool_use": true})
    );
    assert_eq!(
        choice(json!({"type": "function", "function": {"name": "a"}}), Some(false))["tool_choice"],
        json!({"type": "tool", "name": "a", "disable_parallel_tool_use": true})
    );
    // `none` cannot carry the flag; parallel calls allowed changes nothing.
    assert_eq!(
        choice(json!("none"), Some(false))["tool_choice"],
        json!({"type": "none"})
    );
    assert!(choice(Value::Null, Some(true)).get("tool_choice").is_none());
    // No choice but no parallel calls: auto with the flag.
    assert_eq!(
        choice(Value::Null, Some(false))["tool_choice"],
        json!({"type": "auto", "disable_parallel_tool_use": true})
    );
    // allowed_tools narrows the tools.
    let out = choice(
        json!({"type": "allowed_tools", "allowed_tools": {"mode": "required", "tools": [{"type": "function", "function": {"name": "b"}}]}}),
        None,
    );
    assert_eq!(out["tool_choice"], json!({"type": "any"}));
    assert_eq!(
        out["tools"],
        json!([{"name": "b", "input_schema": {"type": "object", "properties": {}}}])
    );

    let m = refused(
        json!({"messages": [user("x")], "tools": tools, "tool_choice": {"type": "function", "function": {"name": "c"}}}),
    );
    assert!(m.contains("'c'"), "{m}");
    let m = refused(json!({"messages": [user("x")], "tools": tools, "tool_choice": "sometimes"}));
    assert!(m.contains("sometimes"), "{m}");
    // Without tools, the choice is dropped.
    let out = messages(json!({"messages": [user("x")], "tool_choice": "none", "parallel_tool_calls": false}));
    assert!(out.get("tool_choice").is_none() && out.get("tools").is_none());
}

#[test]
fn assistant_tool_calls_and_tool_messages_become_one_user_turn() {
    let out = messages(json!({
        "messages": [
            user("Weather in Paris and Rome?"),
            {"role": "assistant", "content": "Checking.", "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
                {"id": "call_2", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Rome\"}"}},
            ]},
            {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
            {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "21C"}]},
            user("Thanks, which is warmer?"),
        ],
        "tools": [{"type": "function", "function": {"name": "get_weather"}}],
    }));
    assert_eq!(
        out["messages"],
        json!([
            {"role": "user", "content": [{"type": "text", "text": "Weather in Paris and Rome?"}]},
            {"role": "assistant", "content": [
                {"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}},
                {"type": "tool_use", "id": "call_2", "name": "get_weather", "input": {"city": "Rome"}},
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "call_1", "content": "18C"},
                {"type": "tool_result", "tool_use_id": "call_2", "content": [{"type": "text", "text": "21C"}]},
                {"type": "text", "text": "Thanks, which is warmer?"},
            ]},
        ])
    );
}

#[test]
fn tool_results_go_first_in_their_user_turn() {
    let out = messages(json!({
        "messages": [
            user("Go"),
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "functions.run:0", "type": "function", "function": {"name": "run", "arguments": ""}},
            ]},
            user("(meanwhile)"),
            {"role": "tool", "tool_call_id": "functions.run:0", "content": ""},
        ],
    }));
    assert_eq!(
        out["messages"][1],
        json!({"role": "assistant", "content": [{"type": "tool_use", "id": "functions_run_0", "name": "run", "input": {}}]})
    );
    assert_eq!(
        out["messages"][2],
        json!({"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "functions_run_0"},
            {"type": "text", "text": "(meanwhile)"},
        ]})
    );
}

#[test]
fn consecutive_messages_of_one_role_merge_and_empty_ones_are_skipped() {
    let out = messages(json!({
        "messages": [
            user("one"),
            {"role": "user", "content": [{"type": "text", "text": "two"}]},
            {"role": "user", "content": ""},
            {"role": "assistant", "content": "a"},
            {"role": "assistant", "content": [{"type": "refusal", "refusal": "no"}]},
            {"role": "assistant", "content": null},
        ],
    }));
    assert_eq!(
        out["messages"],
        json!([
            {"role": "user", "content": [{"type": "text", "text": "one"}, {"type": "text", "text": "two"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "no"}]},
        ])
    );
}

#[test]
fn invalid_tool_call_arguments_are_refused_naming_the_call() {
    let chat = |arguments: &str| {
        json!({"messages": [
            user("x"),
            {"role": "assistant", "tool_calls": [{"id": "call_9", "type": "function", "function": {"name": "f", "arguments": arguments}}]},
        ]})
    };
    let m = refused(chat("{\"a\":"));
    assert!(
        m.contains("call_9") && m.contains("not valid JSON") && m.contains("messages[1].tool_calls[0]"),
        "{m}"
    );
    let m = refused(chat("[1,2]"));
    assert!(m.contains("call_9") && m.contains("JSON object"), "{m}");
    // Arguments are kept as written.
    let out = messages(chat(" {\"b\": [1, 2.50]} "));
    assert_eq!(out["messages"][1]["content"][0]["input"], json!({"b": [1, 2.50]}));
}

#[test]
fn stop_string_or_array() {
    assert_eq!(
        messages(json!({"messages": [user("x")], "stop": "END"}))["stop_sequences"],
        json!(["END"])
    );
    assert_eq!(
        messages(json!({"messages": [user("x")], "stop": ["a", "", "b"]}))["stop_sequences"],
        json!(["a", "b"])
    );
    assert!(
        messages(json!({"messages": [user("x")], "stop": null}))
            .get("stop_sequences")
            .is_none()
    );
    assert!(refused(json!({"messages": [user("x")], "stop": 5})).contains("stop"));
}

#[test]
fn sampling_limits_and_user() {
    let out = messages(json!({
        "messages": [user("x")],
        "max_completion_tokens": 300,
        "max_tokens": 100,
        "temperature": 0.3,
        "top_p": 0.9,
        "user": "user-42",
        "seed": 7,
        "frequency_penalty": 0.5,
        "some_future_field": {"x": 1},
    }));
    assert_eq!(out["max_tokens"], 300);
    assert_eq!(out["temperature"], 0.3);
    assert_eq!(out["top_p"], 0.9);
    assert_eq!(out["metadata"], json!({"user_id": "user-42"}));
    for ignored in [
        "seed",
        "frequency_penalty",
        "some_future_field",
        "user",
        "max_completion_tokens",
    ] {
        assert!(out.get(ignored).is_none(), "{ignored}");
    }
    let out = messages(json!({"messages": [user("x")], "max_tokens": 100, "temperature": 1.7, "top_p": 1}));
    assert_eq!(out["max_tokens"], 100);
    assert_eq!(out["temperature"], 1.0);
    assert!(out.get("top_p").is_none());
    assert!(refused(json!({"messages": [user("x")], "max_tokens": 0})).contains("max_tokens"));
}

#[test]
fn reasoning_effort_becomes_thinking_with_room_for_the_answer() {
    let chat = |effort: &str, max: Option<u64>| {
        let mut chat = json!({"messages": [user("x")], "reasoning_effort": effort, "temperature": 0.2, "top_p": 0.5});
        if let Some(max) = max {
            chat["max_completion_tokens"] = json!(max);
        }
        messages(chat)
    };
    let out = chat("high", None);
    assert_eq!(out["thinking"], json!({"type": "enabled", "budget_tokens": 16384}));
    assert_eq!(out["max_tokens"], 16384 + DEFAULT_MAX_TOKENS);
    assert!(out.get("temperature").is_none() && out.get("top_p").is_none());

    let out = chat("medium", Some(1000));
    assert_eq!(out["thinking"]["budget_tokens"], 4096);
    assert_eq!(out["max_tokens"], 4096 + 1000);

    let out = chat("low", None);
    assert_eq!(out["thinking"]["budget_tokens"], 1024);
    assert_eq!(out["max_tokens"], DEFAULT_MAX_TOKENS);

    let out = chat("low", Some(20000));
    assert_eq!(out["max_tokens"], 20000);

    for off in ["minimal", "none"] {
        let out = chat(off, Some(500));
        assert!(out.get("thinking").is_none(), "{off}");
        assert_eq!(out["max_tokens"], 500);
        assert_eq!(out["temperature"], 0.2);
    }
    assert!(refused(json!({"messages": [user("x")], "reasoning_effort": "extreme"})).contains("extreme"));
}

#[test]
fn thinking_stays_off_where_anthropic_refuses_it() {
    let tools = json!([{"type": "function", "function": {"name": "f"}}]);
    // A forced tool.
    let out = messages(
        json!({"messages": [user("x")], "tools": tools, "tool_choice": "required", "reasoning_effort": "high"}),
    );
    assert!(out.get("thinking").is_none());
    assert_eq!(out["max_tokens"], DEFAULT_MAX_TOKENS);
    // In a tool loop: the assistant's signed thinking cannot be sent back.
    let out = messages(json!({
        "messages": [
            user("x"),
            {"role": "assistant", "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "c", "content": "ok"},
        ],
        "tools": tools,
        "reasoning_effort": "medium",
    }));
    assert!(out.get("thinking").is_none());
    // After the loop ended with a text answer, thinking is back.
    let out = messages(json!({
        "messages": [
            user("x"),
            {"role": "assistant", "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "c", "content": "ok"},
            {"role": "assistant", "content": "done"},
            user("next"),
        ],
        "tools": tools,
        "reasoning_effort": "medium",
    }));
    assert_eq!(out["thinking"]["budget_tokens"], 4096);
}

#[test]
fn response_format() {
    assert!(
        messages(json!({"messages": [user("x")], "response_format": {"type": "text"}}))
            .get("response_format")
            .is_none()
    );
    let m = refused(
        json!({"messages": [user("x")], "response_format": {"type": "json_schema", "json_schema": {"name": "s", "schema": {}}}}),
    );
    assert!(
        m.starts_with("response_format json_schema is not supported by Claude models through this relay; "),
        "{m}"
    );
    let m = refused(json!({"messages": [user("x")], "response_format": {"type": "json_object"}}));
    assert!(m.starts_with("response_format json_object is not supported"), "{m}");
}

#[test]
fn fields_that_change_the_answer_are_refused() {
    let m = refused(json!({"messages": [user("x")], "n": 2}));
    assert!(m.starts_with("n=2 is not supported"), "{m}");
    assert!(messages(json!({"messages": [user("x")], "n": 1})).get("n").is_none());
    assert!(refused(json!({"messages": [user("x")], "logprobs": true})).contains("logprobs"));
    assert!(
        messages(json!({"messages": [user("x")], "logprobs": false}))
            .get("logprobs")
            .is_none()
    );
    assert!(refused(json!({"messages": [user("x")], "modalities": ["text", "audio"], "audio": {"voice": "alloy", "format": "wav"}})).contains("audio"));
    assert!(refused(json!({"messages": [user("x")], "functions": [{"name": "f"}]})).contains("legacy"));
    assert!(refused(json!({"messages": [user("x")], "web_search_options": {}})).contains("web_search_options"));
    let m = refused(json!({"messages": [{"role": "function", "name": "f", "content": "1"}]}));
    assert!(m.contains("messages[0]") && m.contains("function role"), "{m}");
    let m = refused(json!({"messages": [{"role": "assistant", "function_call": {"name": "f", "arguments": "{}"}}]}));
    assert!(m.contains("function_call"), "{m}");
}

#[test]
fn bodies_without_messages_are_refused() {
    assert_eq!(
        request_to_messages(b"[1,2]", MODEL).unwrap_err().0,
        "the request body must be a JSON object"
    );
    assert!(
        request_to_messages(b"{\"messages\":", MODEL)
            .unwrap_err()
            .0
            .starts_with("the request body is not valid JSON")
    );
    let required = "messages is required and must be a non-empty array";
    assert_eq!(refused(json!({"model": "gpt-4o"})), required);
    assert_eq!(refused(json!({"messages": []})), required);
    assert_eq!(refused(json!({"messages": "hi"})), "messages must be an array");
    assert!(
        refused(json!({"messages": [{"role": "system", "content": "only rules"}]}))
            .contains("at least one user or assistant")
    );
    assert!(refused(json!({"messages": [{"content": "x"}]})).contains("messages[0].role"));
    assert!(refused(json!({"messages": [{"role": "tool", "content": "x"}]})).contains("tool_call_id"));
}
