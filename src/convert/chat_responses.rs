//! OpenAI Chat Completions served by a Responses upstream: ChatGPT's Codex backend, which the
//! `openai-oauth` accounts reach. That backend only answers streams (`"stream":true`) and keeps
//! nothing (`"store":false`), so every request is sent streamed and unstored, and a client that
//! did not ask to stream gets the collected stream as one `chat.completion`.
//!
//! - [`request_to_responses`]: the Chat request as a Responses request.
//! - [`ResponsesSseToChat`]: the Responses stream as Chat chunks ([`Mode::Stream`]) or as one
//!   `chat.completion` ([`Mode::Collect`]).
//! - [`response_from_responses`]: a Responses JSON object as a `chat.completion`.
//!
//! # What a Chat request becomes
//!
//! Messages become input items in their order: `system` and `developer` messages developer
//! messages (in place: the client's instructions are never moved into, or merged with,
//! `instructions`), user text, images and files `input_text` / `input_image` / `input_file`,
//! assistant text `output_text` (a refusal `refusal`), assistant `tool_calls` `function_call`
//! items, and `tool` messages `function_call_output` items. Function tools, `tool_choice`,
//! `parallel_tool_calls`, `reasoning_effort` (as `reasoning.effort`), `response_format` and
//! `verbosity` (as `text`), and `prompt_cache_key` carry over.
//!
//! Left out, because the Codex backend answers 400 "Unsupported parameter" to them:
//! `max_completion_tokens` / `max_tokens` (there `max_output_tokens`), `temperature` and `top_p`.
//! The answer is then not capped at the client's limit, and sampled at the model's settings.
//! Also left out: `user` (not known to be accepted there), `seed`, the penalties, `logit_bias`,
//! `metadata`, `store`, `service_tier` and any field this module does not know.
//!
//! Refused with a [`ConvertError`] naming the field: `n` > 1 (one choice only), `stop` (the
//! Responses API cannot stop on a sequence, and silently running past one would change the
//! answer), `logprobs`, audio (`audio`, `modalities` with audio, `input_audio` parts), the
//! deprecated `functions` / `function_call` and `function` messages, tools and tool choices other
//! than functions, and content parts or roles it does not know.

use std::borrow::Cow;

use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::ConvertError;
use super::chat_in::ChatFacts;
use super::chat_in::{
    self, ChatImage, ChatMessage, ChatPart, ChatTool, ContentError, ContentPart, Named, ResponseFormat, Text,
};
use super::chat_out::{
    ChatError, ChatUsage, Completion, DONE, Delta, Message, ToolCall, ToolCallDelta, unix_now, write_chunk,
    write_error_end, write_usage_chunk,
};
use crate::usage::TokenUsage;
use crate::usage::openai::{
    LONG_TAIL, LineSink, LineStart, MAX_LINE, ResponsesUsage, SseLines, parse_responses_json_usage,
    responses_line_start, usage_at_end,
};

// ---------------------------------------------------------------------------------------------
// Request
// ---------------------------------------------------------------------------------------------

/// The Responses request sent.
#[derive(Serialize)]
struct ResponsesRequest<'a> {
    model: &'a str,
    input: Vec<InputItem<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tools: Vec<ResponsesTool<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_choice: Option<ToolChoice<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parallel_tool_calls: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reasoning: Option<Reasoning<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<TextConfig<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    prompt_cache_key: Option<Cow<'a, str>>,
    store: bool,
    stream: bool,
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum InputItem<'a> {
    Message {
        role: &'static str,
        content: Vec<InputContent<'a>>,
    },
    FunctionCall {
        call_id: Cow<'a, str>,
        name: Cow<'a, str>,
        arguments: Cow<'a, str>,
    },
    FunctionCallOutput {
        call_id: Cow<'a, str>,
        output: Cow<'a, str>,
    },
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum InputContent<'a> {
    InputText {
        text: Cow<'a, str>,
    },
    InputImage {
        image_url: Cow<'a, str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        detail: Option<Cow<'a, str>>,
    },
    InputFile {
        #[serde(skip_serializing_if = "Option::is_none")]
        file_id: Option<Cow<'a, str>>,
        #[serde(skip_serializing_if = "Option::is_none")]
        file_data: Option<Cow<'a, str>>,
        #[serde(skip_serializing_if = "Option::is_none")]
        filename: Option<Cow<'a, str>>,
    },
    OutputText {
        text: Cow<'a, str>,
    },
    Refusal {
        refusal: Cow<'a, str>,
    },
}

#[derive(Serialize)]
struct ResponsesTool<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    name: Cow<'a, str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<Cow<'a, str>>,
    parameters: &'a RawValue,
    /// Always written: Chat's default is `false`, the Responses API's `true`.
    strict: bool,
}

#[derive(Serialize)]
#[serde(untagged)]
enum ToolChoice<'a> {
    Mode(Cow<'a, str>),
    Function {
        #[serde(rename = "type")]
        kind: &'static str,
        name: Cow<'a, str>,
    },
}

#[derive(Serialize)]
struct Reasoning<'a> {
    effort: Cow<'a, str>,
}

