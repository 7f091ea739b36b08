//! OpenAI Chat Completions ⇄ Gemini `generateContent`, for serving `POST /v1/chat/completions`
//! with `gemini-*` models from Gemini accounts (the Gemini API, and Code Assist).
//!
//! - [`request_to_gemini`]: a Chat Completions request becomes a `GenerateContentRequest`
//!   ([`request`] documents every field); the model goes in the URL path, not the body.

mod request;

pub use request::{THINKING_BUDGETS, request_to_gemini};

#[cfg(test)]
mod request_tests;
