//! The response adapter: how an upstream's answer reaches the client in the client's dialect.
//!
//! When the client's dialect and the account's wire match (Anthropic Messages on both sides),
//! bytes pass through untouched while the usage reader watches, and only a mapped model name is
//! put back. Otherwise a transducer turns the wire's answer into the dialect's (Bedrock's AWS
//! event-stream into Anthropic SSE; AWS error bodies into Anthropic errors).

use bytes::Bytes;

use super::Conversion;
use super::bedrock_stream::BedrockToAnthropicSse;
use super::chat_anthropic::{self, MessagesSseToChat};
use super::chat_responses::{self, Mode, ResponsesSseToChat};
use super::code_assist::{self, Direction, SseEnvelope};
use super::openai_chat::ChatSsePassThrough;
use super::rename::{SseModelRewriter, json_model};
use crate::providers::ResponseKind;
use crate::providers::bedrock;
use crate::usage::TokenUsage;
use crate::usage::gemini::{GeminiSseUsage, parse_gemini_json_usage};
use crate::usage::openai::{ResponsesSseUsage, parse_chat_json_usage, parse_responses_json_usage};
use crate::usage::sse::{SseUsageParser, parse_json_usage};

/// What an answer is and what the client expects of it.
#[derive(Debug, Clone, Copy)]
pub struct Answer<'a> {
    /// What the upstream answers in.
    pub kind: ResponseKind,
    /// How the request was converted for it.
    pub conversion: Conversion,
    /// The model name the client asked for.
    pub client_model: &'a str,
    /// (upstream model, client model) when a passed-through answer must carry the client's name.
    pub rename: Option<(&'a str, &'a str)>,
    /// The client asked for a final usage chunk (`stream_options.include_usage`).
    pub include_usage: bool,
    /// The relay asked for usage the client did not: the usage chunk is not passed on.
    pub strip_usage: bool,
    /// The client asked for one JSON answer while the upstream streams (the Codex backend
    /// always does): the stream is collected.
    pub collect: bool,
}

impl Answer<'_> {
    /// An Anthropic-dialect answer passed through (or Bedrock's, converted to it).
    pub fn passthrough(kind: ResponseKind) -> Answer<'static> {
        Answer {
            kind,
            conversion: Conversion::PassThrough,
            client_model: "",
            rename: None,
            include_usage: false,
            strip_usage: false,
            collect: false,
        }
    }
}

/// Whether a successful answer with these headers is a stream the adapter relays as it comes.
pub fn is_stream(kind: ResponseKind, status: u16, headers: &http::HeaderMap) -> bool {
    let content_type = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .trim_start();
    match kind {
        ResponseKind::BedrockStream => status < 300 && content_type.starts_with("application/vnd.amazon.eventstream"),
        _ => content_type.starts_with("text/event-stream"),
    }
}

/// Whether the adapter changes the stream's content type (a converted stream is always SSE).
pub fn converts_stream(answer: &Answer<'_>) -> bool {
    answer.kind == ResponseKind::BedrockStream
        || matches!(
            answer.conversion,
            Conversion::ChatToMessages
                | Conversion::ChatToResponses
                | Conversion::WrapCodeAssist
                | Conversion::UnwrapCodeAssist
        )
}

/// A committed stream on its way to the client.
pub enum StreamAdapter {
    /// Anthropic SSE passed through; a mapped model name put back in `message_start`.
    Sse {
        usage: SseUsageParser,
        rename: Option<SseModelRewriter>,
    },
    /// Bedrock's AWS event-stream turned into Anthropic SSE.
    Bedrock(BedrockToAnthropicSse),
    /// Anthropic SSE turned into Chat Completions chunks.
    MessagesToChat(MessagesSseToChat),
    /// Bedrock's event-stream turned into Anthropic SSE, then into Chat Completions chunks.
    BedrockToChat(BedrockToAnthropicSse, MessagesSseToChat),
    /// Chat Completions chunks passed through.
    Chat(ChatSsePassThrough),
    /// Responses events passed through byte for byte.
    Responses(ResponsesSseUsage),
    /// Responses events turned into Chat Completions chunks (or one collected answer).
    ResponsesToChat(ResponsesSseToChat),
    /// Gemini events (either wire) passed through byte for byte.
    Gemini(GeminiSseUsage),
    /// Gemini events put into Code Assist's envelope or taken out of it.
    Envelope(GeminiSseUsage, SseEnvelope),
}

