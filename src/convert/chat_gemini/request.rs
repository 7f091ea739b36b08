//! A Chat Completions request, rewritten as a Gemini API `GenerateContentRequest` (the model is
//! not in the body: it goes in the URL path).
//!
//! Messages:
//!
//! - `system` and `developer` messages, wherever they stand, become `systemInstruction`: each of
//!   their texts one part, in order. Only text is accepted there.
//! - `user` messages become `user` turns: `text` parts; `image_url` as `inlineData` (a base64
//!   `data:` URL) or `fileData` (an `http(s)` URL, its `mimeType` guessed from the file
//!   extension and left out when the extension says nothing: the Gemini API then reads it from
//!   the file); `input_audio` as `inlineData` (`audio/<format>`); `file` with inline `file_data`
//!   (a base64 `data:` URL) as `inlineData`. `file_id` references and other part types are
//!   refused. An image's `detail` is a cost hint and is not sent.
//! - `assistant` messages become `model` turns: their text (and `refusal`) as text parts, each
//!   `tool_calls` entry (or the legacy `function_call`) as a `functionCall` part with the call's
//!   id, name and `args` (its `arguments`, which must be a JSON object; empty arguments read as
//!   `{}`). Each `functionCall` part carries the thought signature Gemini documents for calls it
//!   did not sign itself (`skip_thought_signature_validator`): the Chat format cannot carry the
//!   model's signature back, and Gemini 3 refuses a replayed call without one.
//! - `tool` messages become `functionResponse` parts (`tool_call_id` → `id`, the name of the
//!   earlier call with that id → `name`; an unknown id is refused), consecutive ones in one
//!   `user` turn. The `response` is the content when it is a JSON object, else
//!   `{"output": <content>}`. The legacy `function` role becomes a `functionResponse` by its
//!   `name`.
//! - Consecutive messages of one role stay separate turns (Gemini accepts them). Empty text is
//!   dropped, and a message left without parts is skipped.
//!
//! Parameters:
//!
//! - `tools` (function tools only) and legacy `functions` → one `tools` entry of
//!   `functionDeclarations` (`parameters` as `parametersJsonSchema`, which takes full JSON Schema;
//!   left out when absent; `strict` is dropped). `tool_choice` (or legacy `function_call`):
//!   `auto` → `AUTO`, `none` → `NONE`, `required` → `ANY`, a named function → `ANY` with
//!   `allowedFunctionNames`; `allowed_tools` keeps only the declarations it names, with `AUTO`
//!   or `ANY`. Without tools, the choice is not sent. `parallel_tool_calls` is ignored.
//! - `generationConfig`: `max_completion_tokens` (else `max_tokens`) → `maxOutputTokens`;
//!   `temperature`, `top_p` → `topP`, `top_k` → `topK`, `stop` → `stopSequences`, `n` above 1 →
//!   `candidateCount`, `presence_penalty`, `frequency_penalty`, `seed`; `response_format`
//!   `json_object` → `responseMimeType: application/json`, `json_schema` → the same with
//!   `responseJsonSchema`.
//! - `reasoning_effort` → `thinkingConfig.thinkingBudget` of [`THINKING_BUDGETS`], with
//!   `includeThoughts` (so the thoughts come back as `reasoning_content`) unless `none`. The
//!   budget rather than `thinkingLevel` because the converter does not know the model and every
//!   current model accepts a budget: Gemini 2.5 only takes budgets (it refuses
//!   `thinkingLevel`), Gemini 3 takes budgets for backwards compatibility, whereas its levels
//!   differ by model (3 Pro refuses `minimal` and `medium`). `none` is a budget of 0, which the
//!   models that cannot stop thinking (2.5 Pro, 3 Pro) refuse with their own message.
//! - `stream_options.include_usage` is kept in [`ChatFacts`].
//!
//! Refused, because ignoring them would change the answer: `logprobs: true` (and
//! `top_logprobs`), a non-empty `logit_bias`, audio output (`modalities` with `audio`, `audio`),
//! `web_search_options`, non-function tools, unknown roles and part types. Other fields
//! (`user`, `metadata`, `store`, `service_tier`, `prediction`, `verbosity`, …) are ignored.

use std::borrow::Cow;