#[derive(Serialize)]
struct TextConfig<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    format: Option<TextFormat<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    verbosity: Option<Cow<'a, str>>,
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum TextFormat<'a> {
    JsonSchema {
        name: Cow<'a, str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        description: Option<Cow<'a, str>>,
        schema: &'a RawValue,
        strict: bool,
    },
    JsonObject,
}

/// The parameters of a function declared without them: an object with no properties.
const NO_PARAMETERS: &str = r#"{"type":"object","properties":{}}"#;

fn refuse(what: impl std::fmt::Display) -> ConvertError {
    ConvertError(format!(
        "{what} cannot be converted for this account's upstream (OpenAI Responses)"
    ))
}

/// Chat request → Responses request with `model` = `model`, always `"stream":true` and
/// `"store":false`. The facts returned say how the client wants its answer.
pub fn request_to_responses(body: &[u8], model: &str) -> Result<(Bytes, ChatFacts), ConvertError> {
    let (chat, facts) = chat_in::read(body)?;
    if chat.n.is_some_and(|n| n > 1) {
        return Err(refuse("`n` above 1 (more than one choice)"));
    }
    if chat.stop.is_some_and(|s| !matches!(s.get(), "[]" | "\"\"")) {
        return Err(refuse("`stop` (stop sequences)"));
    }
    if chat.logprobs == Some(true) {
        return Err(refuse("`logprobs`"));
    }
    if chat.audio.is_some() || chat.modalities.iter().flatten().any(|m| m == "audio") {
        return Err(refuse("audio output"));
    }
    if chat.functions.is_some() || chat.function_call.is_some() {
        return Err(refuse(
            "`functions` / `function_call` (the deprecated functions API; use `tools`)",
        ));
    }
    let Some(messages) = chat.messages else {
        return Err(chat_in::missing(".", "messages"));
    };
    let mut input = Vec::with_capacity(messages.len());
    for (i, message) in messages.into_iter().enumerate() {
        message_items(i, message, &mut input)?;
    }
    let tools = chat
        .tools
        .into_iter()
        .flatten()
        .enumerate()
        .map(|(i, tool)| function_tool(i, tool))
        .collect::<Result<Vec<_>, _>>()?;
    let tool_choice = match chat.tool_choice {
        Some(raw) => tool_choice(raw)?,
        None => None,
    };
    let format = chat.response_format.map(text_format).transpose()?.flatten();
    let text = (format.is_some() || chat.verbosity.is_some()).then_some(TextConfig {
        format,
        verbosity: chat.verbosity,
    });
    let request = ResponsesRequest {
        model,
        input,
        tools,
        tool_choice,
        parallel_tool_calls: chat.parallel_tool_calls,
        reasoning: chat.reasoning_effort.map(|effort| Reasoning { effort }),
        text,
        prompt_cache_key: chat.prompt_cache_key,
        store: false,
        stream: true,
    };
    let body = serde_json::to_vec(&request).map_err(|e| ConvertError(format!("request not writable: {e}")))?;
    Ok((Bytes::from(body), facts))
}

/// The input items of one message.
fn message_items<'a>(i: usize, m: ChatMessage<'a>, out: &mut Vec<InputItem<'a>>) -> Result<(), ConvertError> {
    let at = |what: &str| format!("messages[{i}]: {what}");
    match m.role.as_ref() {
        "system" | "developer" => {
            let content = parts(i, m.content)?
                .into_iter()
                .map(|p| match p {
                    ContentPart::Text { text, .. } => Ok(InputContent::InputText { text }),
                    ContentPart::Other(part) => {
                        Err(refuse(at(&format!("a `{}` part in a {} message", part.kind, m.role))))
                    }
                })
                .collect::<Result<_, _>>()?;
            out.push(InputItem::Message {
                role: "developer",
                content,
            });
        }
        "user" => {
            let content = parts(i, m.content)?
                .into_iter()
                .map(|p| match p {
                    ContentPart::Text { text, .. } => Ok(InputContent::InputText { text }),
                    ContentPart::Other(part) => user_part(part, at),
                })
                .collect::<Result<_, _>>()?;
            out.push(InputItem::Message { role: "user", content });
        }
        "assistant" => {
            if m.function_call.is_some() {
                return Err(refuse(at("`function_call` (the deprecated functions API)")));
            }
            let mut content = Vec::new();
            for part in parts(i, m.content)? {
                match part {
                    ContentPart::Text { text, .. } if text.is_empty() => {}
                    ContentPart::Text { text, .. } => content.push(InputContent::OutputText { text }),
                    ContentPart::Other(ChatPart {
                        kind,
                        refusal: Some(refusal),
                        ..
                    }) if kind == "refusal" => content.push(InputContent::Refusal { refusal }),
                    ContentPart::Other(part) => {
                        return Err(refuse(at(&format!("a `{}` part in an assistant message", part.kind))));
                    }
                }
            }
            if let Some(refusal) = m.refusal {
                content.push(InputContent::Refusal { refusal });
            }
            if !content.is_empty() {
                out.push(InputItem::Message {
                    role: "assistant",
                    content,
                });
            }
            for (k, call) in m.tool_calls.into_iter().flatten().enumerate() {
                let call_at = || format!("messages[{i}].tool_calls[{k}]");
                let Some(call_id) = call.id else {
                    return Err(chat_in::missing(&call_at(), "id"));
                };
                let (Some("function") | None) = call.kind.as_deref() else {
                    return Err(refuse(at(&format!(
                        "a tool call of type `{}`",
                        call.kind.as_deref().unwrap_or_default()
                    ))));
                };
                let Some(function) = call.function else {
                    return Err(refuse(at("a tool call without its `function`")));
                };
                let Some(name) = function.name else {
                    return Err(chat_in::missing(&format!("{}.function", call_at()), "name"));
                };
                let arguments = match function.arguments {
                    None => Cow::Borrowed(""),
                    Some(raw) if raw.get() == "null" => Cow::Borrowed(""),
                    Some(raw) => {
                        let Text(arguments) = chat_in::read_member(raw, &format!("{}.function.arguments", call_at()))?;
                        arguments
                    }
                };
                out.push(InputItem::FunctionCall {
                    call_id,
                    name,
                    arguments,
                });
            }
        }
        "tool" => {
            let Some(call_id) = m.tool_call_id else {
                return Err(refuse(at("a tool message without `tool_call_id`")));
            };
            let mut output = Cow::Borrowed("");
            for part in parts(i, m.content)? {
                match part {
                    ContentPart::Text { text, .. } if output.is_empty() => output = text,
                    ContentPart::Text { text, .. } => output.to_mut().push_str(&text),
                    ContentPart::Other(part) => {
                        return Err(refuse(at(&format!("a `{}` part in a tool message", part.kind))));
                    }
                }
            }
            out.push(InputItem::FunctionCallOutput { call_id, output });
        }
        "function" => return Err(refuse(at("a `function` message (the deprecated functions API)"))),
        role => return Err(refuse(at(&format!("the role `{role}`")))),
    }
    Ok(())
}

