//! OpenAI Chat Completions ⇄ Gemini `generateContent`, for serving `POST /v1/chat/completions`
//! with `gemini-*` models from Gemini accounts (the Gemini API, and Code Assist, whose answers
//! come in an envelope `{"response": {…}, "traceId": …}`).
//!
//! - [`request_to_gemini`]: a Chat Completions request becomes a `GenerateContentRequest`
//!   ([`request`] documents every field); the model goes in the URL path, not the body.
//! - [`response_from_gemini`]: a `GenerateContentResponse` (bare or in Code Assist's envelope)
//!   becomes a `chat.completion`.
//! - [`GeminiSseToChat`]: a `streamGenerateContent?alt=sse` stream becomes
//!   `chat.completion.chunk` SSE.
//! - [`error_from_gemini`]: a Google error answer becomes OpenAI's error body.
//!
//! The answer, streamed or not:
//!
//! - `candidates[i]` is `choices[i]` (by the candidate's `index`). Text parts are `content`;
//!   parts marked `thought: true` are `reasoning_content` (a common extension of the Chat
//!   format), never mixed into `content`. Each `functionCall` part is a tool call: its `id` when
//!   Gemini gives one, else `call_` and 24 random hex digits; its `arguments` the JSON of its
//!   `args` (`{}` when absent). Other parts (inline images, code execution) are left out.
//! - `finishReason`: `STOP` → `stop`, or `tool_calls` when the candidate called a function;
//!   `MAX_TOKENS` → `length`; `SAFETY`, `RECITATION`, `BLOCKLIST`, `PROHIBITED_CONTENT`, `SPII`
//!   and the `IMAGE_*` refusals → `content_filter`; anything else → `stop`. A prompt refused
//!   (`promptFeedback.blockReason`, no candidates) is one choice with no content and
//!   `content_filter`.
//! - `id` is `chatcmpl-<responseId>` (generated when Gemini gives none), `created` the time of
//!   conversion, `model` the client's model name.
//! - Usage (read by [`UsageMetadata`], as everywhere else in the relay): `prompt_tokens` is
//!   `promptTokenCount` + `toolUsePromptTokenCount`, of which
//!   `prompt_tokens_details.cached_tokens` is `cachedContentTokenCount`; `completion_tokens` is
//!   `candidatesTokenCount` + `thoughtsTokenCount`, of which
//!   `completion_tokens_details.reasoning_tokens` is `thoughtsTokenCount`.
//! - Errors: the Google status (`INVALID_ARGUMENT`, `RESOURCE_EXHAUSTED`, …), else the HTTP
//!   code, gives OpenAI's error type: 400 `invalid_request_error`, 401 `authentication_error`,
//!   403 `permission_error`, 404 `invalid_request_error` (code `model_not_found` or
//!   `not_found`), 429 `rate_limit_error` (code `rate_limit_exceeded`), 5xx `server_error`.

mod request;
mod response;
mod stream;

pub use request::{THINKING_BUDGETS, request_to_gemini};
pub use response::{error_from_gemini, response_from_gemini, response_from_gemini_at};
pub use stream::GeminiSseToChat;

use std::fmt::Write as _;

use crate::convert::chat_anthropic::chat_error;
use crate::convert::chat_out::ChatError;
#[cfg(doc)]
use crate::usage::gemini::UsageMetadata;

/// The Chat `finish_reason` of a Gemini `finishReason`; `called`: the candidate called a
/// function.
fn finish_reason(reason: Option<&str>, called: bool) -> &'static str {
    match reason {
        Some("MAX_TOKENS") => "length",
        Some(
            "SAFETY"
            | "RECITATION"
            | "BLOCKLIST"
            | "PROHIBITED_CONTENT"
            | "SPII"
            | "IMAGE_SAFETY"
            | "IMAGE_PROHIBITED_CONTENT"
            | "IMAGE_RECITATION",
        ) => "content_filter",
        Some("STOP") | None if called => "tool_calls",
        _ => "stop",
    }
}

/// The OpenAI error of a Google error: by its `status` when known, else its HTTP `code`.
fn google_error<'a>(status: Option<&str>, code: Option<u16>, message: &'a str) -> ChatError<'a> {
    chat_error(None, status.and_then(status_code).or(code), message)
}

/// The HTTP status of a Google (gRPC) error status.
fn status_code(status: &str) -> Option<u16> {
    Some(match status {
        "INVALID_ARGUMENT" | "FAILED_PRECONDITION" | "OUT_OF_RANGE" => 400,
        "UNAUTHENTICATED" => 401,
        "PERMISSION_DENIED" => 403,
        "NOT_FOUND" => 404,
        "ALREADY_EXISTS" | "ABORTED" => 409,
        "RESOURCE_EXHAUSTED" => 429,
        "CANCELLED" => 499,
        "INTERNAL" | "UNKNOWN" | "DATA_LOSS" => 500,
        "UNIMPLEMENTED" => 501,
        "UNAVAILABLE" => 503,
        "DEADLINE_EXCEEDED" => 504,
        _ => return None,
    })
}

/// `chatcmpl-<responseId>`, or a generated id when the answer has none.
fn completion_id(response_id: Option<&str>) -> String {
    match response_id.filter(|id| !id.is_empty()) {
        Some(id) => format!("chatcmpl-{id}"),
        None => format!("chatcmpl-{}", uuid::Uuid::new_v4().simple()),
    }
}

/// A tool call id for a call Gemini gave none: `call_` and 24 random hex digits.
fn call_id() -> String {
    let mut id = String::with_capacity(37);
    id.push_str("call_");
    // Writing to a String cannot fail.
    let _ = write!(id, "{}", uuid::Uuid::new_v4().simple());
    id.truncate("call_".len() + 24);
    id
}

/// A `functionCall`'s `args` as compact JSON text: the upstream's own text when it has no
/// whitespace outside strings (a streamed event never has), else that text without it.
fn compact_json(json: &str) -> std::borrow::Cow<'_, str> {
    let bytes = json.as_bytes();
    let mut in_string = false;
    let mut escaped = false;
    let mut first_space = None;
    for (at, &b) in bytes.iter().enumerate() {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
        } else if b == b'"' {
            in_string = true;
        } else if b.is_ascii_whitespace() {
            first_space = Some(at);
            break;
        }
    }
    let Some(start) = first_space else {
        return std::borrow::Cow::Borrowed(json);
    };
    let mut out = String::with_capacity(json.len());
    out.push_str(json.get(..start).unwrap_or_default());
    // `in_string` is false at `start`: it is whitespace outside a string.
    let mut in_string = false;
    let mut escaped = false;
    for c in json.get(start..).unwrap_or_default().chars() {
        if in_string {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
        } else if c == '"' {
            in_string = true;
        } else if c.is_ascii_whitespace() {
            continue;
        }
        out.push(c);
    }
    std::borrow::Cow::Owned(out)
}

#[cfg(test)]
mod request_tests;
#[cfg(test)]
mod response_tests;
#[cfg(test)]
mod stream_tests;