use bytes::Bytes;
use serde::Serialize;
use serde_json::value::RawValue;

use crate::convert::ConvertError;
use crate::convert::chat_in::{
    self, Arguments, ArgumentsError, ChatFacts, ChatMessage, ChatPart, ChatRequest, ChatTool, ContentError,
    ContentPart, ImageUrl, NamedFunction, ResponseFormat, ToolChoice, err, has_prefix, stop_sequences,
};

/// The thinking budget (in tokens) of each `reasoning_effort`: the budgets Google's own Chat
/// Completions layer uses for `low`, `medium` and `high`; `minimal` the least every 2.5 model
/// accepts short of none.
pub const THINKING_BUDGETS: &[(&str, u32)] = &[
    ("none", 0),
    ("minimal", 512),
    ("low", 1024),
    ("medium", 8192),
    ("high", 24576),
];

/// The thought signature Gemini documents for function calls it did not sign (history from
/// another model or rebuilt by the client).
const FOREIGN_SIGNATURE: &str = "skip_thought_signature_validator";

/// Chat Completions request JSON → Gemini `GenerateContentRequest` JSON (without the model).
pub fn request_to_gemini(body: &[u8]) -> Result<(Bytes, ChatFacts), ConvertError> {
    let (chat, facts) = chat_in::read(body)?;
    refuse_unsupported(&chat)?;

    let messages = chat.messages.unwrap_or_default();
    if messages.is_empty() {
        return Err(err("messages is required and must be a non-empty array"));
    }
    let mut conversation = Conversation::default();
    for (i, message) in messages.into_iter().enumerate() {
        conversation.message(i, message)?;
    }
    if conversation.contents.is_empty() {
        return Err(err(
            "messages must hold at least one user or assistant message with content (Gemini needs a conversation, \
             not only instructions)",
        ));
    }

    let mut declarations = Vec::new();
    for (k, tool) in chat.tools.into_iter().flatten().enumerate() {
        declarations.push(function_tool(k, tool)?);
    }
    for (k, function) in chat.functions.into_iter().flatten().enumerate() {
        let at = || format!("functions[{k}]");
        declarations.push(declaration(chat_in::named_function(function, &at())?, at)?);
    }
    let choice = match (chat.tool_choice, chat.function_call) {
        (Some(choice), _) => tool_choice(choice, "tool_choice", &mut declarations)?,
        (None, Some(choice)) => tool_choice(choice, "function_call", &mut declarations)?,
        (None, None) => None,
    };
    let (tools, tool_config) = if declarations.is_empty() {
        (Vec::new(), None)
    } else {
        (
            vec![Tool {
                function_declarations: declarations,
            }],
            choice.map(|function_calling_config| ToolConfig {
                function_calling_config,
            }),
        )
    };

    let generation_config = GenerationConfig {
        stop_sequences: stop_sequences(chat.stop)?,
        candidate_count: match chat.n {
            Some(0) => return Err(err("n must be at least 1")),
            Some(n) if n > 1 => Some(n),
            _ => None,
        },
        max_output_tokens: chat.max_completion_tokens.or(chat.max_tokens),
        temperature: chat.temperature,
        top_p: chat.top_p,
        top_k: chat.top_k,
        seed: chat.seed,
        presence_penalty: chat.presence_penalty,
        frequency_penalty: chat.frequency_penalty,
        response_mime_type: None,
        response_json_schema: None,
        thinking_config: chat.reasoning_effort.as_deref().map(thinking).transpose()?,
    };
    let generation_config = response_format(chat.response_format, generation_config)?;

    let out = GenerateContentRequest {
        contents: conversation.contents,
        system_instruction: (!conversation.system.is_empty()).then_some(SystemInstruction {
            parts: conversation.system,
        }),
        tools,
        tool_config,
        generation_config: (!generation_config.is_empty()).then_some(generation_config),
    };
    let json = serde_json::to_vec(&out).map_err(|e| err(format!("the request could not be written: {e}")))?;
    Ok((Bytes::from(json), facts))
}

