//! The settings of `claude-oauth` accounts (`providers.anthropic.oauth` in `relay.yaml`): the
//! authorization flow, token refresh, and the profile and usage endpoints. The config reads them
//! into this type and checks them; the flow and the tokens use them.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use crate::types::Dur;

/// Claude subscription accounts (`claude-oauth`): the authorization flow, token refresh, and the
/// profile and usage endpoints.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OAuthSettings {
    #[serde(default = "default_authorize_url")]
    pub authorize_url: String,
    #[serde(default = "default_token_url")]
    pub token_url: String,
    /// Claude Code's public OAuth client.
    #[serde(default = "default_client_id")]
    pub client_id: String,
    #[serde(default = "default_redirect_uri")]
    pub redirect_uri: String,
    #[serde(default = "default_scopes")]
    pub scopes: Vec<String>,
    /// Scopes of the long-lived "setup token" flow (inference only).
    #[serde(default = "default_setup_scopes")]
    pub setup_token_scopes: Vec<String>,
    #[serde(default = "default_setup_lifetime")]
    pub setup_token_lifetime: Dur,
    /// Default `{api_base}/api/oauth/profile`.
    #[serde(default)]
    pub profile_url: Option<String>,
    /// Default `{api_base}/api/oauth/usage`.
    #[serde(default)]
    pub usage_url: Option<String>,
    /// The beta flag that OAuth bearer tokens need on the Anthropic API.
    #[serde(default = "default_beta")]
    pub beta: String,
    /// The background refresher renews a token this long before it expires.
    #[serde(default = "default_refresh_ahead")]
    pub refresh_ahead: Dur,
    /// How often the background refresher looks at the tokens.
    #[serde(default = "default_refresh_check")]
    pub refresh_check: Dur,
    /// How often each account's utilization is read from the usage endpoint; 0 disables.
    #[serde(default = "default_usage_poll")]
    pub usage_poll: Dur,
    /// Timeout of each call to the token, profile and usage endpoints.
    #[serde(default = "default_oauth_timeout")]
    pub timeout: Dur,
    /// Models each subscription tier (`free`, `pro`, `max`) may not use, in the syntax of a key's
    /// `model_blacklist`. Tiers left out keep their defaults.
    #[serde(default)]
    pub tier_model_blacklist: BTreeMap<String, Vec<String>>,
}

impl Default for OAuthSettings {
    fn default() -> Self {
        OAuthSettings {
            authorize_url: default_authorize_url(),
            token_url: default_token_url(),
            client_id: default_client_id(),
            redirect_uri: default_redirect_uri(),
            scopes: default_scopes(),
            setup_token_scopes: default_setup_scopes(),
            setup_token_lifetime: default_setup_lifetime(),
            profile_url: None,
            usage_url: None,
            beta: default_beta(),
            refresh_ahead: default_refresh_ahead(),
            refresh_check: default_refresh_check(),
            usage_poll: default_usage_poll(),
            timeout: default_oauth_timeout(),
            tier_model_blacklist: BTreeMap::new(),
        }
    }
}

/// Subscription tiers whose model lists can be configured.
pub const TIERS: [&str; 3] = ["free", "pro", "max"];

impl OAuthSettings {
    /// The models a tier may not use: the configured list, else the default.
    pub fn tier_blacklist(&self, tier: &str) -> Vec<String> {
        if let Some(l) = self.tier_model_blacklist.get(tier) {
            return l.clone();
        }
        let d: &[&str] = match tier {
            // No Opus at all on free accounts.
            "free" => &["claude-opus-*", "claude-3-opus*"],
            // Pro plans reach Opus from 4.5 on.
            "pro" => &["claude-opus-4", "claude-opus-4-0", "claude-opus-4-1", "claude-3-opus*"],
            _ => &[],
        };
        d.iter().map(|s| s.to_string()).collect()
    }

    pub fn profile_url(&self, api_base: &str) -> String {
        self.profile_url
            .clone()
            .unwrap_or_else(|| format!("{}/api/oauth/profile", api_base.trim_end_matches('/')))
    }

    pub fn usage_url(&self, api_base: &str) -> String {
        self.usage_url
            .clone()
            .unwrap_or_else(|| format!("{}/api/oauth/usage", api_base.trim_end_matches('/')))
    }
}

fn default_authorize_url() -> String {
    "https://claude.ai/oauth/authorize".into()
}
fn default_token_url() -> String {
    "https://platform.claude.com/v1/oauth/token".into()
}
fn default_client_id() -> String {
    "9d1c250a-e61b-44d9-88ed-5944d1962f5e".into()
}
fn default_redirect_uri() -> String {
    "https://platform.claude.com/oauth/code/callback".into()
}
fn default_scopes() -> Vec<String> {
    [
        "org:create_api_key",
        "user:profile",
        "user:inference",
        "user:sessions:claude_code",
        "user:mcp_servers",
        "user:file_upload",
    ]
    .into_iter()
    .map(String::from)
    .collect()
}
fn default_setup_scopes() -> Vec<String> {
    vec!["user:inference".into()]
}
fn default_setup_lifetime() -> Dur {
    Dur(Duration::from_secs(365 * 86_400))
}
fn default_beta() -> String {
    "oauth-2025-04-20".into()
}
fn default_refresh_ahead() -> Dur {
    Dur(Duration::from_secs(600))
}
fn default_refresh_check() -> Dur {
    Dur(Duration::from_secs(30))
}
fn default_usage_poll() -> Dur {
    Dur(Duration::from_secs(300))
}
fn default_oauth_timeout() -> Dur {
    Dur(Duration::from_secs(30))
}
