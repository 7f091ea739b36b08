//! Token usage and money: reading usage from upstream responses ([`sse`] for Anthropic,
//! [`openai`] for OpenAI), pricing it ([`pricing`]), and aggregating it into statistics written
//! off the request path ([`stats`]).
//!
//! This module alone turns tokens into money.

pub mod estimate;
pub mod gemini;
pub mod openai;
pub mod pricing;
pub mod sse;
pub mod stats;

use std::sync::Arc;

/// Token counts of one upstream response, in Anthropic's terms: `input` excludes cache reads and
/// cache writes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TokenUsage {
    pub input: u64,
    pub output: u64,
    pub cache_read: u64,
    /// Cache writes with the 5-minute TTL.
    pub cache_write_5m: u64,
    /// Cache writes with the 1-hour TTL.
    pub cache_write_1h: u64,
    /// Reasoning tokens the upstream reported (OpenAI): already counted in `output`, kept apart
    /// only to be shown.
    #[serde(default)]
    pub reasoning: u64,
}

impl TokenUsage {
    pub fn is_zero(&self) -> bool {
        *self == TokenUsage::default()
    }

    /// All prompt-side tokens: input plus cache reads and writes.
    pub fn total_input(&self) -> u64 {
        self.input
            .saturating_add(self.cache_read)
            .saturating_add(self.cache_write_5m)
            .saturating_add(self.cache_write_1h)
    }
}

/// One finished (or cut) request, as sent to the statistics pipeline (and, while a process hands
/// over to its successor, written to the usage spool as one JSON line).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct UsageEvent {
    /// Unix seconds when the request finished.
    pub at: i64,
    pub key_id: Arc<str>,
    /// The account that served the last attempt, if any was chosen.
    pub account_id: Option<Arc<str>>,
    /// The model the upstream billed (after mapping), or the requested one when unknown.
    pub model: Arc<str>,
    pub usage: TokenUsage,
    /// `None` when the model has no price: recorded as unknown, never as zero.
    pub cost_nanos: Option<u64>,
    /// The request failed (relay or upstream error, or an error event in the stream).
    pub is_error: bool,
    /// The serving account's configuration names the model (its `models` or `model_map`), so the
    /// name is the operator's, not only the client's.
    #[serde(default)]
    pub model_known: bool,
}
