//! A whole Anthropic Messages answer (or error), rewritten as a Chat Completions answer.

use std::borrow::Cow;

use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::{chat_error, finish_reason};
use crate::convert::ConvertError;
use crate::convert::chat_out::{ChatUsage, Completion, Message, ToolCall, unix_now, upstream_message};
use crate::usage::TokenUsage;
use crate::usage::sse::parse_json_usage;

/// A successful Anthropic Messages JSON answer → a `chat.completion` JSON; with its usage.
/// `client_model` is the model name the client asked for (put in the answer's `model`).
///
/// Text blocks are joined into `content` (`null` when there are none), `tool_use` blocks become
/// `tool_calls` (their `input` as the `arguments` string), thinking text becomes
/// `reasoning_content`; other blocks are left out. An error means the body is not a Messages
/// answer: the upstream's fault, not the client's.
pub fn response_from_messages(body: &[u8], client_model: &str) -> Result<(Bytes, TokenUsage), ConvertError> {
    response_from_messages_at(body, client_model, unix_now())
}

/// [`response_from_messages`] with the answer's `created` (Unix seconds) given.
pub fn response_from_messages_at(
    body: &[u8],
    client_model: &str,
    created: i64,
) -> Result<(Bytes, TokenUsage), ConvertError> {
    if body.trim_ascii_start().first() != Some(&b'{') {
        return Err(ConvertError("the upstream answer is not a JSON object".to_owned()));
    }
    let answer: Answer<'_> = serde_json::from_slice(body)
        .map_err(|e| ConvertError(format!("the upstream answer is not a Messages response: {e}")))?;
    if answer.kind.as_deref() == Some("error") {
        return Err(ConvertError(
            "the upstream answer is an error, not a Messages response".to_owned(),
        ));
    }
    let usage = answer.usage.map(read_usage).unwrap_or_default();

    let mut content: Option<Cow<'_, str>> = None;
    let mut reasoning: Option<Cow<'_, str>> = None;
    let mut tool_calls = Vec::new();
    for block in answer.content {
        match block.kind.as_ref() {
            "text" => append(&mut content, block.text),
            "thinking" => append(&mut reasoning, block.thinking),
            "tool_use" => tool_calls.push(ToolCall::function(
                block.id.unwrap_or_default(),
                block.name.unwrap_or_default(),
                block.input.map_or("{}", RawValue::get),
            )),
            _ => {}
        }
    }

    let id = match answer.id {
        Some(id) => format!("chatcmpl-{id}"),
        None => format!("chatcmpl-{}", uuid::Uuid::new_v4().simple()),
    };
    let message = Message {
        role: "assistant",
        content,
        reasoning_content: reasoning,
        refusal: None,
        tool_calls,
    };
    let completion = Completion::new(
        &id,
        created,
        client_model,
        message,
        finish_reason(answer.stop_reason.as_deref()),
        ChatUsage::new(&usage, false),
    );
    let json =
        serde_json::to_vec(&completion).map_err(|e| ConvertError(format!("the answer could not be written: {e}")))?;
    Ok((Bytes::from(json), usage))
}

/// An Anthropic error answer (any status) → OpenAI's `{"error":{"message","type","param","code"}}`.
///
/// The upstream's message is kept; the type and code follow Anthropic's error type
/// (`not_found_error` → `invalid_request_error` with code `model_not_found` when the message is
/// about a model, else `not_found`; `rate_limit_error` → code `rate_limit_exceeded`;
/// `overloaded_error` → `server_error` with code `overloaded`; `api_error` → `server_error`; …),
/// else the status. A body that is not an Anthropic error gets a message naming the status.
pub fn error_from_anthropic(status: u16, body: &[u8]) -> Bytes {
    #[derive(Deserialize)]
    struct Body<'a> {
        #[serde(borrow, default)]
        error: Option<ErrorField<'a>>,
        #[serde(borrow, default)]
        message: Option<Cow<'a, str>>,
    }
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum ErrorField<'a> {
        Object {
            #[serde(rename = "type", borrow, default)]
            kind: Option<Cow<'a, str>>,
            #[serde(borrow, default)]
            message: Option<Cow<'a, str>>,
        },
        #[serde(borrow)]
        Text(Cow<'a, str>),
    }
    let (kind, message) = match serde_json::from_slice::<Body<'_>>(body) {
        Ok(Body {
            error: Some(ErrorField::Object { kind, message }),
            message: top,
        }) => (kind, message.or(top)),
        Ok(Body {
            error: Some(ErrorField::Text(text)),
            message: top,
        }) => (None, Some(top.unwrap_or(text))),
        Ok(Body { error: None, message }) => (None, message),
        Err(_) => (None, None),
    };
    let message = upstream_message(message, status);
    chat_error(kind.as_deref(), Some(status), &message).to_body()
}

/// Adds a block's text to what is gathered so far (the first text is kept borrowed).
fn append<'a>(into: &mut Option<Cow<'a, str>>, text: Option<Cow<'a, str>>) {
    let Some(text) = text else { return };
    match into {
        None => *into = Some(text),
        Some(gathered) => gathered.to_mut().push_str(&text),
    }
}

/// The usage object, read by the relay's usage reader so that it counts as everywhere else.
fn read_usage(raw: &RawValue) -> TokenUsage {
    let mut body = Vec::with_capacity(raw.get().len() + 10);
    body.extend_from_slice(b"{\"usage\":");
    body.extend_from_slice(raw.get().as_bytes());
    body.push(b'}');
    parse_json_usage(&body).map(|(usage, _)| usage).unwrap_or_default()
}

/// The fields of a Messages answer that matter.
#[derive(Deserialize)]
struct Answer<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    content: Vec<ContentBlock<'a>>,
    #[serde(borrow, default)]
    stop_reason: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    usage: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct ContentBlock<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow, default)]
    text: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    thinking: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    input: Option<&'a RawValue>,
}
