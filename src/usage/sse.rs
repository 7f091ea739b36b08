//! Incremental usage parsing of Anthropic responses (SSE and JSON).
//!
//! [`SseUsageParser`] watches a Messages stream as it passes to the client: it reads the bytes,
//! never changes them, and keeps nothing between chunks but the line in progress. Only the `data:`
//! lines of the events that carry usage, the model or an error are parsed; every other line is
//! skipped as soon as its first bytes tell it is irrelevant, without being copied.

use std::borrow::Cow;

use memchr::memmem;
use serde::Deserialize;

use super::{Billing, Geo, ServiceTier, Speed, TokenUsage};

/// Longest line the parser reads; a longer line is skipped unread (usage lines are a few hundred
/// bytes; only content can be this long, and content is never parsed).
pub const MAX_LINE: usize = 1 << 20;

/// Above this, the carry buffer is released after use rather than kept for the next line.
const KEEP_CAPACITY: usize = 64 * 1024;

/// Usage, model, end and error of one Anthropic Messages SSE stream, read incrementally.
#[derive(Debug, Default)]
pub struct SseUsageParser {
    /// The line in progress when it must be read whole (empty when none is, or when skipping).
    carry: Vec<u8>,
    /// The line in progress is irrelevant or over [`MAX_LINE`]: drop bytes until its end.
    skipping: bool,
    /// The `event:` of the record being read.
    event: Event,
    usage: UsageState,
    model: Option<String>,
    saw_message_stop: bool,
    saw_usage: bool,
    error: Option<(String, String)>,
}

/// The event names that decide whether a `data:` line is read.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Event {
    /// No `event:` line yet in this record: the data line itself says what it is.
    #[default]
    Unnamed,
    MessageStart,
    MessageDelta,
    MessageStop,
    Error,
    /// `ping`, `content_block_*` and anything unknown.
    Other,
}

impl Event {
    fn from_name(name: &[u8]) -> Event {
        match name {
            b"message_start" => Event::MessageStart,
            b"message_delta" => Event::MessageDelta,
            b"message_stop" => Event::MessageStop,
            b"error" => Event::Error,
            _ => Event::Other,
        }
    }

    fn data_matters(self) -> bool {
        matches!(
            self,
            Event::Unnamed | Event::MessageStart | Event::MessageDelta | Event::Error
        )
    }
}

/// What the first bytes of a line say about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LineStart {
    /// Too short to tell, or a line to read whole.
    Read,
    /// Nothing in it can matter.
    Skip,
}

impl SseUsageParser {
    pub fn new() -> Self {
        Self::default()
    }

    /// Observes the next chunk of the response body.
    pub fn feed(&mut self, chunk: &[u8]) {
        let mut rest = chunk;
        if self.skipping || !self.carry.is_empty() {
            let Some(end) = memchr::memchr(b'\n', rest) else {
                self.extend_carry(rest);
                return;
            };
            self.finish_carried_line(&rest[..end]);
            rest = &rest[end + 1..];
        }
        let mut start = 0;
        for end in memchr::memchr_iter(b'\n', rest) {
            self.line(&rest[start..end]);
            start = end + 1;
        }
        let tail = &rest[start..];
        if !tail.is_empty() {
            self.extend_carry(tail);
        }
    }

    /// Token usage so far: the fields of `message_start`, each overridden by the last
    /// `message_delta` that carries it.
    pub fn usage(&self) -> TokenUsage {
        self.usage.to_usage()
    }

    /// The model `message_start` announced.
    pub fn model(&self) -> Option<&str> {
        self.model.as_deref()
    }

    /// The stream reached `message_stop`: it was not cut.
    pub fn saw_message_stop(&self) -> bool {
        self.saw_message_stop
    }

    /// A usage object was read (the numbers may still be zero).
    pub fn saw_usage(&self) -> bool {
        self.saw_usage
    }

    /// The first `error` event of the stream: its `error.type` and `error.message`.
    pub fn error(&self) -> Option<(String, String)> {
        self.error.clone()
    }

    fn extend_carry(&mut self, bytes: &[u8]) {
        if self.skipping {
            return;
        }
        // A line may hold MAX_LINE bytes plus the `\r` of its CRLF.
        if self.carry.len() + bytes.len() > MAX_LINE + 1 {
            self.start_skipping();
            return;
        }
        self.carry.extend_from_slice(bytes);
        if self.line_start(&self.carry) == LineStart::Skip {
            self.start_skipping();
        }
    }

    fn finish_carried_line(&mut self, head: &[u8]) {
        if self.skipping {
            self.skipping = false;
            return;
        }
        if self.carry.len() + head.len() > MAX_LINE + 1 {
            self.clear_carry();
            return;
        }
        let mut line = std::mem::take(&mut self.carry);
        line.extend_from_slice(head);
        self.line(&line);
        line.clear();
        if line.capacity() <= KEEP_CAPACITY {
            self.carry = line;
        }
    }