/// The parts of message `i`'s `content`: a string is one text part (kept when empty), `null` or
/// absent none.
fn parts(i: usize, content: Option<&RawValue>) -> Result<Vec<ContentPart<'_>>, ConvertError> {
    match chat_in::content(i, content) {
        Ok(content) => Ok(content.into_parts()),
        Err(ContentError::NotTextOrParts(e) | ContentError::Invalid(e)) => {
            Err(ConvertError(format!("invalid message content: {}", e.error())))
        }
        Err(ContentError::NoText(_)) => Err(ConvertError("a text part without `text`".to_owned())),
    }
}

/// A user part other than text; `at` words a refusal for the message.
fn user_part<'a>(part: ChatPart<'a>, at: impl Fn(&str) -> String) -> Result<InputContent<'a>, ConvertError> {
    match part.kind.as_ref() {
        "image_url" => {
            let Some(raw) = part.image_url else {
                return Err(refuse(at("an image part without `image_url`")));
            };
            let image: ChatImage<'_> =
                serde_json::from_str(raw.get()).map_err(|e| ConvertError(format!("invalid message content: {e}")))?;
            let Some(image_url) = image.url else {
                return Err(ConvertError("invalid message content: missing field `url`".to_owned()));
            };
            Ok(InputContent::InputImage {
                image_url,
                detail: image.detail,
            })
        }
        "file" => {
            let Some(file) = part.file else {
                return Err(refuse(at("a file part without `file`")));
            };
            Ok(InputContent::InputFile {
                file_id: file.file_id,
                file_data: file.file_data,
                filename: file.filename,
            })
        }
        "input_audio" => Err(refuse(at("an `input_audio` part (audio input)"))),
        kind => Err(refuse(at(&format!("a `{kind}` part")))),
    }
}

fn function_tool(i: usize, tool: ChatTool<'_>) -> Result<ResponsesTool<'_>, ConvertError> {
    let Some(kind) = tool.kind else {
        return Err(chat_in::missing(&format!("tools[{i}]"), "type"));
    };
    if kind != "function" {
        return Err(refuse(format!("tools[{i}]: a tool of type `{kind}`")));
    }
    let Some(f) = tool.function else {
        return Err(refuse(format!("tools[{i}]: a function tool without `function`")));
    };
    let Some(name) = f.name else {
        return Err(chat_in::missing(&format!("tools[{i}].function"), "name"));
    };
    let parameters = match f.parameters {
        Some(p) if p.get() != "null" => p,
        _ => no_parameters(),
    };
    Ok(ResponsesTool {
        kind: "function",
        name,
        description: f.description,
        parameters,
        strict: f.strict.unwrap_or(false),
    })
}

fn no_parameters() -> &'static RawValue {
    static EMPTY: std::sync::OnceLock<Box<RawValue>> = std::sync::OnceLock::new();
    // Valid JSON: `from_string` cannot fail on it.
    EMPTY.get_or_init(|| RawValue::from_string(NO_PARAMETERS.to_owned()).unwrap_or_default())
}

