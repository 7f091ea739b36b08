//! Incremental decoder of the AWS event-stream framing (`application/vnd.amazon.eventstream`).
//!
//! A frame is `[total_len u32][headers_len u32][prelude_crc u32][headers][payload][message_crc u32]`,
//! big-endian, each CRC a CRC32 of everything before it in the frame. Bytes are pushed as they
//! arrive, split anywhere; [`EventStreamDecoder::next_message`] hands out each frame once it is
//! whole.
//!
//! The prelude's CRC is checked here as soon as its 12 bytes are in, so that a corrupted length is
//! caught at once rather than waited on, and a frame longer than [`MAX_FRAME`] is refused before it
//! is buffered. The rest of a frame (headers, payload and message CRC) is read by
//! `aws-smithy-eventstream`.

use aws_smithy_eventstream::frame::read_message_from;
use aws_smithy_types::event_stream::{Header, HeaderValue};
use bytes::{Buf, Bytes, BytesMut};

/// Largest frame accepted, prelude and CRCs included. Bedrock's frames carry one stream event
/// each, a few hundred bytes to a few KiB.
pub const MAX_FRAME: usize = 16 << 20;

/// Total length, headers length, prelude CRC.
const PRELUDE_LEN: usize = 12;
/// A frame with no headers and no payload: the prelude and the message CRC.
const MIN_FRAME: usize = PRELUDE_LEN + 4;

/// What a frame's `:message-type` header says it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageKind {
    /// `event`: a member of the stream (Bedrock: `chunk`).
    Event,
    /// `exception`: a modeled error of the operation, ending the stream (e.g.
    /// `throttlingException`).
    Exception,
    /// `error`: an unmodeled error, ending the stream.
    Error,
}

/// One decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub kind: MessageKind,
    /// `:event-type` of an event, `:exception-type` of an exception, `:error-code` of an error
    /// (empty when the header is missing).
    pub event_type: String,
    /// `:error-message` of an error (`None` for events and exceptions).
    pub error_message: Option<String>,
    pub payload: Bytes,
}

/// Why the byte stream cannot be read further.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("event-stream prelude checksum mismatch")]
    PreludeChecksum,
    #[error("event-stream frame of {0} bytes is longer than the {MAX_FRAME}-byte limit")]
    TooLarge(u64),
    #[error("event-stream frame declares {total} bytes with {headers} bytes of headers")]
    BadLength { total: u32, headers: u32 },
    /// The frame is whole but unreadable: message checksum mismatch, malformed headers.
    #[error("invalid event-stream frame: {0}")]
    Invalid(String),
    #[error("event-stream message without a :message-type header")]
    NoMessageType,
    #[error("event-stream message of unknown :message-type {0:?}")]
    UnknownMessageType(String),
}

/// Splits pushed bytes into [`Message`]s. After an error it stays failed: every later
/// [`next_message`](Self::next_message) returns the same error and pushed bytes are dropped.
#[derive(Debug, Default)]
pub struct EventStreamDecoder {
    buf: BytesMut,
    /// The prelude at the head of `buf` has been checked.
    prelude_checked: bool,
    failed: Option<FrameError>,
}

impl EventStreamDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends the next bytes of the stream. The caller drains whole frames with
    /// [`next_message`](Self::next_message) after each push; what it leaves is buffered.
    pub fn push(&mut self, chunk: &[u8]) {
        if self.failed.is_none() {
            self.buf.extend_from_slice(chunk);
        }
    }

    /// The next whole message, `Ok(None)` when more bytes are needed.
    pub fn next_message(&mut self) -> Result<Option<Message>, FrameError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        match self.next_frame() {
            Ok(Some(frame)) => match to_message(frame) {
                Ok(m) => Ok(Some(m)),
                Err(e) => Err(self.fail(e)),
            },
            Ok(None) => Ok(None),
            Err(e) => Err(self.fail(e)),
        }
    }

    /// Bytes of an unfinished frame are buffered (the stream ending now would cut a frame).
    pub fn has_partial(&self) -> bool {
        !self.buf.is_empty()
    }

    fn fail(&mut self, e: FrameError) -> FrameError {
        self.failed = Some(e.clone());
        self.buf = BytesMut::new();
        e
    }

    /// The bytes of the next whole frame, its prelude checked.
    fn next_frame(&mut self) -> Result<Option<Bytes>, FrameError> {
        let Some(prelude) = self.buf.get(..PRELUDE_LEN) else {
            return Ok(None);
        };
        let mut p = prelude;
        let total = p.get_u32();
        let headers = p.get_u32();
        let crc = p.get_u32();
        if !self.prelude_checked {
            if crc32fast::hash(&prelude[..8]) != crc {
                return Err(FrameError::PreludeChecksum);
            }
            let len = total as usize;
            if len > MAX_FRAME {
                return Err(FrameError::TooLarge(u64::from(total)));
            }
            if len < MIN_FRAME || headers as usize > len - MIN_FRAME {
                return Err(FrameError::BadLength { total, headers });
            }
            self.prelude_checked = true;
        }
        let len = total as usize;
        if self.buf.len() < len {
            return Ok(None);
        }
        self.prelude_checked = false;
        Ok(Some(self.buf.split_to(len).freeze()))
    }
}

fn to_message(frame: Bytes) -> Result<Message, FrameError> {
    let message = read_message_from(frame).map_err(|e| FrameError::Invalid(e.to_string()))?;
    let header = |name: &str| string_header(message.headers(), name);
    let kind = match header(":message-type") {
        Some("event") => MessageKind::Event,
        Some("exception") => MessageKind::Exception,
        Some("error") => MessageKind::Error,
        Some(other) => return Err(FrameError::UnknownMessageType(other.to_owned())),
        None => return Err(FrameError::NoMessageType),
    };
    let type_header = match kind {
        MessageKind::Event => ":event-type",
        MessageKind::Exception => ":exception-type",
        MessageKind::Error => ":error-code",
    };
    let event_type = header(type_header).unwrap_or_default().to_owned();
    let error_message = match kind {
        MessageKind::Error => header(":error-message").map(str::to_owned),
        MessageKind::Event | MessageKind::Exception => None,
    };
    Ok(Message {
        kind,
        event_type,
        error_message,
        payload: message.payload().clone(),
    })
}

/// The value of the string header `name` (the first, if repeated); `None` when absent or not a
/// string.
fn string_header<'a>(headers: &'a [Header], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|h| h.name().as_str() == name)
        .and_then(|h| match h.value() {
            HeaderValue::String(s) => Some(s.as_str()),
            _ => None,
        })
}

#[cfg(test)]
#[path = "eventstream_tests.rs"]
pub(crate) mod tests;
