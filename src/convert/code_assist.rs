//! Gemini API ⇄ Code Assist: the same `generateContent` request and answer, Code Assist's in an
//! envelope.
//!
//! - Request: `{"model", "project", "user_prompt_id", "request": <GenerateContentRequest>}`; for
//!   `countTokens`, `{"request": {"model": "models/…", "contents": […]}}`. The project is left
//!   empty here: the provider sets the account's own.
//! - Answer: `{"response": <GenerateContentResponse>, "traceId": …}`, as one JSON body or as each
//!   SSE event's data.
//!
//! The wrapped and unwrapped documents are spliced, not re-serialised: the inner JSON passes
//! byte for byte.

use bytes::{Bytes, BytesMut};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::ConvertError;

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow, default)]
    request: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct Answer<'a> {
    #[serde(borrow, default)]
    response: Option<&'a RawValue>,
}

fn json_string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

/// A Gemini API `generateContent` request in Code Assist's envelope.
pub fn wrap_generate(body: &[u8], model: &str, user_prompt_id: &str) -> Result<Bytes, ConvertError> {
    check_object(body)?;
    let head = format!(
        "{{\"model\":{},\"project\":\"\",\"user_prompt_id\":{},\"request\":",
        json_string(model),
        json_string(user_prompt_id)
    );
    let mut out = BytesMut::with_capacity(head.len() + body.len() + 1);
    out.extend_from_slice(head.as_bytes());
    out.extend_from_slice(body);
    out.extend_from_slice(b"}");
    Ok(out.freeze())
}

/// A Gemini API `countTokens` request (`{"contents"}` or `{"generateContentRequest"}`) as Code
/// Assist's.
pub fn wrap_count_tokens(body: &[u8], model: &str) -> Result<Bytes, ConvertError> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Count<'a> {
        #[serde(borrow, default)]
        contents: Option<&'a RawValue>,
        #[serde(borrow, default)]
        generate_content_request: Option<Inner<'a>>,
    }
    #[derive(Deserialize)]
    struct Inner<'a> {
        #[serde(borrow, default)]
        contents: Option<&'a RawValue>,
    }
    let c: Count<'_> = serde_json::from_slice(body)
        .map_err(|e| ConvertError(format!("the countTokens request is not valid JSON: {e}")))?;
    let contents = c
        .contents
        .or(c.generate_content_request.and_then(|g| g.contents))
        .map_or("[]", |r| r.get());
    let name = format!("models/{}", model.strip_prefix("models/").unwrap_or(model));
    Ok(Bytes::from(format!(
        "{{\"request\":{{\"model\":{},\"contents\":{contents}}}}}",
        json_string(&name)
    )))
}

/// The Gemini API request inside a Code Assist envelope, without the members the Gemini API does
/// not know (`session_id`; `model`, which the path names).
pub fn unwrap_request(body: &[u8]) -> Result<Bytes, ConvertError> {
    let e: Envelope<'_> =
        serde_json::from_slice(body).map_err(|e| ConvertError(format!("the request is not valid JSON: {e}")))?;
    let Some(request) = e.request else {
        return Err(ConvertError("`request` is required".into()));
    };
    let mut members: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(request.get()).map_err(|_| ConvertError("`request` must be a JSON object".into()))?;
    if !members.contains_key("session_id") && !members.contains_key("model") {
        return Ok(Bytes::copy_from_slice(request.get().as_bytes()));
    }
    members.remove("session_id");
    members.remove("model");
    serde_json::to_vec(&members)
        .map(Bytes::from)
        .map_err(|e| ConvertError(format!("the request cannot be written: {e}")))
}

/// The model a Code Assist `countTokens` request names (`request.model`, `models/` removed).
pub fn count_tokens_model(body: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct Top {
        request: Inner,
    }
    #[derive(Deserialize)]
    struct Inner {
        model: String,
    }
    let t: Top = serde_json::from_slice(body).ok()?;
    let m = t.request.model;
    Some(m.strip_prefix("models/").map(str::to_string).unwrap_or(m))
}

