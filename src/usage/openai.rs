//! OpenAI usage readers (placeholder until the readers land).

use super::TokenUsage;

#[derive(Default)]
pub struct ResponsesSseUsage;

impl ResponsesSseUsage {
    pub fn new() -> Self {
        ResponsesSseUsage
    }
    pub fn feed(&mut self, _chunk: &[u8]) {}
    pub fn usage(&self) -> TokenUsage {
        TokenUsage::default()
    }
    pub fn error(&self) -> Option<(String, String)> {
        None
    }
}

pub fn parse_chat_json_usage(_body: &[u8]) -> Option<TokenUsage> {
    None
}

pub fn parse_responses_json_usage(_body: &[u8]) -> Option<TokenUsage> {
    None
}