impl StreamAdapter {
    pub fn new(a: &Answer<'_>) -> StreamAdapter {
        match (a.kind, a.conversion) {
            (ResponseKind::BedrockStream, Conversion::ChatToMessages) => StreamAdapter::BedrockToChat(
                BedrockToAnthropicSse::new(None),
                MessagesSseToChat::new(a.client_model, a.include_usage),
            ),
            (ResponseKind::BedrockStream, _) => {
                StreamAdapter::Bedrock(BedrockToAnthropicSse::new(Some(a.rename.map_or("", |(_, to)| to))))
            }
            (_, Conversion::ChatToMessages) => {
                StreamAdapter::MessagesToChat(MessagesSseToChat::new(a.client_model, a.include_usage))
            }
            (_, Conversion::ChatToChat) => StreamAdapter::Chat(ChatSsePassThrough::new(a.strip_usage, a.rename)),
            (_, Conversion::ChatToResponses) => StreamAdapter::ResponsesToChat(ResponsesSseToChat::new(
                a.client_model,
                a.include_usage,
                if a.collect { Mode::Collect } else { Mode::Stream },
            )),
            (ResponseKind::OpenAiResponses, Conversion::PassThrough) => {
                StreamAdapter::Responses(ResponsesSseUsage::new())
            }
            (_, Conversion::WrapCodeAssist) => {
                StreamAdapter::Envelope(GeminiSseUsage::new(), SseEnvelope::new(Direction::Unwrap))
            }
            (_, Conversion::UnwrapCodeAssist) => {
                StreamAdapter::Envelope(GeminiSseUsage::new(), SseEnvelope::new(Direction::Wrap))
            }
            (ResponseKind::Gemini | ResponseKind::CodeAssist | ResponseKind::GeminiCount, _) => {
                StreamAdapter::Gemini(GeminiSseUsage::new())
            }
            _ => StreamAdapter::Sse {
                usage: SseUsageParser::new(),
                rename: a.rename.map(|(from, to)| SseModelRewriter::new(from, to)),
            },
        }
    }

    /// Whether the answer is collected into one JSON body, sent at the end.
    pub fn collects(&self) -> bool {
        matches!(self, StreamAdapter::ResponsesToChat(t) if t.collecting())
    }

    /// The status a collected answer that failed stands for.
    pub fn error_status(&self) -> Option<u16> {
        match self {
            StreamAdapter::ResponsesToChat(t) => t.error_status(),
            _ => None,
        }
    }

    /// Takes a chunk of the upstream's stream; returns what goes to the client now.
    pub fn push(&mut self, chunk: Bytes) -> Option<Bytes> {
        let out = match self {
            StreamAdapter::Sse { usage, rename } => {
                usage.feed(&chunk);
                return match rename {
                    Some(r) => r.push(chunk),
                    None => Some(chunk),
                };
            }
            StreamAdapter::Bedrock(t) => t.push(&chunk),
            StreamAdapter::MessagesToChat(t) => t.push(&chunk),
            StreamAdapter::BedrockToChat(b, t) => {
                let sse = b.push(&chunk);
                t.push(&sse)
            }
            StreamAdapter::Chat(t) => return t.push(chunk),
            StreamAdapter::Responses(u) => {
                u.feed(&chunk);
                return Some(chunk);
            }
            StreamAdapter::ResponsesToChat(t) => t.push(&chunk),
            StreamAdapter::Gemini(u) => {
                u.feed(&chunk);
                return Some(chunk);
            }
            StreamAdapter::Envelope(u, t) => {
                u.feed(&chunk);
                t.push(&chunk)
            }
        };
        Some(out).filter(|b| !b.is_empty())
    }

    /// The upstream's stream ended; returns the last bytes for the client.
    pub fn finish(&mut self) -> Option<Bytes> {
        let out = match self {
            StreamAdapter::Sse { rename, .. } => return rename.as_mut().and_then(SseModelRewriter::finish),
            StreamAdapter::Bedrock(t) => t.finish(),
            StreamAdapter::MessagesToChat(t) => t.finish(),
            StreamAdapter::BedrockToChat(b, t) => {
                let sse = b.finish();
                let mut out = t.push(&sse).to_vec();
                out.extend_from_slice(&t.finish());
                Bytes::from(out)
            }
            StreamAdapter::Chat(t) => return t.finish(),
            StreamAdapter::Responses(_) => return None,
            StreamAdapter::ResponsesToChat(t) => t.finish(),
            StreamAdapter::Gemini(_) => return None,
            StreamAdapter::Envelope(_, t) => t.finish(),
        };
        Some(out).filter(|b| !b.is_empty())
    }