/// Fields whose effect Gemini cannot give.
fn refuse_unsupported(chat: &ChatRequest<'_>) -> Result<(), ConvertError> {
    if chat.logprobs == Some(true) || chat.top_logprobs.is_some_and(|n| n > 0) {
        return Err(err(
            "logprobs / top_logprobs are not supported through this relay for Gemini models",
        ));
    }
    if chat
        .logit_bias
        .is_some_and(|b| !matches!(b.get().trim(), "{}" | "null"))
    {
        return Err(err("logit_bias is not supported by Gemini models"));
    }
    if chat.audio.is_some() || chat.modalities.iter().flatten().any(|m| m == "audio") {
        return Err(err(
            "audio output (modalities with \"audio\", audio) is not supported through this relay for Gemini models",
        ));
    }
    if chat.web_search_options.is_some() {
        return Err(err(
            "web_search_options is not supported through this relay for Gemini models",
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The Gemini request written
// ---------------------------------------------------------------------------------------------

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct GenerateContentRequest<'a> {
    contents: Vec<Content<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    system_instruction: Option<SystemInstruction<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tools: Vec<Tool<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_config: Option<ToolConfig<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    generation_config: Option<GenerationConfig<'a>>,
}

#[derive(Serialize)]
struct SystemInstruction<'a> {
    parts: Vec<Part<'a>>,
}

#[derive(Serialize)]
struct Content<'a> {
    role: &'static str,
    parts: Vec<Part<'a>>,
}

/// A Gemini part: exactly one of its data fields is set.
#[derive(Serialize, Default)]
#[serde(rename_all = "camelCase")]
struct Part<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<Cow<'a, str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    inline_data: Option<Blob<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    file_data: Option<FileData<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    function_call: Option<FunctionCall<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    function_response: Option<FunctionResponse<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    thought_signature: Option<&'static str>,
}

impl<'a> Part<'a> {
    fn text(text: Cow<'a, str>) -> Self {
        Part {
            text: Some(text),
            ..Part::default()
        }
    }

    fn inline(mime_type: Cow<'a, str>, data: Cow<'a, str>) -> Self {
        Part {
            inline_data: Some(Blob { mime_type, data }),
            ..Part::default()
        }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Blob<'a> {
    mime_type: Cow<'a, str>,
    data: Cow<'a, str>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct FileData<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    mime_type: Option<&'static str>,
    file_uri: Cow<'a, str>,
}

#[derive(Serialize)]
struct FunctionCall<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<Cow<'a, str>>,
    name: Cow<'a, str>,
    args: Json<'a>,
}

#[derive(Serialize)]
struct FunctionResponse<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<Cow<'a, str>>,
    name: Cow<'a, str>,
    response: Json<'a>,
}

