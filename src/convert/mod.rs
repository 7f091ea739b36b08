//! Stream and body translators between the client's dialect and the upstream's wire.
//!
//! - [`answer`]: the response adapter the dispatch uses for every committed answer.
//! - [`bedrock_stream`]: AWS event-stream (Bedrock) → Anthropic SSE.
//! - [`rename`]: putting the client's model name back into a pass-through answer.

pub mod answer;
pub mod bedrock_stream;
pub mod rename;
