//! A Chat Completions request, rewritten as an Anthropic Messages request.
//!
//! Messages:
//!
//! - `system` and `developer` messages, wherever they stand, become the top-level `system`: their
//!   texts joined with a blank line, or a list of text blocks when a part carries `cache_control`.
//! - `user` content (a string or parts): `text`; `image_url` as a base64 image (a `data:` URL of a
//!   JPEG, PNG, GIF or WebP) or a URL image (`http(s)`); `file` with inline `file_data` (a base64
//!   PDF `data:` URL) as a PDF document. `input_audio`, `file_id` references and other files are
//!   refused.
//! - `assistant` content becomes text blocks (a `refusal` part as text) and each `tool_calls`
//!   entry a `tool_use` block whose `input` is the call's `arguments` JSON (which must be an
//!   object; empty arguments read as `{}`).
//! - `tool` messages become `tool_result` blocks (`tool_call_id` → `tool_use_id`; text parts, and
//!   images, as the result's content).
//! - Consecutive messages of one role are merged into one turn (Anthropic requires user and
//!   assistant turns to alternate); in a user turn the `tool_result` blocks are put first, in
//!   order, as Anthropic requires. Empty text is dropped, and a message left without content is
//!   skipped.
//! - Tool call ids are kept, except that characters Anthropic does not accept in an id (anything
//!   but ASCII letters, digits, `_` and `-`) become `_`, the same way in calls and results.
//! - A part's `cache_control` is copied to the block made from it.
//!
//! Parameters:
//!
//! - `tools` (function tools only) → `tools` (`parameters` → `input_schema`, `{"type":"object"}`
//!   when absent; `strict` is dropped). `tool_choice`: `auto` → `auto`, `none` → `none`,
//!   `required` → `any`, a named function → `tool`; `allowed_tools` keeps only the tools it names,
//!   with `auto` or `any`. `parallel_tool_calls: false` → `disable_parallel_tool_use: true`.
//!   Without tools, `tool_choice` and `parallel_tool_calls` are ignored.
//! - `max_completion_tokens`, else `max_tokens`, else [`DEFAULT_MAX_TOKENS`] → `max_tokens`.
//! - `temperature` (clamped to Anthropic's 0–1) and `top_p` are copied; `top_p` is dropped when
//!   it is 1 or more and `temperature` is set too (recent Claude models refuse both at once).
//! - `stop` (a string or a list) → `stop_sequences`; `stream` → `stream`; `user` (else
//!   `safety_identifier`) → `metadata.user_id`.
//! - `reasoning_effort` → `thinking` with the budget of [`REASONING_BUDGETS`]. With thinking on,
//!   `temperature` and `top_p` are dropped (Anthropic refuses them with thinking). Thinking stays
//!   off when `tool_choice` forces a tool (Anthropic refuses the two together) and when the last
//!   assistant message holds tool calls: Anthropic then requires that message's signed thinking
//!   blocks, which the Chat format cannot carry back.
//! - `stream_options.include_usage` is kept in [`ChatFacts`].
//!
//! Refused, because ignoring them would change the answer: `n` other than 1, `logprobs: true`
//! (and `top_logprobs`), audio output (`modalities` with `audio`, `audio`), `response_format`
//! `json_object` and `json_schema`, legacy `functions` / `function_call` and the `function` role,
//! `web_search_options`, and non-function tools. Other fields (`seed`, `frequency_penalty`,
//! `presence_penalty`, `logit_bias`, `service_tier`, `store`, `metadata`, `prediction`, …) are
//! ignored.

use std::borrow::Cow;

use bytes::Bytes;
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::convert::ConvertError;
pub use crate::convert::chat_in::ChatFacts;
use crate::convert::chat_in::{
    self, Arguments, ArgumentsError, ChatFile, ChatMessage, ChatPart, ChatRequest, ChatTool, ChatToolCall, Content,
    ContentError, ContentPart, DataUrlError, ImageUrl, ReadError, err, has_prefix, stop_sequences,
};