/// A JSON object as the client wrote it, or `{"output": <text>}`.
#[derive(Serialize)]
#[serde(untagged)]
enum Json<'a> {
    Owned(Box<RawValue>),
    Borrowed(&'a RawValue),
    Output { output: Cow<'a, str> },
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Tool<'a> {
    function_declarations: Vec<FunctionDeclaration<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct FunctionDeclaration<'a> {
    name: Cow<'a, str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<Cow<'a, str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters_json_schema: Option<&'a RawValue>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ToolConfig<'a> {
    function_calling_config: FunctionCallingConfig<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct FunctionCallingConfig<'a> {
    mode: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    allowed_function_names: Option<[Cow<'a, str>; 1]>,
}

impl FunctionCallingConfig<'_> {
    fn mode(mode: &'static str) -> Self {
        FunctionCallingConfig {
            mode,
            allowed_function_names: None,
        }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct GenerationConfig<'a> {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    stop_sequences: Vec<Cow<'a, str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    candidate_count: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_output_tokens: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_k: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    seed: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    presence_penalty: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    frequency_penalty: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_mime_type: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_json_schema: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    thinking_config: Option<ThinkingConfig>,
}

impl GenerationConfig<'_> {
    fn is_empty(&self) -> bool {
        self.stop_sequences.is_empty()
            && self.candidate_count.is_none()
            && self.max_output_tokens.is_none()
            && self.temperature.is_none()
            && self.top_p.is_none()
            && self.top_k.is_none()
            && self.seed.is_none()
            && self.presence_penalty.is_none()
            && self.frequency_penalty.is_none()
            && self.response_mime_type.is_none()
            && self.response_json_schema.is_none()
            && self.thinking_config.is_none()
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ThinkingConfig {
    thinking_budget: u32,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    include_thoughts: bool,
}

// ---------------------------------------------------------------------------------------------
// Messages
// ---------------------------------------------------------------------------------------------

/// The conversation being written.
#[derive(Default)]
struct Conversation<'a> {
    system: Vec<Part<'a>>,
    contents: Vec<Content<'a>>,
    /// (id, name) of every tool call made so far, to name the results.
    calls: Vec<(Cow<'a, str>, Cow<'a, str>)>,
    /// The last turn holds only function responses: the next tool result joins it.
    in_results: bool,
}

impl<'a> Conversation<'a> {
    fn message(&mut self, i: usize, m: ChatMessage<'a>) -> Result<(), ConvertError> {
        let at = || format!("messages[{i}]");
        match m.role.as_ref() {
            "system" | "developer" => {
                for (j, part) in parts(i, m.content)?.into_iter().enumerate() {
                    match part {
                        ContentPart::Text { text, .. } => self.system.push(Part::text(text)),
                        ContentPart::Other(part) => {
                            return Err(err(format!(
                                "{}.content[{j}]: content part type '{}' is not supported in {} messages",
                                at(),
                                part.kind,
                                m.role
                            )));
                        }
                    }
                }
            }
            "user" => {
                let mut out = Vec::new();
                for (j, part) in parts(i, m.content)?.into_iter().enumerate() {
                    match part {
                        ContentPart::Text { text, .. } => out.push(Part::text(text)),
                        ContentPart::Other(part) => {
                            out.push(user_part(part).map_err(|what| err(format!("{}.content[{j}]: {what}", at())))?)
                        }
                    }
                }
                self.push("user", out);
            }
            "assistant" => {
                if m.audio.is_some() {
                    return Err(err(format!(
                        "{}.audio: earlier audio answers cannot be sent to Gemini models",
                        at()
                    )));
                }
                let mut out = Vec::new();
                for (j, part) in parts(i, m.content)?.into_iter().enumerate() {
                    match part {
                        ContentPart::Text { text, .. } => out.push(Part::text(text)),
                        ContentPart::Other(ChatPart {
                            kind,
                            refusal: Some(refusal),
                            ..
                        }) if kind == "refusal" => {
                            if !refusal.is_empty() {
                                out.push(Part::text(refusal));
                            }
                        }
                        ContentPart::Other(part) => {
                            return Err(err(format!(
                                "{}.content[{j}]: content part type '{}' is not supported in assistant messages",
                                at(),
                                part.kind
                            )));
                        }
                    }
                }
                if let Some(refusal) = m.refusal.filter(|r| !r.is_empty()) {
                    out.push(Part::text(refusal));
                }
                for (k, call) in m.tool_calls.into_iter().flatten().enumerate() {
                    let at = format!("{}.tool_calls[{k}]", at());
                    let call = chat_in::tool_call(call, &at)?;
                    let part =
                        self.function_call(Some(call.id), call.name, call.arguments, || format!("{at}.function"))?;
                    out.push(part);
                }
                if let Some(call) = m.function_call {
                    let Some(name) = call.name.filter(|n| !n.is_empty()) else {
                        return Err(err(format!("{}.function_call.name is required", at())));
                    };
                    out.push(self.function_call(None, name, call.arguments, || format!("{}.function_call", at()))?);
                }
                self.push("model", out);
            }
            "tool" => {
                let Some(id) = m.tool_call_id.filter(|id| !id.is_empty()) else {
                    return Err(err(format!("{}.tool_call_id is required", at())));
                };
                let Some(name) = self.calls.iter().rev().find(|(c, _)| *c == id).map(|(_, n)| n.clone()) else {
                    return Err(err(format!(
                        "{}.tool_call_id '{id}' names no tool call of an earlier assistant message",
                        at()
                    )));
                };
                let response = tool_output(i, m.content)?;
                self.result(FunctionResponse {
                    id: Some(id),
                    name,
                    response,
                });
            }
            "function" => {
                let Some(name) = m.name.filter(|n| !n.is_empty()) else {
                    return Err(err(format!("{}.name is required in a function message", at())));
                };
                let response = tool_output(i, m.content)?;
                self.result(FunctionResponse {
                    id: None,
                    name,
                    response,
                });
            }
            role => {
                return Err(err(format!(
                    "{}.role '{role}' is not supported (system, developer, user, assistant, tool and function are)",
                    at()
                )));
            }
        }
        Ok(())
    }

    /// A turn of its own (nothing when it has no parts).
    fn push(&mut self, role: &'static str, parts: Vec<Part<'a>>) {
        if parts.is_empty() {
            return;
        }
        self.contents.push(Content { role, parts });
        self.in_results = false;
    }

    /// A function response: in the turn of the results just before it, else a new user turn.
    fn result(&mut self, response: FunctionResponse<'a>) {
        let part = Part {
            function_response: Some(response),
            ..Part::default()
        };
        match self.contents.last_mut() {
            Some(turn) if self.in_results => turn.parts.push(part),
            _ => {
                self.contents.push(Content {
                    role: "user",
                    parts: vec![part],
                });
                self.in_results = true;
            }
        }
    }

    /// A function call part; `at` is where its function stands (for the arguments' refusal).
    fn function_call(
        &mut self,
        id: Option<Cow<'a, str>>,
        name: Cow<'a, str>,
        arguments: Option<&'a RawValue>,
        at: impl Fn() -> String,
    ) -> Result<Part<'a>, ConvertError> {
        let args = self::arguments(arguments).map_err(|m| err(format!("{}.arguments of '{name}' {m}", at())))?;
        if let Some(id) = &id {
            self.calls.push((id.clone(), name.clone()));
        }
        Ok(Part {
            function_call: Some(FunctionCall { id, name, args }),
            thought_signature: Some(FOREIGN_SIGNATURE),
            ..Part::default()
        })
    }
}

/// A call's `arguments` (a JSON string holding an object) as `args`.
fn arguments(raw: Option<&RawValue>) -> Result<Json<'_>, String> {
    match chat_in::arguments(raw) {
        Ok(Arguments::Empty) => Ok(Json::Owned(RawValue::from_string("{}".to_owned()).unwrap_or_default())),
        Ok(Arguments::Object(object)) => Ok(Json::Borrowed(object)),
        Ok(Arguments::Text(object)) => Ok(Json::Owned(object)),
        Err(ArgumentsError::NotString) => Err("must be a JSON string".to_owned()),
        Err(ArgumentsError::NotJson(e)) => Err(format!("is not valid JSON: {e}")),
        Err(ArgumentsError::NotObject) => Err("must be a JSON object".to_owned()),
    }
}

/// A tool result's content as a function `response`: a JSON object as it is, anything else as
/// `{"output": <text>}`.
fn tool_output<'a>(i: usize, content: Option<&'a RawValue>) -> Result<Json<'a>, ConvertError> {
    let mut output: Option<Cow<'a, str>> = None;
    for (j, part) in parts(i, content)?.into_iter().enumerate() {
        match part {
            ContentPart::Text { text, .. } => match &mut output {
                None => output = Some(text),
                Some(all) => all.to_mut().push_str(&text),
            },
            ContentPart::Other(part) => {
                return Err(err(format!(
                    "messages[{i}].content[{j}]: content part type '{}' is not supported in tool messages (text is)",
                    part.kind
                )));
            }
        }
    }
    let output = output.unwrap_or_default();
    if output.trim_start().starts_with('{')
        && let Ok(object) = RawValue::from_string(output.trim().to_owned())
    {
        return Ok(Json::Owned(object));
    }
    Ok(Json::Output { output })
}

