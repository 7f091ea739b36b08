//! The OpenAI Chat Completions request, as the Chat converters read it: one typed view of the
//! body, borrowed from it (`Cow<str>` for strings, `&RawValue` for the members whose shape the
//! converters read each their own way), and the readers they share for its parts.
//!
//! - [`read`]: the body as a [`ChatRequest`] and the [`ChatFacts`] the answer needs. A body that
//!   is not JSON, not a JSON object, or has a member of the wrong JSON type is a [`ReadError`]
//!   naming the member, whichever converter reads it (also one that ignores that member); each
//!   converter words it, its [`Display`](std::fmt::Display) being the common wording.
//! - Every member a converter may want to name as missing is an `Option`; the only required ones
//!   are a message's `role`, a content part's `type` and `response_format.type`.
//! - [`content`]: a message's `content` (a string, or an array of parts) as text and other parts.
//! - [`image_url`], [`arguments`], [`tool_call`], [`function_tool`], [`tool_choice`],
//!   [`allowed_names`], [`stop_sequences`], [`data_url`]: what several converters read, or check,
//!   the same way.
//!
//! What a converter supports, refuses or ignores, and in which words, stays in the converter.

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::convert::ConvertError;

/// What the relay must remember of the client's Chat request to answer it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChatFacts {
    /// The client asked for a stream (`"stream":true`); otherwise it wants one `chat.completion`.
    pub stream: bool,
    /// The client asked for the usage chunk (`stream_options.include_usage`).
    pub include_usage: bool,
}

/// A refusal of the request, written by a converter.
pub fn err(message: impl Into<String>) -> ConvertError {
    ConvertError(message.into())
}

/// The common words for a member the converter needs and the request lacks (`at` is where it
/// should be, `.` for the body).
pub fn missing(at: &str, field: &str) -> ConvertError {
    err(format!(
        "invalid Chat Completions request at `{at}`: missing field `{field}`"
    ))
}

// ---------------------------------------------------------------------------------------------
// The request
// ---------------------------------------------------------------------------------------------

/// The members of a Chat request the converters read; the others are ignored.
#[derive(Deserialize)]
pub struct ChatRequest<'a> {
    #[serde(borrow, default)]
    pub messages: Option<Vec<ChatMessage<'a>>>,
    #[serde(default)]
    pub stream: Option<bool>,
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    #[serde(borrow, default)]
    pub tools: Option<Vec<ChatTool<'a>>>,
    /// A mode string or an object: see [`tool_choice`].
    #[serde(borrow, default)]
    pub tool_choice: Option<&'a RawValue>,
    #[serde(default)]
    pub parallel_tool_calls: Option<bool>,
    /// Legacy function calling.
    #[serde(borrow, default)]
    pub functions: Option<Vec<ChatFunction<'a>>>,
    /// Legacy function calling: like `tool_choice`.
    #[serde(borrow, default)]
    pub function_call: Option<&'a RawValue>,
    #[serde(default)]
    pub max_tokens: Option<u64>,
    #[serde(default)]
    pub max_completion_tokens: Option<u64>,
    #[serde(default)]
    pub temperature: Option<f64>,
    #[serde(default)]
    pub top_p: Option<f64>,
    #[serde(default)]
    pub top_k: Option<u64>,
    /// A string or a list of strings: see [`stop_sequences`].
    #[serde(borrow, default)]
    pub stop: Option<&'a RawValue>,
    #[serde(default)]
    pub n: Option<u64>,
    #[serde(default)]
    pub presence_penalty: Option<f64>,
    #[serde(default)]
    pub frequency_penalty: Option<f64>,
    #[serde(default)]
    pub seed: Option<i64>,
    #[serde(borrow, default)]
    pub response_format: Option<ResponseFormat<'a>>,
    #[serde(borrow, default)]
    pub reasoning_effort: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub verbosity: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub prompt_cache_key: Option<Cow<'a, str>>,
    #[serde(default)]
    pub logprobs: Option<bool>,
    #[serde(default)]
    pub top_logprobs: Option<u64>,
    #[serde(borrow, default)]
    pub logit_bias: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub modalities: Option<Vec<Cow<'a, str>>>,
    #[serde(borrow, default)]
    pub audio: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub web_search_options: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub user: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub safety_identifier: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: Option<bool>,
}