/// `max_tokens` when the client sets no limit.
pub const DEFAULT_MAX_TOKENS: u64 = 8192;

/// Thinking budget (in tokens) of each `reasoning_effort`; `None`: no thinking.
pub const REASONING_BUDGETS: &[(&str, Option<u64>)] = &[
    ("none", None),
    ("minimal", None),
    ("low", Some(1024)),
    ("medium", Some(4096)),
    ("high", Some(16384)),
];

/// Chat Completions request JSON → Anthropic Messages request JSON with `model` set to `model`.
pub fn request_to_messages(body: &[u8], model: &str) -> Result<(Bytes, ChatFacts), ConvertError> {
    let (chat, facts) = chat_in::read(body).map_err(unreadable)?;
    refuse_unsupported(&chat)?;

    let messages = match chat.messages {
        Some(m) if !m.is_empty() => m,
        _ => return Err(err("messages is required and must be a non-empty array")),
    };
    let mut conversation = convert_messages(messages)?;

    let mut tools = convert_tools(chat.tools)?;
    let mut tool_choice = convert_tool_choice(chat.tool_choice, &mut tools)?;
    if tools.is_empty() {
        tool_choice = None;
    } else if chat.parallel_tool_calls == Some(false) {
        let choice = tool_choice.get_or_insert(ToolChoice::of("auto"));
        if choice.kind != "none" {
            choice.disable_parallel_tool_use = Some(true);
        }
    }

    let mut budget = reasoning_budget(chat.reasoning_effort.as_deref())?;
    let forced = tool_choice
        .as_ref()
        .is_some_and(|c| c.kind == "any" || c.kind == "tool");
    if forced || conversation.last_assistant_calls_tools {
        budget = None;
    }

    let requested = match positive_int(chat.max_completion_tokens, "max_completion_tokens")? {
        Some(n) => Some(n),
        None => positive_int(chat.max_tokens, "max_tokens")?,
    };
    let answer = requested.unwrap_or(DEFAULT_MAX_TOKENS);
    let max_tokens = match budget {
        Some(b) if answer <= b => b.saturating_add(answer),
        _ => answer,
    };

    let mut temperature = non_negative(chat.temperature, "temperature")?.map(|t| t.clamp(0.0, 1.0));
    let mut top_p = non_negative(chat.top_p, "top_p")?;
    if budget.is_some() {
        temperature = None;
        top_p = None;
    } else if temperature.is_some() && top_p.is_some_and(|p| p >= 1.0) {
        top_p = None;
    }

    let user_id = [chat.user, chat.safety_identifier]
        .into_iter()
        .flatten()
        .find(|id| !id.is_empty());
    let out = MessagesRequest {
        model,
        max_tokens,
        system: conversation.system(),
        messages: conversation.turns,
        tools,
        tool_choice,
        stop_sequences: stop_sequences(chat.stop)?,
        temperature,
        top_p,
        thinking: budget.map(|budget_tokens| Thinking {
            kind: "enabled",
            budget_tokens,
        }),
        metadata: user_id.map(|user_id| Metadata { user_id }),
        stream: facts.stream,
    };
    let json = serde_json::to_vec(&out).map_err(|e| err(format!("the request could not be written: {e}")))?;
    Ok((Bytes::from(json), facts))
}

