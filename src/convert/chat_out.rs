//! OpenAI Chat Completions output, as the converters write it: `chat.completion.chunk` SSE, the
//! `chat.completion` JSON, the `usage` object and the error body.
//!
//! - Every chunk choice and every completion choice carries `"logprobs":null`, as OpenAI's do.
//! - A delta names only what it carries (`role`, `content`, `reasoning_content`, `refusal`,
//!   `tool_calls`).
//! - `usage`: `prompt_tokens` counts every prompt-side token, `prompt_tokens_details.cached_tokens`
//!   the cache reads; `completion_tokens_details.reasoning_tokens` is given when the upstream
//!   counts reasoning apart.
//! - Errors are `{"error":{"message","type","param","code"}}`, `param` always `null`.

use std::borrow::Cow;

use bytes::{BufMut, Bytes, BytesMut};
use serde::Serialize;

use crate::usage::TokenUsage;

/// The stream's last line.
pub const DONE: &[u8] = b"data: [DONE]\n\n";

/// Writes `data: <json>\n\n` (nothing when `value` cannot be written).
pub fn write_data<T: Serialize>(out: &mut BytesMut, value: &T) {
    let at = out.len();
    out.put_slice(b"data: ");
    match serde_json::to_writer((&mut *out).writer(), value) {
        Ok(()) => out.put_slice(b"\n\n"),
        Err(e) => {
            tracing::error!(error = %e, "could not write a chat stream chunk");
            out.truncate(at);
        }
    }
}

/// Writes a `chat.completion.chunk` with one choice.
pub fn write_chunk(out: &mut BytesMut, id: &str, created: i64, model: &str, delta: Delta<'_>, finish: Option<&str>) {
    write_choice_chunk(out, id, created, model, 0, delta, finish);
}

/// Writes a `chat.completion.chunk` of the choice at `index` (an answer with several choices).
pub fn write_choice_chunk(
    out: &mut BytesMut,
    id: &str,
    created: i64,
    model: &str,
    index: u32,
    delta: Delta<'_>,
    finish: Option<&str>,
) {
    let choices = [ChunkChoice {
        index,
        delta,
        logprobs: None,
        finish_reason: finish,
    }];
    write_data(out, &Chunk::new(id, created, model, &choices, None));
}

/// Writes the usage chunk: `"choices":[]` and the usage.
pub fn write_usage_chunk(out: &mut BytesMut, id: &str, created: i64, model: &str, usage: ChatUsage) {
    write_data(out, &Chunk::new(id, created, model, &[], Some(usage)));
}

/// Writes an error chunk and `data: [DONE]`.
pub fn write_error_end(out: &mut BytesMut, error: &ChatError<'_>) {
    write_data(out, error);
    out.put_slice(DONE);
}

#[derive(Serialize)]
struct Chunk<'a> {
    id: &'a str,
    object: &'static str,
    created: i64,
    model: &'a str,
    choices: &'a [ChunkChoice<'a>],
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<ChatUsage>,
}

impl<'a> Chunk<'a> {
    fn new(
        id: &'a str,
        created: i64,
        model: &'a str,
        choices: &'a [ChunkChoice<'a>],
        usage: Option<ChatUsage>,
    ) -> Self {
        Chunk {
            id,
            object: "chat.completion.chunk",
            created,
            model,
            choices,
            usage,
        }
    }
}

#[derive(Serialize)]
struct ChunkChoice<'a> {
    index: u32,
    delta: Delta<'a>,
    logprobs: Option<()>,
    /// `null` until the last chunk.
    finish_reason: Option<&'a str>,
}

/// A chunk's `delta`.
#[derive(Serialize, Default)]
pub struct Delta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refusal: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<[ToolCallDelta<'a>; 1]>,
}

impl<'a> Delta<'a> {
    /// The first delta: `{"role":"assistant","content":""}`.
    pub fn start() -> Self {
        Delta {
            role: Some("assistant"),
            content: Some(""),
            ..Delta::default()
        }
    }

    /// A delta of one tool call.
    pub fn tool_call(call: ToolCallDelta<'a>) -> Self {
        Delta {
            tool_calls: Some([call]),
            ..Delta::default()
        }
    }
}

/// One piece of a tool call: its first (`id`, `type`, `name`) or a piece of its arguments.
#[derive(Serialize)]
pub struct ToolCallDelta<'a> {
    index: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    kind: Option<&'static str>,
    function: FunctionDelta<'a>,
}

#[derive(Serialize)]
struct FunctionDelta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    arguments: &'a str,
}

impl<'a> ToolCallDelta<'a> {
    /// The call's first piece, at `index` among the answer's tool calls.
    pub fn start(index: usize, id: &'a str, name: &'a str, arguments: &'a str) -> Self {
        ToolCallDelta {
            index,
            id: Some(id),
            kind: Some("function"),
            function: FunctionDelta {
                name: Some(name),
                arguments,
            },
        }
    }

    /// A piece of the arguments of the call at `index`.
    pub fn arguments(index: usize, arguments: &'a str) -> Self {
        ToolCallDelta {
            index,
            id: None,
            kind: None,
            function: FunctionDelta { name: None, arguments },
        }
    }
}