#[derive(Deserialize)]
pub struct ChatMessage<'a> {
    #[serde(borrow)]
    pub role: Cow<'a, str>,
    /// A string or an array of parts: see [`content`].
    #[serde(borrow, default)]
    pub content: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub refusal: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub tool_calls: Option<Vec<ChatToolCall<'a>>>,
    #[serde(borrow, default)]
    pub tool_call_id: Option<Cow<'a, str>>,
    /// Legacy function calling: the call an assistant message made.
    #[serde(borrow, default)]
    pub function_call: Option<ChatFunctionCall<'a>>,
    /// The function a legacy `function` message answers.
    #[serde(borrow, default)]
    pub name: Option<Cow<'a, str>>,
    /// An earlier audio answer.
    #[serde(borrow, default)]
    pub audio: Option<&'a RawValue>,
}

#[derive(Deserialize)]
pub struct ChatToolCall<'a> {
    #[serde(borrow, default)]
    pub id: Option<Cow<'a, str>>,
    #[serde(rename = "type", borrow, default)]
    pub kind: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub function: Option<ChatFunctionCall<'a>>,
}

#[derive(Deserialize)]
pub struct ChatFunctionCall<'a> {
    #[serde(borrow, default)]
    pub name: Option<Cow<'a, str>>,
    /// A JSON string holding an object (some clients send the object): see [`arguments`].
    #[serde(borrow, default)]
    pub arguments: Option<&'a RawValue>,
}

/// One part of an array `content`.
#[derive(Deserialize)]
pub struct ChatPart<'a> {
    #[serde(rename = "type", borrow)]
    pub kind: Cow<'a, str>,
    #[serde(borrow, default)]
    pub text: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub refusal: Option<Cow<'a, str>>,
    /// An object with `url` (and `detail`), or the URL itself: see [`image_url`].
    #[serde(borrow, default)]
    pub image_url: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub input_audio: Option<ChatAudio<'a>>,
    #[serde(borrow, default)]
    pub file: Option<ChatFile<'a>>,
    /// Anthropic's prompt caching mark, which some clients put on Chat parts.
    #[serde(borrow, default)]
    pub cache_control: Option<&'a RawValue>,
}

/// An `image_url` object, read strictly.
#[derive(Deserialize)]
pub struct ChatImage<'a> {
    #[serde(borrow, default)]
    pub url: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub detail: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
pub struct ChatAudio<'a> {
    #[serde(borrow, default)]
    pub data: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub format: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
pub struct ChatFile<'a> {
    #[serde(borrow, default)]
    pub file_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub file_data: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub filename: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
pub struct ChatTool<'a> {
    #[serde(rename = "type", borrow, default)]
    pub kind: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub function: Option<ChatFunction<'a>>,
}

#[derive(Deserialize)]
pub struct ChatFunction<'a> {
    #[serde(borrow, default)]
    pub name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub description: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub parameters: Option<&'a RawValue>,
    #[serde(default)]
    pub strict: Option<bool>,
}

#[derive(Deserialize)]
pub struct ResponseFormat<'a> {
    #[serde(rename = "type", borrow)]
    pub kind: Cow<'a, str>,
    #[serde(borrow, default)]
    pub json_schema: Option<JsonSchema<'a>>,
}

#[derive(Deserialize)]
pub struct JsonSchema<'a> {
    #[serde(borrow, default)]
    pub name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub description: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub schema: Option<&'a RawValue>,
    #[serde(default)]
    pub strict: Option<bool>,
}

/// A JSON string, borrowed from the body when it has no escapes.
#[derive(Deserialize)]
pub struct Text<'a>(#[serde(borrow)] pub Cow<'a, str>);

