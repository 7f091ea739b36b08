//! Keeping the model name the client sees consistent when an account maps it: the upstream
//! answers with its own name, and the relay puts the requested one back — in the
//! `message_start` event of a stream, or the top-level `model` of a JSON answer. Nothing else is
//! touched.

use bytes::{Bytes, BytesMut};

/// Longest prefix of a stream held back while looking for `message_start`.
const MAX_HOLD: usize = 256 * 1024;

pub struct SseModelRewriter {
    from: Vec<u8>,
    to: Vec<u8>,
    pending: BytesMut,
    done: bool,
}

impl SseModelRewriter {
    pub fn new(upstream_model: &str, requested_model: &str) -> Self {
        let enc = |m: &str| serde_json::to_string(m).unwrap_or_default().into_bytes();
        SseModelRewriter {
            from: enc(upstream_model),
            to: enc(requested_model),
            pending: BytesMut::new(),
            done: false,
        }
    }

    /// Takes a chunk; returns the bytes that may go to the client now.
    pub fn push(&mut self, chunk: Bytes) -> Option<Bytes> {
        if self.done {
            return Some(chunk);
        }
        self.pending.extend_from_slice(&chunk);
        // Only the first MAX_HOLD bytes are searched, so that what the client gets does not
        // depend on how the upstream's stream was cut into chunks.
        let window = &self.pending[..self.pending.len().min(MAX_HOLD)];
        let Some(ev) = memchr::memmem::find(window, b"message_start") else {
            if self.pending.len() >= MAX_HOLD {
                return self.finish();
            }
            return None;
        };
        // Wait for the end of the data line that carries the event.
        let search_from = ev;
        let data_line = memchr::memmem::find(&window[search_from..], b"\"message\"").map(|i| i + search_from);
        let line_end = data_line.and_then(|d| memchr::memchr(b'\n', &window[d..]).map(|i| i + d));
        let Some(line_end) = line_end else {
            if self.pending.len() >= MAX_HOLD {
                return self.finish();
            }
            return None;
        };
        let region = &self.pending[..line_end];
        let mut out = BytesMut::with_capacity(self.pending.len() + self.to.len());
        let mut replaced = false;
        for pat_prefix in [&b"\"model\":"[..], &b"\"model\": "[..]] {
            let mut pat = pat_prefix.to_vec();
            pat.extend_from_slice(&self.from);
            if let Some(i) = memchr::memmem::find(region, &pat) {
                out.extend_from_slice(&self.pending[..i + pat_prefix.len()]);
                out.extend_from_slice(&self.to);
                out.extend_from_slice(&self.pending[i + pat.len()..]);
                replaced = true;
                break;
            }
        }
        if !replaced {
            out.extend_from_slice(&self.pending);
        }
        self.pending.clear();
        self.done = true;
        Some(out.freeze())
    }

    /// Releases whatever is held (end of stream or nothing to rewrite).
    pub fn finish(&mut self) -> Option<Bytes> {
        self.done = true;
        if self.pending.is_empty() {
            None
        } else {
            Some(self.pending.split().freeze())
        }
    }
}

/// Rewrites the top-level `model` of a JSON answer; other bytes are untouched.
pub fn json_model(body: &Bytes, requested_model: &str) -> Bytes {
    crate::wire::json::replace_model(body, requested_model)
}

#[cfg(test)]
mod tests {
    use super::*;

    const STREAM: &str = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"model\":\"up-1\",\"usage\":{}}}\n\nevent: ping\ndata: {\"type\":\"ping\"}\n\n";

    #[test]
    fn rewrites_at_every_split() {
        let want = STREAM.replace("\"up-1\"", "\"alias\"");
        for split in 0..STREAM.len() {
            let mut r = SseModelRewriter::new("up-1", "alias");
            let mut out = Vec::new();
            for part in [&STREAM[..split], &STREAM[split..]] {
                if let Some(b) = r.push(Bytes::copy_from_slice(part.as_bytes())) {
                    out.extend_from_slice(&b);
                }
            }
            if let Some(b) = r.finish() {
                out.extend_from_slice(&b);
            }
            assert_eq!(String::from_utf8(out).unwrap(), want, "split {split}");
        }
    }

    #[test]
    fn json_answer() {
        let b = Bytes::from_static(br#"{"id":"x","model":"up-1","content":[{"text":"model up-1"}]}"#);
        assert_eq!(
            &json_model(&b, "alias")[..],
            br#"{"id":"x","model":"alias","content":[{"text":"model up-1"}]}"#
        );
    }
}

#[cfg(test)]
#[path = "rename_props.rs"]
mod props;
