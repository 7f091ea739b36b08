//! Chat Completions passed through to an OpenAI-compatible upstream.
//!
//! The request keeps its bytes but for its `model` (the account's name for it) and, when the
//! client streams without asking for usage, `stream_options.include_usage` (the relay bills from
//! the usage chunk). The answer passes as it comes while [`ChatSseUsage`] reads it; only the usage
//! chunk the client did not ask for is taken out, and a mapped model name put back.

use bytes::{Bytes, BytesMut};
use memchr::memmem;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::ConvertError;
use crate::usage::TokenUsage;
use crate::usage::openai::ChatSseUsage;

/// The Chat request for an OpenAI-compatible upstream: `model` replaced by `upstream_model` (the
/// value spliced in, every other byte kept; inserted when absent), and for a streamed request
/// without `stream_options.include_usage: true`, that option set (spliced into the client's
/// `stream_options`, re-serialised, or inserted) so the relay can bill. Returns the body and
/// whether usage was asked for on the client's behalf, in which case the answer's usage-only chunk
/// is for the relay and [`ChatSsePassThrough`] takes it out.
pub fn passthrough_request(body: &[u8], upstream_model: &str) -> Result<(Bytes, bool), ConvertError> {
    #[derive(Deserialize)]
    struct Top<'a> {
        #[serde(borrow, default, deserialize_with = "raw_or_null")]
        model: Option<&'a RawValue>,
        #[serde(borrow, default)]
        stream: Option<&'a RawValue>,
        #[serde(borrow, default, deserialize_with = "raw_or_null")]
        stream_options: Option<&'a RawValue>,
    }
    let top: Top<'_> = serde_json::from_slice(body)
        .map_err(|e| ConvertError(format!("the request body is not a JSON object: {e}")))?;
    let model = json_string(upstream_model);
    // (start, end, replacement), in body order once sorted.
    let mut splices: Vec<(usize, usize, Vec<u8>)> = Vec::new();
    // Members inserted at the start of the object.
    let mut inserted: Vec<Vec<u8>> = Vec::new();
    match top.model {
        Some(raw) => {
            if raw.get().as_bytes() != model.as_slice() {
                let (start, end) = place(body, raw);
                splices.push((start, end, model));
            }
        }
        None => inserted.push([&b"\"model\":"[..], &model].concat()),
    }
    let stream = top.stream.is_some_and(|s| s.get() == "true");
    let mut injected = false;
    if stream {
        const ASK: &[u8] = br#"{"include_usage":true}"#;
        match top.stream_options {
            None => {
                inserted.push([&b"\"stream_options\":"[..], ASK].concat());
                injected = true;
            }
            Some(raw) if raw.get() == "null" => {
                let (start, end) = place(body, raw);
                splices.push((start, end, ASK.to_vec()));
                injected = true;
            }
            Some(raw) => {
                // Anything but an object is the upstream's to refuse.
                if let Ok(mut options) = serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(raw.get())
                    && options.get("include_usage") != Some(&serde_json::Value::Bool(true))
                {
                    options.insert("include_usage".to_owned(), serde_json::Value::Bool(true));
                    let options = serde_json::to_vec(&options)
                        .map_err(|e| ConvertError(format!("stream_options cannot be rewritten: {e}")))?;
                    let (start, end) = place(body, raw);
                    splices.push((start, end, options));
                    injected = true;
                }
            }
        }
    }
    if !inserted.is_empty() {
        let open = body
            .iter()
            .position(|&b| b == b'{')
            .ok_or_else(|| ConvertError("the request body is not a JSON object".to_owned()))?;
        let empty = body[open + 1..].trim_ascii_start().first() == Some(&b'}');
        let mut members = inserted.join(&b","[..]);
        if !empty {
            members.push(b',');
        }
        splices.push((open + 1, open + 1, members));
    }
    if splices.is_empty() {
        return Ok((Bytes::copy_from_slice(body), injected));
    }
    splices.sort_by_key(|s| s.0);
    let grow: usize = splices.iter().map(|s| s.2.len()).sum();
    let mut out = BytesMut::with_capacity(body.len() + grow);
    let mut at = 0;
    for (start, end, with) in splices {
        out.extend_from_slice(&body[at..start]);
        out.extend_from_slice(&with);
        at = end;
    }
    out.extend_from_slice(&body[at..]);
    Ok((out.freeze(), injected))
}

/// A member's raw value, `null` included (serde reads `null` as an absent `Option`).
fn raw_or_null<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

/// Where `raw`, borrowed from `body`, lies in it.
fn place(body: &[u8], raw: &RawValue) -> (usize, usize) {
    let start = raw.get().as_ptr().addr() - body.as_ptr().addr();
    (start, start + raw.get().len())
}

fn json_string(s: &str) -> Vec<u8> {
    serde_json::to_vec(s).unwrap_or_else(|_| b"\"\"".to_vec())
}

/// A passed-through Chat SSE stream: usage read by [`ChatSseUsage`]; when `strip_usage` the
/// usage-only chunk (`"choices":[]`, or no choices, with a usage object) is removed from what the
/// client sees, with the blank line that ends its event; when `rename` is `Some((upstream,
/// client))` the first `"model":"<upstream>"` of each data line is replaced by the client's model
/// name.
///
/// Without either, every chunk passes as it came (the same `Bytes`). With them, lines are edited
/// whole: a chunk's last unfinished line is held back until its end arrives, and a chunk in which
/// nothing changes is passed on without copying.
#[derive(Debug)]
pub struct ChatSsePassThrough {
    usage: ChatSseUsage,
    strip_usage: bool,
    rename: Option<Rename>,
    /// The unfinished last line when lines are edited.
    partial: BytesMut,
    /// A usage chunk was taken out: the blank line after it goes too.
    drop_blank: bool,
}