// ---------------------------------------------------------------------------------------------
// Reading
// ---------------------------------------------------------------------------------------------

/// A body, or a member of it, that could not be read as a Chat request: where, and serde's
/// words.
#[derive(Debug)]
pub struct ReadError {
    /// The member (`messages[0].role`; `.` for the body); `None` for bytes after the body.
    path: Option<String>,
    error: serde_json::Error,
}

impl ReadError {
    /// Where: `messages[0].role`, `.` for the body; `None` for bytes after the body.
    pub fn path(&self) -> Option<&str> {
        self.path.as_deref()
    }

    /// serde's words.
    pub fn error(&self) -> &serde_json::Error {
        &self.error
    }

    /// The body is not JSON (or has bytes after it).
    pub fn is_syntax(&self) -> bool {
        use serde_json::error::Category;
        matches!(self.error.classify(), Category::Syntax | Category::Eof | Category::Io)
    }

    /// The required member found missing (`role` in "missing field `role`"), if that is what is
    /// wrong.
    pub fn missing_field(&self) -> Option<String> {
        // serde's own wording of a missing field (`de::Error::missing_field`).
        let message = self.error.to_string();
        Some(message.strip_prefix("missing field `")?.split('`').next()?.to_owned())
    }
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.path {
            Some(path) => write!(f, "invalid Chat Completions request at `{path}`: {}", self.error),
            None => write!(f, "invalid Chat Completions request: {}", self.error),
        }
    }
}

impl From<ReadError> for ConvertError {
    fn from(e: ReadError) -> Self {
        ConvertError(e.to_string())
    }
}

/// A member's path with its indices left out (`messages[].role`), to match it on.
pub fn without_indices(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut in_index = false;
    for c in path.chars() {
        match c {
            '[' => {
                in_index = true;
                out.push(c);
            }
            ']' => {
                in_index = false;
                out.push(c);
            }
            _ if in_index => {}
            _ => out.push(c),
        }
    }
    out
}

/// The body as a Chat request, and what the answer needs of it.
pub fn read(body: &[u8]) -> Result<(ChatRequest<'_>, ChatFacts), ReadError> {
    if body.trim_ascii_start().first() == Some(&b'[') {
        // serde reads a struct from an array of its fields in order too: not a request.
        let error = match serde_json::from_slice::<serde::de::IgnoredAny>(body) {
            Err(e) => e,
            Ok(_) => serde::de::Error::invalid_type(serde::de::Unexpected::Seq, &"a JSON object"),
        };
        return Err(ReadError {
            path: Some(".".to_owned()),
            error,
        });
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let chat: ChatRequest<'_> = serde_path_to_error::deserialize(&mut de).map_err(|e| ReadError {
        path: Some(e.path().to_string()),
        error: e.into_inner(),
    })?;
    de.end().map_err(|error| ReadError { path: None, error })?;
    let facts = ChatFacts {
        stream: chat.stream.unwrap_or(false),
        include_usage: chat
            .stream_options
            .as_ref()
            .and_then(|o| o.include_usage)
            .unwrap_or(false),
    };
    Ok((chat, facts))
}

/// A member kept raw, read as `T`; errors name it as `at` (the path of `raw` in the body).
pub fn read_member<'a, T: Deserialize<'a>>(raw: &'a RawValue, at: &str) -> Result<T, ReadError> {
    let mut de = serde_json::Deserializer::from_str(raw.get());
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let inner = e.path().to_string();
        let path = match inner.as_str() {
            "." => at.to_owned(),
            seq if seq.starts_with('[') => format!("{at}{seq}"),
            member => format!("{at}.{member}"),
        };
        ReadError {
            path: Some(path),
            error: e.into_inner(),
        }
    })
}

// ---------------------------------------------------------------------------------------------
// Content
// ---------------------------------------------------------------------------------------------

