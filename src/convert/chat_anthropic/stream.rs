//! An Anthropic Messages SSE stream, re-emitted as Chat Completions `chat.completion.chunk` SSE.
//!
//! [`MessagesSseToChat`] reads the upstream's SSE lines as they arrive (split anywhere, `\n` or
//! `\r\n` line ends), and writes one `data: <json>\n\n` chunk per event that means something to
//! a Chat client:
//!
//! - `message_start` → the first chunk, `delta: {"role":"assistant","content":""}`; its message
//!   id names every chunk (`chatcmpl-<id>`).
//! - text deltas → `delta.content`; thinking deltas → `delta.reasoning_content`.
//! - a `tool_use` block → `delta.tool_calls[{index, id, type, function: {name, arguments: ""}}]`,
//!   `index` counting the answer's tool calls from 0; its `input_json_delta`s → `arguments`
//!   pieces under the same index. A call whose input came in no delta gets its input (`{}` when
//!   empty) as one piece when the block stops, so `arguments` is always a JSON object.
//! - `message_delta`'s `stop_reason` → an empty delta with `finish_reason`.
//! - `message_stop` → with `include_usage`, a chunk with `"choices":[]` and the usage; then
//!   `data: [DONE]`.
//! - an `error` event → `data: {"error":{…}}` (OpenAI's error shape) and `data: [DONE]`.
//!
//! `ping` and unknown events are skipped. A stream that ends before `message_delta` ends with an
//! error chunk; one that ends after it but before `message_stop` is completed normally. Every
//! event completed by one input chunk leaves in the one `Bytes` returned for it. Usage is read
//! by [`SseUsageParser`] as the lines pass, so it counts as everywhere else in the relay and
//! stays readable when the stream is cut.

use std::borrow::Cow;

use bytes::{Bytes, BytesMut};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::{chat_error, finish_reason};
use crate::convert::chat_out::unix_now;
use crate::convert::chat_out::{
    self, ChatUsage, Delta, ToolCallDelta, write_chunk, write_error_end, write_usage_chunk,
};
use crate::usage::TokenUsage;
use crate::usage::sse::SseUsageParser;

/// Longest line (or event) read; past it the stream is failed rather than buffered further.
const MAX_EVENT: usize = 16 << 20;

/// Above this, a buffer is released after use rather than kept for the next event.
const KEEP_CAPACITY: usize = 64 * 1024;

/// Streaming transducer from Anthropic Messages SSE bytes to Chat Completions chunk SSE bytes.
#[derive(Debug)]
pub struct MessagesSseToChat {
    client_model: String,
    include_usage: bool,
    created: i64,
    /// `chatcmpl-<message id>`; empty until the first chunk is written.
    id: String,
    /// The line in progress.
    line: Vec<u8>,
    /// The `data:` of the event in progress (its lines joined by `\n`).
    data: Vec<u8>,
    /// Reads the usage from the upstream's lines.
    sse: SseUsageParser,
    /// Tool calls by Anthropic block index, in order of appearance (position = Chat index).
    tools: Vec<ToolState>,
    /// The role chunk was written.
    started: bool,
    /// The `finish_reason` chunk was written.
    finished: bool,
    saw_message_stop: bool,
    failed: bool,
    /// `[DONE]` was written: nothing more is emitted.
    ended: bool,
}

#[derive(Debug)]
struct ToolState {
    block: u64,
    /// Some `arguments` piece was written.
    sent: bool,
    /// The input `content_block_start` carried, when not empty.
    start_input: Option<String>,
}

impl MessagesSseToChat {
    /// `client_model`: the model name the client asked for, put in every chunk. `include_usage`:
    /// the client's `stream_options.include_usage`.
    pub fn new(client_model: &str, include_usage: bool) -> Self {
        Self::with_created(client_model, include_usage, unix_now())
    }

    /// [`Self::new`] with every chunk's `created` (Unix seconds) given.
    pub fn with_created(client_model: &str, include_usage: bool, created: i64) -> Self {
        Self {
            client_model: client_model.to_owned(),
            include_usage,
            created,
            id: String::new(),
            line: Vec::new(),
            data: Vec::new(),
            sse: SseUsageParser::new(),
            tools: Vec::new(),
            started: false,
            finished: false,
            saw_message_stop: false,
            failed: false,
            ended: false,
        }
    }

    /// Feeds upstream bytes; returns the SSE bytes to send to the client now (possibly empty).
    pub fn push(&mut self, chunk: &[u8]) -> Bytes {
        let mut out = BytesMut::new();
        let mut rest = chunk;
        while let Some(end) = memchr::memchr(b'\n', rest) {
            let (line, tail) = rest.split_at(end + 1);
            rest = tail;
            self.sse.feed(line);
            let line = line.get(..end).unwrap_or_default();
            if self.line.is_empty() {
                self.line_end(line, &mut out);
            } else {
                let mut whole = std::mem::take(&mut self.line);
                whole.extend_from_slice(line);
                self.line_end(&whole, &mut out);
                whole.clear();
                if whole.capacity() <= KEEP_CAPACITY {
                    self.line = whole;
                }
            }
        }
        if !rest.is_empty() {
            self.sse.feed(rest);
            if !self.ended {
                if self.line.len() + rest.len() > MAX_EVENT {
                    self.line = Vec::new();
                    self.fail("api_error", "Upstream stream event too large", &mut out);
                } else {
                    self.line.extend_from_slice(rest);
                }
            }
        }
        out.freeze()
    }

