//! Bedrock's `invoke-with-response-stream` answer, re-emitted as the Anthropic Messages SSE stream.
//!
//! Bedrock wraps each Anthropic stream event in an event-stream frame (`:event-type` `chunk`)
//! whose payload is `{"bytes":"<base64 of the event's JSON>","p":"<padding>"}`.
//! [`BedrockToAnthropicSse`] decodes the frames as they arrive and writes each event as
//! `event: <type>\ndata: <json>\n\n`, the JSON exactly as Bedrock encoded it (unknown fields such
//! as `amazon-bedrock-invocationMetrics` included) except for `message_start`'s model, which may be
//! replaced by the name the client asked for. A modeled exception frame (`throttlingException`…),
//! an unmodeled error frame, an unreadable frame, or a stream that ends before `message_stop`
//! becomes one Anthropic `error` event, after which nothing more is emitted.
//!
//! Usage is read by [`SseUsageParser`] from the SSE written, so it follows the Anthropic rules
//! exactly; Bedrock's `amazon-bedrock-invocationMetrics` counts stand in when no event carried a
//! usage object.

use std::borrow::Cow;

use base64::Engine;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use bytes::{BufMut, Bytes, BytesMut};
use memchr::memmem;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::usage::TokenUsage;
use crate::usage::sse::SseUsageParser;
use crate::wire::eventstream::{EventStreamDecoder, Message, MessageKind};

/// Standard base64, padded or not.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

const METRICS_KEY: &[u8] = br#""amazon-bedrock-invocationMetrics""#;

/// Streaming transducer from Bedrock event-stream bytes to Anthropic SSE bytes.
#[derive(Debug)]
pub struct BedrockToAnthropicSse {
    decoder: EventStreamDecoder,
    client_model: Option<String>,
    /// Reads the usage (and `message_stop`) from the SSE this transducer writes.
    sse: SseUsageParser,
    /// Bedrock's own counts from the last event that carried them.
    metrics: Option<TokenUsage>,
    exception: Option<(String, String)>,
    saw_message_stop: bool,
    /// An error event was written, or the upstream ended: nothing more is emitted.
    ended: bool,
}

impl BedrockToAnthropicSse {
    /// `client_model`: when `Some`, the `message.model` of `message_start` is replaced by it (the
    /// client sees the model name it asked for; Bedrock answers with its own id).
    pub fn new(client_model: Option<&str>) -> Self {
        Self {
            decoder: EventStreamDecoder::new(),
            client_model: client_model.map(str::to_owned),
            sse: SseUsageParser::new(),
            metrics: None,
            exception: None,
            saw_message_stop: false,
            ended: false,
        }
    }