/// A message's `content`: a string, or parts (none when absent or `null`).
pub enum Content<'a> {
    Text(Cow<'a, str>),
    Parts(Vec<ContentPart<'a>>),
}

impl<'a> Content<'a> {
    /// The content as parts: a string is one text part.
    pub fn into_parts(self) -> Vec<ContentPart<'a>> {
        match self {
            Content::Text(text) => vec![ContentPart::Text {
                text,
                cache_control: None,
            }],
            Content::Parts(parts) => parts,
        }
    }
}

/// A content part: text (possibly empty), or another kind left to the role to accept.
pub enum ContentPart<'a> {
    Text {
        text: Cow<'a, str>,
        cache_control: Option<&'a RawValue>,
    },
    Other(ChatPart<'a>),
}

/// Why a message's `content` could not be read.
pub enum ContentError {
    /// Neither a string nor an array (serde's words for it as an array).
    NotTextOrParts(ReadError),
    /// An array of parts that are not parts: where (under `messages[i].content`), and what.
    Invalid(ReadError),
    /// The part at this index is of type `text` but has no `text` string.
    NoText(usize),
}

/// The `content` of message `i`.
pub fn content(i: usize, raw: Option<&RawValue>) -> Result<Content<'_>, ContentError> {
    let Some(raw) = raw else {
        return Ok(Content::Parts(Vec::new()));
    };
    let json = raw.get();
    let at = format!("messages[{i}].content");
    if json == "null" {
        return Ok(Content::Parts(Vec::new()));
    }
    if json.starts_with('"') {
        let Text(text) = read_member(raw, &at).map_err(ContentError::Invalid)?;
        return Ok(Content::Text(text));
    }
    let parts: Vec<ChatPart<'_>> = read_member(raw, &at).map_err(|e| {
        if json.starts_with('[') {
            ContentError::Invalid(e)
        } else {
            ContentError::NotTextOrParts(e)
        }
    })?;
    let mut out = Vec::with_capacity(parts.len());
    for (j, mut part) in parts.into_iter().enumerate() {
        if part.kind != "text" {
            out.push(ContentPart::Other(part));
            continue;
        }
        let Some(text) = part.text.take() else {
            return Err(ContentError::NoText(j));
        };
        out.push(ContentPart::Text {
            text,
            cache_control: part.cache_control,
        });
    }
    Ok(Content::Parts(out))
}

/// An `image_url` member, read leniently: the URL string, or an object's `url` string (anything
/// else in the object, `detail` included, is left alone).
pub enum ImageUrl<'a> {
    Url(Cow<'a, str>),
    /// An object without a `url` string.
    NoUrl,
    /// Neither a string nor an object.
    Invalid,
}

/// Reads an `image_url` member.
pub fn image_url(raw: &RawValue) -> ImageUrl<'_> {
    #[derive(Deserialize)]
    struct Object<'a> {
        #[serde(borrow, default)]
        url: Option<&'a RawValue>,
    }
    fn text(raw: &RawValue) -> Option<Cow<'_, str>> {
        serde_json::from_str::<Text<'_>>(raw.get()).ok().map(|t| t.0)
    }
    match raw.get().as_bytes().first() {
        Some(b'"') => text(raw).map_or(ImageUrl::Invalid, ImageUrl::Url),
        Some(b'{') => serde_json::from_str::<Object<'_>>(raw.get())
            .ok()
            .and_then(|o| o.url)
            .and_then(text)
            .map_or(ImageUrl::NoUrl, ImageUrl::Url),
        _ => ImageUrl::Invalid,
    }
}

// ---------------------------------------------------------------------------------------------
// Tool calls and tools
// ---------------------------------------------------------------------------------------------

/// A tool call's `arguments`, read as the JSON object they hold.
pub enum Arguments<'a> {
    /// None, `null` or blank: no arguments (`{}`).
    Empty,
    /// The object itself, sent instead of its JSON text.
    Object(&'a RawValue),
    /// The object the JSON text holds.
    Text(Box<RawValue>),
}

/// Why a call's `arguments` are not a JSON object.
pub enum ArgumentsError {
    /// Neither a string nor an object.
    NotString,
    /// A string that is not JSON.
    NotJson(serde_json::Error),
    /// A string holding JSON that is not an object.
    NotObject,
}