/// A Code Assist `countTokens` request naming `model` instead of the client's.
pub fn with_count_tokens_model(body: &Bytes, model: &str) -> Bytes {
    let e: Envelope<'_> = match serde_json::from_slice(body) {
        Ok(e) => e,
        Err(_) => return body.clone(),
    };
    let Some(request) = e.request else {
        return body.clone();
    };
    let start = request.get().as_ptr() as usize - body.as_ptr() as usize;
    let end = start + request.get().len();
    let inner = Bytes::copy_from_slice(request.get().as_bytes());
    let name = format!("models/{}", model.strip_prefix("models/").unwrap_or(model));
    let inner = crate::wire::json::set_top_string(&inner, "model", &name);
    let mut out = BytesMut::with_capacity(body.len() + name.len());
    out.extend_from_slice(&body[..start]);
    out.extend_from_slice(&inner);
    out.extend_from_slice(&body[end..]);
    out.freeze()
}

fn check_object(body: &[u8]) -> Result<(), ConvertError> {
    match body.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => Ok(()),
        _ => Err(ConvertError("the request body must be a JSON object".into())),
    }
}

/// The answer inside Code Assist's envelope; the body itself when it is no envelope (an error).
/// A JSON array of answers (a `streamGenerateContent` without `alt=sse`) is unwrapped answer by
/// answer.
pub fn unwrap_answer(body: &Bytes) -> Bytes {
    if let Ok(items) = serde_json::from_slice::<Vec<&RawValue>>(body) {
        let mut out = BytesMut::with_capacity(body.len());
        out.extend_from_slice(b"[");
        for (i, item) in items.iter().enumerate() {
            if i > 0 {
                out.extend_from_slice(b",");
            }
            match serde_json::from_str::<Answer<'_>>(item.get()) {
                Ok(Answer { response: Some(r) }) => out.extend_from_slice(r.get().as_bytes()),
                _ => out.extend_from_slice(item.get().as_bytes()),
            }
        }
        out.extend_from_slice(b"]");
        return out.freeze();
    }
    match serde_json::from_slice::<Answer<'_>>(body) {
        Ok(Answer { response: Some(r) }) => body.slice_ref(r.get().as_bytes()),
        _ => body.clone(),
    }
}

/// A Gemini API answer in Code Assist's envelope (each answer of a JSON array in its own).
/// Errors (`{"error": …}`) stay as they are: both APIs write them alike.
pub fn wrap_answer(body: &Bytes) -> Bytes {
    if let Ok(items) = serde_json::from_slice::<Vec<&RawValue>>(body) {
        let mut out = BytesMut::with_capacity(body.len() + items.len() * 14 + 2);
        out.extend_from_slice(b"[");
        for (i, item) in items.iter().enumerate() {
            if i > 0 {
                out.extend_from_slice(b",");
            }
            wrap_one(item.get().as_bytes(), &mut out);
        }
        out.extend_from_slice(b"]");
        return out.freeze();
    }
    let mut out = BytesMut::with_capacity(body.len() + 14);
    wrap_one(body, &mut out);
    out.freeze()
}

fn wrap_one(answer: &[u8], out: &mut BytesMut) {
    let trimmed = answer
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .map_or(&answer[..0], |i| &answer[i..]);
    if !trimmed.starts_with(b"{") || trimmed.starts_with(b"{\"error\"") {
        out.extend_from_slice(answer);
        return;
    }
    out.extend_from_slice(b"{\"response\":");
    out.extend_from_slice(answer);
    out.extend_from_slice(b"}");
}

/// Which way a stream's events are re-enveloped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Code Assist events → Gemini API events.
    Unwrap,
    /// Gemini API events → Code Assist events.
    Wrap,
}

/// Re-envelopes the `data:` of each SSE event as it passes; other lines (blank lines, comments)
/// pass unchanged. A line split across chunks is held until it ends.
#[derive(Debug)]
pub struct SseEnvelope {
    direction: Direction,
    carry: Vec<u8>,
}

