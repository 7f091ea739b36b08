//! Usage of Gemini answers: `usageMetadata`, in the Gemini API's answers and in Code Assist's
//! (`{"response": {…, "usageMetadata": …}}`), streamed or not.
//!
//! Every streamed chunk carries the counts so far, so the last one read wins. Counts are
//! normalised into [`TokenUsage`]: the prompt (with the tool-use prompt) less its cached part is
//! the input, the cached part is a cache read, and the thoughts are output tokens (kept apart as
//! `reasoning` too, for display).
//!
//! The reader never parses a whole event: it finds the last `"usageMetadata"` member of a line
//! and reads only that object (the quote after the name cannot occur inside a JSON string, where
//! quotes are escaped). A line too long to hold is read from its tail, where the member sits.

use serde::Deserialize;

use super::TokenUsage;
use super::openai::{LineSink, LineStart, SseLines};

/// Longest SSE line held whole; of a longer one the last [`TAIL`] bytes are read.
const MAX_LINE: usize = 256 * 1024;
const TAIL: usize = 8 * 1024;

/// Gemini's `usageMetadata`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UsageMetadata {
    #[serde(default)]
    pub prompt_token_count: u64,
    #[serde(default)]
    pub candidates_token_count: u64,
    #[serde(default)]
    pub cached_content_token_count: u64,
    #[serde(default)]
    pub thoughts_token_count: u64,
    #[serde(default)]
    pub tool_use_prompt_token_count: u64,
    #[serde(default)]
    pub total_token_count: u64,
}

impl UsageMetadata {
    /// The counts in the relay's terms.
    pub fn to_usage(&self) -> TokenUsage {
        let prompt = self.prompt_token_count.saturating_add(self.tool_use_prompt_token_count);
        let cached = self.cached_content_token_count.min(prompt);
        TokenUsage {
            input: prompt - cached,
            output: self.candidates_token_count.saturating_add(self.thoughts_token_count),
            cache_read: cached,
            cache_write_5m: 0,
            cache_write_1h: 0,
            reasoning: self.thoughts_token_count,
            billing: crate::usage::Billing::NONE,
        }
    }
}

const NAME: &[u8] = b"\"usageMetadata\"";

/// The last `usageMetadata` object in `bytes`, if one can be read.
pub fn last_usage_metadata(bytes: &[u8]) -> Option<UsageMetadata> {
    let finder = memchr::memmem::FinderRev::new(NAME);
    let mut end = bytes.len();
    while let Some(at) = finder.rfind(&bytes[..end]) {
        if let Some(m) = value_after(&bytes[at + NAME.len()..]) {
            return Some(m);
        }
        end = at;
    }
    None
}

fn value_after(rest: &[u8]) -> Option<UsageMetadata> {
    let rest = trim_start(rest);
    let rest = trim_start(rest.strip_prefix(b":")?);
    if rest.first() != Some(&b'{') {
        return None;
    }
    serde_json::Deserializer::from_slice(rest)
        .into_iter::<UsageMetadata>()
        .next()?
        .ok()
}

fn trim_start(b: &[u8]) -> &[u8] {
    let n = b.iter().take_while(|c| c.is_ascii_whitespace()).count();
    &b[n..]
}

/// Usage of a complete Gemini answer: one response object, a JSON array of them (a
/// `streamGenerateContent` without `alt=sse`), or Code Assist's envelope; `None` when it has no
/// usage (an error, say).
pub fn parse_gemini_json_usage(body: &[u8]) -> Option<TokenUsage> {
    last_usage_metadata(body).map(|m| m.to_usage())
}

/// Whether a line of a Gemini SSE stream (either wire) is read, by its first bytes: only `data:`
/// lines carry events.
pub fn sse_line_start(start: &[u8]) -> LineStart {
    if start.len() >= 5 && !start.starts_with(b"data:") {
        LineStart::Skip
    } else {
        LineStart::Read
    }
}

/// The event of a `data:` line (what follows the colon and any space); `None` for another line.
pub fn sse_data(line: &[u8]) -> Option<&[u8]> {
    line.strip_prefix(b"data:").map(trim_start)
}

/// Reads the usage of a Gemini SSE stream (either wire) as it passes.
#[derive(Debug)]
pub struct GeminiSseUsage {
    lines: SseLines,
    sink: Sink,
}

#[derive(Debug, Default)]
struct Sink {
    last: Option<UsageMetadata>,
    error: Option<String>,
}

impl LineSink for Sink {
    fn line_start(&self, start: &[u8]) -> LineStart {
        sse_line_start(start)
    }