/// A request the typed reading refused, in this converter's words: the body is not JSON or not
/// an object, or a member is missing ("… is required") or of the wrong type ("… must be …").
/// Members it has no words for keep the common wording.
fn unreadable(e: ReadError) -> ConvertError {
    if e.is_syntax() {
        return err(format!("the request body is not valid JSON: {}", e.error()));
    }
    let (path, missing) = match (e.path(), e.missing_field()) {
        (Some(path), Some(field)) => (format!("{path}.{field}"), true),
        (Some(path), None) => (path.to_owned(), false),
        (None, _) => return e.into(),
    };
    if path == "." {
        return err("the request body must be a JSON object");
    }
    let what = match chat_in::without_indices(&path).as_str() {
        "stream" | "parallel_tool_calls" | "stream_options.include_usage" => "must be a boolean",
        "stream_options"
        | "response_format"
        | "messages[]"
        | "messages[].tool_calls[]"
        | "messages[].content[]"
        | "tools[]" => "must be an object",
        "messages" | "messages[].tool_calls" | "tools" => "must be an array",
        "reasoning_effort"
        | "user"
        | "safety_identifier"
        | "tools[].function.description"
        | "messages[].content[].text"
        | "messages[].content[].refusal" => "must be a string",
        "max_tokens" | "max_completion_tokens" => "must be a positive integer",
        "temperature" | "top_p" => "must be a number",
        "messages[].role"
        | "messages[].tool_call_id"
        | "messages[].tool_calls[].id"
        | "messages[].tool_calls[].function"
        | "messages[].tool_calls[].function.name"
        | "messages[].content[].type"
        | "messages[].content[].file"
        | "tools[].type"
        | "tools[].function"
        | "tools[].function.name"
        | "tool_choice.type"
        | "tool_choice.function"
        | "tool_choice.function.name"
        | "tool_choice.allowed_tools"
        | "tool_choice.allowed_tools.tools" => "is required",
        tool if tool.starts_with("tool_choice.allowed_tools.tools[]") => {
            return err("tool_choice.allowed_tools.tools: only function tools (with a name) are supported");
        }
        _ if missing => "is required",
        _ => return e.into(),
    };
    err(format!("{path} {what}"))
}

/// The Anthropic Messages request written.
#[derive(Serialize)]
struct MessagesRequest<'a> {
    model: &'a str,
    max_tokens: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    system: Option<System<'a>>,
    messages: Vec<Turn<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tools: Vec<Tool<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_choice: Option<ToolChoice<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    stop_sequences: Vec<Cow<'a, str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    thinking: Option<Thinking>,
    #[serde(skip_serializing_if = "Option::is_none")]
    metadata: Option<Metadata<'a>>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    stream: bool,
}

#[derive(Serialize)]
#[serde(untagged)]
enum System<'a> {
    Text(String),
    Blocks(Vec<Block<'a>>),
}

#[derive(Serialize)]
struct Turn<'a> {
    role: &'static str,
    content: Vec<Block<'a>>,
}

/// An Anthropic content block.
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Block<'a> {
    Text {
        text: Cow<'a, str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        cache_control: Option<&'a RawValue>,
    },
    Image {
        source: Source<'a>,
        #[serde(skip_serializing_if = "Option::is_none")]
        cache_control: Option<&'a RawValue>,
    },
    Document {
        source: Source<'a>,
        #[serde(skip_serializing_if = "Option::is_none")]
        title: Option<Cow<'a, str>>,
        #[serde(skip_serializing_if = "Option::is_none")]
        cache_control: Option<&'a RawValue>,
    },
    ToolUse {
        id: Cow<'a, str>,
        name: Cow<'a, str>,
        input: ToolInput<'a>,
    },
    ToolResult {
        tool_use_id: Cow<'a, str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        content: Option<ToolContent<'a>>,
    },
}

impl Block<'_> {
    fn is_tool_result(&self) -> bool {
        matches!(self, Block::ToolResult { .. })
    }
}

/// A `tool_use` input: the call's arguments as the client wrote them, or an empty object.
#[derive(Serialize)]
#[serde(untagged)]
enum ToolInput<'a> {
    Raw(Box<RawValue>),
    Borrowed(&'a RawValue),
    Object(Map<String, Value>),
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Source<'a> {
    Base64 {
        media_type: Cow<'a, str>,
        data: Cow<'a, str>,
    },
    Url {
        url: Cow<'a, str>,
    },
}