impl SseEnvelope {
    pub fn new(direction: Direction) -> Self {
        SseEnvelope {
            direction,
            carry: Vec::new(),
        }
    }

    /// The bytes for the client of the lines that end in `chunk`.
    pub fn push(&mut self, chunk: &[u8]) -> Bytes {
        let Some(last_nl) = memchr::memrchr(b'\n', chunk) else {
            self.carry.extend_from_slice(chunk);
            return Bytes::new();
        };
        let mut out = BytesMut::with_capacity(self.carry.len() + chunk.len() + 64);
        let (complete, rest) = chunk.split_at(last_nl + 1);
        if self.carry.is_empty() {
            self.lines(complete, &mut out);
        } else {
            let mut joined = std::mem::take(&mut self.carry);
            joined.extend_from_slice(complete);
            self.lines(&joined, &mut out);
            joined.clear();
            self.carry = joined;
        }
        self.carry.extend_from_slice(rest);
        out.freeze()
    }

    /// The stream ended: a last line without its newline.
    pub fn finish(&mut self) -> Bytes {
        if self.carry.is_empty() {
            return Bytes::new();
        }
        let mut line = std::mem::take(&mut self.carry);
        line.push(b'\n');
        let mut out = BytesMut::with_capacity(line.len() + 16);
        self.lines(&line, &mut out);
        out.freeze()
    }

    fn lines(&self, bytes: &[u8], out: &mut BytesMut) {
        let mut start = 0;
        for end in memchr::memchr_iter(b'\n', bytes) {
            self.line(&bytes[start..=end], out);
            start = end + 1;
        }
    }