    fn line(&mut self, line: &[u8]) {
        let Some(data) = sse_data(line) else {
            return;
        };
        if data.starts_with(b"{\"error\"") {
            self.error = Some(error_message(data));
            return;
        }
        if let Some(m) = last_usage_metadata(data) {
            self.last = Some(m);
        }
    }

    fn long_line(&mut self, head: &[u8], tail: &[u8]) {
        if !head.starts_with(b"data:") {
            return;
        }
        if let Some(m) = last_usage_metadata(tail) {
            self.last = Some(m);
        }
    }
}

/// The message of a Google error event, or the event itself.
fn error_message(data: &[u8]) -> String {
    #[derive(Deserialize)]
    struct E {
        error: Inner,
    }
    #[derive(Deserialize)]
    struct Inner {
        #[serde(default)]
        message: String,
        #[serde(default)]
        status: String,
    }
    match serde_json::from_slice::<E>(data) {
        Ok(E { error }) if !error.status.is_empty() => format!("{}: {}", error.status, error.message),
        Ok(E { error }) => error.message,
        Err(_) => String::from_utf8_lossy(&data[..data.len().min(200)]).into_owned(),
    }
}

impl Default for GeminiSseUsage {
    fn default() -> Self {
        Self::new()
    }
}

impl GeminiSseUsage {
    pub fn new() -> Self {
        GeminiSseUsage {
            lines: SseLines::new(MAX_LINE, TAIL),
            sink: Sink::default(),
        }
    }

    pub fn feed(&mut self, chunk: &[u8]) {
        self.lines.feed(chunk, &mut self.sink);
    }

    /// The usage the stream reported last.
    pub fn usage(&self) -> TokenUsage {
        self.sink.last.as_ref().map(UsageMetadata::to_usage).unwrap_or_default()
    }

    /// The raw counts last reported.
    pub fn metadata(&self) -> Option<&UsageMetadata> {
        self.sink.last.as_ref()
    }

    /// The error event the stream carried, if any.
    pub fn error(&self) -> Option<&str> {
        self.sink.error.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STREAM: &[u8] = include_bytes!("../../tests/fixtures/responses/gemini-stream-alt-sse.sse");

    #[test]
    fn the_last_chunk_wins_at_every_split() {
        for split in 0..STREAM.len() {
            let mut r = GeminiSseUsage::new();
            r.feed(&STREAM[..split]);
            r.feed(&STREAM[split..]);
            let u = r.usage();
            assert_eq!(
                (u.input, u.cache_read, u.output, u.reasoning),
                (21, 3, 7, 0),
                "split at {split}"
            );
            assert!(r.error().is_none());
        }
    }

    #[test]
    fn thoughts_are_output_and_code_assist_envelopes_are_read() {
        let body = br#"{"response":{"candidates":[{"content":{"parts":[{"text":"\"usageMetadata\": {\"promptTokenCount\": 999}"}]}}],"usageMetadata": {"promptTokenCount":100,"candidatesTokenCount":20,"thoughtsTokenCount":30,"cachedContentTokenCount":40,"toolUsePromptTokenCount":5}},"traceId":"t"}"#;
        let u = parse_gemini_json_usage(body).unwrap();
        assert_eq!((u.input, u.cache_read, u.output, u.reasoning), (65, 40, 50, 30));
        let array = br#"[{"usageMetadata":{"promptTokenCount":3}},{"usageMetadata":{"promptTokenCount":3,"candidatesTokenCount":9}}]"#;
        assert_eq!(parse_gemini_json_usage(array).unwrap().output, 9);
        assert!(parse_gemini_json_usage(br#"{"error":{"code":429}}"#).is_none());
        let mut r = GeminiSseUsage::new();
        r.feed(b"data: {\"error\":{\"code\":500,\"message\":\"boom\",\"status\":\"INTERNAL\"}}\r\n\r\n");
        assert_eq!(r.error(), Some("INTERNAL: boom"));
    }

    #[test]
    fn long_lines_are_read_from_their_tail() {
        let text = "x".repeat(MAX_LINE * 2);
        let line = format!(
            "data: {{\"candidates\":[{{\"content\":{{\"parts\":[{{\"text\":\"{text}\"}}]}}}}],\"usageMetadata\":{{\"promptTokenCount\":7,\"candidatesTokenCount\":70000}}}}\n\n"
        );
        let mut r = GeminiSseUsage::new();
        for c in line.as_bytes().chunks(10_000) {
            r.feed(c);
        }
        assert_eq!(r.usage().output, 70000);
    }
}