#[derive(Serialize)]
#[serde(untagged)]
enum ToolContent<'a> {
    Text(Cow<'a, str>),
    Blocks(Vec<Block<'a>>),
}

#[derive(Serialize)]
struct Tool<'a> {
    name: Cow<'a, str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<Cow<'a, str>>,
    input_schema: Value,
}

#[derive(Serialize)]
struct ToolChoice<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<Cow<'a, str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    disable_parallel_tool_use: Option<bool>,
}

impl ToolChoice<'_> {
    fn of(kind: &'static str) -> Self {
        ToolChoice {
            kind,
            name: None,
            disable_parallel_tool_use: None,
        }
    }
}

#[derive(Serialize)]
struct Thinking {
    #[serde(rename = "type")]
    kind: &'static str,
    budget_tokens: u64,
}

#[derive(Serialize)]
struct Metadata<'a> {
    user_id: Cow<'a, str>,
}

/// Refuses the fields whose meaning the conversion cannot keep.
fn refuse_unsupported(chat: &ChatRequest<'_>) -> Result<(), ConvertError> {
    match chat.n {
        None | Some(1) => {}
        Some(n) => {
            return Err(err(format!(
                "n={n} is not supported: Claude models return one choice per request; omit n or send n=1"
            )));
        }
    }
    if chat.logprobs == Some(true) {
        return Err(err("logprobs are not available from Claude models; omit logprobs"));
    }
    if chat.top_logprobs.is_some_and(|n| n > 0) {
        return Err(err(
            "top_logprobs are not available from Claude models; omit top_logprobs",
        ));
    }
    if chat.modalities.iter().flatten().any(|m| m == "audio") || chat.audio.is_some() {
        return Err(err("audio output is not supported by Claude models; ask for text only"));
    }
    for (legacy, given) in [
        ("functions", chat.functions.is_some()),
        ("function_call", chat.function_call.is_some()),
    ] {
        if given {
            return Err(err(format!(
                "{legacy} (legacy function calling) is not supported through this relay; use tools and tool_choice"
            )));
        }
    }
    if chat.web_search_options.is_some() {
        return Err(err(
            "web_search_options is not supported by Claude models through this relay",
        ));
    }
    match chat.response_format.as_ref().map(|f| f.kind.as_ref()) {
        None | Some("text") => Ok(()),
        Some("json_object") => Err(err(
            "response_format json_object is not supported by Claude models through this relay; \
             ask for JSON in the prompt instead",
        )),
        Some("json_schema") => Err(err(
            "response_format json_schema is not supported by Claude models through this relay; \
             describe the schema in the prompt, or pass it as a tool's parameters and force that tool \
             with tool_choice",
        )),
        Some(other) => Err(err(format!("response_format type '{other}' is not supported"))),
    }
}

fn non_negative(value: Option<f64>, key: &str) -> Result<Option<f64>, ConvertError> {
    match value {
        Some(v) if !(v.is_finite() && v >= 0.0) => Err(err(format!("{key} must be a number of at least 0"))),
        v => Ok(v),
    }
}

fn positive_int(value: Option<u64>, key: &str) -> Result<Option<u64>, ConvertError> {
    match value {
        Some(0) => Err(err(format!("{key} must be a positive integer"))),
        n => Ok(n),
    }
}

/// The thinking budget `reasoning_effort` asks for.
fn reasoning_budget(effort: Option<&str>) -> Result<Option<u64>, ConvertError> {
    let Some(effort) = effort else { return Ok(None) };
    REASONING_BUDGETS
        .iter()
        .find(|(name, _)| *name == effort)
        .map(|(_, budget)| *budget)
        .ok_or_else(|| {
            err(format!(
                "reasoning_effort '{effort}' is not supported; use none, minimal, low, medium or high"
            ))
        })
}

/// The messages, sorted into the system prompt and alternating turns.
#[derive(Default)]
struct Conversation<'a> {
    system: Vec<(Cow<'a, str>, Option<&'a RawValue>)>,
    turns: Vec<Turn<'a>>,
    /// The last assistant message holds tool calls.
    last_assistant_calls_tools: bool,
}