    /// One line, with its line ending.
    fn line(&self, line: &[u8], out: &mut BytesMut) {
        let Some(data) = line.strip_prefix(b"data:") else {
            out.extend_from_slice(line);
            return;
        };
        let body_end = line.len() - if line.ends_with(b"\r\n") { 2 } else { 1 };
        let payload = &data[..body_end - 5];
        let lead = payload.iter().take_while(|b| **b == b' ').count();
        let json = &payload[lead..];
        let ending = &line[body_end..];
        match self.direction {
            Direction::Unwrap => match serde_json::from_slice::<Answer<'_>>(json) {
                Ok(Answer { response: Some(r) }) => {
                    out.extend_from_slice(b"data: ");
                    out.extend_from_slice(r.get().as_bytes());
                    out.extend_from_slice(ending);
                }
                _ => out.extend_from_slice(line),
            },
            Direction::Wrap if json.starts_with(b"{") && !json.starts_with(b"{\"error\"") => {
                out.extend_from_slice(b"data: {\"response\":");
                out.extend_from_slice(json);
                out.extend_from_slice(b"}");
                out.extend_from_slice(ending);
            }
            Direction::Wrap => out.extend_from_slice(line),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STREAM: &[u8] = include_bytes!("../../tests/fixtures/responses/gemini-stream-alt-sse.sse");

    fn through(t: &mut SseEnvelope, input: &[u8], split: usize) -> Vec<u8> {
        let mut out = t.push(&input[..split]).to_vec();
        out.extend_from_slice(&t.push(&input[split..]));
        out.extend_from_slice(&t.finish());
        out
    }

    #[test]
    fn streams_wrap_and_unwrap_back_to_the_same_bytes_at_every_split() {
        let wrapped = through(&mut SseEnvelope::new(Direction::Wrap), STREAM, 0);
        let first = wrapped.split(|b| *b == b'\n').next().unwrap();
        assert!(
            first.starts_with(b"data: {\"response\":{\"candidates\""),
            "{}",
            String::from_utf8_lossy(first)
        );
        for split in 0..STREAM.len() {
            assert_eq!(
                through(&mut SseEnvelope::new(Direction::Wrap), STREAM, split),
                wrapped,
                "{split}"
            );
        }
        for split in 0..wrapped.len() {
            assert_eq!(
                through(&mut SseEnvelope::new(Direction::Unwrap), &wrapped, split),
                STREAM,
                "{split}"
            );
        }
        // Errors and CRLF endings pass as they are.
        let e = b"data: {\"error\":{\"code\":500}}\r\n\r\n";
        assert_eq!(through(&mut SseEnvelope::new(Direction::Wrap), e, 7), e);
        let ca = b"data: {\"response\": {\"a\":1}, \"traceId\":\"t\"}\r\n\r\n";
        assert_eq!(
            through(&mut SseEnvelope::new(Direction::Unwrap), ca, 3),
            b"data: {\"a\":1}\r\n\r\n"
        );
    }

    /// Code Assist's own stream (a `traceId` per event, a space after the member's colon) unwraps
    /// to the Gemini API's events at every split.
    #[test]
    fn code_assist_streams_unwrap_to_the_gemini_apis_events() {
        const CODE_ASSIST: &[u8] = include_bytes!("../../tests/fixtures/responses/code-assist-stream.sse");
        for split in 0..CODE_ASSIST.len() {
            let got = through(&mut SseEnvelope::new(Direction::Unwrap), CODE_ASSIST, split);
            assert_eq!(
                String::from_utf8_lossy(&got),
                String::from_utf8_lossy(STREAM),
                "{split}"
            );
        }
    }

    #[test]
    fn requests_are_wrapped_and_unwrapped() {
        let body = br#"{"contents":[{"role":"user","parts":[{"text":"hi"}]}]}"#;
        let w = wrap_generate(body, "gemini-2.5-pro", "p-1").unwrap();
        let v: serde_json::Value = serde_json::from_slice(&w).unwrap();
        assert_eq!(v["model"], "gemini-2.5-pro");
        assert_eq!(v["user_prompt_id"], "p-1");
        assert_eq!(v["request"]["contents"][0]["parts"][0]["text"], "hi");
        assert_eq!(&unwrap_request(&w).unwrap()[..], &body[..]);
        let ca = br#"{"model":"m","project":"p","request":{"contents":[],"session_id":"s"}}"#;
        assert_eq!(&unwrap_request(ca).unwrap()[..], br#"{"contents":[]}"#);
        assert!(unwrap_request(br#"{"model":"m"}"#).is_err());
        assert!(wrap_generate(b"[]", "m", "p").is_err());

        let count = wrap_count_tokens(br#"{"contents":[{"parts":[{"text":"x"}]}]}"#, "gemini-2.5-flash").unwrap();
        let v: serde_json::Value = serde_json::from_slice(&count).unwrap();
        assert_eq!(v["request"]["model"], "models/gemini-2.5-flash");
        assert_eq!(count_tokens_model(&count).as_deref(), Some("gemini-2.5-flash"));
        let mapped = with_count_tokens_model(&count, "gemini-2.5-pro");
        assert_eq!(count_tokens_model(&mapped).as_deref(), Some("gemini-2.5-pro"));
        assert_eq!(
            &unwrap_request(&count).unwrap()[..],
            br#"{"contents":[{"parts":[{"text":"x"}]}]}"#
        );
    }

    #[test]
    fn answers_are_wrapped_and_unwrapped() {
        let inner = Bytes::from_static(br#"{"candidates":[],"usageMetadata":{"promptTokenCount":1}}"#);
        let w = wrap_answer(&inner);
        assert_eq!(unwrap_answer(&w), inner);
        let e = Bytes::from_static(br#"{"error":{"code":400}}"#);
        assert_eq!(wrap_answer(&e), e);
        assert_eq!(unwrap_answer(&e), e);
        // A streamGenerateContent without alt=sse answers a JSON array: answer by answer.
        let array =
            Bytes::from_static(br#"[{"candidates":[],"usageMetadata":{"promptTokenCount":1}},{"candidates":[]}]"#);
        let wrapped = wrap_answer(&array);
        assert_eq!(
            &wrapped[..],
            &br#"[{"response":{"candidates":[],"usageMetadata":{"promptTokenCount":1}}},{"response":{"candidates":[]}}]"#[..]
        );
        assert_eq!(unwrap_answer(&wrapped), array);
    }
}
