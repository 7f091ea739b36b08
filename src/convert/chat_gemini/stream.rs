//! A Gemini `streamGenerateContent?alt=sse` stream, re-emitted as Chat Completions
//! `chat.completion.chunk` SSE.
//!
//! Each upstream event (`data: <GenerateContentResponse>`, or Code Assist's
//! `data: {"response": {…}}`) is read whole, as its line ends (chunks may split the stream
//! anywhere; `\n` or `\r\n` line ends), and becomes:
//!
//! - for a candidate seen for the first time, its first chunk,
//!   `delta: {"role":"assistant","content":""}`;
//! - for each text part, `delta.content` (`delta.reasoning_content` for a `thought` part);
//! - for each `functionCall` part (which Gemini sends whole), one `delta.tool_calls` entry with
//!   its `index` among the candidate's calls, id, name and the whole `arguments`;
//! - for a `finishReason`, an empty delta with the `finish_reason`.
//!
//! Once every candidate seen has its finish reason, the stream ends: the usage chunk
//! (`"choices":[]`, the last `usageMetadata` read) when the client asked for it, then
//! `data: [DONE]`. A stream that ends before that gets the missing finish chunks (`stop`, or
//! `tool_calls` after a call), the usage chunk and `[DONE]` from [`GeminiSseToChat::finish`].
//! A refused prompt (`promptFeedback.blockReason` and no candidate) ends the stream with
//! `content_filter`.
//!
//! An error event (`data: {"error": {…}}`), an unreadable event or one too large to hold becomes
//! OpenAI's error chunk `data: {"error":{…}}` and `data: [DONE]`, and nothing follows.
//!
//! The chunks' `id` is `chatcmpl-<responseId>` of the first event. What the events of one
//! pushed chunk produce is returned as one `Bytes`.

use std::borrow::Cow;

use bytes::{Bytes, BytesMut};

use super::response::{Answer, Candidate};
use super::{call_id, compact_json, completion_id, finish_reason, google_error};
use crate::convert::chat_out::{
    self, ChatUsage, Delta, ToolCallDelta, unix_now, write_choice_chunk, write_error_end, write_usage_chunk,
};
use crate::usage::TokenUsage;
use crate::usage::gemini::{UsageMetadata, last_usage_metadata, sse_data, sse_line_start};
use crate::usage::openai::{LineSink, LineStart, SseLines};

/// Longest event read; past it the stream is failed rather than buffered further.
pub(super) const MAX_EVENT: usize = 16 << 20;
/// Of an event too long to read, the end kept to read its usage from.
const TAIL: usize = 8 * 1024;

/// Gemini SSE → Chat Completions SSE.
#[derive(Debug)]
pub struct GeminiSseToChat {
    lines: SseLines,
    state: Transducer,
}

#[derive(Debug)]
struct Transducer {
    model: String,
    include_usage: bool,
    /// Each event is Code Assist's `{"response": {…}}`.
    envelope: bool,
    created: i64,
    /// `chatcmpl-…`; empty until the first chunk is written.
    id: String,
    /// The candidates seen, in order of appearance.
    choices: Vec<Choice>,
    usage: Option<UsageMetadata>,
    failed: bool,
    /// `[DONE]` was written: nothing more is emitted (the usage is still read).
    ended: bool,
    out: BytesMut,
}

#[derive(Debug)]
struct Choice {
    index: u32,
    /// Tool calls made so far.
    calls: usize,
    finished: bool,
}

impl GeminiSseToChat {
    /// `client_model`: the model name put in every chunk. `include_usage`: the client's
    /// `stream_options.include_usage`. `envelope`: each event is Code Assist's
    /// `{"response": {…}}` rather than a bare `GenerateContentResponse`.
    pub fn new(client_model: &str, include_usage: bool, envelope: bool) -> Self {
        Self::with_created(client_model, include_usage, envelope, unix_now())
    }