/// The parts of a message's `content`: a string is one text part, `null` or absent none; empty
/// text is left out.
fn parts(i: usize, content: Option<&RawValue>) -> Result<Vec<ContentPart<'_>>, ConvertError> {
    match chat_in::content(i, content) {
        Ok(content) => Ok(content
            .into_parts()
            .into_iter()
            .filter(|p| !matches!(p, ContentPart::Text { text, .. } if text.is_empty()))
            .collect()),
        Err(ContentError::NotTextOrParts(_)) => Err(err(format!(
            "messages[{i}].content must be a string or an array of content parts"
        ))),
        Err(ContentError::Invalid(e)) => Err(err(format!("messages[{i}].content is invalid: {}", e.error()))),
        Err(ContentError::NoText(j)) => Err(err(format!("messages[{i}].content[{j}].text must be a string"))),
    }
}

/// A user part other than text, or what is wrong with it.
fn user_part(part: ChatPart<'_>) -> Result<Part<'_>, String> {
    match part.kind.as_ref() {
        "image_url" => {
            let raw = part.image_url.ok_or("image_url is required")?;
            match chat_in::image_url(raw) {
                ImageUrl::Url(url) => image(url),
                ImageUrl::NoUrl | ImageUrl::Invalid => Err("image_url.url is required".to_owned()),
            }
        }
        "input_audio" => {
            let audio = part.input_audio.ok_or("input_audio is required")?;
            let data = audio.data.ok_or("input_audio.data is required")?;
            let format = audio.format.ok_or("input_audio.format is required")?;
            let mime_type = match format.to_ascii_lowercase().as_str() {
                "mp3" | "mpeg" => "audio/mp3".to_owned(),
                other => format!("audio/{other}"),
            };
            Ok(Part::inline(Cow::Owned(mime_type), data))
        }
        "file" => {
            let file = part.file.ok_or("file is required")?;
            match file.file_data {
                Some(data) => {
                    let (mime_type, data) =
                        data_url(data).ok_or("file.file_data must be a base64 data: URL (data:<type>;base64,...)")?;
                    Ok(Part::inline(mime_type, data))
                }
                None if file.file_id.is_some() => Err(
                    "file_id references are not supported through this relay; send the file inline as file_data (a \
                     base64 data: URL)"
                        .to_owned(),
                ),
                None => Err("file.file_data is required".to_owned()),
            }
        }
        other => Err(format!("content part type '{other}' is not supported in user messages")),
    }
}

/// An image URL as a part: a `data:` URL inline, an `http(s)` URL as file data.
fn image(url: Cow<'_, str>) -> Result<Part<'_>, String> {
    if has_prefix(&url, "data:") {
        let (mime_type, data) =
            data_url(url).ok_or("an image data: URL must be base64-encoded (data:<type>;base64,...)")?;
        return Ok(Part::inline(mime_type, data));
    }
    if has_prefix(&url, "https://") || has_prefix(&url, "http://") {
        return Ok(Part {
            file_data: Some(FileData {
                mime_type: image_type(&url),
                file_uri: url,
            }),
            ..Part::default()
        });
    }
    Err("image_url.url must be a base64 data: URL or an http(s) URL".to_owned())
}

/// The media type of an image URL, by its extension.
fn image_type(url: &str) -> Option<&'static str> {
    let path = url.split(['?', '#']).next().unwrap_or_default();
    let extension = path.rsplit_once('.').map(|(_, e)| e)?;
    if extension.contains('/') {
        return None;
    }
    Some(match extension.to_ascii_lowercase().as_str() {
        "jpg" | "jpeg" => "image/jpeg",
        "png" => "image/png",
        "webp" => "image/webp",
        "gif" => "image/gif",
        "heic" => "image/heic",
        "heif" => "image/heif",
        _ => return None,
    })
}

/// A base64 `data:` URL with a media type: that type and the data.
fn data_url(url: Cow<'_, str>) -> Option<(Cow<'_, str>, Cow<'_, str>)> {
    if !has_prefix(&url, "data:") {
        return None;
    }
    chat_in::data_url(url)
        .ok()
        .filter(|(mime_type, _)| !mime_type.is_empty())
}

// ---------------------------------------------------------------------------------------------
// Parameters
// ---------------------------------------------------------------------------------------------

fn function_tool(k: usize, tool: ChatTool<'_>) -> Result<FunctionDeclaration<'_>, ConvertError> {
    let function = chat_in::function_tool(k, tool, |other| {
        err(format!(
            "tools[{k}]: tool type '{other}' is not supported through this relay for Gemini models; only function tools \
             are"
        ))
    })?;
    declaration(function, || format!("tools[{k}].function"))
}

fn declaration<'a>(
    function: NamedFunction<'a>,
    at: impl Fn() -> String,
) -> Result<FunctionDeclaration<'a>, ConvertError> {
    let parameters = match function.parameters {
        Some(p) if p.get() == "null" => None,
        Some(p) if !p.get().starts_with('{') => {
            return Err(err(format!("{}.parameters must be a JSON Schema object", at())));
        }
        other => other,
    };
    Ok(FunctionDeclaration {
        name: function.name,
        description: function.description,
        parameters_json_schema: parameters,
    })
}