impl<'a> Conversation<'a> {
    fn push(&mut self, role: &'static str, blocks: Vec<Block<'a>>) {
        if blocks.is_empty() {
            return;
        }
        match self.turns.last_mut() {
            Some(turn) if turn.role == role => turn.content.extend(blocks),
            _ => self.turns.push(Turn { role, content: blocks }),
        }
    }

    fn system(&mut self) -> Option<System<'a>> {
        if self.system.is_empty() {
            return None;
        }
        let parts = std::mem::take(&mut self.system);
        if parts.iter().any(|(_, cache)| cache.is_some()) {
            let blocks = parts
                .into_iter()
                .map(|(text, cache_control)| Block::Text { text, cache_control })
                .collect();
            return Some(System::Blocks(blocks));
        }
        let texts: Vec<Cow<'a, str>> = parts.into_iter().map(|(text, _)| text).collect();
        Some(System::Text(texts.join("\n\n")))
    }
}

fn convert_messages(messages: Vec<ChatMessage<'_>>) -> Result<Conversation<'_>, ConvertError> {
    let mut conv = Conversation::default();
    for (i, m) in messages.into_iter().enumerate() {
        let ChatMessage {
            role,
            content,
            tool_calls,
            tool_call_id,
            function_call,
            audio,
            ..
        } = m;
        match role.as_ref() {
            "system" | "developer" => {
                for block in content_blocks(i, content, Part::System)? {
                    if let Block::Text { text, cache_control } = block {
                        conv.system.push((text, cache_control));
                    }
                }
            }
            "user" => {
                let blocks = content_blocks(i, content, Part::User)?;
                conv.push("user", blocks);
            }
            "assistant" => {
                if function_call.is_some() {
                    return Err(err(format!(
                        "messages[{i}].function_call (legacy function calling) is not supported; use tool_calls"
                    )));
                }
                if audio.is_some() {
                    return Err(err(format!("messages[{i}].audio is not supported by Claude models")));
                }
                let mut blocks = content_blocks(i, content, Part::Assistant)?;
                let calls = tool_calls.unwrap_or_default();
                conv.last_assistant_calls_tools = !calls.is_empty();
                for (k, call) in calls.into_iter().enumerate() {
                    blocks.push(tool_use(i, k, call)?);
                }
                conv.push("assistant", blocks);
            }
            "tool" => {
                let block = tool_message(i, tool_call_id, content)?;
                conv.push("user", vec![block]);
            }
            "function" => {
                return Err(err(format!(
                    "messages[{i}]: the function role (legacy function calling) is not supported; \
                     use tool messages with tool_call_id"
                )));
            }
            other => return Err(err(format!("messages[{i}].role '{other}' is not supported"))),
        }
    }
    if conv.turns.is_empty() {
        return Err(err(
            "messages must contain at least one user or assistant message with content",
        ));
    }
    for turn in &mut conv.turns {
        if turn.role == "user" && turn.content.iter().any(Block::is_tool_result) {
            turn.content.sort_by_key(|b| !b.is_tool_result());
        }
    }
    Ok(conv)
}

/// One `tool_calls` entry as a `tool_use` block.
fn tool_use<'a>(i: usize, k: usize, call: ChatToolCall<'a>) -> Result<Block<'a>, ConvertError> {
    let at = format!("messages[{i}].tool_calls[{k}]");
    let call = chat_in::tool_call(call, &at)?;
    let (id, name) = (tool_id(call.id), call.name);
    let input = match chat_in::arguments(call.arguments) {
        Ok(Arguments::Empty) => ToolInput::Object(Map::new()),
        Ok(Arguments::Object(object)) => ToolInput::Borrowed(object),
        Ok(Arguments::Text(object)) => ToolInput::Raw(object),
        Err(e) => {
            let what = match e {
                ArgumentsError::NotJson(e) => format!("are not valid JSON: {e}"),
                ArgumentsError::NotObject => "must be a JSON object".to_owned(),
                ArgumentsError::NotString => "must be a JSON string".to_owned(),
            };
            return Err(err(format!("{at}: the arguments of tool call '{id}' ({name}) {what}")));
        }
    };
    Ok(Block::ToolUse { id, name, input })
}

