//! `providers:`: where each upstream provider is reached. Every URL the relay calls on a
//! provider's behalf lives here, so tests point them at a local mock and enterprises at their
//! egress gateways; the defaults are the providers' own.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, invalid};
use crate::types::Dur;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProvidersConfig {
    #[serde(default)]
    pub anthropic: AnthropicProvider,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnthropicProvider {
    /// The Anthropic API; the default `base_url` of Claude accounts.
    #[serde(default = "crate::accounts::BaseUrl::anthropic")]
    pub api_base: crate::accounts::BaseUrl,
    #[serde(default)]
    pub oauth: OAuthConfig,
}

impl Default for AnthropicProvider {
    fn default() -> Self {
        AnthropicProvider {
            api_base: crate::accounts::BaseUrl::anthropic(),
            oauth: OAuthConfig::default(),
        }
    }
}

/// Claude subscription accounts (`claude-oauth`): the authorization flow, token refresh, and the
/// profile and usage endpoints.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OAuthConfig {
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

impl Default for OAuthConfig {
    fn default() -> Self {
        OAuthConfig {
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

impl OAuthConfig {
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

fn http_url(key: &str, url: &str) -> Result<(), ConfigError> {
    let u = url::Url::parse(url.trim()).map_err(|e| invalid(key, format!("`{url}` is not a URL: {e}")))?;
    if !matches!(u.scheme(), "http" | "https") || u.host().is_none() {
        return Err(invalid(key, format!("`{url}` must be an http or https URL")));
    }
    Ok(())
}

/// Checks `providers:`.
pub fn validate(p: &ProvidersConfig) -> Result<(), ConfigError> {
    let a = &p.anthropic;
    let o = &a.oauth;
    let k = |f: &str| format!("providers.anthropic.oauth.{f}");
    http_url(&k("authorize_url"), &o.authorize_url)?;
    http_url(&k("token_url"), &o.token_url)?;
    http_url(&k("redirect_uri"), &o.redirect_uri)?;
    if let Some(u) = &o.profile_url {
        http_url(&k("profile_url"), u)?;
    }
    if let Some(u) = &o.usage_url {
        http_url(&k("usage_url"), u)?;
    }
    if o.client_id.trim().is_empty() {
        return Err(invalid(k("client_id"), "must not be empty"));
    }
    for (f, scopes) in [("scopes", &o.scopes), ("setup_token_scopes", &o.setup_token_scopes)] {
        if scopes.is_empty() || scopes.iter().any(|s| s.trim().is_empty() || s.contains(' ')) {
            return Err(invalid(k(f), "must be a non-empty list of scope names without spaces"));
        }
    }
    if o.beta.trim().is_empty() || o.beta.contains(',') {
        return Err(invalid(k("beta"), "must be one beta flag"));
    }
    for (f, d) in [
        ("refresh_check", o.refresh_check),
        ("timeout", o.timeout),
        ("setup_token_lifetime", o.setup_token_lifetime),
    ] {
        if d.0 < Duration::from_millis(100) {
            return Err(invalid(k(f), "must be at least 100ms"));
        }
    }
    for (tier, models) in &o.tier_model_blacklist {
        if !TIERS.contains(&tier.as_str()) {
            return Err(invalid(
                k(&format!("tier_model_blacklist.{tier}")),
                format!("unknown tier (known: {})", TIERS.join(", ")),
            ));
        }
        if models.iter().any(|m| m.trim().is_empty()) {
            return Err(invalid(
                k(&format!("tier_model_blacklist.{tier}")),
                "model names must not be empty",
            ));
        }
    }
    Ok(())
}