/// The Chat `usage` object.
#[derive(Debug, Serialize)]
pub struct ChatUsage {
    prompt_tokens: u64,
    completion_tokens: u64,
    total_tokens: u64,
    prompt_tokens_details: PromptDetails,
    #[serde(skip_serializing_if = "Option::is_none")]
    completion_tokens_details: Option<CompletionDetails>,
}

#[derive(Debug, Serialize)]
struct PromptDetails {
    cached_tokens: u64,
}

#[derive(Debug, Serialize)]
struct CompletionDetails {
    reasoning_tokens: u64,
}

impl ChatUsage {
    /// The usage of `usage`; with `reasoning`, `completion_tokens_details.reasoning_tokens` too.
    pub fn new(usage: &TokenUsage, reasoning: bool) -> Self {
        let prompt = usage.total_input();
        ChatUsage {
            prompt_tokens: prompt,
            completion_tokens: usage.output,
            total_tokens: prompt.saturating_add(usage.output),
            prompt_tokens_details: PromptDetails {
                cached_tokens: usage.cache_read,
            },
            completion_tokens_details: reasoning.then_some(CompletionDetails {
                reasoning_tokens: usage.reasoning,
            }),
        }
    }
}

/// OpenAI's error body.
#[derive(Debug, Serialize)]
pub struct ChatError<'a> {
    error: ChatErrorBody<'a>,
}

#[derive(Debug, Serialize)]
struct ChatErrorBody<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    param: Option<&'a str>,
    code: Option<&'a str>,
}

impl<'a> ChatError<'a> {
    pub fn new(message: &'a str, kind: &'a str, code: Option<&'a str>) -> Self {
        ChatError {
            error: ChatErrorBody {
                message,
                kind,
                param: None,
                code,
            },
        }
    }
}

impl ChatError<'_> {
    /// The error as the body of an answer.
    pub fn to_body(&self) -> Bytes {
        match serde_json::to_vec(self) {
            Ok(json) => Bytes::from(json),
            Err(e) => {
                tracing::error!(error = %e, "could not write an error body");
                Bytes::from_static(
                    br#"{"error":{"message":"Upstream error","type":"server_error","param":null,"code":null}}"#,
                )
            }
        }
    }
}

/// The upstream's error message, or, when it said nothing, one naming the HTTP `status` it
/// answered.
pub fn upstream_message(message: Option<Cow<'_, str>>, status: u16) -> Cow<'_, str> {
    match message {
        Some(m) if !m.trim().is_empty() => m,
        _ => {
            let reason = http::StatusCode::from_u16(status)
                .ok()
                .and_then(|s| s.canonical_reason());
            Cow::Owned(match reason {
                Some(reason) => format!("The upstream answered HTTP {status} {reason}"),
                None => format!("The upstream answered HTTP {status}"),
            })
        }
    }
}

/// Seconds since the Unix epoch, for `created`.
pub fn unix_now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// A `chat.completion`.
#[derive(Serialize)]
pub struct Completion<'a> {
    id: &'a str,
    object: &'static str,
    created: i64,
    model: &'a str,
    choices: Vec<CompletionChoice<'a>>,
    usage: ChatUsage,
}

/// One choice of a `chat.completion`.
#[derive(Serialize)]
pub struct CompletionChoice<'a> {
    index: u32,
    message: Message<'a>,
    logprobs: Option<()>,
    finish_reason: &'a str,
}

impl<'a> CompletionChoice<'a> {
    pub fn new(index: u32, message: Message<'a>, finish_reason: &'a str) -> Self {
        CompletionChoice {
            index,
            message,
            logprobs: None,
            finish_reason,
        }
    }
}

impl<'a> Completion<'a> {
    /// A completion with one choice.
    pub fn new(
        id: &'a str,
        created: i64,
        model: &'a str,
        message: Message<'a>,
        finish_reason: &'a str,
        usage: ChatUsage,
    ) -> Self {
        Self::with_choices(
            id,
            created,
            model,
            vec![CompletionChoice::new(0, message, finish_reason)],
            usage,
        )
    }

    /// A completion with several choices (`n` above 1).
    pub fn with_choices(
        id: &'a str,
        created: i64,
        model: &'a str,
        choices: Vec<CompletionChoice<'a>>,
        usage: ChatUsage,
    ) -> Self {
        Completion {
            id,
            object: "chat.completion",
            created,
            model,
            choices,
            usage,
        }
    }
}

/// The assistant's message of a `chat.completion`.
#[derive(Serialize)]
pub struct Message<'a> {
    pub role: &'static str,
    /// `null` when the answer has no text.
    pub content: Option<Cow<'a, str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<Cow<'a, str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refusal: Option<&'a str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall<'a>>,
}

/// A function call of a `chat.completion`'s message.
#[derive(Serialize)]
pub struct ToolCall<'a> {
    id: Cow<'a, str>,
    #[serde(rename = "type")]
    kind: &'static str,
    function: Function<'a>,
}

#[derive(Serialize)]
struct Function<'a> {
    name: Cow<'a, str>,
    arguments: &'a str,
}

impl<'a> ToolCall<'a> {
    pub fn function(id: Cow<'a, str>, name: Cow<'a, str>, arguments: &'a str) -> Self {
        ToolCall {
            id,
            kind: "function",
            function: Function { name, arguments },
        }
    }
}