#[derive(Debug)]
struct Rename {
    /// `"model":"<upstream>"` and `"model": "<upstream>"`.
    from: [Vec<u8>; 2],
    /// The length of the upstream's name, JSON-encoded.
    name_len: usize,
    /// The client's name, JSON-encoded.
    to: Vec<u8>,
}

/// What becomes of one line.
enum Edit {
    Keep,
    Drop,
    Replace(Vec<u8>),
}

impl ChatSsePassThrough {
    pub fn new(strip_usage: bool, rename: Option<(&str, &str)>) -> Self {
        let rename = rename.filter(|(from, to)| from != to).map(|(from, to)| {
            let from = json_string(from);
            Rename {
                from: [
                    [&b"\"model\":"[..], &from].concat(),
                    [&b"\"model\": "[..], &from].concat(),
                ],
                name_len: from.len(),
                to: json_string(to),
            }
        });
        Self {
            usage: ChatSseUsage::new(),
            strip_usage,
            rename,
            partial: BytesMut::new(),
            drop_blank: false,
        }
    }

    /// Takes a chunk of the upstream's stream; returns what goes to the client now.
    pub fn push(&mut self, chunk: Bytes) -> Option<Bytes> {
        self.usage.feed(&chunk);
        if !self.strip_usage && self.rename.is_none() {
            return Some(chunk).filter(|c| !c.is_empty());
        }
        let data = if self.partial.is_empty() {
            chunk
        } else {
            self.partial.extend_from_slice(&chunk);
            self.partial.split().freeze()
        };
        let Some(last) = memchr::memrchr(b'\n', &data) else {
            self.partial.extend_from_slice(&data);
            return None;
        };
        self.partial.extend_from_slice(&data[last + 1..]);
        self.lines(data.slice(..=last))
    }

    /// The upstream's stream ended; returns its unfinished last line, if one was held.
    pub fn finish(&mut self) -> Option<Bytes> {
        if self.partial.is_empty() {
            return None;
        }
        let line = self.partial.split().freeze();
        match self.edit(&line) {
            Edit::Keep => Some(line),
            Edit::Drop => None,
            Edit::Replace(with) => Some(Bytes::from(with)),
        }
    }

    /// The usage read so far.
    pub fn usage(&self) -> TokenUsage {
        self.usage.usage()
    }

    /// The stream carried an error line.
    pub fn failed(&self) -> bool {
        self.usage.error().is_some()
    }

    /// Everything read from the stream: usage, `[DONE]`, the error, the model.
    pub fn reader(&self) -> &ChatSseUsage {
        &self.usage
    }

    /// Complete lines, each with its `\n`.
    fn lines(&mut self, complete: Bytes) -> Option<Bytes> {
        let mut out: Option<BytesMut> = None;
        let mut kept_to = 0;
        let mut start = 0;
        for end in memchr::memchr_iter(b'\n', &complete) {
            let line = &complete[start..end];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let edit = self.edit(line);
            if !matches!(edit, Edit::Keep) {
                let out = out.get_or_insert_with(|| BytesMut::with_capacity(complete.len()));
                out.extend_from_slice(&complete[kept_to..start]);
                if let Edit::Replace(with) = edit {
                    out.extend_from_slice(&with);
                    // The line's own ending, `\r\n` or `\n`.
                    out.extend_from_slice(&complete[start + line.len()..=end]);
                }
                kept_to = end + 1;
            }
            start = end + 1;
        }
        match out {
            None => Some(complete),
            Some(mut out) => {
                out.extend_from_slice(&complete[kept_to..]);
                Some(out.freeze()).filter(|b| !b.is_empty())
            }
        }
    }

    /// One line, without its line ending.
    fn edit(&mut self, line: &[u8]) -> Edit {
        if std::mem::take(&mut self.drop_blank) && line.is_empty() {
            return Edit::Drop;
        }
        let Some(data) = line.strip_prefix(b"data:") else {
            return Edit::Keep;
        };
        if self.strip_usage && is_usage_only(data) {
            self.drop_blank = true;
            return Edit::Drop;
        }
        if let Some(rename) = &self.rename {
            for from in &rename.from {
                if let Some(at) = memmem::find(line, from) {
                    let keep = at + from.len() - rename.name_len;
                    let mut with = Vec::with_capacity(line.len() + rename.to.len());
                    with.extend_from_slice(&line[..keep]);
                    with.extend_from_slice(&rename.to);
                    with.extend_from_slice(&line[at + from.len()..]);
                    return Edit::Replace(with);
                }
            }
        }
        Edit::Keep
    }
}

/// A chunk that carries usage and no choice: the usage chunk `include_usage` adds.
fn is_usage_only(data: &[u8]) -> bool {
    #[derive(Deserialize)]
    struct Chunk<'a> {
        #[serde(default)]
        choices: Option<Vec<serde::de::IgnoredAny>>,
        #[serde(borrow, default)]
        usage: Option<&'a RawValue>,
    }
    if !has_object_after(data, br#""usage":"#) {
        return false;
    }
    match serde_json::from_slice::<Chunk<'_>>(data) {
        Ok(chunk) => {
            chunk.choices.is_none_or(|c| c.is_empty()) && chunk.usage.is_some_and(|u| u.get().starts_with('{'))
        }
        Err(_) => false,
    }
}

/// Whether `key` occurs followed (after whitespace) by an object.
fn has_object_after(data: &[u8], key: &[u8]) -> bool {
    memmem::find_iter(data, key).any(|at| data[at + key.len()..].trim_ascii_start().first() == Some(&b'{'))
}

#[cfg(test)]
#[path = "openai_chat_tests.rs"]
mod tests;
