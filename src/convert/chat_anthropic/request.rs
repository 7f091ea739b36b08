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

use bytes::Bytes;
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::convert::ConvertError;
pub use crate::convert::chat_in::ChatFacts;

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
    let value: Value =
        serde_json::from_slice(body).map_err(|e| err(format!("the request body is not valid JSON: {e}")))?;
    let Value::Object(mut req) = value else {
        return Err(err("the request body must be a JSON object"));
    };
    refuse_unsupported(&req)?;

    let stream = opt_bool(&req, "stream")?.unwrap_or(false);
    let include_usage = match req.get("stream_options") {
        None | Some(Value::Null) => false,
        Some(Value::Object(o)) => match o.get("include_usage") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err(err("stream_options.include_usage must be a boolean")),
        },
        Some(_) => return Err(err("stream_options must be an object")),
    };

    let messages = match req.remove("messages") {
        Some(Value::Array(m)) if !m.is_empty() => m,
        None | Some(Value::Null) | Some(Value::Array(_)) => {
            return Err(err("messages is required and must be a non-empty array"));
        }
        Some(_) => return Err(err("messages must be an array")),
    };
    let mut conversation = convert_messages(messages)?;

    let mut tools = convert_tools(req.remove("tools"))?;
    let mut tool_choice = convert_tool_choice(req.remove("tool_choice"), &mut tools)?;
    if tools.is_empty() {
        tool_choice = None;
    } else if opt_bool(&req, "parallel_tool_calls")? == Some(false) {
        let choice = tool_choice.get_or_insert(ToolChoice::of("auto"));
        if choice.kind != "none" {
            choice.disable_parallel_tool_use = Some(true);
        }
    }

    let mut budget = reasoning_budget(&req)?;
    let forced = tool_choice
        .as_ref()
        .is_some_and(|c| c.kind == "any" || c.kind == "tool");
    if forced || conversation.last_assistant_calls_tools {
        budget = None;
    }

    let requested = match positive_int(&req, "max_completion_tokens")? {
        Some(n) => Some(n),
        None => positive_int(&req, "max_tokens")?,
    };
    let answer = requested.unwrap_or(DEFAULT_MAX_TOKENS);
    let max_tokens = match budget {
        Some(b) if answer <= b => b.saturating_add(answer),
        _ => answer,
    };

    let mut temperature = opt_f64(&req, "temperature")?.map(|t| t.clamp(0.0, 1.0));
    let mut top_p = opt_f64(&req, "top_p")?;
    if budget.is_some() {
        temperature = None;
        top_p = None;
    } else if temperature.is_some() && top_p.is_some_and(|p| p >= 1.0) {
        top_p = None;
    }

    let out = MessagesRequest {
        model,
        max_tokens,
        system: conversation.system(),
        messages: conversation.turns,
        tools,
        tool_choice,
        stop_sequences: convert_stop(req.remove("stop"))?,
        temperature,
        top_p,
        thinking: budget.map(|budget_tokens| Thinking {
            kind: "enabled",
            budget_tokens,
        }),
        metadata: user_id(&mut req)?.map(|user_id| Metadata { user_id }),
        stream,
    };
    let json = serde_json::to_vec(&out).map_err(|e| err(format!("the request could not be written: {e}")))?;
    Ok((Bytes::from(json), ChatFacts { stream, include_usage }))
}

fn err(message: impl Into<String>) -> ConvertError {
    ConvertError(message.into())
}

/// The Anthropic Messages request written.
#[derive(Serialize)]
struct MessagesRequest<'a> {
    model: &'a str,
    max_tokens: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    system: Option<System>,
    messages: Vec<Turn>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tools: Vec<Tool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_choice: Option<ToolChoice>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    stop_sequences: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    thinking: Option<Thinking>,
    #[serde(skip_serializing_if = "Option::is_none")]
    metadata: Option<Metadata>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    stream: bool,
}

#[derive(Serialize)]
#[serde(untagged)]
enum System {
    Text(String),
    Blocks(Vec<Block>),
}

#[derive(Serialize)]
struct Turn {
    role: &'static str,
    content: Vec<Block>,
}

