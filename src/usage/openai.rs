//! Usage of OpenAI answers: Chat Completions and Responses, streamed (SSE) or whole (JSON).
//!
//! Both stream readers watch the bytes as they pass to the client and never change them, keeping
//! between chunks only the little they need.
//!
//! - [`ChatSseUsage`] reads a Chat Completions stream. Every chunk of such a stream is a `data:`
//!   line of the same shape, so lines are not told apart by their first bytes: each `data:` line
//!   is searched, as it passes, for the keys that matter (`"usage":`, `"error":`, `"model":`), and
//!   only the value after such a key is copied. A content chunk costs a substring search and no
//!   copy, whatever its size and wherever the chunks split it.
//! - [`ResponsesSseUsage`] reads a Responses stream, whose events are named: only the `data:`
//!   lines of `response.completed`, `response.incomplete`, `response.failed` and `error` are read
//!   (whole, up to [`MAX_LINE`]; of a longer final event, its last [`LONG_TAIL`] bytes); every
//!   other line is skipped by its first bytes, through [`SseLines`].
//!
//! Usage is normalised to [`TokenUsage`] in Anthropic's terms: `input` excludes the cached prompt
//! tokens (`cache_read`); `output` includes the reasoning tokens (OpenAI bills them as output),
//! which `reasoning` repeats.

use std::borrow::Cow;

use memchr::memmem;
use serde::Deserialize;

use super::TokenUsage;

/// Longest line read whole; a longer one is skipped (only the end of an over-long final
/// Responses event is still searched for its usage, see [`LONG_TAIL`]).
pub const MAX_LINE: usize = 1 << 20;

/// How much of the end of an over-long `response.completed` (or `incomplete`, `failed`) line is
/// kept to find its usage: OpenAI writes `usage` near the end of the response object, after the
/// echoed output, tools and settings, followed only by `user` and `metadata`.
pub const LONG_TAIL: usize = 64 * 1024;

/// Above this, a carry buffer is released after use rather than kept for the next line.
const KEEP_CAPACITY: usize = 64 * 1024;

/// How many first bytes of a line decide whether it is read: [`LineSink::line_start`] never sees
/// more.
pub const HEAD: usize = 256;

/// Longest model name value read from a Chat chunk (its JSON encoding, quotes included).
const MODEL_CAP: usize = 512;

// ---------------------------------------------------------------------------------------------
// Chat Completions
// ---------------------------------------------------------------------------------------------

/// Usage of an OpenAI Chat Completions SSE stream, read as it passes (bytes never changed).
///
/// Every `data:` line is searched for `"usage":` followed by an object (the usage chunk; the last
/// one read wins), `"error":` followed by an object (an error line; the first one is kept) and,
/// until one is found, `"model":` followed by a string. Such a key can only match outside JSON
/// strings (inside them quotes are escaped), and Chat chunks hold no other objects under these
/// names. `data: [DONE]` is noted. Lines over [`MAX_LINE`] are skipped.
#[derive(Debug)]
pub struct ChatSseUsage {
    /// The first bytes of the line in progress.
    head: [u8; CHAT_HEAD],
    head_len: usize,
    /// Bytes of the line in progress so far (its `\n` excluded).
    line_len: usize,
    /// The last byte of the line in progress (a `\r` there is not part of it).
    last: u8,
    /// The line in progress does not begin with `data:`.
    other: bool,
    usage_key: Watch,
    error_key: Watch,
    model_key: Watch,
    usage: TokenUsage,
    saw_usage: bool,
    saw_done: bool,
    error: Option<(String, String)>,
    model: Option<String>,
}

/// Enough of a line to tell `data:` and `data: [DONE]`.
const CHAT_HEAD: usize = 32;

impl Default for ChatSseUsage {
    fn default() -> Self {
        Self::new()
    }
}