fn tool_choice(raw: &RawValue) -> Result<Option<ToolChoice<'_>>, ConvertError> {
    let invalid = |what: &dyn std::fmt::Display| ConvertError(format!("invalid `tool_choice`: {what}"));
    let choice = match chat_in::tool_choice(raw, "tool_choice").map_err(|e| invalid(e.error()))? {
        None => return Ok(None),
        Some(chat_in::ToolChoice::Mode(mode)) => return Ok(Some(ToolChoice::Mode(mode))),
        Some(chat_in::ToolChoice::Object(choice)) => choice,
    };
    let Some(kind) = choice.kind else {
        return Err(invalid(&"missing field `type`"));
    };
    match (kind.as_ref(), choice.function) {
        (_, Some(Named { name: None })) => Err(invalid(&"missing field `name`")),
        ("function", Some(Named { name: Some(name) })) => Ok(Some(ToolChoice::Function { kind: "function", name })),
        (kind, _) => Err(refuse(format!("a `tool_choice` of type `{kind}`"))),
    }
}

fn text_format(format: ResponseFormat<'_>) -> Result<Option<TextFormat<'_>>, ConvertError> {
    match format.kind.as_ref() {
        "text" => Ok(None),
        "json_object" => Ok(Some(TextFormat::JsonObject)),
        "json_schema" => {
            let Some(s) = format.json_schema else {
                return Err(ConvertError(
                    "a `json_schema` response format without `json_schema`".to_owned(),
                ));
            };
            let Some(name) = s.name else {
                return Err(chat_in::missing("response_format.json_schema", "name"));
            };
            Ok(Some(TextFormat::JsonSchema {
                name,
                description: s.description,
                schema: s.schema.unwrap_or_else(|| no_parameters()),
                strict: s.strict.unwrap_or(false),
            }))
        }
        kind => Err(refuse(format!("a `response_format` of type `{kind}`"))),
    }
}

// ---------------------------------------------------------------------------------------------
// Answer
// ---------------------------------------------------------------------------------------------

/// How the Chat answer is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `chat.completion.chunk` SSE, as the events arrive.
    Stream,
    /// Nothing until [`ResponsesSseToChat::finish`], then one `chat.completion` JSON (or an
    /// OpenAI error JSON, see [`ResponsesSseToChat::error_status`]).
    Collect,
}

/// The Responses events the transducer reads; every other line is skipped by its first bytes.
fn wanted_event(name: &[u8]) -> bool {
    matches!(
        name,
        b"response.created"
            | b"response.output_item.added"
            | b"response.output_text.delta"
            | b"response.refusal.delta"
            | b"response.function_call_arguments.delta"
            | b"response.function_call_arguments.done"
            | b"response.completed"
            | b"response.incomplete"
            | b"response.failed"
            | b"error"
    )
}

/// Responses SSE → Chat.
///
/// [`Mode::Stream`] writes a first chunk with `delta:{role:"assistant",content:""}` at
/// `response.created` (id `chatcmpl-<response id>`, `created` the response's `created_at`), then
/// text deltas as `delta.content`, refusal deltas as `delta.refusal`, each function call as
/// `delta.tool_calls` (its index counting the function calls from 0, its id, name and empty
/// arguments first, then its argument deltas), reasoning skipped; at `response.completed` or
/// `response.incomplete` a finish chunk (`stop`, `tool_calls` when a function was called,
/// `length` or `content_filter` for an incomplete answer), the usage chunk when the client asked
/// for it, and `data: [DONE]`. `response.failed`, an `error` event, or a stream that ends before
/// its final event becomes `data: {"error":{"message","type","code"}}` and `data: [DONE]`.
///
/// Usage is read from the final event (`response.completed`, `incomplete` or `failed`) as
/// [`crate::usage::openai::ResponsesSseUsage`] reads it, from the end of an over-long one
/// included.
///
/// Chunks may split the stream anywhere; what the events of one pushed chunk produce is returned
/// as one `Bytes`.
#[derive(Debug)]
pub struct ResponsesSseToChat {
    lines: SseLines,
    state: Transducer,
}

#[derive(Debug)]
struct Transducer {
    mode: Mode,
    include_usage: bool,
    model: String,
    created: i64,
    /// `created` was set by the caller: `created_at` does not override it.
    created_pinned: bool,
    id: Option<String>,
    /// What the `event:` line of the current record named.
    event: Option<bool>,
    started: bool,
    ended: bool,
    /// Collect mode: the answer was written.
    collected: bool,
    /// The usage of the final event.
    usage: TokenUsage,
    calls: Vec<Call>,
    content: String,
    refusal: String,
    finish: Option<&'static str>,
    failure: Option<Failure>,
    out: BytesMut,
}

#[derive(Debug)]
struct Call {
    item_id: Option<String>,
    output_index: Option<u64>,
    call_id: String,
    name: String,
    /// Collect mode: the arguments so far.
    arguments: String,
    /// Some arguments were given to the client.
    arguments_sent: bool,
}

/// A failed answer: the OpenAI error it becomes, and the HTTP status a collected answer gets.
#[derive(Debug, Clone)]
struct Failure {
    message: String,
    kind: String,
    code: Option<String>,
    status: u16,
    /// The upstream said so (rather than the stream being cut or unreadable).
    upstream: bool,
}