/// A tool call id as Anthropic accepts it (`^[a-zA-Z0-9_-]+$`).
fn tool_id(id: Cow<'_, str>) -> Cow<'_, str> {
    let ok = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
    if id.chars().all(ok) {
        id
    } else {
        Cow::Owned(id.chars().map(|c| if ok(c) { c } else { '_' }).collect())
    }
}

fn tool_message<'a>(
    i: usize,
    tool_call_id: Option<Cow<'a, str>>,
    content: Option<&'a RawValue>,
) -> Result<Block<'a>, ConvertError> {
    let tool_use_id = match tool_call_id {
        Some(id) if !id.is_empty() => tool_id(id),
        _ => return Err(err(format!("messages[{i}].tool_call_id is required"))),
    };
    let content = match read_content(i, content)? {
        Content::Text(text) if text.is_empty() => None,
        Content::Text(text) => Some(ToolContent::Text(text)),
        Content::Parts(parts) => {
            let blocks = part_blocks(i, parts, Part::Tool)?;
            (!blocks.is_empty()).then_some(ToolContent::Blocks(blocks))
        }
    };
    Ok(Block::ToolResult { tool_use_id, content })
}

/// Whose content parts are read: each role accepts its own part types.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Part {
    System,
    User,
    Assistant,
    Tool,
}

/// Message `i`'s `content`.
fn read_content(i: usize, content: Option<&RawValue>) -> Result<Content<'_>, ConvertError> {
    chat_in::content(i, content).map_err(|e| match e {
        ContentError::NotTextOrParts(_) => err(format!(
            "messages[{i}].content must be a string or an array of content parts"
        )),
        ContentError::Invalid(e) => unreadable(e),
        ContentError::NoText(j) => err(format!("messages[{i}].content[{j}].text must be a string")),
    })
}

/// A message's `content` (a string or parts) as blocks; empty text is dropped.
fn content_blocks(i: usize, content: Option<&RawValue>, role: Part) -> Result<Vec<Block<'_>>, ConvertError> {
    match read_content(i, content)? {
        Content::Text(text) if text.is_empty() => Ok(Vec::new()),
        Content::Text(text) => Ok(vec![Block::Text {
            text,
            cache_control: None,
        }]),
        Content::Parts(parts) => part_blocks(i, parts, role),
    }
}

fn part_blocks<'a>(i: usize, parts: Vec<ContentPart<'a>>, role: Part) -> Result<Vec<Block<'a>>, ConvertError> {
    let mut blocks = Vec::with_capacity(parts.len());
    for (j, part) in parts.into_iter().enumerate() {
        if let Some(block) = content_part(i, j, part, role)? {
            blocks.push(block);
        }
    }
    Ok(blocks)
}

/// A part's `cache_control`, when it is an object.
fn cache_mark(cache_control: Option<&RawValue>) -> Option<&RawValue> {
    cache_control.filter(|c| c.get().starts_with('{'))
}