    /// The upstream ended: reads what is left, and ends the client's stream (`data: [DONE]`
    /// after an error chunk when the answer was cut before its stop reason).
    pub fn finish(&mut self) -> Bytes {
        let mut out = BytesMut::new();
        self.sse.feed(b"\n");
        // A last event without its blank line is read when it is whole; a cut one is dropped.
        if !self.line.is_empty() {
            let line = std::mem::take(&mut self.line);
            self.line_end(&line, &mut out);
        }
        if !self.data.is_empty() {
            if serde_json::from_slice::<serde::de::IgnoredAny>(&self.data).is_ok() {
                self.dispatch(&mut out);
            } else {
                self.data.clear();
            }
        }
        if !self.ended {
            if self.finished {
                self.complete(&mut out);
            } else {
                self.fail(
                    "api_error",
                    "Upstream stream ended before the answer was complete",
                    &mut out,
                );
            }
        }
        out.freeze()
    }

    /// Usage read so far: `message_start`'s, each field overridden by the last `message_delta`
    /// carrying it.
    pub fn usage(&self) -> TokenUsage {
        self.sse.usage()
    }

    /// The client was sent an error instead of a complete answer: the upstream sent an `error`
    /// event, an unreadable or oversized event, or ended before the answer's stop reason.
    pub fn failed(&self) -> bool {
        self.failed
    }

    /// The upstream's `message_stop` was read: the answer is complete.
    pub fn saw_message_stop(&self) -> bool {
        self.saw_message_stop
    }