    /// Feeds upstream bytes; returns the SSE bytes to send to the client now (possibly empty).
    /// Every complete frame of the chunk is emitted in the one `Bytes` returned.
    pub fn push(&mut self, chunk: &[u8]) -> Bytes {
        if self.ended {
            return Bytes::new();
        }
        self.decoder.push(chunk);
        let mut out = BytesMut::new();
        while !self.ended {
            match self.decoder.next_message() {
                Ok(Some(message)) => self.message(message, &mut out),
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "unreadable frame in a Bedrock stream");
                    self.fail("api_error", &format!("Upstream stream unreadable: {e}"), &mut out);
                }
            }
        }
        self.emitted(out)
    }

    /// The upstream ended: returns the final bytes (an Anthropic `error` event when the stream
    /// was cut inside a frame or before `message_stop`, nothing otherwise).
    pub fn finish(&mut self) -> Bytes {
        if self.ended {
            return Bytes::new();
        }
        let mut out = BytesMut::new();
        if self.decoder.has_partial() {
            self.fail(
                "api_error",
                "Upstream stream ended inside an event-stream frame",
                &mut out,
            );
        } else if !self.saw_message_stop {
            self.fail("api_error", "Upstream stream ended before message_stop", &mut out);
        }
        self.ended = true;
        self.emitted(out)
    }

    /// Usage read from the events (`message_start` usage, each field overridden by the last
    /// `message_delta` carrying it); when no event carried usage, the last
    /// `amazon-bedrock-invocationMetrics` counts (input, output, cache read, cache write as 5m).
    pub fn usage(&self) -> TokenUsage {
        if self.sse.saw_usage() {
            self.sse.usage()
        } else {
            self.metrics.unwrap_or_default()
        }
    }

    /// The exception (or error) frame met, if any: its type as sent (e.g. `throttlingException`,
    /// or an error frame's `:error-code`) and its message.
    pub fn exception(&self) -> Option<(&str, &str)> {
        self.exception.as_ref().map(|(t, m)| (t.as_str(), m.as_str()))
    }

    /// An `error` event was emitted (an exception frame, a corrupt or cut stream).
    pub fn failed(&self) -> bool {
        self.sse.error().is_some()
    }

    /// A `message_stop` event was emitted: the answer is complete.
    pub fn saw_message_stop(&self) -> bool {
        self.saw_message_stop
    }

    fn emitted(&mut self, out: BytesMut) -> Bytes {
        let out = out.freeze();
        self.sse.feed(&out);
        out
    }

    fn message(&mut self, message: Message, out: &mut BytesMut) {
        match message.kind {
            MessageKind::Event if message.event_type == "chunk" => self.chunk(&message.payload, out),
            MessageKind::Event => {
                tracing::debug!(event_type = %message.event_type, "unknown event in a Bedrock stream, skipped");
            }
            MessageKind::Exception => {
                let text = exception_message(&message.payload, &message.event_type);
                tracing::info!(exception = %message.event_type, message = %text, "Bedrock stream exception");
                self.fail(anthropic_error_type(&message.event_type), &text, out);
                self.exception = Some((message.event_type, text));
            }
            MessageKind::Error => {
                let text = message.error_message.unwrap_or_else(|| message.event_type.clone());
                tracing::info!(code = %message.event_type, message = %text, "Bedrock stream error");
                self.fail("api_error", &text, out);
                self.exception = Some((message.event_type, text));
            }
        }
    }

    /// One `chunk` frame: the Anthropic event it wraps.
    fn chunk(&mut self, payload: &[u8], out: &mut BytesMut) {
        let Some(json) = unwrap_chunk(payload) else {
            tracing::warn!("unreadable chunk payload in a Bedrock stream");
            self.fail("api_error", "Upstream sent an unreadable stream event", out);
            return;
        };
        // Newlines would split the data line; outside JSON strings they are whitespace, and
        // inside them they cannot appear raw.
        let json = if memchr::memchr2(b'\n', b'\r', &json).is_some() {
            json.iter()
                .map(|&b| if b == b'\n' || b == b'\r' { b' ' } else { b })
                .collect()
        } else {
            json
        };
        let (start, stop, delta) = {
            let kind = event_type(&json);
            let kind = kind.as_deref();
            if let Some(kind) = kind
                && !kind.contains(['\n', '\r'])
            {
                out.put_slice(b"event: ");
                out.put_slice(kind.as_bytes());
                out.put_u8(b'\n');
            }
            (
                kind == Some("message_start"),
                kind == Some("message_stop"),
                kind == Some("content_block_delta"),
            )
        };
        let json = match &self.client_model {
            Some(model) if start => with_model(&json, model).unwrap_or(json),
            _ => json,
        };
        if stop {
            self.saw_message_stop = true;
        }
        // Bedrock adds its metrics to the last event; content deltas, the bulk, are not searched.
        if !delta
            && memmem::find(&json, METRICS_KEY).is_some()
            && let Some(metrics) = invocation_metrics(&json)
        {
            self.metrics = Some(metrics);
        }
        out.put_slice(b"data: ");
        out.put_slice(&json);
        out.put_slice(b"\n\n");
    }

    /// Writes an Anthropic `error` event and ends the stream.
    fn fail(&mut self, kind: &str, message: &str, out: &mut BytesMut) {
        #[derive(Serialize)]
        struct ErrorEvent<'a> {
            #[serde(rename = "type")]
            kind: &'static str,
            error: ErrorBody<'a>,
        }
        #[derive(Serialize)]
        struct ErrorBody<'a> {
            #[serde(rename = "type")]
            kind: &'a str,
            message: &'a str,
        }
        let event = ErrorEvent {
            kind: "error",
            error: ErrorBody { kind, message },
        };
        match serde_json::to_vec(&event) {
            Ok(json) => {
                out.put_slice(b"event: error\ndata: ");
                out.put_slice(&json);
                out.put_slice(b"\n\n");
            }
            Err(e) => tracing::error!(error = %e, "could not write a stream error event"),
        }
        self.ended = true;
    }
}

/// The Anthropic event JSON inside a `chunk` payload.
fn unwrap_chunk(payload: &[u8]) -> Option<Vec<u8>> {
    #[derive(Deserialize)]
    struct Chunk<'a> {
        #[serde(borrow)]
        bytes: Cow<'a, str>,
    }
    let chunk: Chunk<'_> = serde_json::from_slice(payload).ok()?;
    BASE64.decode(chunk.bytes.as_bytes()).ok()
}