impl ResponsesSseToChat {
    /// `client_model`: the model name the chunks carry (the client's). `include_usage`: the
    /// client asked for the usage chunk (a collected answer always has its usage).
    pub fn new(client_model: &str, include_usage: bool, mode: Mode) -> Self {
        Self {
            lines: SseLines::new(MAX_LINE, LONG_TAIL),
            state: Transducer {
                mode,
                include_usage,
                model: client_model.to_owned(),
                created: unix_now(),
                created_pinned: false,
                id: None,
                event: None,
                started: false,
                ended: false,
                collected: false,
                usage: TokenUsage::default(),
                calls: Vec::new(),
                content: String::new(),
                refusal: String::new(),
                finish: None,
                failure: None,
                out: BytesMut::new(),
            },
        }
    }

    /// Pins the `created` of every chunk (unix seconds) instead of the response's `created_at`.
    /// Whether the answer is collected into one `chat.completion` JSON.
    pub fn collecting(&self) -> bool {
        matches!(self.state.mode, Mode::Collect)
    }

    pub fn set_created(&mut self, created: i64) {
        self.state.created = created;
        self.state.created_pinned = true;
    }

    /// Feeds upstream bytes; returns the Chat bytes for the client now (possibly empty; always
    /// empty in [`Mode::Collect`]).
    pub fn push(&mut self, chunk: &[u8]) -> Bytes {
        if self.state.ended {
            return Bytes::new();
        }
        self.lines.feed(chunk, &mut self.state);
        self.state.out.split().freeze()
    }

    /// The upstream ended: the last bytes for the client. In [`Mode::Stream`], an error chunk and
    /// `[DONE]` when the stream was cut before its final event; in [`Mode::Collect`], the whole
    /// answer.
    pub fn finish(&mut self) -> Bytes {
        let s = &mut self.state;
        if !s.ended {
            s.fail(Failure {
                message: "The upstream stream ended before the response completed".to_owned(),
                kind: "server_error".to_owned(),
                code: None,
                status: 502,
                upstream: false,
            });
        }
        if s.mode == Mode::Collect && !s.collected {
            let body = match &s.failure {
                Some(failure) => error_json(failure),
                None => s.completion().to_json(),
            };
            s.out.put_slice(&body);
            s.collected = true;
        }
        s.out.split().freeze()
    }

    /// The upstream's usage (all zero before the final event).
    pub fn usage(&self) -> TokenUsage {
        self.state.usage
    }

    /// The answer is an error: the upstream failed, sent an error event, or was cut.
    pub fn failed(&self) -> bool {
        self.state.failure.is_some()
    }

    /// In [`Mode::Collect`], the HTTP status for the error JSON [`Self::finish`] writes: 429 for a
    /// rate or usage limit, 400 for a request the upstream refused, 503 when it is overloaded,
    /// 502 otherwise. `None` while the answer is not an error.
    pub fn error_status(&self) -> Option<u16> {
        self.state.failure.as_ref().map(|f| f.status)
    }

    /// The upstream's failure (`response.failed` or an `error` event): its code, else type, and
    /// message, for classifying the account. `None` for a stream that was only cut.
    pub fn upstream_error(&self) -> Option<(String, String)> {
        let f = self.state.failure.as_ref().filter(|f| f.upstream)?;
        Some((f.code.clone().unwrap_or_else(|| f.kind.clone()), f.message.clone()))
    }
}

impl LineSink for Transducer {
    fn line_start(&self, start: &[u8]) -> LineStart {
        responses_line_start(start, self.event, wanted_event)
    }

    fn line(&mut self, line: &[u8]) {
        if self.ended {
            return;
        }
        if line.is_empty() {
            self.event = None;
        } else if let Some(name) = line.strip_prefix(b"event:") {
            self.event = Some(wanted_event(name.trim_ascii()));
        } else if let Some(data) = line.strip_prefix(b"data:") {
            self.data(data);
        }
    }

