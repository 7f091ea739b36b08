//! OpenAI Chat Completions ⇄ Anthropic Messages, for serving `POST /v1/chat/completions` from
//! Anthropic Messages accounts.
//!
//! - [`request_to_messages`]: a Chat Completions request becomes a Messages request
//!   ([`request`] documents every field).
//!
//! Fixed choices:
//!
//! - `max_tokens` defaults to [`DEFAULT_MAX_TOKENS`] (8192) when the client sets neither
//!   `max_completion_tokens` nor `max_tokens`.
//! - `reasoning_effort` becomes extended thinking with the budget of [`REASONING_BUDGETS`]:
//!   `none` and `minimal` → no thinking, `low` → 1024, `medium` → 4096, `high` → 16384 tokens.
//!   `max_tokens` (which counts thinking) is raised to budget + the requested answer length when
//!   it does not exceed the budget.

mod request;

pub use request::{ChatFacts, DEFAULT_MAX_TOKENS, REASONING_BUDGETS, request_to_messages};

#[cfg(test)]
mod request_tests;
