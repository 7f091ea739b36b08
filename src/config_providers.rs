//! `providers:`: where each upstream provider is reached. Every URL the relay calls on a
//! provider's behalf lives here, so tests point them at a local mock and enterprises at their
//! egress gateways; the defaults are the providers' own.

use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, invalid};
use crate::providers::anthropic_oauth::settings::{OAuthSettings, TIERS};
use crate::providers::gemini_oauth::settings::GoogleOAuthSettings;
use crate::providers::openai_oauth::settings::OpenAiOAuthSettings;
use crate::types::Dur;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProvidersConfig {
    #[serde(default)]
    pub anthropic: AnthropicProvider,
    #[serde(default)]
    pub openai: OpenAiProvider,
    #[serde(default)]
    pub google: GoogleProvider,
}

impl ProvidersConfig {
    /// The base URLs of accounts that name none.
    pub fn default_bases(&self) -> crate::accounts::DefaultBases {
        crate::accounts::DefaultBases {
            anthropic: self.anthropic.api_base.clone(),
            openai: self.openai.api_base.clone(),
            codex: self.openai.codex_base.clone(),
            gemini: self.google.api_base.clone(),
            code_assist: self.google.code_assist_base.clone(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpenAiProvider {
    /// The OpenAI API; the default `base_url` of `openai` accounts.
    #[serde(default = "default_openai_base")]
    pub api_base: crate::accounts::BaseUrl,
    /// ChatGPT's Codex backend; the default `base_url` of `openai-oauth` accounts.
    #[serde(default = "default_codex_base")]
    pub codex_base: crate::accounts::BaseUrl,
    /// ChatGPT subscriptions (`openai-oauth`): OpenAI's sign-in and token refresh.
    #[serde(default)]
    pub oauth: OpenAiOAuthSettings,
}

fn default_openai_base() -> crate::accounts::BaseUrl {
    crate::accounts::BaseUrl::known(crate::providers::openai::DEFAULT_API_BASE)
}

fn default_codex_base() -> crate::accounts::BaseUrl {
    crate::accounts::BaseUrl::known(crate::providers::openai::DEFAULT_CODEX_BASE)
}

impl Default for OpenAiProvider {
    fn default() -> Self {
        OpenAiProvider {
            api_base: default_openai_base(),
            codex_base: default_codex_base(),
            oauth: OpenAiOAuthSettings::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GoogleProvider {
    /// The Gemini API; the default `base_url` of `gemini-api` accounts.
    #[serde(default = "default_gemini_base")]
    pub api_base: crate::accounts::BaseUrl,
    /// Gemini Code Assist; the default `base_url` of `gemini-oauth` accounts.
    #[serde(default = "default_code_assist_base")]
    pub code_assist_base: crate::accounts::BaseUrl,
    /// Google accounts for Code Assist (`gemini-oauth`): Google's sign-in, token refresh and
    /// project discovery.
    #[serde(default)]
    pub oauth: GoogleOAuthSettings,
}

fn default_gemini_base() -> crate::accounts::BaseUrl {
    crate::accounts::BaseUrl::known(crate::providers::gemini::DEFAULT_API_BASE)
}

fn default_code_assist_base() -> crate::accounts::BaseUrl {
    crate::accounts::BaseUrl::known(crate::providers::gemini::DEFAULT_CODE_ASSIST_BASE)
}

impl Default for GoogleProvider {
    fn default() -> Self {
        GoogleProvider {
            api_base: default_gemini_base(),
            code_assist_base: default_code_assist_base(),
            oauth: GoogleOAuthSettings::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnthropicProvider {
    /// The Anthropic API; the default `base_url` of Claude accounts.
    #[serde(default = "crate::accounts::BaseUrl::anthropic")]
    pub api_base: crate::accounts::BaseUrl,
    #[serde(default)]
    pub oauth: OAuthSettings,
}

impl Default for AnthropicProvider {
    fn default() -> Self {
        AnthropicProvider {
            api_base: crate::accounts::BaseUrl::anthropic(),
            oauth: OAuthSettings::default(),
        }
    }
}

fn http_url(key: &str, url: &str) -> Result<(), ConfigError> {
    let u = url::Url::parse(url.trim()).map_err(|e| invalid(key, format!("`{url}` is not a URL: {e}")))?;
    if !matches!(u.scheme(), "http" | "https") || u.host().is_none() {
        return Err(invalid(key, format!("`{url}` must be an http or https URL")));
    }
    Ok(())
}

/// What every OAuth provider's settings have, checked the same way.
struct OAuthClientSettings<'a> {
    /// The settings' key in `relay.yaml`.
    key: &'a str,
    urls: [(&'a str, &'a str); 3],
    client_id: &'a str,
    scopes: &'a [(&'a str, &'a Vec<String>)],
    durations: &'a [(&'a str, Dur)],
}

fn validate_oauth_client(o: OAuthClientSettings<'_>) -> Result<(), ConfigError> {
    let k = |f: &str| format!("{}.{f}", o.key);
    for (f, url) in o.urls {
        http_url(&k(f), url)?;
    }
    if o.client_id.trim().is_empty() {
        return Err(invalid(k("client_id"), "must not be empty"));
    }
    for (f, scopes) in o.scopes {
        if scopes.is_empty() || scopes.iter().any(|s| s.trim().is_empty() || s.contains(' ')) {
            return Err(invalid(k(f), "must be a non-empty list of scope names without spaces"));
        }
    }
    for (f, d) in o.durations {
        if d.0 < Duration::from_millis(100) {
            return Err(invalid(k(f), "must be at least 100ms"));
        }
    }
    Ok(())
}

/// Checks `providers:`.
pub fn validate(p: &ProvidersConfig) -> Result<(), ConfigError> {
    let a = &p.anthropic;
    let o = &a.oauth;
    let k = |f: &str| format!("providers.anthropic.oauth.{f}");
    validate_oauth_client(OAuthClientSettings {
        key: "providers.anthropic.oauth",
        urls: [
            ("authorize_url", &o.authorize_url),
            ("token_url", &o.token_url),
            ("redirect_uri", &o.redirect_uri),
        ],
        client_id: &o.client_id,
        scopes: &[("scopes", &o.scopes), ("setup_token_scopes", &o.setup_token_scopes)],
        durations: &[
            ("refresh_check", o.refresh_check),
            ("timeout", o.timeout),
            ("setup_token_lifetime", o.setup_token_lifetime),
        ],
    })?;
    if let Some(u) = &o.profile_url {
        http_url(&k("profile_url"), u)?;
    }
    if let Some(u) = &o.usage_url {
        http_url(&k("usage_url"), u)?;
    }
    if o.beta.trim().is_empty() || o.beta.contains(',') {
        return Err(invalid(k("beta"), "must be one beta flag"));
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
    let c = &p.openai.oauth;
    validate_oauth_client(OAuthClientSettings {
        key: "providers.openai.oauth",
        urls: [
            ("authorize_url", &c.authorize_url),
            ("token_url", &c.token_url),
            ("redirect_uri", &c.redirect_uri),
        ],
        client_id: &c.client_id,
        scopes: &[("scopes", &c.scopes)],
        durations: &[("refresh_check", c.refresh_check), ("timeout", c.timeout)],
    })?;
    let g = &p.google.oauth;
    validate_oauth_client(OAuthClientSettings {
        key: "providers.google.oauth",
        urls: [
            ("authorize_url", &g.authorize_url),
            ("token_url", &g.token_url),
            ("redirect_uri", &g.redirect_uri),
        ],
        client_id: &g.client_id,
        scopes: &[("scopes", &g.scopes)],
        durations: &[
            ("refresh_check", g.refresh_check),
            ("timeout", g.timeout),
            ("onboard_poll", g.onboard_poll),
        ],
    })?;
    if g.onboard_wait.0 < g.onboard_poll.0 {
        return Err(invalid(
            "providers.google.oauth.onboard_wait",
            "must be at least onboard_poll",
        ));
    }
    Ok(())
}