/// An Anthropic content block.
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Block {
    Text {
        text: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        cache_control: Option<Value>,
    },
    Image {
        source: Source,
        #[serde(skip_serializing_if = "Option::is_none")]
        cache_control: Option<Value>,
    },
    Document {
        source: Source,
        #[serde(skip_serializing_if = "Option::is_none")]
        title: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        cache_control: Option<Value>,
    },
    ToolUse {
        id: String,
        name: String,
        input: ToolInput,
    },
    ToolResult {
        tool_use_id: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        content: Option<ToolContent>,
    },
}

impl Block {
    fn is_tool_result(&self) -> bool {
        matches!(self, Block::ToolResult { .. })
    }
}

/// A `tool_use` input: the call's arguments as the client wrote them, or an object.
#[derive(Serialize)]
#[serde(untagged)]
enum ToolInput {
    Raw(Box<RawValue>),
    Object(Map<String, Value>),
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Source {
    Base64 { media_type: String, data: String },
    Url { url: String },
}

#[derive(Serialize)]
#[serde(untagged)]
enum ToolContent {
    Text(String),
    Blocks(Vec<Block>),
}

#[derive(Serialize)]
struct Tool {
    name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<String>,
    input_schema: Value,
}

#[derive(Serialize)]
struct ToolChoice {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    disable_parallel_tool_use: Option<bool>,
}

impl ToolChoice {
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
struct Metadata {
    user_id: String,
}

/// Refuses the fields whose meaning the conversion cannot keep.
fn refuse_unsupported(req: &Map<String, Value>) -> Result<(), ConvertError> {
    match req.get("n") {
        None | Some(Value::Null) => {}
        Some(Value::Number(n)) if n.as_u64() == Some(1) => {}
        Some(n) => {
            return Err(err(format!(
                "n={n} is not supported: Claude models return one choice per request; omit n or send n=1"
            )));
        }
    }
    if req.get("logprobs") == Some(&Value::Bool(true)) {
        return Err(err("logprobs are not available from Claude models; omit logprobs"));
    }
    if req.get("top_logprobs").and_then(Value::as_u64).is_some_and(|n| n > 0) {
        return Err(err(
            "top_logprobs are not available from Claude models; omit top_logprobs",
        ));
    }
    let audio_modality = match req.get("modalities") {
        Some(Value::Array(m)) => m.iter().any(|v| v.as_str() == Some("audio")),
        _ => false,
    };
    if audio_modality || req.get("audio").is_some_and(|v| !v.is_null()) {
        return Err(err("audio output is not supported by Claude models; ask for text only"));
    }
    for legacy in ["functions", "function_call"] {
        if req.get(legacy).is_some_and(|v| !v.is_null()) {
            return Err(err(format!(
                "{legacy} (legacy function calling) is not supported through this relay; use tools and tool_choice"
            )));
        }
    }
    if req.get("web_search_options").is_some_and(|v| !v.is_null()) {
        return Err(err(
            "web_search_options is not supported by Claude models through this relay",
        ));
    }
    match req.get("response_format") {
        None | Some(Value::Null) => Ok(()),
        Some(Value::Object(f)) => match f.get("type").and_then(Value::as_str) {
            Some("text") => Ok(()),
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
            None => Err(err("response_format.type is required")),
        },
        Some(_) => Err(err("response_format must be an object")),
    }
}

fn opt_bool(req: &Map<String, Value>, key: &str) -> Result<Option<bool>, ConvertError> {
    match req.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(err(format!("{key} must be a boolean"))),
    }
}

fn opt_f64(req: &Map<String, Value>, key: &str) -> Result<Option<f64>, ConvertError> {
    match req.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_f64()
            .filter(|v| v.is_finite() && *v >= 0.0)
            .map(Some)
            .ok_or_else(|| err(format!("{key} must be a number of at least 0"))),
        Some(_) => Err(err(format!("{key} must be a number"))),
    }
}

fn positive_int(req: &Map<String, Value>, key: &str) -> Result<Option<u64>, ConvertError> {
    match req.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_u64() {
            Some(n) if n > 0 => Ok(Some(n)),
            _ => Err(err(format!("{key} must be a positive integer"))),
        },
    }
}

