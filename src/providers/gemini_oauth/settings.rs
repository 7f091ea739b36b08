//! The settings of `gemini-oauth` accounts (`providers.google.oauth` in `relay.yaml`): Google's
//! sign-in (the authorization flow Gemini CLI uses), token refresh, and the discovery of each
//! account's Code Assist project. The config reads them into this type and checks them; the flow,
//! the tokens and the project discovery use them.

use std::time::Duration;

use serde::Deserialize;

use crate::types::Dur;

/// Google accounts for Gemini Code Assist (`gemini-oauth`): the authorization flow, token refresh
/// and project discovery.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GoogleOAuthSettings {
    #[serde(default = "default_authorize_url")]
    pub authorize_url: String,
    #[serde(default = "default_token_url")]
    pub token_url: String,
    /// Gemini CLI's OAuth client, an installed application's: its secret is public by design.
    #[serde(default = "default_client_id")]
    pub client_id: String,
    #[serde(default = "default_client_secret")]
    pub client_secret: String,
    /// The redirect registered for that client: Code Assist's page that shows the code to paste.
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
    /// Timeout of each call to the token endpoint and to Code Assist's setup methods.
    #[serde(default = "default_timeout")]
    pub timeout: Dur,
    /// While Code Assist onboards an account (a long-running operation), how often it is asked
    /// whether it is done.
    #[serde(default = "default_onboard_poll")]
    pub onboard_poll: Dur,
    /// How long onboarding may take before the discovery gives up (the next request tries again).
    #[serde(default = "default_onboard_wait")]
    pub onboard_wait: Dur,
}

impl Default for GoogleOAuthSettings {
    fn default() -> Self {
        GoogleOAuthSettings {
            authorize_url: default_authorize_url(),
            token_url: default_token_url(),
            client_id: default_client_id(),
            client_secret: default_client_secret(),
            redirect_uri: default_redirect_uri(),
            scopes: default_scopes(),
            refresh_ahead: default_refresh_ahead(),
            refresh_check: default_refresh_check(),
            timeout: default_timeout(),
            onboard_poll: default_onboard_poll(),
            onboard_wait: default_onboard_wait(),
        }
    }
}

fn default_authorize_url() -> String {
    "https://accounts.google.com/o/oauth2/v2/auth".into()
}
fn default_token_url() -> String {
    "https://oauth2.googleapis.com/token".into()
}
fn default_client_id() -> String {
    "681255809395-oo8ft2oprdrnp9e3aqf6av3hmdib135j.apps.googleusercontent.com".into()
}
fn default_client_secret() -> String {
    "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".into()
}
fn default_redirect_uri() -> String {
    "https://codeassist.google.com/authcode".into()
}
fn default_scopes() -> Vec<String> {
    [
        "https://www.googleapis.com/auth/cloud-platform",
        "https://www.googleapis.com/auth/userinfo.email",
        "https://www.googleapis.com/auth/userinfo.profile",
    ]
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
fn default_onboard_poll() -> Dur {
    Dur(Duration::from_secs(5))
}
fn default_onboard_wait() -> Dur {
    Dur(Duration::from_secs(120))
}