fn content_part<'a>(i: usize, j: usize, part: ContentPart<'a>, role: Part) -> Result<Option<Block<'a>>, ConvertError> {
    let at = || format!("messages[{i}].content[{j}]");
    let part: ChatPart<'a> = match part {
        ContentPart::Text { text, cache_control } => {
            return Ok((!text.is_empty()).then(|| Block::Text {
                text,
                cache_control: cache_mark(cache_control),
            }));
        }
        ContentPart::Other(part) => part,
    };
    let cache_control = cache_mark(part.cache_control);
    match (part.kind.as_ref(), role) {
        ("refusal", Part::Assistant) => {
            let Some(text) = part.refusal else {
                return Err(err(format!("{}.refusal must be a string", at())));
            };
            Ok((!text.is_empty()).then_some(Block::Text { text, cache_control }))
        }
        ("image_url", Part::User | Part::Tool) => {
            let url = match part.image_url.map(chat_in::image_url) {
                Some(ImageUrl::Url(url)) => url,
                Some(ImageUrl::NoUrl) => {
                    return Err(err(format!("{}.image_url.url is required", at())));
                }
                Some(ImageUrl::Invalid) | None => return Err(err(format!("{}.image_url is required", at()))),
            };
            let source = image_source(url).map_err(|m| err(format!("{}: {m}", at())))?;
            Ok(Some(Block::Image { source, cache_control }))
        }
        ("file", Part::User) => {
            let Some(file) = part.file else {
                return Err(err(format!("{}.file is required", at())));
            };
            document(file, cache_control)
                .map(Some)
                .map_err(|m| err(format!("{}: {m}", at())))
        }
        ("input_audio", _) => Err(err(format!(
            "{}: audio input (input_audio) is not supported by Claude models",
            at()
        ))),
        (other, _) => Err(err(format!(
            "{}: content part type '{other}' is not supported in {} messages",
            at(),
            match role {
                Part::System => "system",
                Part::User => "user",
                Part::Assistant => "assistant",
                Part::Tool => "tool",
            }
        ))),
    }
}

/// Media types Anthropic accepts for images.
const IMAGE_TYPES: &[&str] = &["image/jpeg", "image/png", "image/gif", "image/webp"];

