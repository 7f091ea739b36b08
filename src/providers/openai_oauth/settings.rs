//! The settings of `openai-oauth` accounts (`providers.openai.oauth` in `relay.yaml`): OpenAI's
//! sign-in (the authorization flow Codex CLI uses) and token refresh. The config reads them into
//! this type and checks them; the flow and the tokens use them.

use std::time::Duration;

use serde::Deserialize;

use crate::types::Dur;

/// ChatGPT subscription accounts (`openai-oauth`): the authorization flow and token refresh.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpenAiOAuthSettings {
    #[serde(default = "default_authorize_url")]
    pub authorize_url: String,
    #[serde(default = "default_token_url")]
    pub token_url: String,
    /// Codex CLI's public OAuth client.
    #[serde(default = "default_client_id")]
    pub client_id: String,
    /// The redirect registered for that client: Codex's local callback.
    #[serde(default = "default_redirect_uri")]
    pub redirect_uri: String,
    #[serde(default = "default_scopes")]
    pub scopes: Vec<String>,
    /// The background refresher renews a token this long before it expires.
    #[serde(default = "default_refresh_ahead")]
    pub refresh_ahead: Dur,
    /// How often the background refresher looks at the tokens.
    #[serde(default = "default_refresh_check")]
    pub refresh_check: Dur,
    /// Timeout of each call to the token endpoint.
    #[serde(default = "default_timeout")]
    pub timeout: Dur,
}

impl Default for OpenAiOAuthSettings {
    fn default() -> Self {
        OpenAiOAuthSettings {
            authorize_url: default_authorize_url(),
            token_url: default_token_url(),
            client_id: default_client_id(),
            redirect_uri: default_redirect_uri(),
            scopes: default_scopes(),
            refresh_ahead: default_refresh_ahead(),
            refresh_check: default_refresh_check(),
            timeout: default_timeout(),
        }
    }
}

fn default_authorize_url() -> String {
    "https://auth.openai.com/oauth/authorize".into()
}
fn default_token_url() -> String {
    "https://auth.openai.com/oauth/token".into()
}
fn default_client_id() -> String {
    "app_EMoamEEZ73f0CkXaXp7hrann".into()
}
fn default_redirect_uri() -> String {
    "http://localhost:1455/auth/callback".into()
}
fn default_scopes() -> Vec<String> {
    ["openid", "profile", "email", "offline_access"]
        .into_iter()
        .map(String::from)
        .collect()
}
fn default_refresh_ahead() -> Dur {
    Dur(Duration::from_secs(600))
}
fn default_refresh_check() -> Dur {
    Dur(Duration::from_secs(30))
}
fn default_timeout() -> Dur {
    Dur(Duration::from_secs(30))
}
