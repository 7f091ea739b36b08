//! Stream and body translators between the client's dialect and the upstream's wire.
//!
//! - [`answer`]: the response adapter the dispatch uses for every committed answer.
//! - [`bedrock_stream`]: AWS event-stream (Bedrock) → Anthropic SSE.
//! - [`chat_anthropic`]: OpenAI Chat Completions requests and answers ⇄ Anthropic Messages.
//! - [`chat_gemini`]: OpenAI Chat Completions requests and answers ⇄ Gemini `generateContent`.
//! - [`chat_in`]: the Chat Completions request the three Chat converters read (one typed view of
//!   the body, its [`ChatFacts`](chat_in::ChatFacts), the readers of its parts); each converter
//!   keeps what its wire supports or refuses, in its own words.
//! - [`chat_out`]: the Chat Completions chunks, completion, usage and error bodies the Chat
//!   converters write.
//! - [`chat_responses`]: OpenAI Chat Completions → Responses (request), Responses → Chat (answer).
//! - [`code_assist`]: Gemini API ⇄ Code Assist envelopes (requests, answers and streams).
//! - [`openai_chat`]: OpenAI Chat Completions passed through to an OpenAI-compatible upstream (it
//!   only touches `model` and `stream_options`, so it does not read the request through
//!   [`chat_in`]).
//! - [`rename`]: putting the client's model name back into a pass-through answer.

pub mod answer;
pub mod bedrock_stream;
pub mod chat_anthropic;
pub mod chat_gemini;
pub mod chat_in;
pub mod chat_out;
pub mod chat_responses;
pub mod code_assist;
pub mod openai_chat;
pub mod rename;

use crate::providers::{Operation, Wire};

/// How a request in the client's dialect reaches an upstream wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Conversion {
    /// The same dialect on both sides: bytes pass, only the model mapped.
    PassThrough,
    /// Chat Completions → Anthropic Messages (Console, OAuth, CCR, and Bedrock through its own
    /// adapter), the answer converted back.
    ChatToMessages,
    /// Chat Completions → an OpenAI-compatible Chat upstream: passed through, usage asked for.
    ChatToChat,
    /// Chat Completions → Responses (ChatGPT's Codex backend), the answer converted back.
    ChatToResponses,
    /// A Gemini API request → Code Assist (put in its envelope), the answer taken out of it.
    WrapCodeAssist,
    /// A Code Assist request → the Gemini API (taken out of its envelope), the answer put in it.
    UnwrapCodeAssist,
    /// Chat Completions → Gemini `generateContent` (in Code Assist's envelope for Code Assist),
    /// the answer converted back.
    ChatToGemini,
}

/// The conversion from a client's operation to a wire, and the operation the upstream is asked
/// for; `None` when the wire cannot serve the request.
pub fn conversion(client: Operation, wire: Wire) -> Option<(Conversion, Operation)> {
    use Operation as O;
    use Wire as W;
    match (client, wire) {
        (O::Messages | O::CountTokens, W::AnthropicMessages | W::Bedrock) => Some((Conversion::PassThrough, client)),
        (O::Chat, W::AnthropicMessages | W::Bedrock) => Some((Conversion::ChatToMessages, O::Messages)),
        (O::Chat, W::OpenAi) => Some((Conversion::ChatToChat, O::Chat)),
        (O::Chat, W::CodexResponses) => Some((Conversion::ChatToResponses, O::Responses)),
        (O::Responses | O::ResponsesCompact, W::OpenAi | W::CodexResponses) => Some((Conversion::PassThrough, client)),
        (O::GeminiGenerate | O::GeminiCountTokens, W::GeminiApi)
        | (O::CodeAssistGenerate | O::CodeAssistCountTokens, W::CodeAssist) => Some((Conversion::PassThrough, client)),
        (O::GeminiGenerate, W::CodeAssist) => Some((Conversion::WrapCodeAssist, O::CodeAssistGenerate)),
        (O::GeminiCountTokens, W::CodeAssist) => Some((Conversion::WrapCodeAssist, O::CodeAssistCountTokens)),
        (O::CodeAssistGenerate, W::GeminiApi) => Some((Conversion::UnwrapCodeAssist, O::GeminiGenerate)),
        (O::CodeAssistCountTokens, W::GeminiApi) => Some((Conversion::UnwrapCodeAssist, O::GeminiCountTokens)),
        (O::Chat, W::GeminiApi) => Some((Conversion::ChatToGemini, O::GeminiGenerate)),
        (O::Chat, W::CodeAssist) => Some((Conversion::ChatToGemini, O::CodeAssistGenerate)),
        _ => None,
    }
}

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
