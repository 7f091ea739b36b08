use serde_json::{Value, json};

use super::*;
use crate::convert::chat_anthropic::ChatFacts;

/// The Gemini request made of `chat`, and the facts kept.
fn convert(chat: Value) -> (Value, ChatFacts) {
    let (bytes, facts) = request_to_gemini(chat.to_string().as_bytes()).unwrap();
    (serde_json::from_slice(&bytes).unwrap(), facts)
}

fn gemini(chat: Value) -> Value {
    convert(chat).0
}

/// The message of the refusal of `chat`.
fn refused(chat: Value) -> String {
    request_to_gemini(chat.to_string().as_bytes()).unwrap_err().0
}

fn user(text: &str) -> Value {
    json!({"role": "user", "content": text})
}

#[test]
fn a_plain_request_is_one_user_turn_without_the_model() {
    let (bytes, facts) =
        request_to_gemini(br#"{"model":"my-gemini","messages":[{"role":"user","content":"Hi"}]}"#).unwrap();
    assert_eq!(
        std::str::from_utf8(&bytes).unwrap(),
        r#"{"contents":[{"role":"user","parts":[{"text":"Hi"}]}]}"#
    );
    assert_eq!(
        facts,
        ChatFacts {
            stream: false,
            include_usage: false
        }
    );
    let (_, facts) = convert(json!({
        "messages": [user("Hi")],
        "stream": true,
        "stream_options": {"include_usage": true},
        "user": "u-1",
        "metadata": {"k": "v"},
        "store": false,
        "parallel_tool_calls": true,
        "service_tier": "auto",
    }));
    assert_eq!(
        facts,
        ChatFacts {
            stream: true,
            include_usage: true
        }
    );
}

#[test]
fn system_and_developer_messages_become_the_system_instruction() {
    let out = gemini(json!({
        "messages": [
            {"role": "system", "content": "Be brief."},
            user("one"),
            {"role": "developer", "content": [{"type": "text", "text": "Answer in French."}, {"type": "text", "text": "Politely."}]},
            {"role": "assistant", "content": "un"},
            user("two"),
            user("three"),
        ]
    }));
    assert_eq!(
        out,
        json!({
            "systemInstruction": {"parts": [{"text": "Be brief."}, {"text": "Answer in French."}, {"text": "Politely."}]},
            "contents": [
                {"role": "user", "parts": [{"text": "one"}]},
                {"role": "model", "parts": [{"text": "un"}]},
                {"role": "user", "parts": [{"text": "two"}]},
                {"role": "user", "parts": [{"text": "three"}]},
            ]
        })
    );
}

#[test]
fn images_audio_and_files_are_inline_data_or_file_data() {
    let out = gemini(json!({
        "messages": [{"role": "user", "content": [
            {"type": "text", "text": "What is this?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "high"}},
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.JPG?size=large"}},
            {"type": "image_url", "image_url": {"url": "https://example.com/render/42"}},
            {"type": "image_url", "image_url": "HTTPS://example.com/a.webp"},
            {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
            {"type": "input_audio", "input_audio": {"data": "SUQz", "format": "mp3"}},
            {"type": "file", "file": {"filename": "a.pdf", "file_data": "data:application/pdf;base64,JVBERi0="}},
            {"type": "text", "text": ""},
        ]}]
    }));
    assert_eq!(
        out["contents"][0]["parts"],
        json!([
            {"text": "What is this?"},
            {"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}},
            {"fileData": {"mimeType": "image/jpeg", "fileUri": "https://example.com/cat.JPG?size=large"}},
            {"fileData": {"fileUri": "https://example.com/render/42"}},
            {"fileData": {"mimeType": "image/webp", "fileUri": "HTTPS://example.com/a.webp"}},
            {"inlineData": {"mimeType": "audio/wav", "data": "UklGRg=="}},
            {"inlineData": {"mimeType": "audio/mp3", "data": "SUQz"}},
            {"inlineData": {"mimeType": "application/pdf", "data": "JVBERi0="}},
        ])
    );
}

#[test]
fn a_tool_round_trip_keeps_ids_names_and_arguments() {
    let out = gemini(json!({
        "messages": [
            user("List the files, and the time"),
            {"role": "assistant", "content": "Let me look.", "tool_calls": [
                {"id": "call_a", "type": "function", "function": {"name": "exec_command", "arguments": "{\"cmd\": \"ls\"}"}},
                {"id": "call_b", "type": "function", "function": {"name": "now", "arguments": ""}},
            ]},
            {"role": "tool", "tool_call_id": "call_a", "content": "a.txt\nb.txt"},
            {"role": "tool", "tool_call_id": "call_b", "content": [{"type": "text", "text": "{\"time\": \"12:00\"}"}]},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_c", "type": "function", "function": {"name": "exec_command", "arguments": "{\"cmd\":\"date\"}"}},
            ]},
            {"role": "tool", "tool_call_id": "call_c", "content": "[1, 2]"},
            user("Thanks"),
        ]
    }));
    let signature = "skip_thought_signature_validator";
    assert_eq!(
        out["contents"],
        json!([
            {"role": "user", "parts": [{"text": "List the files, and the time"}]},
            {"role": "model", "parts": [
                {"text": "Let me look."},
                {"functionCall": {"id": "call_a", "name": "exec_command", "args": {"cmd": "ls"}}, "thoughtSignature": signature},
                {"functionCall": {"id": "call_b", "name": "now", "args": {}}, "thoughtSignature": signature},
            ]},
            {"role": "user", "parts": [
                {"functionResponse": {"id": "call_a", "name": "exec_command", "response": {"output": "a.txt\nb.txt"}}},
                {"functionResponse": {"id": "call_b", "name": "now", "response": {"time": "12:00"}}},
            ]},
            {"role": "model", "parts": [
                {"functionCall": {"id": "call_c", "name": "exec_command", "args": {"cmd": "date"}}, "thoughtSignature": signature},
            ]},
            {"role": "user", "parts": [
                {"functionResponse": {"id": "call_c", "name": "exec_command", "response": {"output": "[1, 2]"}}},
            ]},
            {"role": "user", "parts": [{"text": "Thanks"}]},
        ])
    );
}

#[test]
fn the_arguments_are_passed_as_written() {
    let (bytes, _) = request_to_gemini(
        json!({"messages": [
            {"role": "assistant", "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{\"b\": 1, \"a\": [true, null]}"}}]},
            {"role": "tool", "tool_call_id": "c", "content": " {\"z\": 0, \"y\": 1} "},
        ]})
        .to_string()
        .as_bytes(),
    )
    .unwrap();
    let text = std::str::from_utf8(&bytes).unwrap();
    assert!(text.contains(r#""args":{"b": 1, "a": [true, null]}"#), "{text}");
    assert!(text.contains(r#""response":{"z": 0, "y": 1}"#), "{text}");
}

#[test]
fn legacy_functions_are_converted_too() {
    let out = gemini(json!({
        "messages": [
            user("Weather?"),
            {"role": "assistant", "content": null, "function_call": {"name": "weather", "arguments": "{\"city\":\"Paris\"}"}},
            {"role": "function", "name": "weather", "content": "sunny"},
        ],
        "functions": [{"name": "weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}],
        "function_call": {"name": "weather"},
    }));
    assert_eq!(
        out["contents"][1],
        json!({"role": "model", "parts": [
            {"functionCall": {"name": "weather", "args": {"city": "Paris"}}, "thoughtSignature": "skip_thought_signature_validator"}
        ]})
    );
    assert_eq!(
        out["contents"][2],
        json!({"role": "user", "parts": [{"functionResponse": {"name": "weather", "response": {"output": "sunny"}}}]})
    );
    assert_eq!(
        out["tools"],
        json!([{"functionDeclarations": [
            {"name": "weather", "parametersJsonSchema": {"type": "object", "properties": {"city": {"type": "string"}}}}
        ]}])
    );
    assert_eq!(
        out["toolConfig"],
        json!({"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["weather"]}})
    );
    let out = gemini(json!({"messages": [user("x")], "functions": [{"name": "f"}], "function_call": "none"}));
    assert_eq!(out["toolConfig"], json!({"functionCallingConfig": {"mode": "NONE"}}));
}

fn tools() -> Value {
    json!([
        {"type": "function", "function": {
            "name": "exec_command",
            "description": "Runs a command.",
            "parameters": {"type": "object", "properties": {"cmd": {"type": "string"}}, "required": ["cmd"], "additionalProperties": false},
            "strict": true,
        }},
        {"type": "function", "function": {"name": "now", "description": ""}},
        {"type": "function", "function": {"name": "sleep", "parameters": null}},
    ])
}

#[test]
fn tools_become_function_declarations_with_their_full_schema() {
    let out = gemini(json!({"messages": [user("x")], "tools": tools()}));
    assert_eq!(
        out["tools"],
        json!([{"functionDeclarations": [
            {"name": "exec_command", "description": "Runs a command.", "parametersJsonSchema": {
                "type": "object", "properties": {"cmd": {"type": "string"}}, "required": ["cmd"], "additionalProperties": false
            }},
            {"name": "now"},
            {"name": "sleep"},
        ]}])
    );
    assert!(out.get("toolConfig").is_none());
}

#[test]
fn every_tool_choice() {
    let config = |choice: Value| gemini(json!({"messages": [user("x")], "tools": tools(), "tool_choice": choice}));
    assert_eq!(
        config(json!("auto"))["toolConfig"],
        json!({"functionCallingConfig": {"mode": "AUTO"}})
    );
    assert_eq!(
        config(json!("none"))["toolConfig"],
        json!({"functionCallingConfig": {"mode": "NONE"}})
    );
    assert_eq!(
        config(json!("required"))["toolConfig"],
        json!({"functionCallingConfig": {"mode": "ANY"}})
    );
    assert_eq!(
        config(json!({"type": "function", "function": {"name": "now"}}))["toolConfig"],
        json!({"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["now"]}})
    );
    let allowed = config(
        json!({"type": "allowed_tools", "allowed_tools": {"mode": "required", "tools": [
            {"type": "function", "function": {"name": "now"}},
            {"type": "function", "name": "sleep"},
        ]}}),
    );
    assert_eq!(allowed["toolConfig"], json!({"functionCallingConfig": {"mode": "ANY"}}));
    assert_eq!(
        allowed["tools"],
        json!([{"functionDeclarations": [{"name": "now"}, {"name": "sleep"}]}])
    );
    // Without tools, a choice is not sent.
    let out = gemini(json!({"messages": [user("x")], "tool_choice": "required"}));
    assert!(out.get("toolConfig").is_none() && out.get("tools").is_none());

    let refuse = |choice: Value| refused(json!({"messages": [user("x")], "tools": tools(), "tool_choice": choice}));
    assert_eq!(
        refuse(json!({"type": "function", "function": {"name": "rm"}})),
        "tool_choice names function 'rm', which is not in tools"
    );
    assert_eq!(
        refuse(json!("sometimes")),
        "tool_choice 'sometimes' is not supported; use auto, none, required or a named function"
    );
    assert_eq!(
        refuse(json!({"type": "custom", "custom": {"name": "x"}})),
        "tool_choice type 'custom' is not supported"
    );
    assert_eq!(
        refuse(
            json!({"type": "allowed_tools", "allowed_tools": {"mode": "auto", "tools": [{"type": "function", "function": {"name": "rm"}}]}})
        ),
        "tool_choice.allowed_tools names function 'rm', which is not in tools"
    );
}

#[test]
fn sampling_parameters_become_the_generation_config() {
    let out = gemini(json!({
        "messages": [user("x")],
        "max_tokens": 100,
        "max_completion_tokens": 200,
        "temperature": 0.5,
        "top_p": 0.9,
        "top_k": 40,
        "stop": ["END", "", "STOP"],
        "n": 2,
        "presence_penalty": 0.25,
        "frequency_penalty": -0.5,
        "seed": 7,
    }));
    assert_eq!(
        out["generationConfig"],
        json!({
            "stopSequences": ["END", "STOP"],
            "candidateCount": 2,
            "maxOutputTokens": 200,
            "temperature": 0.5,
            "topP": 0.9,
            "topK": 40,
            "seed": 7,
            "presencePenalty": 0.25,
            "frequencyPenalty": -0.5,
        })
    );
    let out = gemini(json!({"messages": [user("x")], "max_tokens": 100, "stop": "END", "n": 1}));
    assert_eq!(
        out["generationConfig"],
        json!({"stopSequences": ["END"], "maxOutputTokens": 100})
    );
    assert_eq!(
        refused(json!({"messages": [user("x")], "n": 0})),
        "n must be at least 1"
    );
    assert_eq!(
        refused(json!({"messages": [user("x")], "stop": 3})),
        "stop must be a string or an array of strings"
    );
}

#[test]
fn response_formats() {
    let format = |f: Value| gemini(json!({"messages": [user("x")], "response_format": f}));
    assert!(format(json!({"type": "text"})).get("generationConfig").is_none());
    assert_eq!(
        format(json!({"type": "json_object"}))["generationConfig"],
        json!({"responseMimeType": "application/json"})
    );
    let schema = json!({"type": "object", "properties": {"a": {"type": "integer", "minimum": 1}}, "required": ["a"]});
    assert_eq!(
        format(json!({"type": "json_schema", "json_schema": {"name": "answer", "strict": true, "schema": schema}}))["generationConfig"],
        json!({"responseMimeType": "application/json", "responseJsonSchema": schema})
    );
    assert_eq!(
        refused(
            json!({"messages": [user("x")], "response_format": {"type": "json_schema", "json_schema": {"name": "a"}}})
        ),
        "response_format.json_schema.schema is required"
    );
    assert_eq!(
        refused(json!({"messages": [user("x")], "response_format": {"type": "grammar"}})),
        "response_format type 'grammar' is not supported (text, json_object and json_schema are)"
    );
}

#[test]
fn reasoning_effort_is_a_thinking_budget() {
    let thinking = |effort: &str| {
        gemini(json!({"messages": [user("x")], "reasoning_effort": effort}))["generationConfig"]["thinkingConfig"]
            .clone()
    };
    assert_eq!(thinking("none"), json!({"thinkingBudget": 0}));
    assert_eq!(
        thinking("minimal"),
        json!({"thinkingBudget": 512, "includeThoughts": true})
    );
    assert_eq!(
        thinking("low"),
        json!({"thinkingBudget": 1024, "includeThoughts": true})
    );
    assert_eq!(
        thinking("medium"),
        json!({"thinkingBudget": 8192, "includeThoughts": true})
    );
    assert_eq!(
        thinking("high"),
        json!({"thinkingBudget": 24576, "includeThoughts": true})
    );
    assert_eq!(
        refused(json!({"messages": [user("x")], "reasoning_effort": "xhigh"})),
        "reasoning_effort 'xhigh' is not supported for Gemini models (none, minimal, low, medium and high are)"
    );
}

#[test]
fn what_would_change_the_answer_is_refused_by_name() {
    let cases = [
        (
            json!({"messages": [user("x")], "logprobs": true}),
            "logprobs / top_logprobs are not supported through this relay for Gemini models",
        ),
        (
            json!({"messages": [user("x")], "logit_bias": {"50256": -100}}),
            "logit_bias is not supported by Gemini models",
        ),
        (
            json!({"messages": [user("x")], "modalities": ["text", "audio"]}),
            "audio output (modalities with \"audio\", audio) is not supported through this relay for Gemini models",
        ),
        (
            json!({"messages": [user("x")], "web_search_options": {}}),
            "web_search_options is not supported through this relay for Gemini models",
        ),
        (
            json!({"messages": [user("x")], "tools": [{"type": "web_search"}]}),
            "tools[0]: tool type 'web_search' is not supported through this relay for Gemini models; only function tools are",
        ),
        (
            json!({"messages": [{"role": "user", "content": [{"type": "video_url", "video_url": {"url": "x"}}]}]}),
            "messages[0].content[0]: content part type 'video_url' is not supported in user messages",
        ),
        (
            json!({"messages": [{"role": "system", "content": [{"type": "image_url", "image_url": {"url": "https://a/b.png"}}]}, user("x")]}),
            "messages[0].content[0]: content part type 'image_url' is not supported in system messages",
        ),
        (
            json!({"messages": [
                {"role": "assistant", "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
                {"role": "tool", "tool_call_id": "c", "content": [{"type": "image_url", "image_url": {"url": "https://a/b.png"}}]},
            ]}),
            "messages[1].content[0]: content part type 'image_url' is not supported in tool messages (text is)",
        ),
        (
            json!({"messages": [{"role": "user", "content": [{"type": "file", "file": {"file_id": "file-1"}}]}]}),
            "messages[0].content[0]: file_id references are not supported through this relay; send the file inline as \
             file_data (a base64 data: URL)",
        ),
        (
            json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "ftp://a/b.png"}}]}]}),
            "messages[0].content[0]: image_url.url must be a base64 data: URL or an http(s) URL",
        ),
        (
            json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png,abc"}}]}]}),
            "messages[0].content[0]: an image data: URL must be base64-encoded (data:<type>;base64,...)",
        ),
        (
            json!({"messages": [{"role": "critic", "content": "x"}]}),
            "messages[0].role 'critic' is not supported (system, developer, user, assistant, tool and function are)",
        ),
    ];
    for (chat, message) in cases {
        assert_eq!(refused(chat.clone()), message, "{chat}");
    }
}

#[test]
fn tool_messages_and_arguments_must_make_sense() {
    let call = |arguments: &str| {
        json!({"messages": [
            user("x"),
            {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": arguments}}]},
        ]})
    };
    assert!(
        refused(call("{\"a\":")).starts_with("messages[1].tool_calls[0].function.arguments of 'f' is not valid JSON")
    );
    assert_eq!(
        refused(call("[1]")),
        "messages[1].tool_calls[0].function.arguments of 'f' must be a JSON object"
    );
    assert_eq!(
        refused(json!({"messages": [user("x"), {"role": "tool", "tool_call_id": "c9", "content": "r"}]})),
        "messages[1].tool_call_id 'c9' names no tool call of an earlier assistant message"
    );
    assert_eq!(
        refused(json!({"messages": [user("x"), {"role": "tool", "content": "r"}]})),
        "messages[1].tool_call_id is required"
    );
    assert_eq!(
        refused(
            json!({"messages": [user("x"), {"role": "assistant", "tool_calls": [{"type": "function", "function": {"name": "f"}}]}]})
        ),
        "messages[1].tool_calls[0].id is required"
    );
}

#[test]
fn an_invalid_request_names_where() {
    assert!(
        refused(json!({"messages": [{"role": 3}]}))
            .starts_with("invalid Chat Completions request at `messages[0].role`"),
    );
    assert_eq!(
        refused(json!({"messages": []})),
        "messages is required and must be a non-empty array"
    );
    assert_eq!(
        refused(json!({"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": ""}]})),
        "messages must hold at least one user or assistant message with content (Gemini needs a conversation, not only \
         instructions)"
    );
    assert_eq!(
        refused(json!({"messages": [{"role": "user", "content": 3}]})),
        "messages[0].content must be a string or an array of content parts"
    );
    assert!(request_to_gemini(b"{").is_err());
}

#[test]
fn empty_messages_are_skipped_and_refusals_kept_as_text() {
    let out = gemini(json!({"messages": [
        user("x"),
        {"role": "assistant", "content": [{"type": "refusal", "refusal": "I can't."}]},
        {"role": "assistant", "content": null},
        {"role": "assistant", "content": "", "refusal": "No."},
        user("y"),
    ]}));
    assert_eq!(
        out["contents"],
        json!([
            {"role": "user", "parts": [{"text": "x"}]},
            {"role": "model", "parts": [{"text": "I can't."}]},
            {"role": "model", "parts": [{"text": "No."}]},
            {"role": "user", "parts": [{"text": "y"}]},
        ])
    );
}
