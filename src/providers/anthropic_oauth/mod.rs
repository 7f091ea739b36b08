//! `claude-oauth` accounts: Claude subscriptions connected through Anthropic's OAuth flow.
//!
//! - [`flow`]: the authorization (PKCE S256, a sealed authorization id, the code exchange), the
//!   refresh grant, and the profile and usage endpoints, over HTTP.
//! - [`settings`]: the endpoints, client and timings, as `relay.yaml` sets them.
//! - [`tokens`]: each account's live token, refreshed ahead of expiry by a background task and on
//!   demand when a request meets an expired token or a 401, once at a time per account across
//!   every instance sharing the store (the machinery of [`crate::credentials`] with Anthropic's
//!   refresh grant), and the profile and usage reads.
//!
//! Serving adds `Authorization: Bearer <access token>` and merges the OAuth beta flag into the
//! client's `anthropic-beta` list. Client headers are otherwise relayed as sent: the relay does
//! not present other clients as Claude Code.

pub mod flow;
pub mod settings;
pub mod tokens;

use super::{Call, PrepareError, Prepared, Provider, ProviderEnv, Target, Wire, anthropic, request};

/// The provider of `claude-oauth` accounts: the Anthropic wire with the live bearer token and the
/// OAuth beta flag.
pub struct OAuth;

impl Provider for OAuth {
    fn wire(&self) -> Wire {
        Wire::AnthropicMessages
    }

    fn prepare(&self, env: &ProviderEnv, call: &Call<'_>, target: &Target<'_>) -> Result<Prepared, PrepareError> {
        if target.live.is_none() {
            return Err(PrepareError::Account("the OAuth account has no live token".into()));
        }
        let mut prepared = anthropic::prepare(call, target)?;
        request::merge_beta(&mut prepared.head, &env.oauth_beta)?;
        Ok(prepared)
    }

    fn observe(&self, headers: &http::HeaderMap, now_s: i64) -> Option<anthropic::UnifiedLimits> {
        anthropic::UnifiedLimits::from_headers(headers, now_s)
    }
}

/// The `anthropic-beta` value with `flag` merged in: the client's flags kept in order, `flag`
/// appended when missing. `None` when the client's value already has it.
pub fn merged_beta(client: Option<&[u8]>, flag: &str) -> Option<String> {
    let Some(client) = client.map(|v| String::from_utf8_lossy(v)) else {
        return Some(flag.to_string());
    };
    if client.split(',').any(|f| f.trim() == flag) {
        return None;
    }
    let trimmed = client.trim().trim_end_matches(',');
    if trimmed.is_empty() {
        return Some(flag.to_string());
    }
    Some(format!("{trimmed},{flag}"))
}

/// The subscription tier a profile answer describes: `max`, `pro` or `free`.
pub fn tier_of(profile: &serde_json::Value) -> Option<&'static str> {
    let account = &profile["account"];
    if account["has_claude_max"].as_bool() == Some(true) {
        return Some("max");
    }
    if account["has_claude_pro"].as_bool() == Some(true) {
        return Some("pro");
    }
    let org_type = profile["organization"]["organization_type"]
        .as_str()
        .unwrap_or_default()
        .to_ascii_lowercase();
    if org_type.contains("max") {
        return Some("max");
    }
    if org_type.contains("pro") {
        return Some("pro");
    }
    if org_type.contains("free")
        || (account["has_claude_max"].as_bool() == Some(false) && account["has_claude_pro"].as_bool() == Some(false))
    {
        return Some("free");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn beta_flags_are_merged_without_duplicates() {
        let f = "oauth-2025-04-20";
        assert_eq!(merged_beta(None, f).as_deref(), Some(f));
        assert_eq!(
            merged_beta(Some(b"fine-grained-tool-streaming-2025-05-14"), f).as_deref(),
            Some("fine-grained-tool-streaming-2025-05-14,oauth-2025-04-20")
        );
        assert_eq!(merged_beta(Some(b"a, oauth-2025-04-20 ,b"), f), None);
        assert_eq!(merged_beta(Some(b" "), f).as_deref(), Some(f));
        assert_eq!(merged_beta(Some(b"a,"), f).as_deref(), Some("a,oauth-2025-04-20"));
    }

    #[test]
    fn tiers_come_from_the_profile() {
        assert_eq!(tier_of(&json!({"account":{"has_claude_max":true}})), Some("max"));
        assert_eq!(
            tier_of(&json!({"account":{"has_claude_max":false,"has_claude_pro":true}})),
            Some("pro")
        );
        assert_eq!(
            tier_of(&json!({"account":{"has_claude_max":false,"has_claude_pro":false}})),
            Some("free")
        );
        assert_eq!(
            tier_of(&json!({"organization":{"organization_type":"claude_max"}})),
            Some("max")
        );
        assert_eq!(tier_of(&json!({})), None);
    }
}