    fn start_skipping(&mut self) {
        self.skipping = true;
        self.clear_carry();
    }

    fn clear_carry(&mut self) {
        self.carry.clear();
        if self.carry.capacity() > KEEP_CAPACITY {
            self.carry = Vec::new();
        }
    }

    /// Whether a line that begins with `start` can matter. Must agree with [`Self::line`]: a line
    /// classed `Skip` here has no effect there, so results never depend on where chunks split.
    fn line_start(&self, start: &[u8]) -> LineStart {
        // A lone `\r` may be the blank line that ends a record.
        if start == b"\r" || b"event:".starts_with(start) || b"data:".starts_with(start) {
            return LineStart::Read;
        }
        if start.starts_with(b"event:") {
            return LineStart::Read;
        }
        if start.starts_with(b"data:") && self.event.data_matters() {
            return LineStart::Read;
        }
        LineStart::Skip
    }

    /// One complete line, without its `\n`.
    fn line(&mut self, line: &[u8]) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            self.event = Event::Unnamed;
            return;
        }
        if line.len() > MAX_LINE {
            return;
        }
        if let Some(name) = line.strip_prefix(b"event:") {
            self.event = Event::from_name(name.trim_ascii());
            if self.event == Event::MessageStop {
                self.saw_message_stop = true;
            }
        } else if let Some(data) = line.strip_prefix(b"data:")
            && self.event.data_matters()
        {
            self.data(data);
        }
    }

    fn data(&mut self, data: &[u8]) {
        if self.event == Event::Unnamed && !names_a_message_event(data) {
            return;
        }
        let parsed: Data<'_> = match serde_json::from_slice(data) {
            Ok(parsed) => parsed,
            Err(e) => {
                tracing::debug!(error = %e, "unreadable usage event in an Anthropic stream");
                return;
            }
        };
        let kind = match parsed.kind.as_deref() {
            Some("message_start") => Event::MessageStart,
            Some("message_delta") => Event::MessageDelta,
            Some("message_stop") => Event::MessageStop,
            Some("error") => Event::Error,
            Some(_) => Event::Other,
            None => self.event,
        };
        match kind {
            Event::MessageStart => {
                if let Some(message) = parsed.message {
                    if let Some(model) = message.model {
                        self.model = Some(model.into_owned());
                    }
                    if let Some(usage) = message.usage {
                        self.apply(&usage);
                    }
                }
            }
            Event::MessageDelta => {
                if let Some(usage) = parsed.usage {
                    self.apply(&usage);
                }
            }
            Event::MessageStop => self.saw_message_stop = true,
            Event::Error => {
                if self.error.is_none() {
                    let error = parsed.error.unwrap_or_default();
                    self.error = Some((
                        error.kind.map(Cow::into_owned).unwrap_or_default(),
                        error.message.map(Cow::into_owned).unwrap_or_default(),
                    ));
                }
            }
            Event::Unnamed | Event::Other => {}
        }
    }

    fn apply(&mut self, usage: &RawUsage) {
        self.saw_usage = true;
        self.usage.apply(usage);
    }
}