    /// [`Self::new`] with every chunk's `created` (Unix seconds) given.
    pub fn with_created(client_model: &str, include_usage: bool, envelope: bool, created: i64) -> Self {
        GeminiSseToChat {
            lines: SseLines::new(MAX_EVENT, TAIL),
            state: Transducer {
                model: client_model.to_owned(),
                include_usage,
                envelope,
                created,
                id: String::new(),
                choices: Vec::new(),
                usage: None,
                failed: false,
                ended: false,
                out: BytesMut::new(),
            },
        }
    }

    /// Feeds upstream bytes; returns the SSE bytes to send to the client now (possibly empty).
    pub fn push(&mut self, chunk: &[u8]) -> Bytes {
        self.lines.feed(chunk, &mut self.state);
        self.state.out.split().freeze()
    }

    /// The upstream ended: reads a last event left without its line end, and ends the client's
    /// stream (the missing finish chunks, the usage chunk when asked for, `[DONE]`) unless it
    /// already ended.
    pub fn finish(&mut self) -> Bytes {
        self.lines.feed(b"\n", &mut self.state);
        self.state.complete();
        self.state.out.split().freeze()
    }

    /// The usage read so far (the last `usageMetadata` wins).
    pub fn usage(&self) -> TokenUsage {
        self.state
            .usage
            .as_ref()
            .map(UsageMetadata::to_usage)
            .unwrap_or_default()
    }

    /// The client was sent an error instead of the rest of the answer: the upstream sent an
    /// error event, or an unreadable or oversized one.
    pub fn failed(&self) -> bool {
        self.state.failed
    }
}

impl LineSink for Transducer {
    fn line_start(&self, start: &[u8]) -> LineStart {
        sse_line_start(start)
    }

    fn line(&mut self, line: &[u8]) {
        let Some(data) = sse_data(line) else {
            return;
        };
        if data.is_empty() {
            return;
        }
        if self.ended {
            if let Some(usage) = last_usage_metadata(data) {
                self.usage = Some(usage);
            }
            return;
        }
        match serde_json::from_slice::<Answer<'_>>(data) {
            Ok(answer) => self.event(answer),
            Err(e) => {
                tracing::warn!(error = %e, "unreadable event in a Gemini stream");
                if let Some(usage) = last_usage_metadata(data) {
                    self.usage = Some(usage);
                }
                self.fail(None, Some(502), "Upstream sent an unreadable stream event");
            }
        }
    }

    fn long_line(&mut self, head: &[u8], tail: &[u8]) {
        if !head.starts_with(b"data:") {
            return;
        }
        if let Some(usage) = last_usage_metadata(tail) {
            self.usage = Some(usage);
        }
        self.fail(None, Some(502), "Upstream stream event too large to convert");
    }
}

impl Transducer {
    fn event(&mut self, answer: Answer<'_>) {
        let answer = if self.envelope {
            answer.unwrap_envelope()
        } else {
            answer
        };
        if let Some(error) = answer.error {
            let message = error
                .message
                .filter(|m| !m.trim().is_empty())
                .unwrap_or(Cow::Borrowed("Upstream stream error"));
            self.fail(error.status.as_deref(), error.code, &message);
            return;
        }
        if answer.usage_metadata.is_some() {
            self.usage = answer.usage_metadata;
        }
        if self.id.is_empty() {
            self.id = completion_id(answer.response_id.as_deref());
        }
        if answer.candidates.is_empty() {
            if answer
                .prompt_feedback
                .is_some_and(|f| f.block_reason.is_some_and(|r| !r.is_empty()))
            {
                let choice = self.choice(0);
                self.finish_choice(choice, "content_filter");
                self.complete();
            }
            return;
        }
        for (position, candidate) in answer.candidates.into_iter().enumerate() {
            self.candidate(position, candidate);
        }
        if self.choices.iter().all(|c| c.finished) {
            self.complete();
        }
    }

