//! Stream and body translators between the client's dialect and the upstream's wire.
//!
//! - [`answer`]: the response adapter the dispatch uses for every committed answer.
//! - [`bedrock_stream`]: AWS event-stream (Bedrock) → Anthropic SSE.
//! - [`chat_responses`]: OpenAI Chat Completions → Responses (request), Responses → Chat (answer).
//! - [`openai_chat`]: OpenAI Chat Completions passed through to an OpenAI-compatible upstream.
//! - [`rename`]: putting the client's model name back into a pass-through answer.

pub mod answer;
pub mod bedrock_stream;
pub mod chat_responses;
pub mod openai_chat;
pub mod rename;

/// A request that cannot be expressed in the upstream's wire: the client's problem, answered with
/// a 400 in its dialect naming what cannot be converted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConvertError(pub String);

impl std::fmt::Display for ConvertError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConvertError {}