/// The thinking budget `reasoning_effort` asks for.
fn reasoning_budget(req: &Map<String, Value>) -> Result<Option<u64>, ConvertError> {
    match req.get("reasoning_effort") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(effort)) => REASONING_BUDGETS
            .iter()
            .find(|(name, _)| name == effort)
            .map(|(_, budget)| *budget)
            .ok_or_else(|| {
                err(format!(
                    "reasoning_effort '{effort}' is not supported; use none, minimal, low, medium or high"
                ))
            }),
        Some(_) => Err(err("reasoning_effort must be a string")),
    }
}

fn convert_stop(stop: Option<Value>) -> Result<Vec<String>, ConvertError> {
    let sequences = match stop {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => vec![s],
        Some(Value::Array(items)) => items
            .into_iter()
            .map(|v| match v {
                Value::String(s) => Ok(s),
                _ => Err(err("stop must be a string or an array of strings")),
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(err("stop must be a string or an array of strings")),
    };
    Ok(sequences.into_iter().filter(|s| !s.is_empty()).collect())
}

/// `user`, else `safety_identifier`: the end user the request is made for.
fn user_id(req: &mut Map<String, Value>) -> Result<Option<String>, ConvertError> {
    for key in ["user", "safety_identifier"] {
        match req.remove(key) {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) if s.is_empty() => {}
            Some(Value::String(s)) => return Ok(Some(s)),
            Some(_) => return Err(err(format!("{key} must be a string"))),
        }
    }
    Ok(None)
}

/// The messages, sorted into the system prompt and alternating turns.
#[derive(Default)]
struct Conversation {
    system: Vec<(String, Option<Value>)>,
    turns: Vec<Turn>,
    /// The last assistant message holds tool calls.
    last_assistant_calls_tools: bool,
}

impl Conversation {
    fn push(&mut self, role: &'static str, blocks: Vec<Block>) {
        if blocks.is_empty() {
            return;
        }
        match self.turns.last_mut() {
            Some(turn) if turn.role == role => turn.content.extend(blocks),
            _ => self.turns.push(Turn { role, content: blocks }),
        }
    }

    fn system(&mut self) -> Option<System> {
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
        let mut parts = parts.into_iter().map(|(text, _)| text);
        let mut joined = parts.next().unwrap_or_default();
        for text in parts {
            joined.push_str("\n\n");
            joined.push_str(&text);
        }
        Some(System::Text(joined))
    }
}

fn convert_messages(messages: Vec<Value>) -> Result<Conversation, ConvertError> {
    let mut conv = Conversation::default();
    for (i, message) in messages.into_iter().enumerate() {
        let Value::Object(mut m) = message else {
            return Err(err(format!("messages[{i}] must be an object")));
        };
        let role = match m.remove("role") {
            Some(Value::String(role)) => role,
            _ => return Err(err(format!("messages[{i}].role is required"))),
        };
        match role.as_str() {
            "system" | "developer" => system_message(i, m.remove("content"), &mut conv.system)?,
            "user" => {
                let blocks = content_blocks(i, m.remove("content"), Part::User)?;
                conv.push("user", blocks);
            }
            "assistant" => {
                let (blocks, calls_tools) = assistant_message(i, m)?;
                conv.last_assistant_calls_tools = calls_tools;
                conv.push("assistant", blocks);
            }
            "tool" => {
                let block = tool_message(i, m)?;
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

fn system_message(
    i: usize,
    content: Option<Value>,
    system: &mut Vec<(String, Option<Value>)>,
) -> Result<(), ConvertError> {
    for block in content_blocks(i, content, Part::System)? {
        if let Block::Text { text, cache_control } = block {
            system.push((text, cache_control));
        }
    }
    Ok(())
}

/// The content blocks and whether the message calls tools.
fn assistant_message(i: usize, mut m: Map<String, Value>) -> Result<(Vec<Block>, bool), ConvertError> {
    if m.get("function_call").is_some_and(|v| !v.is_null()) {
        return Err(err(format!(
            "messages[{i}].function_call (legacy function calling) is not supported; use tool_calls"
        )));
    }
    if m.get("audio").is_some_and(|v| !v.is_null()) {
        return Err(err(format!("messages[{i}].audio is not supported by Claude models")));
    }
    let mut blocks = content_blocks(i, m.remove("content"), Part::Assistant)?;
    let calls = match m.remove("tool_calls") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(calls)) => calls,
        Some(_) => return Err(err(format!("messages[{i}].tool_calls must be an array"))),
    };
    let calls_tools = !calls.is_empty();
    for (k, call) in calls.into_iter().enumerate() {
        blocks.push(tool_use(i, k, call)?);
    }
    Ok((blocks, calls_tools))
}

/// One `tool_calls` entry as a `tool_use` block.
fn tool_use(i: usize, k: usize, call: Value) -> Result<Block, ConvertError> {
    let at = || format!("messages[{i}].tool_calls[{k}]");
    let Value::Object(mut call) = call else {
        return Err(err(format!("{} must be an object", at())));
    };
    match call.get("type").and_then(Value::as_str) {
        None | Some("function") => {}
        Some(other) => {
            return Err(err(format!(
                "{}: tool call type '{other}' is not supported; only function calls are",
                at()
            )));
        }
    }
    let id = match call.remove("id") {
        Some(Value::String(id)) if !id.is_empty() => tool_id(id),
        _ => return Err(err(format!("{}.id is required", at()))),
    };
    let Some(Value::Object(mut function)) = call.remove("function") else {
        return Err(err(format!("{}.function is required", at())));
    };
    let name = match function.remove("name") {
        Some(Value::String(name)) if !name.is_empty() => name,
        _ => return Err(err(format!("{}.function.name is required", at()))),
    };
    let input = match function.remove("arguments") {
        None | Some(Value::Null) => ToolInput::Object(Map::new()),
        Some(Value::String(args)) if args.trim().is_empty() => ToolInput::Object(Map::new()),
        Some(Value::String(args)) => {
            let raw = RawValue::from_string(args).map_err(|e| {
                err(format!(
                    "{}: the arguments of tool call '{id}' ({name}) are not valid JSON: {e}",
                    at()
                ))
            })?;
            if !raw.get().trim_start().starts_with('{') {
                return Err(err(format!(
                    "{}: the arguments of tool call '{id}' ({name}) must be a JSON object",
                    at()
                )));
            }
            ToolInput::Raw(raw)
        }
        Some(Value::Object(args)) => ToolInput::Object(args),
        Some(_) => {
            return Err(err(format!(
                "{}: the arguments of tool call '{id}' ({name}) must be a JSON string",
                at()
            )));
        }
    };
    Ok(Block::ToolUse { id, name, input })
}

/// A tool call id as Anthropic accepts it (`^[a-zA-Z0-9_-]+$`).
fn tool_id(id: String) -> String {
    let ok = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
    if id.chars().all(ok) {
        id
    } else {
        id.chars().map(|c| if ok(c) { c } else { '_' }).collect()
    }
}

fn tool_message(i: usize, mut m: Map<String, Value>) -> Result<Block, ConvertError> {
    let tool_use_id = match m.remove("tool_call_id") {
        Some(Value::String(id)) if !id.is_empty() => tool_id(id),
        _ => return Err(err(format!("messages[{i}].tool_call_id is required"))),
    };
    let content = match m.remove("content") {
        Some(Value::String(text)) if text.is_empty() => None,
        Some(Value::String(text)) => Some(ToolContent::Text(text)),
        other => {
            let blocks = content_blocks(i, other, Part::Tool)?;
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

/// A message's `content` (a string or parts) as blocks; empty text is dropped.
fn content_blocks(i: usize, content: Option<Value>, role: Part) -> Result<Vec<Block>, ConvertError> {
    match content {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(text)) if text.is_empty() => Ok(Vec::new()),
        Some(Value::String(text)) => Ok(vec![Block::Text {
            text,
            cache_control: None,
        }]),
        Some(Value::Array(parts)) => {
            let mut blocks = Vec::with_capacity(parts.len());
            for (j, part) in parts.into_iter().enumerate() {
                if let Some(block) = content_part(i, j, part, role)? {
                    blocks.push(block);
                }
            }
            Ok(blocks)
        }
        Some(_) => Err(err(format!(
            "messages[{i}].content must be a string or an array of content parts"
        ))),
    }
}

fn content_part(i: usize, j: usize, part: Value, role: Part) -> Result<Option<Block>, ConvertError> {
    let at = || format!("messages[{i}].content[{j}]");
    let Value::Object(mut part) = part else {
        return Err(err(format!("{} must be an object", at())));
    };
    let kind = match part.remove("type") {
        Some(Value::String(kind)) => kind,
        _ => return Err(err(format!("{}.type is required", at()))),
    };
    let cache_control = part.remove("cache_control").filter(Value::is_object);
    match (kind.as_str(), role) {
        ("text", _) | ("refusal", Part::Assistant) => {
            let text = match part.remove(kind.as_str()) {
                Some(Value::String(text)) => text,
                _ => return Err(err(format!("{}.{kind} must be a string", at()))),
            };
            Ok((!text.is_empty()).then_some(Block::Text { text, cache_control }))
        }
        ("image_url", Part::User | Part::Tool) => {
            let url = match part.remove("image_url") {
                Some(Value::Object(mut image)) => match image.remove("url") {
                    Some(Value::String(url)) => url,
                    _ => return Err(err(format!("{}.image_url.url is required", at()))),
                },
                Some(Value::String(url)) => url,
                _ => return Err(err(format!("{}.image_url is required", at()))),
            };
            let source = image_source(url).map_err(|m| err(format!("{}: {m}", at())))?;
            Ok(Some(Block::Image { source, cache_control }))
        }
        ("file", Part::User) => {
            let Some(Value::Object(file)) = part.remove("file") else {
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
fn image_source(url: String) -> Result<Source, String> {
    if has_prefix(&url, "data:") {
        let (media_type, data) = data_url(url)?;
        let media_type = if media_type == "image/jpg" {
            "image/jpeg".to_owned()
        } else {
            media_type
        };
        if !IMAGE_TYPES.contains(&media_type.as_str()) {
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
fn document(mut file: Map<String, Value>, cache_control: Option<Value>) -> Result<Block, String> {
    let data = match file.remove("file_data") {
        Some(Value::String(data)) => data,
        _ if file.get("file_id").is_some_and(|v| !v.is_null()) => {
            return Err(
                "file_id references are not supported through this relay; send the file inline as file_data \
                 (a base64 PDF data: URL)"
                    .to_owned(),
            );
        }
        _ => return Err("file.file_data is required".to_owned()),
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
    let title = match file.remove("filename") {
        Some(Value::String(name)) if !name.is_empty() => Some(name),
        _ => None,
    };
    Ok(Block::Document {
        source: Source::Base64 { media_type, data },
        title,
        cache_control,
    })
}

/// `s` starts with the ASCII `prefix`, in any case.
fn has_prefix(s: &str, prefix: &str) -> bool {
    s.get(..prefix.len())
        .is_some_and(|head| head.eq_ignore_ascii_case(prefix))
}

/// A base64 `data:` URL's media type (lowercase) and data; the data keeps the URL's allocation.
fn data_url(mut url: String) -> Result<(String, String), String> {
    let Some(comma) = url.find(',') else {
        return Err("malformed data: URL (no comma)".to_owned());
    };
    let header = url.get("data:".len()..comma).unwrap_or_default();
    let mut params = header.split(';');
    let media_type = params.next().unwrap_or_default().trim().to_ascii_lowercase();
    if !params.any(|p| p.trim().eq_ignore_ascii_case("base64")) {
        return Err("a data: URL must be base64-encoded (data:<type>;base64,...)".to_owned());
    }
    url.replace_range(..=comma, "");
    Ok((media_type, url))
}

fn convert_tools(tools: Option<Value>) -> Result<Vec<Tool>, ConvertError> {
    let items = match tools {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(items)) => items,
        Some(_) => return Err(err("tools must be an array")),
    };
    items
        .into_iter()
        .enumerate()
        .map(|(k, tool)| convert_tool(k, tool))
        .collect()
}

fn convert_tool(k: usize, tool: Value) -> Result<Tool, ConvertError> {
    let Value::Object(mut tool) = tool else {
        return Err(err(format!("tools[{k}] must be an object")));
    };
    match tool.get("type").and_then(Value::as_str) {
        Some("function") => {}
        Some(other) => {
            return Err(err(format!(
                "tools[{k}]: tool type '{other}' is not supported through this relay; only function tools are"
            )));
        }
        None => return Err(err(format!("tools[{k}].type is required"))),
    }
    let Some(Value::Object(mut function)) = tool.remove("function") else {
        return Err(err(format!("tools[{k}].function is required")));
    };
    let name = match function.remove("name") {
        Some(Value::String(name)) if !name.is_empty() => name,
        _ => return Err(err(format!("tools[{k}].function.name is required"))),
    };
    let description = match function.remove("description") {
        Some(Value::String(d)) if !d.is_empty() => Some(d),
        None | Some(Value::Null) | Some(Value::String(_)) => None,
        Some(_) => return Err(err(format!("tools[{k}].function.description must be a string"))),
    };
    let input_schema = match function.remove("parameters") {
        None | Some(Value::Null) => {
            let mut schema = Map::new();
            schema.insert("type".to_owned(), Value::from("object"));
            schema.insert("properties".to_owned(), Value::Object(Map::new()));
            Value::Object(schema)
        }
        Some(Value::Object(mut schema)) => {
            if !schema.contains_key("type") {
                schema.insert("type".to_owned(), Value::from("object"));
            }
            Value::Object(schema)
        }
        Some(_) => {
            return Err(err(format!(
                "tools[{k}].function.parameters must be a JSON Schema object"
            )));
        }
    };
    Ok(Tool {
        name,
        description,
        input_schema,
    })
}

/// `tool_choice` as Anthropic's; `allowed_tools` narrows `tools` to the ones it names.
fn convert_tool_choice(choice: Option<Value>, tools: &mut Vec<Tool>) -> Result<Option<ToolChoice>, ConvertError> {
    let mut choice = match choice {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(mode)) => return mode_choice(&mode).map(Some),
        Some(Value::Object(choice)) => choice,
        Some(_) => return Err(err("tool_choice must be a string or an object")),
    };
    match choice.get("type").and_then(Value::as_str) {
        Some("function") => {
            let name = match choice.remove("function") {
                Some(Value::Object(mut f)) => match f.remove("name") {
                    Some(Value::String(name)) => name,
                    _ => return Err(err("tool_choice.function.name is required")),
                },
                _ => return Err(err("tool_choice.function is required")),
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
            let Some(Value::Object(allowed)) = choice.get("allowed_tools") else {
                return Err(err("tool_choice.allowed_tools is required"));
            };
            let mode = allowed.get("mode").and_then(Value::as_str).unwrap_or("auto");
            let kind = match mode {
                "auto" => "auto",
                "required" => "any",
                other => {
                    return Err(err(format!(
                        "tool_choice.allowed_tools.mode '{other}' is not supported"
                    )));
                }
            };
            let Some(Value::Array(list)) = allowed.get("tools") else {
                return Err(err("tool_choice.allowed_tools.tools is required"));
            };
            let mut names = Vec::with_capacity(list.len());
            for entry in list {
                let name = entry
                    .get("function")
                    .and_then(|f| f.get("name"))
                    .or_else(|| entry.get("name"))
                    .and_then(Value::as_str)
                    .ok_or_else(|| {
                        err("tool_choice.allowed_tools.tools: only function tools (with a name) are supported")
                    })?;
                if !tools.iter().any(|t| t.name == name) {
                    return Err(err(format!(
                        "tool_choice.allowed_tools names function '{name}', which is not in tools"
                    )));
                }
                names.push(name);
            }
            tools.retain(|t| names.contains(&t.name.as_str()));
            Ok(Some(ToolChoice::of(kind)))
        }
        Some(other) => Err(err(format!("tool_choice type '{other}' is not supported"))),
        None => Err(err("tool_choice.type is required")),
    }
}

fn mode_choice(mode: &str) -> Result<ToolChoice, ConvertError> {
    match mode {
        "auto" => Ok(ToolChoice::of("auto")),
        "none" => Ok(ToolChoice::of("none")),
        "required" => Ok(ToolChoice::of("any")),
        other => Err(err(format!(
            "tool_choice '{other}' is not supported; use auto, none, required or a named function"
        ))),
    }
}