/// The `type` of an event JSON. Anthropic writes it first (`{"type":"…"`), read without parsing
/// the event; otherwise the event is parsed for it.
fn event_type(json: &[u8]) -> Option<Cow<'_, str>> {
    if let Some(rest) = json.strip_prefix(br#"{"type":""#)
        && let Some(end) = memchr::memchr2(b'"', b'\\', rest)
        && rest.get(end) == Some(&b'"')
        && let Some(Ok(kind)) = rest.get(..end).map(std::str::from_utf8)
    {
        return Some(Cow::Borrowed(kind));
    }
    #[derive(Deserialize)]
    struct Typed<'a> {
        #[serde(rename = "type", borrow)]
        kind: Cow<'a, str>,
    }
    serde_json::from_slice::<Typed<'_>>(json).ok().map(|t| t.kind)
}

/// `json` (a `message_start` event) with `message.model`'s value replaced by `model`, every other
/// byte kept; `None` when it has no such field.
fn with_model(json: &[u8], model: &str) -> Option<Vec<u8>> {
    #[derive(Deserialize)]
    struct Start<'a> {
        #[serde(borrow)]
        message: &'a RawValue,
    }
    #[derive(Deserialize)]
    struct StartMessage<'a> {
        #[serde(borrow, default)]
        model: Option<&'a RawValue>,
    }
    let start: Start<'_> = serde_json::from_slice(json).ok()?;
    let message: StartMessage<'_> = serde_json::from_str(start.message.get()).ok()?;
    let value = message.model?.get();
    // The value borrows from `json`: its place there.
    let at = value.as_ptr().addr().checked_sub(json.as_ptr().addr())?;
    let end = at.checked_add(value.len())?;
    let before = json.get(..at)?;
    let after = json.get(end..)?;
    let model = serde_json::to_vec(model).ok()?;
    let mut out = Vec::with_capacity(before.len() + model.len() + after.len());
    out.extend_from_slice(before);
    out.extend_from_slice(&model);
    out.extend_from_slice(after);
    Some(out)
}

/// The counts of an event's `amazon-bedrock-invocationMetrics`.
fn invocation_metrics(json: &[u8]) -> Option<TokenUsage> {
    #[derive(Deserialize)]
    struct Event {
        #[serde(rename = "amazon-bedrock-invocationMetrics")]
        metrics: Option<Metrics>,
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Metrics {
        #[serde(default)]
        input_token_count: Option<u64>,
        #[serde(default)]
        output_token_count: Option<u64>,
        #[serde(default)]
        cache_read_input_token_count: Option<u64>,
        #[serde(default)]
        cache_write_input_token_count: Option<u64>,
    }
    let m = serde_json::from_slice::<Event>(json).ok()?.metrics?;
    Some(TokenUsage {
        input: m.input_token_count.unwrap_or(0),
        output: m.output_token_count.unwrap_or(0),
        cache_read: m.cache_read_input_token_count.unwrap_or(0),
        cache_write_5m: m.cache_write_input_token_count.unwrap_or(0),
        cache_write_1h: 0,
        reasoning: 0,
        billing: crate::usage::Billing::NONE,
    })
}

/// The Anthropic error type closest to a Bedrock stream exception (named as Bedrock's stream
/// members are, `throttlingException`; the capitalised shape name is accepted too).
fn anthropic_error_type(exception: &str) -> &'static str {
    const MAP: &[(&str, &str)] = &[
        ("throttlingException", "rate_limit_error"),
        ("serviceQuotaExceededException", "rate_limit_error"),
        ("serviceUnavailableException", "overloaded_error"),
        ("modelNotReadyException", "overloaded_error"),
        ("validationException", "invalid_request_error"),
        ("accessDeniedException", "permission_error"),
        ("resourceNotFoundException", "not_found_error"),
        ("modelTimeoutException", "timeout_error"),
    ];
    // An `x-amzn-ErrorType`-style value carries a `:namespace` suffix.
    let name = exception.split(':').next().unwrap_or(exception);
    MAP.iter()
        .find(|(bedrock, _)| bedrock.eq_ignore_ascii_case(name))
        .map_or("api_error", |(_, anthropic)| anthropic)
}

/// The `message` of an exception payload (`{"message":…}`, or `Message`), else the payload as
/// text, else the exception's type.
fn exception_message(payload: &[u8], exception: &str) -> String {
    #[derive(Deserialize)]
    struct Payload {
        #[serde(alias = "Message")]
        message: String,
    }
    if let Ok(p) = serde_json::from_slice::<Payload>(payload) {
        return p.message;
    }
    let text = String::from_utf8_lossy(payload);
    let text = text.trim();
    if text.is_empty() {
        exception.to_owned()
    } else {
        text.to_owned()
    }
}

#[cfg(test)]
#[path = "bedrock_stream_tests.rs"]
mod tests;