    /// The usage read so far.
    pub fn usage(&self) -> TokenUsage {
        match self {
            StreamAdapter::Sse { usage, .. } => usage.usage(),
            StreamAdapter::Bedrock(t) => t.usage(),
            StreamAdapter::MessagesToChat(t) => t.usage(),
            // The Bedrock side reads the invocation metrics too; the Anthropic events carry the
            // same counts.
            StreamAdapter::BedrockToChat(b, _) => b.usage(),
            StreamAdapter::Chat(t) => t.usage(),
            StreamAdapter::Responses(u) => u.usage(),
            StreamAdapter::ResponsesToChat(t) => t.usage(),
            StreamAdapter::Gemini(u) | StreamAdapter::Envelope(u, _) => u.usage(),
        }
    }

    /// Whether the stream carried an error (an `error` event or an exception frame).
    pub fn failed(&self) -> bool {
        match self {
            StreamAdapter::Sse { usage, .. } => usage.error().is_some(),
            StreamAdapter::Bedrock(t) => t.failed(),
            StreamAdapter::MessagesToChat(t) => t.failed(),
            StreamAdapter::BedrockToChat(b, t) => b.failed() || t.failed(),
            StreamAdapter::Chat(t) => t.failed(),
            StreamAdapter::Responses(u) => u.error().is_some(),
            StreamAdapter::ResponsesToChat(t) => t.failed(),
            StreamAdapter::Gemini(u) | StreamAdapter::Envelope(u, _) => u.error().is_some(),
        }
    }

    /// The wire's own failure inside the stream (a Bedrock exception type), for classifying the
    /// account.
    pub fn wire_failure(&self) -> Option<&str> {
        match self {
            StreamAdapter::Bedrock(t) | StreamAdapter::BedrockToChat(t, _) => t.exception().map(|(kind, _)| kind),
            _ => None,
        }
    }
}

/// A complete answer as the client gets it.
#[derive(Debug)]
pub struct Completed {
    pub body: Bytes,
    /// The usage the answer carries, when it has one.
    pub usage: Option<TokenUsage>,
    /// The status the client gets instead of the upstream's: 502 for a successful answer that
    /// does not read as its wire's and so cannot be converted.
    pub status: Option<u16>,
}

impl Completed {
    fn new(body: Bytes, usage: Option<TokenUsage>) -> Completed {
        Completed {
            body,
            usage,
            status: None,
        }
    }

    /// An answer that cannot be converted: a 502 in OpenAI's shape, its usage still counted.
    fn unconvertible(e: &super::ConvertError, usage: Option<TokenUsage>) -> Completed {
        let v = serde_json::json!({"error": {
            "message": format!("the upstream's answer could not be read for conversion: {e}"),
            "type": "server_error", "code": "upstream_error", "param": null
        }});
        Completed {
            body: Bytes::from(serde_json::to_vec(&v).unwrap_or_default()),
            usage,
            status: Some(502),
        }
    }
}