impl ChatSseUsage {
    pub fn new() -> Self {
        Self {
            head: [0; CHAT_HEAD],
            head_len: 0,
            line_len: 0,
            last: 0,
            other: false,
            usage_key: Watch::new(br#""usage":"#, b'{', MAX_LINE + 1),
            error_key: Watch::new(br#""error":"#, b'{', MAX_LINE + 1),
            model_key: Watch::new(br#""model":"#, b'"', MODEL_CAP),
            usage: TokenUsage::default(),
            saw_usage: false,
            saw_done: false,
            error: None,
            model: None,
        }
    }

    /// Observes the next chunk of the response body.
    pub fn feed(&mut self, chunk: &[u8]) {
        let mut rest = chunk;
        while let Some(end) = memchr::memchr(b'\n', rest) {
            self.piece(&rest[..end]);
            self.end_line();
            rest = &rest[end + 1..];
        }
        self.piece(rest);
    }

    /// The usage of the last usage object read (all zero before one).
    pub fn usage(&self) -> TokenUsage {
        self.usage
    }

    /// A usage object was read (the numbers may still be zero).
    pub fn saw_usage(&self) -> bool {
        self.saw_usage
    }

    /// `data: [DONE]` was seen: the stream was not cut.
    pub fn saw_done(&self) -> bool {
        self.saw_done
    }

    /// The first error line (`{"error":{...}}`): its `type` (else its `code`) and `message`.
    pub fn error(&self) -> Option<(String, String)> {
        self.error.clone()
    }

    /// The model the first chunk named.
    pub fn model(&self) -> Option<&str> {
        self.model.as_deref()
    }

    /// Part of the line in progress (no `\n` in it).
    fn piece(&mut self, piece: &[u8]) {
        let Some(&last) = piece.last() else {
            return;
        };
        self.last = last;
        let start = self.line_len;
        self.line_len = self.line_len.saturating_add(piece.len());
        if self.head_len < CHAT_HEAD {
            let n = piece.len().min(CHAT_HEAD - self.head_len);
            self.head[self.head_len..self.head_len + n].copy_from_slice(&piece[..n]);
            self.head_len += n;
        }
        if self.other {
            return;
        }
        let known = self.head_len.min(5);
        if self.head[..known] != b"data:"[..known] {
            self.other = true;
            return;
        }
        if start > MAX_LINE + 1 {
            // Too long to be read: the line is dropped at its end.
            return;
        }
        self.usage_key.piece(piece);
        self.error_key.piece(piece);
        if self.model.is_none() {
            self.model_key.piece(piece);
        }
    }

    fn end_line(&mut self) {
        let len = self.line_len - usize::from(self.line_len > 0 && self.last == b'\r');
        if !self.other && self.head_len >= 5 && len <= MAX_LINE {
            self.data_line(len);
        }
        self.head_len = 0;
        self.line_len = 0;
        self.last = 0;
        self.other = false;
        self.usage_key.reset();
        self.error_key.reset();
        self.model_key.reset();
    }

    /// A complete `data:` line of `len` bytes (its `\r` excluded).
    fn data_line(&mut self, len: usize) {
        if len <= CHAT_HEAD && self.head[5..len].trim_ascii() == b"[DONE]" {
            self.saw_done = true;
            return;
        }
        if self.error.is_none()
            && let Some(error) = self.error_key.value().and_then(first_value::<ErrorBody<'_>>)
        {
            self.error = Some(error.into_pair("error"));
        }
        if let Some(value) = self.usage_key.value() {
            match first_value::<ChatUsage>(value) {
                Some(usage) => {
                    self.usage = usage.to_usage();
                    self.saw_usage = true;
                }
                None => tracing::debug!("unreadable usage object in an OpenAI Chat stream"),
            }
        }
        if self.model.is_none()
            && let Some(model) = self.model_key.value().and_then(first_value::<Cow<'_, str>>)
        {
            self.model = Some(model.into_owned());
        }
    }
}

/// Watches the pieces of one line for `"key":` followed (after whitespace) by `open`, and keeps
/// the bytes from `open` on, up to `cap`. The key may be cut between pieces.
#[derive(Debug)]
struct Watch {
    key: &'static [u8],
    open: u8,
    cap: usize,
    state: WatchState,
    /// The last bytes searched (fewer than the key's length), for a key cut between pieces.
    tail: [u8; 16],
    tail_len: usize,
    value: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WatchState {
    Search,
    /// The key was found: whitespace, then the value.
    AfterKey,
    /// Copying the value (and the rest of the line) up to the cap.
    Value,
    /// The cap was reached.
    Full,
}

impl Watch {
    fn new(key: &'static [u8], open: u8, cap: usize) -> Self {
        debug_assert!(key.len() <= 16);
        Self {
            key,
            open,
            cap,
            state: WatchState::Search,
            tail: [0; 16],
            tail_len: 0,
            value: Vec::new(),
        }
    }

    fn piece(&mut self, mut piece: &[u8]) {
        loop {
            match self.state {
                WatchState::Search => {
                    let Some(after) = self.find(piece) else {
                        self.keep_tail(piece);
                        return;
                    };
                    self.tail_len = 0;
                    self.state = WatchState::AfterKey;
                    piece = &piece[after..];
                }
                WatchState::AfterKey => {
                    let Some(at) = piece.iter().position(|b| !b.is_ascii_whitespace()) else {
                        return;
                    };
                    piece = &piece[at..];
                    self.state = if piece[0] == self.open {
                        WatchState::Value
                    } else {
                        WatchState::Search
                    };
                }
                WatchState::Value => {
                    let room = self.cap - self.value.len();
                    if piece.len() >= room {
                        self.value.extend_from_slice(&piece[..room]);
                        self.state = WatchState::Full;
                    } else {
                        self.value.extend_from_slice(piece);
                    }
                    return;
                }
                WatchState::Full => return,
            }
        }
    }

    /// Where the first key in `piece` (or cut between the last piece and this one) ends.
    fn find(&self, piece: &[u8]) -> Option<usize> {
        let k = self.key.len();
        if self.tail_len > 0 {
            let take = piece.len().min(k - 1);
            let mut joint = [0u8; 32];
            joint[..self.tail_len].copy_from_slice(&self.tail[..self.tail_len]);
            joint[self.tail_len..self.tail_len + take].copy_from_slice(&piece[..take]);
            // The joint is shorter than two keys: a match in it spans both sides.
            if let Some(i) = memmem::find(&joint[..self.tail_len + take], self.key) {
                return Some(i + k - self.tail_len);
            }
        }
        memmem::find(piece, self.key).map(|i| i + k)
    }

    fn keep_tail(&mut self, piece: &[u8]) {
        let keep = self.key.len() - 1;
        if piece.len() >= keep {
            self.tail[..keep].copy_from_slice(&piece[piece.len() - keep..]);
            self.tail_len = keep;
        } else {
            let from_old = (keep - piece.len()).min(self.tail_len);
            self.tail.copy_within(self.tail_len - from_old..self.tail_len, 0);
            self.tail[from_old..from_old + piece.len()].copy_from_slice(piece);
            self.tail_len = from_old + piece.len();
        }
    }

    /// The bytes kept from the value's first byte on, if the key was found with such a value.
    fn value(&self) -> Option<&[u8]> {
        matches!(self.state, WatchState::Value | WatchState::Full).then_some(self.value.as_slice())
    }

    fn reset(&mut self) {
        self.state = WatchState::Search;
        self.tail_len = 0;
        self.value.clear();
        if self.value.capacity() > KEEP_CAPACITY {
            self.value = Vec::new();
        }
    }
}

/// The first JSON value of `bytes` (what follows it is not read).
fn first_value<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Option<T> {
    serde_json::Deserializer::from_slice(bytes)
        .into_iter::<T>()
        .next()
        .and_then(Result::ok)
}

/// A Chat Completions `usage` object; `null` reads as absent.
#[derive(Deserialize, Default)]
struct ChatUsage {
    #[serde(default)]
    prompt_tokens: Option<u64>,
    #[serde(default)]
    completion_tokens: Option<u64>,
    #[serde(default)]
    prompt_tokens_details: Option<PromptDetails>,
    #[serde(default)]
    completion_tokens_details: Option<CompletionDetails>,
}

#[derive(Debug, Deserialize, Default)]
struct PromptDetails {
    #[serde(default)]
    cached_tokens: Option<u64>,
}

#[derive(Debug, Deserialize, Default)]
struct CompletionDetails {
    #[serde(default)]
    reasoning_tokens: Option<u64>,
}

impl ChatUsage {
    fn to_usage(&self) -> TokenUsage {
        let cached = self
            .prompt_tokens_details
            .as_ref()
            .and_then(|d| d.cached_tokens)
            .unwrap_or(0);
        openai_usage(
            self.prompt_tokens.unwrap_or(0),
            cached,
            self.completion_tokens.unwrap_or(0),
            self.completion_tokens_details
                .as_ref()
                .and_then(|d| d.reasoning_tokens)
                .unwrap_or(0),
        )
    }
}

/// OpenAI's counts in Anthropic's terms: the prompt minus its cached part is the input.
fn openai_usage(prompt: u64, cached: u64, output: u64, reasoning: u64) -> TokenUsage {
    TokenUsage {
        input: prompt.saturating_sub(cached),
        output,
        cache_read: cached,
        cache_write_5m: 0,
        cache_write_1h: 0,
        reasoning,
        billing: crate::usage::Billing::NONE,
    }
}

/// An OpenAI error object (`{"message","type","code","param"}`).
#[derive(Deserialize, Default)]
struct ErrorBody<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<Cow<'a, str>>,
    #[serde(default)]
    code: Option<serde_json::Value>,
    #[serde(borrow, default)]
    message: Option<Cow<'a, str>>,
}

impl ErrorBody<'_> {
    /// (type, else code, else `fallback`; message).
    fn into_pair(self, fallback: &str) -> (String, String) {
        let kind = match (self.kind, code_text(self.code.as_ref())) {
            (Some(kind), _) if !kind.is_empty() => kind.into_owned(),
            (_, Some(code)) => code,
            _ => fallback.to_owned(),
        };
        (kind, self.message.map(Cow::into_owned).unwrap_or_default())
    }
}

/// An error `code` as text (OpenAI writes strings; some servers numbers).
fn code_text(code: Option<&serde_json::Value>) -> Option<String> {
    match code? {
        serde_json::Value::String(s) if !s.is_empty() => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Usage of a non-streaming `chat.completion` body; `None` when it is not JSON or has no `usage`
/// object (an error body, say).
pub fn parse_chat_json_usage(body: &[u8]) -> Option<TokenUsage> {
    #[derive(Deserialize)]
    struct Body {
        #[serde(default)]
        usage: Option<ChatUsage>,
    }
    let body: Body = serde_json::from_slice(body).ok()?;
    Some(body.usage?.to_usage())
}

// ---------------------------------------------------------------------------------------------
// SSE lines
// ---------------------------------------------------------------------------------------------

/// What the first bytes of a line say about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineStart {
    /// A line to read whole, or too short to tell.
    Read,
    /// Nothing in it can matter.
    Skip,
}

/// The reader of the lines an [`SseLines`] splits.
pub trait LineSink {
    /// Whether a line beginning with `start` (at most [`HEAD`] bytes, a `\r` possibly among
    /// them, possibly the whole line) may matter. `Skip` must be final: a line whose start is
    /// skipped is skipped whatever follows, so that what is read never depends on where chunks
    /// split. The sink's state changes only in [`LineSink::line`] and [`LineSink::long_line`].
    fn line_start(&self, start: &[u8]) -> LineStart;

    /// A complete line whose start was `Read`, without its line ending (`\n` or `\r\n`), at most
    /// the limit long.
    fn line(&mut self, line: &[u8]);

    /// A line longer than the limit whose start was `Read`: its first [`HEAD`] bytes and its
    /// last `tail` bytes (without `\r`; none when the splitter keeps no tail).
    fn long_line(&mut self, _head: &[u8], _tail: &[u8]) {}
}

/// Splits an SSE stream into lines for a [`LineSink`]. A line is copied only when it spans
/// chunks and its first bytes say it may matter; other lines are dropped as soon as they say
/// they do not.
#[derive(Debug)]
pub struct SseLines {
    max: usize,
    tail: usize,
    partial: Partial,
    carry: Vec<u8>,
    /// An over-long wanted line: its first bytes, and the last `tail + 1` bytes seen.
    long_head: Vec<u8>,
    long_tail: Vec<u8>,
}

/// The line in progress at the end of the last chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Partial {
    /// None: the next byte starts a line.
    None,
    /// Kept in `carry`.
    Carry,
    /// Dropped until its end.
    Skip,
    /// Over the limit: only its head and tail are kept.
    Long,
}

impl SseLines {
    /// Lines up to `max` bytes are read whole; of a longer wanted line, the first [`HEAD`] bytes
    /// and the last `tail` bytes are handed to [`LineSink::long_line`].
    pub fn new(max: usize, tail: usize) -> Self {
        Self {
            max,
            tail,
            partial: Partial::None,
            carry: Vec::new(),
            long_head: Vec::new(),
            long_tail: Vec::new(),
        }
    }

    /// Bytes held for the line in progress.
    pub fn held(&self) -> usize {
        self.carry.len() + self.long_head.len() + self.long_tail.len()
    }

    /// Splits the next chunk of the stream, handing `sink` each line that ends in it.
    pub fn feed<S: LineSink>(&mut self, chunk: &[u8], sink: &mut S) {
        let mut rest = chunk;
        if self.partial != Partial::None {
            let Some(end) = memchr::memchr(b'\n', rest) else {
                self.extend(rest, sink);
                return;
            };
            self.end_partial(&rest[..end], sink);
            rest = &rest[end + 1..];
        }
        let mut start = 0;
        for end in memchr::memchr_iter(b'\n', rest) {
            self.whole(&rest[start..end], sink);
            start = end + 1;
        }
        let tail = &rest[start..];
        if !tail.is_empty() {
            self.extend(tail, sink);
        }
    }

    /// A line received in one piece.
    fn whole<S: LineSink>(&mut self, line: &[u8], sink: &mut S) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let head = &line[..line.len().min(HEAD)];
        if sink.line_start(head) == LineStart::Skip {
            return;
        }
        if line.len() <= self.max {
            sink.line(line);
        } else {
            sink.long_line(head, &line[line.len().saturating_sub(self.tail)..]);
        }
    }

    fn extend<S: LineSink>(&mut self, bytes: &[u8], sink: &mut S) {
        match self.partial {
            Partial::Skip => {}
            Partial::Long => self.keep_long_tail(bytes),
            Partial::None | Partial::Carry => {
                // A line may hold `max` bytes plus the `\r` of its CRLF.
                if self.carry.len() + bytes.len() > self.max + 1 {
                    self.start_long(bytes, sink);
                    return;
                }
                let decided = self.carry.len() >= HEAD;
                self.carry.extend_from_slice(bytes);
                self.partial = Partial::Carry;
                if !decided && sink.line_start(&self.carry[..self.carry.len().min(HEAD)]) == LineStart::Skip {
                    self.partial = Partial::Skip;
                    self.clear_carry();
                }
            }
        }
    }

    /// The carried line and `bytes` exceed the limit.
    fn start_long<S: LineSink>(&mut self, bytes: &[u8], sink: &mut S) {
        let mut head = Vec::with_capacity(HEAD);
        head.extend_from_slice(&self.carry[..self.carry.len().min(HEAD)]);
        let more = HEAD - head.len();
        head.extend_from_slice(&bytes[..bytes.len().min(more)]);
        if sink.line_start(&head) == LineStart::Skip {
            self.partial = Partial::Skip;
            self.clear_carry();
            return;
        }
        self.long_head = head;
        self.long_tail.clear();
        let carry = std::mem::take(&mut self.carry);
        self.keep_long_tail(&carry);
        self.keep_long_tail(bytes);
        self.partial = Partial::Long;
    }

    fn keep_long_tail(&mut self, bytes: &[u8]) {
        let keep = self.tail + 1;
        if bytes.len() >= keep {
            self.long_tail.clear();
            self.long_tail.extend_from_slice(&bytes[bytes.len() - keep..]);
            return;
        }
        self.long_tail.extend_from_slice(bytes);
        if self.long_tail.len() > 2 * keep {
            self.long_tail.drain(..self.long_tail.len() - keep);
        }
    }

    /// The line in progress ends with `last` (its `\n` excluded).
    fn end_partial<S: LineSink>(&mut self, last: &[u8], sink: &mut S) {
        match std::mem::replace(&mut self.partial, Partial::None) {
            Partial::None | Partial::Skip => {}
            Partial::Long => {
                self.keep_long_tail(last);
                self.end_long(sink);
            }
            Partial::Carry if self.carry.len() + last.len() > self.max + 1 => {
                // Over the limit even without its `\r`: not copied whole.
                self.start_long(last, sink);
                if std::mem::replace(&mut self.partial, Partial::None) == Partial::Long {
                    self.end_long(sink);
                }
            }
            Partial::Carry => {
                let mut line = std::mem::take(&mut self.carry);
                line.extend_from_slice(last);
                self.whole(&line, sink);
                line.clear();
                if line.capacity() <= KEEP_CAPACITY {
                    self.carry = line;
                }
            }
        }
    }

    fn end_long<S: LineSink>(&mut self, sink: &mut S) {
        let tail = self.long_tail.strip_suffix(b"\r").unwrap_or(&self.long_tail);
        let tail = &tail[tail.len().saturating_sub(self.tail)..];
        sink.long_line(&self.long_head, tail);
        self.long_head = Vec::new();
        self.long_tail = Vec::new();
    }

    fn clear_carry(&mut self) {
        self.carry.clear();
        if self.carry.capacity() > KEEP_CAPACITY {
            self.carry = Vec::new();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Responses
// ---------------------------------------------------------------------------------------------

/// Whether a line of a Responses stream may matter to a reader that wants the events for which
/// `wanted` is true. `named`: what the `event:` line of the record said (`Some(wanted)`), `None`
/// when the record has no `event:` line yet (then an unnamed `data:` line is told by its
/// `{"type":"…"` prefix, or read whole when it does not begin so).
pub fn responses_line_start(start: &[u8], named: Option<bool>, wanted: impl Fn(&[u8]) -> bool) -> LineStart {
    const DATA: &[u8] = b"data:";
    // A blank line ends a record; `event:` lines name the next data line.
    if start.is_empty() || start == b"\r" || b"event:".starts_with(start) || start.starts_with(b"event:") {
        return LineStart::Read;
    }
    if DATA.starts_with(start) {
        return LineStart::Read;
    }
    let Some(payload) = start.strip_prefix(DATA) else {
        return LineStart::Skip;
    };
    match named {
        Some(true) => LineStart::Read,
        Some(false) => LineStart::Skip,
        None => {
            const TYPE: &[u8] = br#"{"type":""#;
            let payload = payload.trim_ascii_start();
            if TYPE.starts_with(payload) {
                return LineStart::Read;
            }
            let Some(kind) = payload.strip_prefix(TYPE) else {
                // Not in OpenAI's field order: read whole.
                return LineStart::Read;
            };
            match memchr::memchr2(b'"', b'\\', kind) {
                Some(end) if kind[end] == b'"' => {
                    if wanted(&kind[..end]) {
                        LineStart::Read
                    } else {
                        LineStart::Skip
                    }
                }
                // An escape in the type: read whole.
                Some(_) => LineStart::Read,
                // The type goes on: it may still be wanted (or end up escaped).
                None => LineStart::Read,
            }
        }
    }
}

/// Usage of an OpenAI Responses SSE stream: from `response.completed` / `response.incomplete` /
/// `response.failed` (their `response.usage`; the last one read wins), errors from `error`
/// events and `response.failed` (the first one is kept).
#[derive(Debug)]
pub struct ResponsesSseUsage {
    lines: SseLines,
    state: ResponsesState,
}

#[derive(Debug, Default)]
struct ResponsesState {
    /// What the `event:` line of the current record named.
    event: Option<ResponsesEvent>,
    usage: TokenUsage,
    saw_usage: bool,
    completed: bool,
    error: Option<(String, String)>,
}

/// The Responses events this reader tells apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ResponsesEvent {
    Completed,
    Incomplete,
    Failed,
    Error,
    Other,
}

impl ResponsesEvent {
    fn from_name(name: &[u8]) -> Self {
        match name {
            b"response.completed" => Self::Completed,
            b"response.incomplete" => Self::Incomplete,
            b"response.failed" => Self::Failed,
            b"error" => Self::Error,
            _ => Self::Other,
        }
    }
}

fn usage_event(name: &[u8]) -> bool {
    ResponsesEvent::from_name(name) != ResponsesEvent::Other
}

impl Default for ResponsesSseUsage {
    fn default() -> Self {
        Self::new()
    }
}

impl ResponsesSseUsage {
    pub fn new() -> Self {
        Self {
            lines: SseLines::new(MAX_LINE, LONG_TAIL),
            state: ResponsesState::default(),
        }
    }

    /// Observes the next chunk of the response body.
    pub fn feed(&mut self, chunk: &[u8]) {
        self.lines.feed(chunk, &mut self.state);
    }

    /// The usage of the last final event read (all zero before one).
    pub fn usage(&self) -> TokenUsage {
        self.state.usage
    }

    /// A usage object was read (the numbers may still be zero).
    pub fn saw_usage(&self) -> bool {
        self.state.saw_usage
    }

    /// `response.completed` was seen.
    pub fn completed(&self) -> bool {
        self.state.completed
    }

    /// The first error: of an `error` event (its `code`, else its `type`; its `message`) or of
    /// `response.failed` (`response.error.code` and `message`).
    pub fn error(&self) -> Option<(String, String)> {
        self.state.error.clone()
    }

    /// Bytes held for the line in progress.
    pub fn held(&self) -> usize {
        self.lines.held()
    }
}

impl LineSink for ResponsesState {
    fn line_start(&self, start: &[u8]) -> LineStart {
        let named = self.event.map(|e| e != ResponsesEvent::Other);
        responses_line_start(start, named, usage_event)
    }

    fn line(&mut self, line: &[u8]) {
        if line.is_empty() {
            self.event = None;
        } else if let Some(name) = line.strip_prefix(b"event:") {
            let event = ResponsesEvent::from_name(name.trim_ascii());
            if event == ResponsesEvent::Completed {
                self.completed = true;
            }
            self.event = Some(event);
        } else if let Some(data) = line.strip_prefix(b"data:") {
            self.data(data);
        }
    }

    fn long_line(&mut self, head: &[u8], tail: &[u8]) {
        let Some(payload) = head.strip_prefix(b"data:") else {
            return;
        };
        // The event the line carries: named, or told by its `{"type":"…"` prefix.
        let event = match self.event {
            Some(event) => event,
            None => {
                let kind = payload
                    .trim_ascii_start()
                    .strip_prefix(br#"{"type":""#)
                    .and_then(|k| memchr::memchr(b'"', k).map(|end| &k[..end]));
                kind.map_or(ResponsesEvent::Other, ResponsesEvent::from_name)
            }
        };
        if !matches!(
            event,
            ResponsesEvent::Completed | ResponsesEvent::Incomplete | ResponsesEvent::Failed
        ) {
            return;
        }
        if event == ResponsesEvent::Completed {
            self.completed = true;
        }
        if let Some(usage) = last_usage_object(tail) {
            self.apply(&usage);
        } else {
            tracing::warn!(event = ?event, "usage not found at the end of an over-long Responses event");
        }
    }
}

impl ResponsesState {
    fn data(&mut self, data: &[u8]) {
        let parsed: ResponsesData<'_> = match serde_json::from_slice(data) {
            Ok(parsed) => parsed,
            Err(e) => {
                tracing::debug!(error = %e, "unreadable event in an OpenAI Responses stream");
                return;
            }
        };
        let event = match parsed.kind.as_deref() {
            Some(kind) => ResponsesEvent::from_name(kind.as_bytes()),
            None => self.event.unwrap_or(ResponsesEvent::Other),
        };
        match event {
            ResponsesEvent::Completed | ResponsesEvent::Incomplete | ResponsesEvent::Failed => {
                if event == ResponsesEvent::Completed {
                    self.completed = true;
                }
                let response = parsed.response.unwrap_or_default();
                if let Some(usage) = response.usage {
                    self.apply(&usage);
                }
                if event == ResponsesEvent::Failed && self.error.is_none() {
                    let error = response.error.unwrap_or_default();
                    self.error = Some(error.into_code_pair("response.failed"));
                }
            }
            ResponsesEvent::Error => {
                if self.error.is_none() {
                    let error = parsed.error.unwrap_or(ErrorBody {
                        kind: None,
                        code: parsed.code,
                        message: parsed.message,
                    });
                    self.error = Some(error.into_code_pair("error"));
                }
            }
            ResponsesEvent::Other => {}
        }
    }

    fn apply(&mut self, usage: &ResponsesUsage) {
        self.usage = usage.to_usage();
        self.saw_usage = true;
    }
}

impl ErrorBody<'_> {
    /// (code, else type, else `fallback`; message).
    fn into_code_pair(self, fallback: &str) -> (String, String) {
        let kind = match (code_text(self.code.as_ref()), self.kind) {
            (Some(code), _) => code,
            (None, Some(kind)) if !kind.is_empty() => kind.into_owned(),
            _ => fallback.to_owned(),
        };
        (kind, self.message.map(Cow::into_owned).unwrap_or_default())
    }
}

/// The usage of an over-long final Responses event, from its end (its last [`LONG_TAIL`]
/// bytes): the object after the last `"usage":` that is followed by one.
pub fn usage_at_end(tail: &[u8]) -> Option<TokenUsage> {
    last_usage_object(tail).map(|u| u.to_usage())
}

fn last_usage_object(tail: &[u8]) -> Option<ResponsesUsage> {
    const KEY: &[u8] = br#""usage":"#;
    let mut end = tail.len();
    while let Some(at) = memmem::rfind(&tail[..end], KEY) {
        let value = tail[at + KEY.len()..].trim_ascii_start();
        if value.first() == Some(&b'{')
            && let Some(usage) = first_value::<ResponsesUsage>(value)
        {
            return Some(usage);
        }
        end = at;
    }
    None
}

/// The fields of a Responses stream event that matter here.
#[derive(Deserialize)]
struct ResponsesData<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    response: Option<ResponseObject<'a>>,
    /// An `error` event nests its error or writes it flat.
    #[serde(borrow, default)]
    error: Option<ErrorBody<'a>>,
    #[serde(default)]
    code: Option<serde_json::Value>,
    #[serde(borrow, default)]
    message: Option<Cow<'a, str>>,
}

#[derive(Deserialize, Default)]
struct ResponseObject<'a> {
    #[serde(default)]
    usage: Option<ResponsesUsage>,
    #[serde(borrow, default)]
    error: Option<ErrorBody<'a>>,
}

/// A Responses `usage` object (`null` fields read as absent), for a reader of Responses events.
#[derive(Debug, Deserialize, Default)]
pub struct ResponsesUsage {
    #[serde(default)]
    input_tokens: Option<u64>,
    #[serde(default)]
    output_tokens: Option<u64>,
    #[serde(default)]
    input_tokens_details: Option<PromptDetails>,
    #[serde(default)]
    output_tokens_details: Option<CompletionDetails>,
}

impl ResponsesUsage {
    pub fn to_usage(&self) -> TokenUsage {
        openai_usage(
            self.input_tokens.unwrap_or(0),
            self.input_tokens_details
                .as_ref()
                .and_then(|d| d.cached_tokens)
                .unwrap_or(0),
            self.output_tokens.unwrap_or(0),
            self.output_tokens_details
                .as_ref()
                .and_then(|d| d.reasoning_tokens)
                .unwrap_or(0),
        )
    }
}

/// Usage of a Responses JSON object (a non-streaming answer, or the `response` of a final
/// event); `None` when it is not JSON or has no `usage` object.
pub fn parse_responses_json_usage(body: &[u8]) -> Option<TokenUsage> {
    #[derive(Deserialize)]
    struct Body {
        #[serde(default)]
        usage: Option<ResponsesUsage>,
    }
    let body: Body = serde_json::from_slice(body).ok()?;
    Some(body.usage?.to_usage())
}

#[cfg(test)]
#[path = "openai_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "openai_props.rs"]
mod props;
