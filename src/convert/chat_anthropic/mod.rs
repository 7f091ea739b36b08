//! Chat Completions ⇄ Anthropic Messages (placeholder until the converter lands).

use bytes::Bytes;

use crate::convert::ConvertError;
use crate::usage::TokenUsage;

pub struct ChatFacts {
    pub stream: bool,
    pub include_usage: bool,
}

pub fn request_to_messages(_body: &[u8], _model: &str) -> Result<(Bytes, ChatFacts), ConvertError> {
    Err(ConvertError("not yet".into()))
}

pub fn response_from_messages(_body: &[u8], _client_model: &str) -> Result<(Bytes, TokenUsage), ConvertError> {
    Err(ConvertError("not yet".into()))
}

pub fn error_from_anthropic(_status: u16, body: &[u8]) -> Bytes {
    Bytes::copy_from_slice(body)
}

pub struct MessagesSseToChat;

impl MessagesSseToChat {
    pub fn new(_client_model: &str, _include_usage: bool) -> Self {
        MessagesSseToChat
    }
    pub fn push(&mut self, _chunk: &[u8]) -> Bytes {
        Bytes::new()
    }
    pub fn finish(&mut self) -> Bytes {
        Bytes::new()
    }
    pub fn usage(&self) -> TokenUsage {
        TokenUsage::default()
    }
    pub fn failed(&self) -> bool {
        false
    }
}