    fn long_line(&mut self, head: &[u8], tail: &[u8]) {
        if self.ended || !head.starts_with(b"data:") {
            return;
        }
        // Over MAX_LINE: in practice only the events that echo the response can be that long.
        // A final one still ends the answer (its usage read from its end; an incomplete one's
        // reason and a failed one's error are lost); the first one is not needed.
        let names = |name: &[u8]| memchr::memmem::find(head, name).is_some();
        let (completed, incomplete, failed) = (
            names(br#""response.completed""#),
            names(br#""response.incomplete""#),
            names(br#""response.failed""#),
        );
        if (completed || incomplete || failed)
            && let Some(usage) = usage_at_end(tail)
        {
            self.usage = usage;
        }
        if completed {
            self.complete(None, false);
        } else if incomplete {
            self.complete(None, true);
        } else if failed {
            self.fail(ErrorInfo::default().into_failure());
        } else if !names(br#""response.created""#) {
            self.fail(Failure {
                message: "The upstream sent a stream event too large to convert".to_owned(),
                kind: "server_error".to_owned(),
                code: None,
                status: 502,
                upstream: false,
            });
        }
    }
}

/// The fields of a Responses stream event the transducer reads.
#[derive(Deserialize)]
struct StreamEvent<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    delta: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    item_id: Option<Cow<'a, str>>,
    #[serde(default)]
    output_index: Option<u64>,
    #[serde(borrow, default)]
    item: Option<StreamItem<'a>>,
    #[serde(borrow, default)]
    arguments: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    response: Option<ResponseInfo<'a>>,
    #[serde(borrow, default)]
    error: Option<ErrorInfo<'a>>,
    #[serde(default)]
    code: Option<serde_json::Value>,
    #[serde(borrow, default)]
    message: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct StreamItem<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow, default)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    call_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    arguments: Option<Cow<'a, str>>,
}

#[derive(Deserialize, Default)]
struct ResponseInfo<'a> {
    #[serde(borrow, default)]
    id: Option<Cow<'a, str>>,
    #[serde(default)]
    usage: Option<ResponsesUsage>,
    #[serde(default)]
    created_at: Option<f64>,
    #[serde(borrow, default)]
    incomplete_details: Option<IncompleteDetails<'a>>,
    #[serde(borrow, default)]
    error: Option<ErrorInfo<'a>>,
}

#[derive(Deserialize)]
struct IncompleteDetails<'a> {
    #[serde(borrow, default)]
    reason: Option<Cow<'a, str>>,
}

#[derive(Deserialize, Default)]
struct ErrorInfo<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<Cow<'a, str>>,
    #[serde(default)]
    code: Option<serde_json::Value>,
    #[serde(borrow, default)]
    message: Option<Cow<'a, str>>,
}

impl ErrorInfo<'_> {
    fn into_failure(self) -> Failure {
        let code = match self.code {
            Some(serde_json::Value::String(s)) if !s.is_empty() => Some(s),
            Some(serde_json::Value::Number(n)) => Some(n.to_string()),
            _ => None,
        };
        let kind = self
            .kind
            .filter(|k| !k.is_empty())
            .map_or_else(|| "server_error".to_owned(), Cow::into_owned);
        let status = failure_status(code.as_deref(), &kind);
        Failure {
            message: self
                .message
                .map_or_else(|| "The upstream response failed".to_owned(), Cow::into_owned),
            kind,
            code,
            status,
            upstream: true,
        }
    }
}

/// The HTTP status of a failure, by its code (else type).
fn failure_status(code: Option<&str>, kind: &str) -> u16 {
    match code.unwrap_or(kind) {
        "rate_limit_exceeded" | "usage_limit_reached" | "insufficient_quota" | "rate_limit_error" => 429,
        "context_length_exceeded" | "invalid_prompt" | "invalid_request_error" | "invalid_request" => 400,
        "server_is_overloaded" | "slow_down" | "overloaded" => 503,
        _ => 502,
    }
}