/// A complete (not streamed) answer in the client's dialect, and its usage when it has one.
pub fn complete_body(a: &Answer<'_>, status: u16, headers: &http::HeaderMap, body: Bytes) -> Completed {
    let rename = a.rename.map(|(_, to)| to);
    if status >= 400 {
        let body = match a.kind {
            ResponseKind::Anthropic => body,
            // Both Google wires write errors alike: a Gemini client reads them as they came.
            ResponseKind::OpenAiChat
            | ResponseKind::OpenAiResponses
            | ResponseKind::Gemini
            | ResponseKind::CodeAssist
            | ResponseKind::GeminiCount => return Completed::new(body, None),
            _ => bedrock::anthropic_error_body(status, headers, &body),
        };
        let body = match a.conversion {
            Conversion::ChatToMessages => chat_anthropic::error_from_anthropic(status, &body),
            _ => body,
        };
        return Completed::new(body, None);
    }
    match (a.kind, a.conversion) {
        (ResponseKind::BedrockCountTokens, _) => {
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            match v.get("inputTokens").and_then(|n| n.as_u64()) {
                Some(n) => Completed::new(Bytes::from(format!(r#"{{"input_tokens":{n}}}"#)), None),
                None => Completed::new(body, None),
            }
        }
        (_, Conversion::ChatToMessages) => match chat_anthropic::response_from_messages(&body, a.client_model) {
            Ok((b, u)) => Completed::new(b, Some(u)),
            Err(e) => Completed::unconvertible(&e, parse_json_usage(&body).map(|(u, _)| u)),
        },
        (_, Conversion::ChatToResponses) => match chat_responses::response_from_responses(&body, a.client_model) {
            Ok((b, u)) => Completed::new(b, Some(u)),
            Err(e) => Completed::unconvertible(&e, parse_responses_json_usage(&body)),
        },
        (ResponseKind::OpenAiResponses, _) => {
            let usage = parse_responses_json_usage(&body);
            Completed::new(body, usage)
        }
        (ResponseKind::GeminiCount, _) => Completed::new(body, None),
        (ResponseKind::Gemini | ResponseKind::CodeAssist, conversion) => {
            let usage = parse_gemini_json_usage(&body);
            let body = match conversion {
                Conversion::WrapCodeAssist => code_assist::unwrap_answer(&body),
                Conversion::UnwrapCodeAssist => code_assist::wrap_answer(&body),
                _ => body,
            };
            Completed::new(body, usage)
        }
        (kind, _) => {
            let usage = if kind == ResponseKind::OpenAiChat {
                parse_chat_json_usage(&body)
            } else {
                parse_json_usage(&body).map(|(u, _)| u)
            };
            let body = match rename {
                Some(m) => json_model(&body, m),
                None => body,
            };
            Completed::new(body, usage)
        }
    }
}

/// Whether a complete answer's body is rewritten (so its length and content type change).
pub fn rewrites_body(a: &Answer<'_>, status: u16) -> bool {
    match a.kind {
        ResponseKind::Anthropic => a.conversion == Conversion::ChatToMessages || (status < 300 && a.rename.is_some()),
        ResponseKind::OpenAiChat => status < 300 && a.rename.is_some(),
        ResponseKind::OpenAiResponses => a.conversion == Conversion::ChatToResponses && status < 300,
        ResponseKind::Gemini | ResponseKind::CodeAssist => {
            status < 300 && matches!(a.conversion, Conversion::WrapCodeAssist | Conversion::UnwrapCodeAssist)
        }
        ResponseKind::GeminiCount => false,
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn count_tokens_and_errors_reach_the_client_in_anthropic_shape() {
        let h = http::HeaderMap::new();
        let b = complete_body(
            &Answer::passthrough(ResponseKind::BedrockCountTokens),
            200,
            &h,
            Bytes::from_static(br#"{"inputTokens":42}"#),
        )
        .body;
        assert_eq!(&b[..], br#"{"input_tokens":42}"#);
        let b = complete_body(
            &Answer::passthrough(ResponseKind::BedrockInvoke),
            400,
            &h,
            Bytes::from_static(br#"{"message":"bad field"}"#),
        )
        .body;
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["type"], "error");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        // Anthropic errors pass as they came.
        let raw = Bytes::from_static(br#"{"type":"error","error":{"type":"x","message":"m"}}"#);
        assert_eq!(
            complete_body(&Answer::passthrough(ResponseKind::Anthropic), 400, &h, raw.clone()).body,
            raw
        );
    }

    #[test]
    fn bedrock_invoke_answers_carry_the_clients_model_and_usage() {
        let body = Bytes::from_static(
            br#"{"id":"msg_1","type":"message","model":"us.anthropic.claude-sonnet-4-5-20250929-v1:0","usage":{"input_tokens":5,"output_tokens":7}}"#,
        );
        let answer = Answer {
            rename: Some(("us.anthropic.claude-sonnet-4-5-20250929-v1:0", "claude-sonnet-4-5")),
            ..Answer::passthrough(ResponseKind::BedrockInvoke)
        };
        let Completed { body: b, usage: u, .. } = complete_body(&answer, 200, &http::HeaderMap::new(), body);
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["model"], "claude-sonnet-4-5");
        let u = u.unwrap();
        assert_eq!((u.input, u.output), (5, 7));
    }
}