/// `tool_choice` (or legacy `function_call`, named by `field`) as Gemini's calling config;
/// `allowed_tools` narrows `declarations` to the ones it names.
fn tool_choice<'a>(
    raw: &'a RawValue,
    field: &str,
    declarations: &mut Vec<FunctionDeclaration<'a>>,
) -> Result<Option<FunctionCallingConfig<'a>>, ConvertError> {
    let choice =
        match chat_in::tool_choice(raw, field).map_err(|e| err(format!("{field} is invalid: {}", e.error())))? {
            None => return Ok(None),
            Some(ToolChoice::Mode(mode)) => {
                return match mode.as_ref() {
                    "auto" => Ok(Some(FunctionCallingConfig::mode("AUTO"))),
                    "none" => Ok(Some(FunctionCallingConfig::mode("NONE"))),
                    "required" if field == "tool_choice" => Ok(Some(FunctionCallingConfig::mode("ANY"))),
                    other => Err(err(format!(
                        "{field} '{other}' is not supported; use auto, none, required or a named function"
                    ))),
                };
            }
            Some(ToolChoice::Object(choice)) => choice,
        };
    let known = |name: &str, declarations: &[FunctionDeclaration<'_>]| declarations.iter().any(|d| d.name == name);
    match choice.kind.as_deref() {
        Some("function") | None => {
            let name = choice
                .function
                .and_then(|f| f.name)
                .or(choice.name)
                .ok_or_else(|| err(format!("{field}.function.name is required")))?;
            if !known(&name, declarations) {
                return Err(err(format!("{field} names function '{name}', which is not in tools")));
            }
            Ok(Some(FunctionCallingConfig {
                mode: "ANY",
                allowed_function_names: Some([name]),
            }))
        }
        Some("allowed_tools") => {
            let allowed = choice
                .allowed_tools
                .ok_or_else(|| err(format!("{field}.allowed_tools is required")))?;
            let mode = match allowed.mode.as_deref().unwrap_or("auto") {
                "auto" => "AUTO",
                "required" => "ANY",
                other => {
                    return Err(err(format!(
                        "{field}.allowed_tools.mode '{other}' is not supported (auto and required are)"
                    )));
                }
            };
            let names = chat_in::allowed_names(allowed.tools.unwrap_or_default(), field, |name| {
                known(name, declarations)
            })?;
            declarations.retain(|d| names.contains(&d.name));
            Ok(Some(FunctionCallingConfig::mode(mode)))
        }
        Some(other) => Err(err(format!("{field} type '{other}' is not supported"))),
    }
}

