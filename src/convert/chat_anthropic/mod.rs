//! OpenAI Chat Completions ⇄ Anthropic Messages, for serving `POST /v1/chat/completions` from
//! Anthropic Messages accounts.
//!
//! - [`request_to_messages`]: a Chat Completions request becomes a Messages request
//!   ([`request`] documents every field).
//! - [`response_from_messages`]: a Messages answer becomes a `chat.completion`.
//! - [`MessagesSseToChat`]: a Messages SSE stream becomes `chat.completion.chunk` SSE.
//! - [`error_from_anthropic`]: an Anthropic error answer becomes OpenAI's error body.
//!
//! Fixed choices:
//!
//! - `max_tokens` defaults to [`DEFAULT_MAX_TOKENS`] (8192) when the client sets neither
//!   `max_completion_tokens` nor `max_tokens`.
//! - `reasoning_effort` becomes extended thinking with the budget of [`REASONING_BUDGETS`]:
//!   `none` and `minimal` → no thinking, `low` → 1024, `medium` → 4096, `high` → 16384 tokens.
//!   `max_tokens` (which counts thinking) is raised to budget + the requested answer length when
//!   it does not exceed the budget.
//! - Usage: `prompt_tokens` counts every prompt-side token (input, cache reads, cache writes),
//!   `prompt_tokens_details.cached_tokens` the cache reads, `completion_tokens` the output.
//! - Stop reasons: `end_turn`, `stop_sequence`, `pause_turn` → `stop`; `max_tokens` and
//!   `model_context_window_exceeded` → `length`; `tool_use` → `tool_calls`; `refusal` →
//!   `content_filter`; anything else → `stop`.
//! - Thinking text, when the model returns some, is given as `reasoning_content` (a common
//!   extension of the Chat format), never mixed into `content`.

mod request;
mod response;
mod stream;

pub use request::{ChatFacts, DEFAULT_MAX_TOKENS, REASONING_BUDGETS, request_to_messages};
pub use response::{error_from_anthropic, response_from_messages, response_from_messages_at};
pub use stream::MessagesSseToChat;

use crate::convert::chat_out::ChatError;

/// The Chat `finish_reason` for an Anthropic `stop_reason`.
fn finish_reason(stop_reason: Option<&str>) -> &'static str {
    match stop_reason {
        Some("max_tokens" | "model_context_window_exceeded") => "length",
        Some("tool_use") => "tool_calls",
        Some("refusal") => "content_filter",
        _ => "stop",
    }
}

/// The OpenAI error for an Anthropic error of type `kind` (when known) answered with `status`
/// (when known; a stream's error event has none).
pub(crate) fn chat_error<'a>(kind: Option<&str>, status: Option<u16>, message: &'a str) -> ChatError<'a> {
    let (kind, code) = openai_error_type(kind, status, message);
    ChatError::new(message, kind, code)
}

/// OpenAI's error `type` and `code` for an Anthropic error type, else for the HTTP status.
fn openai_error_type(kind: Option<&str>, status: Option<u16>, message: &str) -> (&'static str, Option<&'static str>) {
    match kind {
        Some("invalid_request_error") => ("invalid_request_error", None),
        Some("authentication_error") => ("authentication_error", None),
        Some("permission_error") => ("permission_error", None),
        Some("not_found_error") => ("invalid_request_error", Some(not_found_code(message))),
        Some("request_too_large") => ("invalid_request_error", Some("request_too_large")),
        Some("rate_limit_error") => ("rate_limit_error", Some("rate_limit_exceeded")),
        Some("billing_error") => ("insufficient_quota", Some("insufficient_quota")),
        Some("overloaded_error") => ("server_error", Some("overloaded")),
        Some("timeout_error") => ("server_error", Some("timeout")),
        Some("api_error") => ("server_error", None),
        _ => match status {
            Some(400 | 422) => ("invalid_request_error", None),
            Some(401) => ("authentication_error", None),
            Some(402) => ("insufficient_quota", Some("insufficient_quota")),
            Some(403) => ("permission_error", None),
            Some(404) => ("invalid_request_error", Some(not_found_code(message))),
            Some(408 | 504) => ("server_error", Some("timeout")),
            Some(413) => ("invalid_request_error", Some("request_too_large")),
            Some(429) => ("rate_limit_error", Some("rate_limit_exceeded")),
            Some(529) => ("server_error", Some("overloaded")),
            Some(400..=499) => ("invalid_request_error", None),
            _ => ("server_error", None),
        },
    }
}

/// A 404 about a model is OpenAI's `model_not_found`.
fn not_found_code(message: &str) -> &'static str {
    if message.to_ascii_lowercase().contains("model") {
        "model_not_found"
    } else {
        "not_found"
    }
}

#[cfg(test)]
mod request_tests;
#[cfg(test)]
mod response_tests;
#[cfg(test)]
mod stream_tests;