/// Reads a call's `arguments`.
pub fn arguments(raw: Option<&RawValue>) -> Result<Arguments<'_>, ArgumentsError> {
    let Some(raw) = raw else { return Ok(Arguments::Empty) };
    let json = raw.get();
    if json == "null" {
        return Ok(Arguments::Empty);
    }
    if json.starts_with('{') {
        // Some clients send the object itself rather than its JSON text.
        return Ok(Arguments::Object(raw));
    }
    let Text(text) = serde_json::from_str(json).map_err(|_| ArgumentsError::NotString)?;
    if text.trim().is_empty() {
        return Ok(Arguments::Empty);
    }
    let args = RawValue::from_string(text.into_owned()).map_err(ArgumentsError::NotJson)?;
    if !args.get().trim_start().starts_with('{') {
        return Err(ArgumentsError::NotObject);
    }
    Ok(Arguments::Text(args))
}

/// A `tool_calls` entry with its id and function name checked.
pub struct Call<'a> {
    pub id: Cow<'a, str>,
    pub name: Cow<'a, str>,
    /// See [`arguments`].
    pub arguments: Option<&'a RawValue>,
}

/// The call at `at` (`messages[i].tool_calls[k]`): a function call (of type `function`, or
/// untyped) with an id and a named function.
pub fn tool_call<'a>(call: ChatToolCall<'a>, at: &str) -> Result<Call<'a>, ConvertError> {
    match call.kind.as_deref() {
        None | Some("function") => {}
        Some(other) => {
            return Err(err(format!(
                "{at}: tool call type '{other}' is not supported; only function calls are"
            )));
        }
    }
    let Some(id) = call.id.filter(|id| !id.is_empty()) else {
        return Err(err(format!("{at}.id is required")));
    };
    let Some(function) = call.function else {
        return Err(err(format!("{at}.function is required")));
    };
    let Some(name) = function.name.filter(|name| !name.is_empty()) else {
        return Err(err(format!("{at}.function.name is required")));
    };
    Ok(Call {
        id,
        name,
        arguments: function.arguments,
    })
}

/// A function tool (of `tools`, or of legacy `functions`) with its name checked.
pub struct NamedFunction<'a> {
    pub name: Cow<'a, str>,
    /// `None` when empty.
    pub description: Option<Cow<'a, str>>,
    pub parameters: Option<&'a RawValue>,
}

/// `function`, found at `at`, with a name.
pub fn named_function<'a>(function: ChatFunction<'a>, at: &str) -> Result<NamedFunction<'a>, ConvertError> {
    let Some(name) = function.name.filter(|name| !name.is_empty()) else {
        return Err(err(format!("{at}.name is required")));
    };
    Ok(NamedFunction {
        name,
        description: function.description.filter(|d| !d.is_empty()),
        parameters: function.parameters,
    })
}

/// `tools[k]` as a function tool: of type `function` (another type refused in the words of
/// `other_type`), with a named function.
pub fn function_tool<'a>(
    k: usize,
    tool: ChatTool<'a>,
    other_type: impl FnOnce(&str) -> ConvertError,
) -> Result<NamedFunction<'a>, ConvertError> {
    match tool.kind.as_deref() {
        Some("function") => {}
        Some(other) => return Err(other_type(other)),
        None => return Err(err(format!("tools[{k}].type is required"))),
    }
    let Some(function) = tool.function else {
        return Err(err(format!("tools[{k}].function is required")));
    };
    named_function(function, &format!("tools[{k}].function"))
}

/// `tool_choice` (or legacy `function_call`) in its object form.
#[derive(Deserialize)]
pub struct ChatToolChoice<'a> {
    #[serde(rename = "type", borrow, default)]
    pub kind: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub function: Option<Named<'a>>,
    /// Legacy `function_call: {"name": …}`.
    #[serde(borrow, default)]
    pub name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub allowed_tools: Option<AllowedTools<'a>>,
}