fn thinking(effort: &str) -> Result<ThinkingConfig, ConvertError> {
    let Some(&(_, budget)) = THINKING_BUDGETS.iter().find(|(name, _)| *name == effort) else {
        return Err(err(format!(
            "reasoning_effort '{effort}' is not supported for Gemini models (none, minimal, low, medium and high are)"
        )));
    };
    Ok(ThinkingConfig {
        thinking_budget: budget,
        include_thoughts: budget > 0,
    })
}

fn response_format<'a>(
    format: Option<ResponseFormat<'a>>,
    mut config: GenerationConfig<'a>,
) -> Result<GenerationConfig<'a>, ConvertError> {
    let Some(format) = format else { return Ok(config) };
    match format.kind.as_ref() {
        "text" => {}
        "json_object" => config.response_mime_type = Some("application/json"),
        "json_schema" => {
            let schema = format
                .json_schema
                .and_then(|s| s.schema)
                .filter(|s| s.get() != "null")
                .ok_or_else(|| err("response_format.json_schema.schema is required"))?;
            config.response_mime_type = Some("application/json");
            config.response_json_schema = Some(schema);
        }
        other => {
            return Err(err(format!(
                "response_format type '{other}' is not supported (text, json_object and json_schema are)"
            )));
        }
    }
    Ok(config)
}