impl Transducer {
    fn data(&mut self, data: &[u8]) {
        let event: StreamEvent<'_> = match serde_json::from_slice(data) {
            Ok(event) => event,
            Err(e) => {
                tracing::debug!(error = %e, "unreadable event in a Responses stream");
                return;
            }
        };
        let Some(kind) = event.kind.as_deref() else {
            return;
        };
        match kind {
            "response.created" => {
                let response = event.response.unwrap_or_default();
                self.start_with(response.id.as_deref(), response.created_at);
            }
            "response.output_item.added" => {
                if let Some(item) = event.item
                    && item.kind == "function_call"
                {
                    self.call_added(event.output_index, item);
                }
            }
            "response.output_text.delta" => {
                if let Some(delta) = event.delta.filter(|d| !d.is_empty()) {
                    self.text(&delta, false);
                }
            }
            "response.refusal.delta" => {
                if let Some(delta) = event.delta.filter(|d| !d.is_empty()) {
                    self.text(&delta, true);
                }
            }
            "response.function_call_arguments.delta" => {
                if let Some(delta) = event.delta.filter(|d| !d.is_empty()) {
                    self.arguments(event.item_id.as_deref(), event.output_index, &delta, false);
                }
            }
            "response.function_call_arguments.done" => {
                if let Some(arguments) = event.arguments.filter(|a| !a.is_empty()) {
                    self.arguments(event.item_id.as_deref(), event.output_index, &arguments, true);
                }
            }
            "response.completed" | "response.incomplete" | "response.failed" => {
                let response = event.response.unwrap_or_default();
                if let Some(usage) = &response.usage {
                    self.usage = usage.to_usage();
                }
                match kind {
                    "response.completed" => self.complete(None, false),
                    "response.incomplete" => {
                        let reason = response.incomplete_details.and_then(|d| d.reason);
                        self.complete(reason.as_deref(), true);
                    }
                    _ => self.fail(response.error.unwrap_or_default().into_failure()),
                }
            }
            "error" => {
                let error = event.error.unwrap_or(ErrorInfo {
                    kind: None,
                    code: event.code,
                    message: event.message,
                });
                self.fail(error.into_failure());
            }
            _ => {}
        }
    }

    /// The response began (or, without `response.created`, the first content arrives).
    fn start_with(&mut self, id: Option<&str>, created_at: Option<f64>) {
        if self.started {
            return;
        }
        self.started = true;
        self.id = Some(match id {
            Some(id) => format!("chatcmpl-{id}"),
            None => format!("chatcmpl-{}", uuid::Uuid::new_v4().simple()),
        });
        if !self.created_pinned
            && let Some(at) = created_at
        {
            self.created = at as i64;
        }
        if self.mode == Mode::Stream {
            self.chunk(Delta::start(), None);
        }
    }

    fn text(&mut self, delta: &str, refusal: bool) {
        self.start_with(None, None);
        match self.mode {
            Mode::Stream => {
                let delta = if refusal {
                    Delta {
                        refusal: Some(delta),
                        ..Delta::default()
                    }
                } else {
                    Delta {
                        content: Some(delta),
                        ..Delta::default()
                    }
                };
                self.chunk(delta, None);
            }
            Mode::Collect if refusal => self.refusal.push_str(delta),
            Mode::Collect => self.content.push_str(delta),
        }
    }

    fn call_added(&mut self, output_index: Option<u64>, item: StreamItem<'_>) {
        self.start_with(None, None);
        let index = self.calls.len();
        let arguments = item.arguments.unwrap_or_default();
        self.calls.push(Call {
            item_id: item.id.map(Cow::into_owned),
            output_index,
            call_id: item.call_id.map(Cow::into_owned).unwrap_or_default(),
            name: item.name.map(Cow::into_owned).unwrap_or_default(),
            arguments: String::new(),
            arguments_sent: !arguments.is_empty(),
        });
        match self.mode {
            Mode::Stream => {
                let call = &self.calls[index];
                let delta = ToolCallDelta::start(index, &call.call_id, &call.name, &arguments);
                write_chunk(
                    &mut self.out,
                    self.id.as_deref().unwrap_or_default(),
                    self.created,
                    &self.model,
                    Delta::tool_call(delta),
                    None,
                );
            }
            Mode::Collect => self.calls[index].arguments = arguments.into_owned(),
        }
    }

    /// Arguments for a call: a delta, or (`done`) the whole of them, given only when no delta
    /// was.
    fn arguments(&mut self, item_id: Option<&str>, output_index: Option<u64>, arguments: &str, done: bool) {
        let found = self.calls.iter().position(|c| match (item_id, c.item_id.as_deref()) {
            (Some(id), Some(own)) => id == own,
            _ => output_index.is_some() && output_index == c.output_index,
        });
        let Some(index) = found else {
            tracing::debug!("function call arguments for an unknown item in a Responses stream");
            return;
        };
        let call = &mut self.calls[index];
        if done && call.arguments_sent {
            return;
        }
        call.arguments_sent = true;
        match self.mode {
            Mode::Stream => {
                write_chunk(
                    &mut self.out,
                    self.id.as_deref().unwrap_or_default(),
                    self.created,
                    &self.model,
                    Delta::tool_call(ToolCallDelta::arguments(index, arguments)),
                    None,
                );
            }
            Mode::Collect => call.arguments.push_str(arguments),
        }
    }

    /// The final event: `incomplete` with its reason.
    fn complete(&mut self, reason: Option<&str>, incomplete: bool) {
        self.start_with(None, None);
        let finish = if incomplete {
            match reason {
                Some("content_filter") => "content_filter",
                _ => "length",
            }
        } else if self.calls.is_empty() {
            "stop"
        } else {
            "tool_calls"
        };
        self.finish = Some(finish);
        self.ended = true;
        if self.mode == Mode::Stream {
            self.chunk(Delta::default(), Some(finish));
            if self.include_usage {
                write_usage_chunk(
                    &mut self.out,
                    self.id.as_deref().unwrap_or_default(),
                    self.created,
                    &self.model,
                    ChatUsage::new(&self.usage, true),
                );
            }
            self.out.put_slice(DONE);
        }
    }

    fn fail(&mut self, failure: Failure) {
        if self.mode == Mode::Stream {
            write_error_end(&mut self.out, &failure.chat_error());
        }
        self.failure = Some(failure);
        self.ended = true;
    }

    fn chunk(&mut self, delta: Delta<'_>, finish: Option<&str>) {
        write_chunk(
            &mut self.out,
            self.id.as_deref().unwrap_or_default(),
            self.created,
            &self.model,
            delta,
            finish,
        );
    }

    fn completion(&self) -> Answer<'_> {
        Answer {
            id: self.id.as_deref().unwrap_or_default(),
            model: &self.model,
            created: self.created,
            content: &self.content,
            refusal: &self.refusal,
            calls: self
                .calls
                .iter()
                .map(|c| (c.call_id.as_str(), c.name.as_str(), c.arguments.as_str()))
                .collect(),
            finish: self.finish.unwrap_or("stop"),
            usage: self.usage,
        }
    }
}

impl Failure {
    fn chat_error(&self) -> ChatError<'_> {
        ChatError::new(&self.message, &self.kind, self.code.as_deref())
    }
}