    /// One complete line, without its `\n`.
    fn line_end(&mut self, line: &[u8], out: &mut BytesMut) {
        if self.ended {
            return;
        }
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            if !self.data.is_empty() {
                self.dispatch(out);
            }
            return;
        }
        let Some(value) = line.strip_prefix(b"data:") else {
            // `event:` names repeat the data's `type`; comments and other fields do not matter.
            return;
        };
        let value = value.strip_prefix(b" ").unwrap_or(value);
        if self.data.len() + value.len() >= MAX_EVENT {
            self.data = Vec::new();
            self.fail("api_error", "Upstream stream event too large", out);
            return;
        }
        if !self.data.is_empty() {
            self.data.push(b'\n');
        }
        self.data.extend_from_slice(value);
    }

    /// The event whose data was gathered.
    fn dispatch(&mut self, out: &mut BytesMut) {
        let mut data = std::mem::take(&mut self.data);
        match serde_json::from_slice::<Event<'_>>(&data) {
            Ok(event) => self.event(event, out),
            Err(e) => {
                tracing::warn!(error = %e, "unreadable event in an Anthropic stream");
                self.fail("api_error", "Upstream sent an unreadable stream event", out);
            }
        }
        data.clear();
        if data.capacity() <= KEEP_CAPACITY {
            self.data = data;
        }
    }

    fn event(&mut self, event: Event<'_>, out: &mut BytesMut) {
        if self.ended {
            return;
        }
        match event.kind.as_ref() {
            "message_start" => {
                if self.id.is_empty()
                    && let Some(id) = event.message.and_then(|m| m.id)
                {
                    self.id = format!("chatcmpl-{id}");
                }
                self.start(out);
            }
            "content_block_start" => {
                if let (Some(index), Some(block)) = (event.index, event.content_block) {
                    self.block_start(index, block, out);
                }
            }
            "content_block_delta" => {
                if let (Some(index), Some(delta)) = (event.index, event.delta) {
                    self.block_delta(index, delta, out);
                }
            }
            "content_block_stop" => {
                if let Some(index) = event.index {
                    self.block_stop(index, out);
                }
            }
            "message_delta" => {
                if let Some(reason) = event.delta.and_then(|d| d.stop_reason) {
                    self.finish_chunk(finish_reason(Some(&reason)), out);
                }
            }
            "message_stop" => {
                self.saw_message_stop = true;
                self.complete(out);
            }
            "error" => {
                let (kind, message) = match event.error {
                    Some(e) => (e.kind, e.message),
                    None => (None, None),
                };
                let message = message.unwrap_or(Cow::Borrowed("Upstream stream error"));
                self.fail(kind.as_deref().unwrap_or("api_error"), &message, out);
            }
            _ => {}
        }
    }

    /// The role chunk, once.
    fn start(&mut self, out: &mut BytesMut) {
        if self.started {
            return;
        }
        self.started = true;
        if self.id.is_empty() {
            self.id = format!("chatcmpl-{}", uuid::Uuid::new_v4().simple());
        }
        self.chunk(Delta::start(), None, out);
    }

    fn block_start(&mut self, index: u64, block: StartBlock<'_>, out: &mut BytesMut) {
        match block.kind.as_ref() {
            "text" => self.text(block.text.as_deref(), out),
            "thinking" => self.thinking(block.thinking.as_deref(), out),
            "tool_use" => {
                self.start(out);
                let start_input = block
                    .input
                    .map(RawValue::get)
                    .filter(|input| !input.trim().is_empty() && input.trim() != "{}")
                    .map(str::to_owned);
                let position = self.tools.len();
                self.tools.push(ToolState {
                    block: index,
                    sent: false,
                    start_input,
                });
                let call = ToolCallDelta::start(
                    position,
                    block.id.as_deref().unwrap_or_default(),
                    block.name.as_deref().unwrap_or_default(),
                    "",
                );
                self.chunk(Delta::tool_call(call), None, out);
            }
            _ => {}
        }
    }

    fn block_delta(&mut self, index: u64, delta: BlockDelta<'_>, out: &mut BytesMut) {
        match delta.kind.as_deref() {
            Some("text_delta") => self.text(delta.text.as_deref(), out),
            Some("thinking_delta") => self.thinking(delta.thinking.as_deref(), out),
            Some("input_json_delta") => {
                let Some(partial) = delta.partial_json.as_deref().filter(|p| !p.is_empty()) else {
                    return;
                };
                let Some((position, tool)) = self.tool(index) else {
                    return;
                };
                tool.sent = true;
                self.arguments(position, partial, out);
            }
            _ => {}
        }
    }

    fn block_stop(&mut self, index: u64, out: &mut BytesMut) {
        let Some((position, tool)) = self.tool(index) else {
            return;
        };
        if tool.sent {
            return;
        }
        tool.sent = true;
        let input = tool.start_input.take();
        self.arguments(position, input.as_deref().unwrap_or("{}"), out);
    }

    /// The tool call of an Anthropic block index, with its Chat index.
    fn tool(&mut self, block: u64) -> Option<(usize, &mut ToolState)> {
        self.tools.iter_mut().enumerate().rev().find(|(_, t)| t.block == block)
    }

    fn text(&mut self, text: Option<&str>, out: &mut BytesMut) {
        let Some(text) = text.filter(|t| !t.is_empty()) else {
            return;
        };
        self.start(out);
        self.chunk(
            Delta {
                content: Some(text),
                ..Delta::default()
            },
            None,
            out,
        );
    }

    fn thinking(&mut self, thinking: Option<&str>, out: &mut BytesMut) {
        let Some(thinking) = thinking.filter(|t| !t.is_empty()) else {
            return;
        };
        self.start(out);
        self.chunk(
            Delta {
                reasoning_content: Some(thinking),
                ..Delta::default()
            },
            None,
            out,
        );
    }

    fn arguments(&mut self, position: usize, arguments: &str, out: &mut BytesMut) {
        self.chunk(
            Delta::tool_call(ToolCallDelta::arguments(position, arguments)),
            None,
            out,
        );
    }

    /// The `finish_reason` chunk, once.
    fn finish_chunk(&mut self, reason: &'static str, out: &mut BytesMut) {
        if self.finished {
            return;
        }
        self.start(out);
        self.finished = true;
        self.chunk(Delta::default(), Some(reason), out);
    }

    /// The answer is complete: the finish chunk if not yet written, the usage chunk when asked
    /// for, and `[DONE]`.
    fn complete(&mut self, out: &mut BytesMut) {
        if self.ended {
            return;
        }
        self.finish_chunk("stop", out);
        if self.include_usage {
            let usage = ChatUsage::new(&self.sse.usage(), false);
            write_usage_chunk(out, &self.id, self.created, &self.client_model, usage);
        }
        out.extend_from_slice(chat_out::DONE);
        self.ended = true;
    }

    fn chunk(&self, delta: Delta<'_>, finish_reason: Option<&str>, out: &mut BytesMut) {
        write_chunk(out, &self.id, self.created, &self.client_model, delta, finish_reason);
    }

    /// Writes an error chunk (`kind` is Anthropic's error type) and ends the stream.
    fn fail(&mut self, kind: &str, message: &str, out: &mut BytesMut) {
        if self.ended {
            return;
        }
        write_error_end(out, &chat_error(Some(kind), None, message));
        self.failed = true;
        self.ended = true;
    }
}

/// The fields of a stream event that matter.
#[derive(Deserialize)]
struct Event<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(default)]
    index: Option<u64>,
    #[serde(borrow, default)]
    message: Option<StartMessage<'a>>,
    #[serde(borrow, default)]
    content_block: Option<StartBlock<'a>>,
    #[serde(borrow, default)]
    delta: Option<BlockDelta<'a>>,
    #[serde(borrow, default)]
    error: Option<ErrorBody<'a>>,
}

#[derive(Deserialize)]
struct StartMessage<'a> {
    #[serde(borrow, default)]
    id: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct StartBlock<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow, default)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    text: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    thinking: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    input: Option<&'a RawValue>,
}

/// A `content_block_delta`'s or `message_delta`'s `delta`.
#[derive(Deserialize)]
struct BlockDelta<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    text: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    thinking: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    partial_json: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    stop_reason: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct ErrorBody<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    message: Option<Cow<'a, str>>,
}
