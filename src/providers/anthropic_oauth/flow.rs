//! The OAuth conversation with Anthropic: the authorize URL (PKCE S256, the sealed authorization
//! id of [`crate::credentials::authorize`]) and the token endpoint (code exchange and refresh),
//! through the shared [`OAuthClient`].

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::settings::OAuthSettings;
use crate::credentials::authorize::{self, Pending, Started};
use crate::credentials::client::{OAuthClient, TokenBody};
use crate::credentials::{OAuthError, Refreshed, TokenPair};
use crate::outbound::OutboundProxy;
use crate::secrets::Secrets;

/// Which authorization: the browser flow (refreshable tokens) or the long-lived setup token
/// (inference scope only, no refresh token).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Flow {
    #[default]
    Oauth,
    SetupToken,
}

/// Starts an authorization: a fresh verifier and state, the URL to open, the sealed id.
pub fn start(cfg: &OAuthSettings, secrets: &Secrets, flow: Flow, now_s: i64) -> Result<Started, String> {
    let scopes = match flow {
        Flow::Oauth => &cfg.scopes,
        Flow::SetupToken => &cfg.setup_token_scopes,
    };
    let params = [
        ("code", "true"),
        ("client_id", cfg.client_id.as_str()),
        ("response_type", "code"),
        ("redirect_uri", cfg.redirect_uri.as_str()),
        ("scope", &scopes.join(" ")),
    ];
    authorize::start(secrets, flow, now_s, &cfg.authorize_url, &params)
}

/// What the token endpoint answered.
#[derive(Debug)]
pub struct TokenAnswer {
    pub pair: TokenPair,
    /// Seconds.
    pub expires_in: Option<u64>,
    pub scopes: Vec<String>,
    pub email: Option<String>,
}

/// Anthropic's token endpoint (JSON bodies) through the shared OAuth client.
async fn token_call(
    client: &OAuthClient,
    url: &str,
    body: serde_json::Value,
    proxy: Option<&OutboundProxy>,
) -> Result<TokenAnswer, OAuthError> {
    let f = client.token(url, TokenBody::Json(body), proxy).await?;
    let account = &f.answer["account"];
    Ok(TokenAnswer {
        email: account["email_address"]
            .as_str()
            .or_else(|| account["email"].as_str())
            .map(String::from),
        pair: f.pair,
        expires_in: f.expires_in,
        scopes: f.scopes,
    })
}

/// What the refresh machinery keeps of a refresh's answer.
impl From<TokenAnswer> for Refreshed {
    fn from(a: TokenAnswer) -> Refreshed {
        Refreshed {
            pair: a.pair,
            expires_in: a.expires_in,
            scopes: a.scopes,
            identity: None,
        }
    }
}

/// Exchanges an authorization code for tokens.
pub async fn exchange(
    client: &OAuthClient,
    cfg: &OAuthSettings,
    pending: &Pending<Flow>,
    code: &str,
    proxy: Option<&OutboundProxy>,
) -> Result<TokenAnswer, OAuthError> {
    let mut body = json!({
        "grant_type": "authorization_code",
        "client_id": cfg.client_id,
        "code": code,
        "redirect_uri": cfg.redirect_uri,
        "code_verifier": pending.verifier,
        "state": pending.state,
    });
    if pending.flow == Flow::SetupToken {
        body["expires_in"] = json!(cfg.setup_token_lifetime.0.as_secs());
    }
    token_call(client, &cfg.token_url, body, proxy).await
}

/// Trades a refresh token for a new pair.
pub async fn refresh(
    client: &OAuthClient,
    cfg: &OAuthSettings,
    refresh_token: &str,
    proxy: Option<&OutboundProxy>,
) -> Result<TokenAnswer, OAuthError> {
    let body = json!({
        "grant_type": "refresh_token",
        "refresh_token": refresh_token,
        "client_id": cfg.client_id,
    });
    token_call(client, &cfg.token_url, body, proxy).await
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::credentials::authorize::challenge;

    fn secrets() -> Secrets {
        Secrets::new(&Secrets::generate_key()).unwrap()
    }

    #[test]
    fn authorize_urls_carry_pkce_and_the_configured_client() {
        let cfg = OAuthSettings::default();
        let s = secrets();
        let a = start(&cfg, &s, Flow::Oauth, 1_000).unwrap();
        let u = url::Url::parse(&a.url).unwrap();
        assert_eq!(u.host_str(), Some("claude.ai"));
        let q: HashMap<String, String> = u.query_pairs().into_owned().collect();
        assert_eq!(q["code"], "true");
        assert_eq!(q["client_id"], cfg.client_id);
        assert_eq!(q["response_type"], "code");
        assert_eq!(q["redirect_uri"], cfg.redirect_uri);
        assert_eq!(q["scope"], cfg.scopes.join(" "));
        assert_eq!(q["code_challenge_method"], "S256");
        let p = authorize::open::<Flow>(&s, &a.id, 1_001).unwrap();
        assert_eq!(q["state"], p.state);
        assert_eq!(q["code_challenge"], challenge(&p.verifier));
        assert_eq!(a.expires_at, 1_600);
        assert!(authorize::open::<Flow>(&s, &a.id, 1_600).is_err(), "expired");
        let setup = start(&cfg, &s, Flow::SetupToken, 1_000).unwrap();
        assert!(setup.url.contains("scope=user%3Ainference&"));
        assert_eq!(
            authorize::open::<Flow>(&s, &setup.id, 1_001).unwrap().flow,
            Flow::SetupToken
        );
    }
}