fn error_json(failure: &Failure) -> Vec<u8> {
    serde_json::to_vec(&failure.chat_error()).unwrap_or_default()
}

/// Everything a `chat.completion` says.
struct Answer<'a> {
    id: &'a str,
    model: &'a str,
    created: i64,
    content: &'a str,
    refusal: &'a str,
    /// (id, name, arguments).
    calls: Vec<(&'a str, &'a str, &'a str)>,
    finish: &'a str,
    usage: TokenUsage,
}

impl Answer<'_> {
    fn to_json(&self) -> Vec<u8> {
        let only_other = self.content.is_empty() && (!self.calls.is_empty() || !self.refusal.is_empty());
        let message = Message {
            role: "assistant",
            content: (!only_other).then_some(Cow::Borrowed(self.content)),
            reasoning_content: None,
            refusal: (!self.refusal.is_empty()).then_some(self.refusal),
            tool_calls: self
                .calls
                .iter()
                .map(|&(id, name, arguments)| ToolCall::function(Cow::Borrowed(id), Cow::Borrowed(name), arguments))
                .collect(),
        };
        let completion = Completion::new(
            self.id,
            self.created,
            self.model,
            message,
            self.finish,
            ChatUsage::new(&self.usage, true),
        );
        serde_json::to_vec(&completion).unwrap_or_default()
    }
}

/// A Responses JSON object (a non-streamed answer) → `chat.completion` JSON, with its usage.
/// A body that is not a Responses object, or a response whose status is `failed`, is an error
/// (naming the upstream's message): the caller answers it as the upstream's failure (502).
pub fn response_from_responses(body: &[u8], client_model: &str) -> Result<(Bytes, TokenUsage), ConvertError> {
    #[derive(Deserialize)]
    struct Body<'a> {
        #[serde(borrow, default)]
        id: Option<Cow<'a, str>>,
        #[serde(default)]
        created_at: Option<f64>,
        #[serde(borrow, default)]
        status: Option<Cow<'a, str>>,
        #[serde(borrow, default)]
        incomplete_details: Option<IncompleteDetails<'a>>,
        #[serde(borrow, default)]
        error: Option<ErrorInfo<'a>>,
        #[serde(borrow, default)]
        output: Vec<OutputItem<'a>>,
    }
    #[derive(Deserialize)]
    struct OutputItem<'a> {
        #[serde(rename = "type", borrow)]
        kind: Cow<'a, str>,
        #[serde(borrow, default)]
        call_id: Option<Cow<'a, str>>,
        #[serde(borrow, default)]
        name: Option<Cow<'a, str>>,
        #[serde(borrow, default)]
        arguments: Option<Cow<'a, str>>,
        #[serde(borrow, default)]
        content: Option<Vec<OutputContent<'a>>>,
    }
    #[derive(Deserialize)]
    struct OutputContent<'a> {
        #[serde(rename = "type", borrow)]
        kind: Cow<'a, str>,
        #[serde(borrow, default)]
        text: Option<Cow<'a, str>>,
        #[serde(borrow, default)]
        refusal: Option<Cow<'a, str>>,
    }
    let r: Body<'_> = serde_json::from_slice(body)
        .map_err(|e| ConvertError(format!("the upstream's answer is not a Responses object: {e}")))?;
    if r.status.as_deref() == Some("failed") {
        let failure = r.error.unwrap_or_default().into_failure();
        return Err(ConvertError(format!(
            "the upstream response failed: {}",
            failure.message
        )));
    }
    let usage = parse_responses_json_usage(body).unwrap_or_default();
    let mut content = String::new();
    let mut refusal = String::new();
    let mut calls = Vec::new();
    for item in &r.output {
        match item.kind.as_ref() {
            "message" => {
                for part in item.content.iter().flatten() {
                    match part.kind.as_ref() {
                        "output_text" => content.push_str(part.text.as_deref().unwrap_or_default()),
                        "refusal" => refusal.push_str(part.refusal.as_deref().unwrap_or_default()),
                        _ => {}
                    }
                }
            }
            "function_call" => calls.push((
                item.call_id.as_deref().unwrap_or_default(),
                item.name.as_deref().unwrap_or_default(),
                item.arguments.as_deref().unwrap_or_default(),
            )),
            _ => {}
        }
    }
    let finish = if r.status.as_deref() == Some("incomplete") {
        match r.incomplete_details.as_ref().and_then(|d| d.reason.as_deref()) {
            Some("content_filter") => "content_filter",
            _ => "length",
        }
    } else if calls.is_empty() {
        "stop"
    } else {
        "tool_calls"
    };
    let id = format!("chatcmpl-{}", r.id.as_deref().unwrap_or_default());
    let completion = Answer {
        id: &id,
        model: client_model,
        created: r.created_at.map_or_else(unix_now, |at| at as i64),
        content: &content,
        refusal: &refusal,
        calls,
        finish,
        usage,
    };
    Ok((Bytes::from(completion.to_json()), usage))
}

#[cfg(test)]
#[path = "chat_responses_tests.rs"]
mod tests;
