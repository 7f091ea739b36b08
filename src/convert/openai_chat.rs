//! Chat pass-through (placeholder until the adapter lands).

use bytes::Bytes;

use crate::convert::ConvertError;
use crate::usage::TokenUsage;

pub fn passthrough_request(body: &[u8], _upstream_model: &str) -> Result<(Bytes, bool), ConvertError> {
    Ok((Bytes::copy_from_slice(body), false))
}

pub struct ChatSsePassThrough;

impl ChatSsePassThrough {
    pub fn new(_strip_usage: bool, _rename: Option<(&str, &str)>) -> Self {
        ChatSsePassThrough
    }
    pub fn push(&mut self, chunk: Bytes) -> Option<Bytes> {
        Some(chunk)
    }
    pub fn finish(&mut self) -> Option<Bytes> {
        None
    }
    pub fn usage(&self) -> TokenUsage {
        TokenUsage::default()
    }
    pub fn failed(&self) -> bool {
        false
    }
}