#[derive(Deserialize)]
pub struct Named<'a> {
    #[serde(borrow, default)]
    pub name: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
pub struct AllowedTools<'a> {
    #[serde(borrow, default)]
    pub mode: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub tools: Option<Vec<AllowedTool<'a>>>,
}

#[derive(Deserialize)]
pub struct AllowedTool<'a> {
    #[serde(borrow, default)]
    pub function: Option<Named<'a>>,
    #[serde(borrow, default)]
    pub name: Option<Cow<'a, str>>,
}

impl<'a> AllowedTool<'a> {
    /// The function named: `function.name`, else `name`.
    pub fn name(self) -> Option<Cow<'a, str>> {
        self.function.and_then(|f| f.name).or(self.name)
    }
}

/// The functions an `allowed_tools` list names, each one of the tools (`known`); `at` is the
/// member (`tool_choice`).
pub fn allowed_names<'a>(
    list: Vec<AllowedTool<'a>>,
    at: &str,
    known: impl Fn(&str) -> bool,
) -> Result<Vec<Cow<'a, str>>, ConvertError> {
    let mut names = Vec::with_capacity(list.len());
    for tool in list {
        let name = tool.name().ok_or_else(|| {
            err(format!(
                "{at}.allowed_tools.tools: only function tools (with a name) are supported"
            ))
        })?;
        if !known(&name) {
            return Err(err(format!(
                "{at}.allowed_tools names function '{name}', which is not in tools"
            )));
        }
        names.push(name);
    }
    Ok(names)
}

/// A `tool_choice` (or `function_call`): a mode, or an object.
pub enum ToolChoice<'a> {
    Mode(Cow<'a, str>),
    Object(ChatToolChoice<'a>),
}

/// Reads a `tool_choice` (or `function_call`) member named `at`; `None` for `null`.
pub fn tool_choice<'a>(raw: &'a RawValue, at: &str) -> Result<Option<ToolChoice<'a>>, ReadError> {
    match raw.get() {
        "null" => Ok(None),
        json if json.starts_with('"') => read_member(raw, at).map(|Text(mode)| Some(ToolChoice::Mode(mode))),
        _ => read_member(raw, at).map(|choice| Some(ToolChoice::Object(choice))),
    }
}

// ---------------------------------------------------------------------------------------------
// Parameters and data
// ---------------------------------------------------------------------------------------------

/// `stop`: a string or a list of strings, empty ones left out.
pub fn stop_sequences(raw: Option<&RawValue>) -> Result<Vec<Cow<'_, str>>, ConvertError> {
    let Some(raw) = raw else { return Ok(Vec::new()) };
    let json = raw.get();
    let invalid = || err("stop must be a string or an array of strings");
    let all: Vec<Cow<'_, str>> = if json == "null" {
        Vec::new()
    } else if json.starts_with('"') {
        let Text(stop) = serde_json::from_str(json).map_err(|_| invalid())?;
        vec![stop]
    } else {
        let list: Vec<Text<'_>> = serde_json::from_str(json).map_err(|_| invalid())?;
        list.into_iter().map(|t| t.0).collect()
    };
    Ok(all.into_iter().filter(|s| !s.is_empty()).collect())
}

/// `s` starts with the ASCII `prefix`, in any case.
pub fn has_prefix(s: &str, prefix: &str) -> bool {
    s.get(..prefix.len())
        .is_some_and(|head| head.eq_ignore_ascii_case(prefix))
}

/// Why a `data:` URL could not be read.
#[derive(Debug, PartialEq, Eq)]
pub enum DataUrlError {
    /// No `,` before the data.
    NoComma,
    /// Not marked `;base64`.
    NotBase64,
}