/// An unnamed `data:` line is read only when it may be a message or error event (its type is a
/// quoted `"message_…"` or `"error"`). Text inside JSON strings has its quotes escaped, so content
/// never matches.
fn names_a_message_event(data: &[u8]) -> bool {
    memmem::find(data, br#""message_"#).is_some() || memmem::find(data, br#""error""#).is_some()
}

/// Usage fields as last reported.
#[derive(Debug, Default, Clone, Copy)]
struct UsageState {
    input: u64,
    output: u64,
    cache_read: u64,
    cache_write_5m: u64,
    cache_write_1h: u64,
    billing: Billing,
}

impl UsageState {
    /// Every field present overrides (message_delta usage is cumulative, never summed).
    fn apply(&mut self, u: &RawUsage) {
        if let Some(v) = u.input_tokens {
            self.input = v;
        }
        if let Some(v) = u.output_tokens {
            self.output = v;
        }
        if let Some(v) = u.cache_read_input_tokens {
            self.cache_read = v;
        }
        if let Some(split) = &u.cache_creation {
            if let Some(v) = split.ephemeral_5m_input_tokens {
                self.cache_write_5m = v;
            }
            if let Some(v) = split.ephemeral_1h_input_tokens {
                self.cache_write_1h = v;
            }
        } else if let Some(total) = u.cache_creation_input_tokens {
            // A total without its split: when it agrees with the split already known (a
            // message_delta repeating message_start), keep that split; otherwise the total wins,
            // and what the known 1h share cannot explain counts as 5m.
            // Checked: the split comes from the upstream too, and may sum past u64::MAX.
            if self.cache_write_5m.checked_add(self.cache_write_1h) != Some(total) {
                self.cache_write_1h = self.cache_write_1h.min(total);
                self.cache_write_5m = total - self.cache_write_1h;
            }
        }
        let b = &mut self.billing;
        if let Some(v) = &u.speed {
            b.speed = match v.as_deref() {
                Some("standard") => Speed::Standard,
                Some("fast") => Speed::Fast,
                _ => Speed::Unknown,
            };
        }
        if let Some(v) = &u.inference_geo {
            b.geo = match v.as_deref() {
                Some("global") => Geo::Global,
                Some("us") => Geo::Us,
                _ => Geo::Unknown,
            };
        }
        if let Some(v) = &u.service_tier {
            b.tier = match v.as_deref() {
                Some("standard") => ServiceTier::Standard,
                _ => ServiceTier::Other,
            };
        }
        if let Some(tools) = &u.server_tool_use {
            // Cumulative like the token counts: the object replaces what an earlier one said.
            (b.web_searches, b.web_fetches, b.other_server_tools) = (0, 0, 0);
            for (name, count) in tools {
                // A count the relay cannot read still says something was used: one, unpriced.
                let n = match count {
                    serde_json::Value::Null => 0,
                    v => v.as_u64().unwrap_or(1),
                };
                let slot = match name.as_str() {
                    "web_search_requests" if count.is_u64() || count.is_null() => &mut b.web_searches,
                    "web_fetch_requests" if count.is_u64() || count.is_null() => &mut b.web_fetches,
                    _ => &mut b.other_server_tools,
                };
                *slot = slot.saturating_add(n);
            }
        }
    }

    fn to_usage(self) -> TokenUsage {
        TokenUsage {
            input: self.input,
            output: self.output,
            cache_read: self.cache_read,
            cache_write_5m: self.cache_write_5m,
            cache_write_1h: self.cache_write_1h,
            reasoning: 0,
            billing: self.billing,
        }
    }
}

/// The fields of a stream event that matter; everything else is skipped unread.
#[derive(Deserialize)]
struct Data<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    message: Option<Message<'a>>,
    #[serde(default)]
    usage: Option<RawUsage>,
    #[serde(borrow, default)]
    error: Option<ErrorBody<'a>>,
}

#[derive(Deserialize)]
struct Message<'a> {
    #[serde(borrow, default)]
    model: Option<Cow<'a, str>>,
    #[serde(default)]
    usage: Option<RawUsage>,
}

#[derive(Deserialize, Default)]
struct ErrorBody<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    message: Option<Cow<'a, str>>,
}

/// An Anthropic `usage` object; `null` reads as absent.
#[derive(Deserialize, Default)]
struct RawUsage {
    #[serde(default)]
    input_tokens: Option<u64>,
    #[serde(default)]
    output_tokens: Option<u64>,
    #[serde(default)]
    cache_read_input_tokens: Option<u64>,
    #[serde(default)]
    cache_creation_input_tokens: Option<u64>,
    #[serde(default)]
    cache_creation: Option<CacheCreation>,
    /// `Some(None)`: present but `null` or not a string.
    #[serde(default, deserialize_with = "label")]
    speed: Option<Option<String>>,
    #[serde(default, deserialize_with = "label")]
    inference_geo: Option<Option<String>>,
    #[serde(default, deserialize_with = "label")]
    service_tier: Option<Option<String>>,
    #[serde(default, deserialize_with = "counts")]
    server_tool_use: Option<serde_json::Map<String, serde_json::Value>>,
}

/// A string field read leniently: a value of another type must not cost the whole usage object.
/// `null` reads as absent.
fn label<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Ok(match serde_json::Value::deserialize(d)? {
        serde_json::Value::Null => None,
        serde_json::Value::String(s) => Some(Some(s)),
        _ => Some(None),
    })
}

/// `server_tool_use`, read leniently: anything but an object reads as absent.
fn counts<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<serde_json::Map<String, serde_json::Value>>, D::Error> {
    Ok(match serde_json::Value::deserialize(d)? {
        serde_json::Value::Object(m) => Some(m),
        _ => None,
    })
}

#[derive(Deserialize, Default)]
struct CacheCreation {
    #[serde(default)]
    ephemeral_5m_input_tokens: Option<u64>,
    #[serde(default)]
    ephemeral_1h_input_tokens: Option<u64>,
}

/// Usage and model of a non-streaming Messages response body; `None` when the body is not JSON or
/// has no `usage` object (an error body, say).
pub fn parse_json_usage(body: &[u8]) -> Option<(TokenUsage, Option<String>)> {
    #[derive(Deserialize)]
    struct Body<'a> {
        #[serde(borrow, default)]
        model: Option<Cow<'a, str>>,
        #[serde(default)]
        usage: Option<RawUsage>,
    }
    let body: Body<'_> = serde_json::from_slice(body).ok()?;
    let raw = body.usage?;
    let mut usage = UsageState::default();
    usage.apply(&raw);
    Some((usage.to_usage(), body.model.map(Cow::into_owned)))
}

#[cfg(test)]
#[path = "sse_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "sse_props.rs"]
mod props;