/// An image URL as an Anthropic image source.
fn image_source(url: Cow<'_, str>) -> Result<Source<'_>, String> {
    if has_prefix(&url, "data:") {
        let (media_type, data) = data_url(url)?;
        let media_type = if media_type == "image/jpg" {
            Cow::Borrowed("image/jpeg")
        } else {
            media_type
        };
        if !IMAGE_TYPES.contains(&media_type.as_ref()) {
            return Err(format!(
                "image type '{media_type}' is not supported by Claude models (JPEG, PNG, GIF and WebP are)"
            ));
        }
        return Ok(Source::Base64 { media_type, data });
    }
    if has_prefix(&url, "https://") || has_prefix(&url, "http://") {
        return Ok(Source::Url { url });
    }
    Err("an image URL must be a base64 data: URL or an http(s) URL".to_owned())
}

/// A `file` part with inline PDF data as a document block.
fn document<'a>(file: ChatFile<'a>, cache_control: Option<&'a RawValue>) -> Result<Block<'a>, String> {
    let data = match file.file_data {
        Some(data) => data,
        None if file.file_id.is_some() => {
            return Err(
                "file_id references are not supported through this relay; send the file inline as file_data \
                 (a base64 PDF data: URL)"
                    .to_owned(),
            );
        }
        None => return Err("file.file_data is required".to_owned()),
    };
    if !has_prefix(&data, "data:") {
        return Err("file.file_data must be a base64 data: URL (data:application/pdf;base64,...)".to_owned());
    }
    let (media_type, data) = data_url(data)?;
    if media_type != "application/pdf" {
        return Err(format!(
            "file type '{media_type}' is not supported through this relay; only PDF files are"
        ));
    }
    Ok(Block::Document {
        source: Source::Base64 { media_type, data },
        title: file.filename.filter(|name| !name.is_empty()),
        cache_control,
    })
}

/// A base64 `data:` URL's media type (lowercase) and data.
fn data_url(url: Cow<'_, str>) -> Result<(Cow<'_, str>, Cow<'_, str>), String> {
    chat_in::data_url(url).map_err(|e| {
        match e {
            DataUrlError::NoComma => "malformed data: URL (no comma)",
            DataUrlError::NotBase64 => "a data: URL must be base64-encoded (data:<type>;base64,...)",
        }
        .to_owned()
    })
}

fn convert_tools(tools: Option<Vec<ChatTool<'_>>>) -> Result<Vec<Tool<'_>>, ConvertError> {
    tools
        .into_iter()
        .flatten()
        .enumerate()
        .map(|(k, tool)| convert_tool(k, tool))
        .collect()
}

fn convert_tool(k: usize, tool: ChatTool<'_>) -> Result<Tool<'_>, ConvertError> {
    let function = chat_in::function_tool(k, tool, |other| {
        err(format!(
            "tools[{k}]: tool type '{other}' is not supported through this relay; only function tools are"
        ))
    })?;
    let not_schema = || err(format!("tools[{k}].function.parameters must be a JSON Schema object"));
    let input_schema = match function.parameters {
        None => {
            let mut schema = Map::new();
            schema.insert("type".to_owned(), Value::from("object"));
            schema.insert("properties".to_owned(), Value::Object(Map::new()));
            Value::Object(schema)
        }
        Some(raw) if raw.get().starts_with('{') => {
            let mut schema: Map<String, Value> = serde_json::from_str(raw.get()).map_err(|_| not_schema())?;
            if !schema.contains_key("type") {
                schema.insert("type".to_owned(), Value::from("object"));
            }
            Value::Object(schema)
        }
        Some(_) => return Err(not_schema()),
    };
    Ok(Tool {
        name: function.name,
        description: function.description,
        input_schema,
    })
}

/// `tool_choice` as Anthropic's; `allowed_tools` narrows `tools` to the ones it names.
fn convert_tool_choice<'a>(
    choice: Option<&'a RawValue>,
    tools: &mut Vec<Tool<'a>>,
) -> Result<Option<ToolChoice<'a>>, ConvertError> {
    let Some(raw) = choice else { return Ok(None) };
    if !raw.get().starts_with(['"', '{']) {
        return Err(err("tool_choice must be a string or an object"));
    }
    let choice = match chat_in::tool_choice(raw, "tool_choice").map_err(unreadable)? {
        None => return Ok(None),
        Some(chat_in::ToolChoice::Mode(mode)) => return mode_choice(&mode).map(Some),
        Some(chat_in::ToolChoice::Object(choice)) => choice,
    };
    match choice.kind.as_deref() {
        Some("function") => {
            let Some(function) = choice.function else {
                return Err(err("tool_choice.function is required"));
            };
            let Some(name) = function.name else {
                return Err(err("tool_choice.function.name is required"));
            };
            if !tools.iter().any(|t| t.name == name) {
                return Err(err(format!(
                    "tool_choice names function '{name}', which is not in tools"
                )));
            }
            Ok(Some(ToolChoice {
                name: Some(name),
                ..ToolChoice::of("tool")
            }))
        }
        Some("allowed_tools") => {
            let Some(allowed) = choice.allowed_tools else {
                return Err(err("tool_choice.allowed_tools is required"));
            };
            let kind = match allowed.mode.as_deref().unwrap_or("auto") {
                "auto" => "auto",
                "required" => "any",
                other => {
                    return Err(err(format!(
                        "tool_choice.allowed_tools.mode '{other}' is not supported"
                    )));
                }
            };
            let Some(list) = allowed.tools else {
                return Err(err("tool_choice.allowed_tools.tools is required"));
            };
            let names = chat_in::allowed_names(list, "tool_choice", |name| tools.iter().any(|t| t.name == name))?;
            tools.retain(|t| names.contains(&t.name));
            Ok(Some(ToolChoice::of(kind)))
        }
        Some(other) => Err(err(format!("tool_choice type '{other}' is not supported"))),
        None => Err(err("tool_choice.type is required")),
    }
}

fn mode_choice(mode: &str) -> Result<ToolChoice<'static>, ConvertError> {
    match mode {
        "auto" => Ok(ToolChoice::of("auto")),
        "none" => Ok(ToolChoice::of("none")),
        "required" => Ok(ToolChoice::of("any")),
        other => Err(err(format!(
            "tool_choice '{other}' is not supported; use auto, none, required or a named function"
        ))),
    }
}
