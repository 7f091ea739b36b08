//! Token usage and money: reading usage from upstream responses ([`sse`] for Anthropic,
//! [`openai`] for OpenAI), pricing it ([`pricing`]), and aggregating it into statistics written
//! off the request path ([`stats`]), also per client session and agent ([`sessions`]).
//!
//! This module alone turns tokens into money.

pub mod estimate;
pub mod gemini;
pub mod live;
pub mod openai;
pub mod pricing;
pub mod report;
pub mod request_log;
pub mod sessions;
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
    /// What the usage says beyond token counts that changes the price (Anthropic's usage object
    /// only; the other wires leave it at [`Billing::NONE`]).
    #[serde(default)]
    pub billing: Billing,
}

impl TokenUsage {
    /// No tokens of any kind (whatever else the usage says).
    pub fn is_zero(&self) -> bool {
        TokenUsage {
            billing: Billing::NONE,
            ..*self
        } == TokenUsage::default()
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
    /// What `cost_nanos` leaves out: parts of the usage the price table has no price for.
    #[serde(default)]
    pub unpriced: pricing::Unpriced,
    /// The request failed (relay or upstream error, or an error event in the stream).
    pub is_error: bool,
    /// The serving account's configuration names the model (its `models` or `model_map`), so the
    /// name is the operator's, not only the client's.
    #[serde(default)]
    pub model_known: bool,
    /// The client session and agent the request came from, when it named one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<sessions::SessionTag>,
}

/// What an Anthropic `usage` object says beyond token counts that decides the price: the speed,
/// data-residency geography and service tier the request ran at, and the server tools it used.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct Billing {
    /// `usage.speed`.
    pub speed: Speed,
    /// `usage.inference_geo`.
    pub geo: Geo,
    /// `usage.service_tier`.
    pub tier: ServiceTier,
    /// `usage.server_tool_use.web_search_requests`: priced per search.
    pub web_searches: u64,
    /// `usage.server_tool_use.web_fetch_requests`: free beyond their tokens.
    pub web_fetches: u64,
    /// Every other count of `usage.server_tool_use` (`code_execution_requests`, kinds the relay
    /// does not know): billed upstream at prices the relay does not have.
    pub other_server_tools: u64,
}

impl Billing {
    /// Nothing beyond tokens: standard speed, no geography, standard tier, no server tools.
    pub const NONE: Billing = Billing {
        speed: Speed::Unreported,
        geo: Geo::Global,
        tier: ServiceTier::Standard,
        web_searches: 0,
        web_fetches: 0,
        other_server_tools: 0,
    };
}

/// The speed a response reports (`usage.speed`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Speed {
    /// No `speed` field (or `null`): standard.
    #[default]
    Unreported,
    Standard,
    /// Fast mode: a multiple of the standard price.
    Fast,
    /// A value the relay does not know, or none for a request that asked for fast mode.
    Unknown,
}

/// The geography a response reports (`usage.inference_geo`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Geo {
    /// `global`, `null` or none reported: the standard price.
    #[default]
    Global,
    /// `us`: US-only inference, a multiple of the price on the models that offer it.
    Us,
    /// A value the relay does not know.
    Unknown,
}

/// The service tier a response reports (`usage.service_tier`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServiceTier {
    /// `standard`, `null` or none reported.
    #[default]
    Standard,
    /// `priority`, `batch` or a value the relay does not know: priced apart, at prices the relay
    /// does not have.
    Other,
}