    fn candidate(&mut self, position: usize, candidate: Candidate<'_>) {
        let index = candidate.index.unwrap_or(u32::try_from(position).unwrap_or(u32::MAX));
        let at = self.choice(index);
        if self.choices.get(at).is_some_and(|c| c.finished) {
            return;
        }
        for part in candidate.content.map(|c| c.parts).unwrap_or_default() {
            if let Some(call) = part.function_call {
                let generated;
                let id = match call.id.as_deref().filter(|id| !id.is_empty()) {
                    Some(id) => id,
                    None => {
                        generated = call_id();
                        &generated
                    }
                };
                let arguments = call.args.map_or(Cow::Borrowed("{}"), |a| compact_json(a.get()));
                let calls = match self.choices.get_mut(at) {
                    Some(choice) => {
                        choice.calls += 1;
                        choice.calls - 1
                    }
                    None => 0,
                };
                let delta = ToolCallDelta::start(calls, id, call.name.as_deref().unwrap_or_default(), &arguments);
                self.chunk(index, Delta::tool_call(delta), None);
            } else if let Some(text) = part.text.as_deref().filter(|t| !t.is_empty()) {
                let delta = if part.thought {
                    Delta {
                        reasoning_content: Some(text),
                        ..Delta::default()
                    }
                } else {
                    Delta {
                        content: Some(text),
                        ..Delta::default()
                    }
                };
                self.chunk(index, delta, None);
            }
        }
        if let Some(reason) = candidate.finish_reason.as_deref().filter(|r| !r.is_empty()) {
            let called = self.choices.get(at).is_some_and(|c| c.calls > 0);
            self.finish_choice(at, finish_reason(Some(reason), called));
        }
    }

    /// The position of the choice of candidate `index`, its first chunk written when it is new.
    fn choice(&mut self, index: u32) -> usize {
        if let Some(at) = self.choices.iter().position(|c| c.index == index) {
            return at;
        }
        if self.id.is_empty() {
            self.id = completion_id(None);
        }
        self.choices.push(Choice {
            index,
            calls: 0,
            finished: false,
        });
        self.chunk(index, Delta::start(), None);
        self.choices.len() - 1
    }

    /// The finish chunk of the choice at `at`, once.
    fn finish_choice(&mut self, at: usize, reason: &str) {
        let Some(choice) = self.choices.get_mut(at).filter(|c| !c.finished) else {
            return;
        };
        choice.finished = true;
        let index = choice.index;
        self.chunk(index, Delta::default(), Some(reason));
    }

    /// Ends the stream: the finish chunks not yet written, the usage chunk when asked for, and
    /// `[DONE]`.
    fn complete(&mut self) {
        if self.ended {
            return;
        }
        if self.choices.is_empty() {
            self.choice(0);
        }
        for at in 0..self.choices.len() {
            let called = self.choices.get(at).is_some_and(|c| c.calls > 0);
            self.finish_choice(at, finish_reason(None, called));
        }
        if self.include_usage {
            let usage = self.usage.as_ref().map(UsageMetadata::to_usage).unwrap_or_default();
            write_usage_chunk(
                &mut self.out,
                &self.id,
                self.created,
                &self.model,
                ChatUsage::new(&usage, true),
            );
        }
        self.out.extend_from_slice(chat_out::DONE);
        self.ended = true;
    }

    fn chunk(&mut self, index: u32, delta: Delta<'_>, finish: Option<&str>) {
        write_choice_chunk(&mut self.out, &self.id, self.created, &self.model, index, delta, finish);
    }

    /// Writes an error chunk (by the Google `status`, else the HTTP `code`) and ends the stream.
    fn fail(&mut self, status: Option<&str>, code: Option<u16>, message: &str) {
        if self.ended {
            return;
        }
        write_error_end(&mut self.out, &google_error(status, code, message));
        self.failed = true;
        self.ended = true;
    }
}