/// A base64 `data:` URL's media type (lowercase; empty when the URL names none) and data, the
/// data borrowed when the URL is. The caller has checked that `url` starts with `data:`.
pub fn data_url(url: Cow<'_, str>) -> Result<(Cow<'_, str>, Cow<'_, str>), DataUrlError> {
    let comma = url.find(',').ok_or(DataUrlError::NoComma)?;
    let header = url.get("data:".len()..comma).unwrap_or_default();
    let mut params = header.split(';');
    let media_type = params.next().unwrap_or_default().trim().to_ascii_lowercase();
    if !params.any(|p| p.trim().eq_ignore_ascii_case("base64")) {
        return Err(DataUrlError::NotBase64);
    }
    let data = match url {
        Cow::Borrowed(url) => Cow::Borrowed(url.get(comma + 1..).unwrap_or_default()),
        Cow::Owned(mut url) => {
            url.replace_range(..=comma, "");
            Cow::Owned(url)
        }
    };
    Ok((Cow::Owned(media_type), data))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_errors_name_the_member() {
        let e = read(br#"{"messages":[{"role":3}]}"#).err().unwrap();
        assert_eq!(e.path(), Some("messages[0].role"));
        assert_eq!(
            without_indices("messages[0].tool_calls[12].id"),
            "messages[].tool_calls[].id"
        );
        let e = read(br#"{"messages":[{"content":"x"}]}"#).err().unwrap();
        assert_eq!(
            (e.path(), e.missing_field().as_deref()),
            (Some("messages[0]"), Some("role"))
        );
        for body in [&b"[1]"[..], b"5"] {
            let e = read(body).err().unwrap();
            assert_eq!(e.path(), Some("."));
            assert!(!e.is_syntax());
        }
        assert!(read(b"[1,").err().unwrap().is_syntax());
        assert!(read(b"{\"messages\":").err().unwrap().is_syntax());
        let e = read(b"{} x").err().unwrap();
        assert!(e.is_syntax() && e.path().is_none());
    }

    #[test]
    fn content_parts_are_read_with_their_place() {
        let raw: &RawValue = serde_json::from_str(r#"[{"type":"text","text":"a"},{"type":"text","text":5}]"#).unwrap();
        let Err(ContentError::Invalid(e)) = content(2, Some(raw)) else {
            panic!("read");
        };
        assert_eq!(e.path(), Some("messages[2].content[1].text"));
        let raw: &RawValue = serde_json::from_str(r#"[{"type":"text"}]"#).unwrap();
        assert!(matches!(content(0, Some(raw)), Err(ContentError::NoText(0))));
        let raw: &RawValue = serde_json::from_str("5").unwrap();
        assert!(matches!(content(0, Some(raw)), Err(ContentError::NotTextOrParts(_))));
    }

    #[test]
    fn image_urls_are_read_leniently() {
        let url = |json: &str| {
            let raw: &RawValue = serde_json::from_str(json).unwrap();
            match image_url(raw) {
                ImageUrl::Url(url) => Ok(url.into_owned()),
                ImageUrl::NoUrl => Err("no url"),
                ImageUrl::Invalid => Err("invalid"),
            }
        };
        assert_eq!(url(r#""https://a/b.png""#), Ok("https://a/b.png".to_owned()));
        assert_eq!(url(r#"{"url":"https://a","detail":5}"#), Ok("https://a".to_owned()));
        assert_eq!(url(r#"{"url":5}"#), Err("no url"));
        assert_eq!(url(r#"{"detail":"low"}"#), Err("no url"));
        assert_eq!(url("5"), Err("invalid"));
    }

    #[test]
    fn data_urls() {
        let (media, data) = data_url(Cow::Borrowed("data:Image/PNG;base64,AAA")).unwrap();
        assert_eq!((media.as_ref(), data.as_ref()), ("image/png", "AAA"));
        assert!(matches!(data_url(Cow::Borrowed("data:;base64,AAA")), Ok((m, _)) if m.is_empty()));
        assert_eq!(
            data_url(Cow::Borrowed("data:image/png,AAA")).err(),
            Some(DataUrlError::NotBase64)
        );
        assert_eq!(
            data_url(Cow::Borrowed("data:image/png")).err(),
            Some(DataUrlError::NoComma)
        );
    }
}
