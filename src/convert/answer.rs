//! The response adapter: how an upstream's answer reaches the client in the client's dialect.
//!
//! When the client's dialect and the account's wire match (Anthropic Messages on both sides),
//! bytes pass through untouched while the usage reader watches, and only a mapped model name is
//! put back. Otherwise a transducer turns the wire's answer into the dialect's (Bedrock's AWS
//! event-stream into Anthropic SSE; AWS error bodies into Anthropic errors).

use bytes::Bytes;

use super::bedrock_stream::BedrockToAnthropicSse;
use super::rename::{SseModelRewriter, json_model};
use crate::providers::ResponseKind;
use crate::providers::bedrock;
use crate::usage::TokenUsage;
use crate::usage::sse::{SseUsageParser, parse_json_usage};

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

/// Whether the adapter changes the answer's head (its content type) as well as its body.
pub fn converts_stream(kind: ResponseKind) -> bool {
    kind == ResponseKind::BedrockStream
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
}

impl StreamAdapter {
    /// `rename`: (upstream model, client model) when the model name must be put back.
    pub fn new(kind: ResponseKind, rename: Option<(&str, &str)>, client_model: &str) -> StreamAdapter {
        match kind {
            ResponseKind::BedrockStream => StreamAdapter::Bedrock(BedrockToAnthropicSse::new(Some(client_model))),
            _ => StreamAdapter::Sse {
                usage: SseUsageParser::new(),
                rename: rename.map(|(from, to)| SseModelRewriter::new(from, to)),
            },
        }
    }

    /// Takes a chunk of the upstream's stream; returns what goes to the client now.
    pub fn push(&mut self, chunk: Bytes) -> Option<Bytes> {
        match self {
            StreamAdapter::Sse { usage, rename } => {
                usage.feed(&chunk);
                match rename {
                    Some(r) => r.push(chunk),
                    None => Some(chunk),
                }
            }
            StreamAdapter::Bedrock(t) => Some(t.push(&chunk)).filter(|b| !b.is_empty()),
        }
    }

    /// The upstream's stream ended; returns the last bytes for the client.
    pub fn finish(&mut self) -> Option<Bytes> {
        match self {
            StreamAdapter::Sse { rename, .. } => rename.as_mut().and_then(SseModelRewriter::finish),
            StreamAdapter::Bedrock(t) => Some(t.finish()).filter(|b| !b.is_empty()),
        }
    }

    /// The usage read so far.
    pub fn usage(&self) -> TokenUsage {
        match self {
            StreamAdapter::Sse { usage, .. } => usage.usage(),
            StreamAdapter::Bedrock(t) => t.usage(),
        }
    }

    /// Whether the stream carried an error (an `error` event or an exception frame).
    pub fn failed(&self) -> bool {
        match self {
            StreamAdapter::Sse { usage, .. } => usage.error().is_some(),
            StreamAdapter::Bedrock(t) => t.failed(),
        }
    }

    /// The wire's own failure inside the stream (a Bedrock exception type), for classifying the
    /// account.
    pub fn wire_failure(&self) -> Option<&str> {
        match self {
            StreamAdapter::Sse { .. } => None,
            StreamAdapter::Bedrock(t) => t.exception().map(|(kind, _)| kind),
        }
    }
}

/// A complete (not streamed) answer in the client's dialect, and its usage when it has one.
/// `rename`: the client's model name, to put back when the upstream answered with another.
pub fn complete_body(
    kind: ResponseKind,
    status: u16,
    headers: &http::HeaderMap,
    body: Bytes,
    rename: Option<&str>,
) -> (Bytes, Option<TokenUsage>) {
    if status >= 400 {
        let body = match kind {
            ResponseKind::Anthropic => body,
            _ => bedrock::anthropic_error_body(status, headers, &body),
        };
        return (body, None);
    }
    match kind {
        ResponseKind::BedrockCountTokens => {
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            match v.get("inputTokens").and_then(|n| n.as_u64()) {
                Some(n) => (Bytes::from(format!(r#"{{"input_tokens":{n}}}"#)), None),
                None => (body, None),
            }
        }
        _ => {
            let usage = parse_json_usage(&body).map(|(u, _)| u);
            let body = match rename {
                Some(m) => json_model(&body, m),
                None => body,
            };
            (body, usage)
        }
    }
}

/// Whether a complete answer's body is rewritten (so its length changes).
pub fn rewrites_body(kind: ResponseKind, status: u16, rename: bool) -> bool {
    kind != ResponseKind::Anthropic || (status < 300 && rename)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn count_tokens_and_errors_reach_the_client_in_anthropic_shape() {
        let h = http::HeaderMap::new();
        let (b, _) = complete_body(
            ResponseKind::BedrockCountTokens,
            200,
            &h,
            Bytes::from_static(br#"{"inputTokens":42}"#),
            None,
        );
        assert_eq!(&b[..], br#"{"input_tokens":42}"#);
        let (b, _) = complete_body(
            ResponseKind::BedrockInvoke,
            400,
            &h,
            Bytes::from_static(br#"{"message":"bad field"}"#),
            None,
        );
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["type"], "error");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        // Anthropic errors pass as they came.
        let raw = Bytes::from_static(br#"{"type":"error","error":{"type":"x","message":"m"}}"#);
        assert_eq!(
            complete_body(ResponseKind::Anthropic, 400, &h, raw.clone(), None).0,
            raw
        );
    }

    #[test]
    fn bedrock_invoke_answers_carry_the_clients_model_and_usage() {
        let body = Bytes::from_static(
            br#"{"id":"msg_1","type":"message","model":"us.anthropic.claude-sonnet-4-5-20250929-v1:0","usage":{"input_tokens":5,"output_tokens":7}}"#,
        );
        let (b, u) = complete_body(
            ResponseKind::BedrockInvoke,
            200,
            &http::HeaderMap::new(),
            body,
            Some("claude-sonnet-4-5"),
        );
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["model"], "claude-sonnet-4-5");
        let u = u.unwrap();
        assert_eq!((u.input, u.output), (5, 7));
    }
}
