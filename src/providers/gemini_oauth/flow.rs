//! The OAuth conversation with Google's sign-in, as Gemini CLI has it when it cannot open a
//! browser: the authorize URL (PKCE S256, state, offline access, the sealed authorization id of
//! [`crate::credentials::authorize`]) leading to Code Assist's page that shows the code to paste,
//! and the code exchange and the refresh at Google's token endpoint (form bodies with the
//! client's id and secret).
//!
//! `prompt=consent` makes Google issue a refresh token on every sign-in (else only on the first
//! one for the client). Google does not rotate refresh tokens: a refresh answers an access token
//! only, and the refresh token stays the one the account has. The e-mail comes from the id
//! token's claims, read without checking its signature (see [`crate::credentials::claims`]).

use serde::{Deserialize, Serialize};

use super::settings::GoogleOAuthSettings;
use crate::credentials::authorize::{self, Pending, Started};
use crate::credentials::client::{OAuthClient, TokenBody, TokenFields};
use crate::credentials::{Identity, OAuthError, Refreshed, TokenPair, claims};
use crate::outbound::OutboundProxy;
use crate::secrets::Secrets;

/// The flow an authorization id of this provider is sealed with (there is one), so an id of
/// another provider does not open here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Flow {
    #[serde(rename = "google")]
    Google,
}

/// Starts an authorization: a fresh verifier and state, the URL to open, the sealed id.
pub fn start(cfg: &GoogleOAuthSettings, secrets: &Secrets, now_s: i64) -> Result<Started, String> {
    let params = [
        ("response_type", "code"),
        ("client_id", cfg.client_id.as_str()),
        ("redirect_uri", cfg.redirect_uri.as_str()),
        ("scope", &cfg.scopes.join(" ")),
        ("access_type", "offline"),
        ("prompt", "consent"),
    ];
    authorize::start(secrets, Flow::Google, now_s, &cfg.authorize_url, &params)
}

/// What the token endpoint answered.
#[derive(Debug)]
pub struct TokenAnswer {
    pub pair: TokenPair,
    /// Seconds.
    pub expires_in: Option<u64>,
    pub scopes: Vec<String>,
    /// The Google account's e-mail, from the id token.
    pub email: Option<String>,
}

impl From<TokenFields> for TokenAnswer {
    fn from(f: TokenFields) -> TokenAnswer {
        TokenAnswer {
            email: f.answer["id_token"].as_str().and_then(email),
            pair: f.pair,
            expires_in: f.expires_in,
            scopes: f.scopes,
        }
    }
}

/// What the refresh machinery keeps of a refresh's answer (the refresh token it lacks is kept
/// by the machinery).
impl From<TokenAnswer> for Refreshed {
    fn from(a: TokenAnswer) -> Refreshed {
        Refreshed {
            identity: a.email.is_some().then(|| Identity {
                email: a.email,
                ..Identity::default()
            }),
            pair: a.pair,
            expires_in: a.expires_in,
            scopes: a.scopes,
        }
    }
}

/// The client's credentials, as every call to Google's token endpoint carries them.
fn client_fields(cfg: &GoogleOAuthSettings) -> Vec<(&'static str, String)> {
    let mut f = vec![("client_id", cfg.client_id.clone())];
    if !cfg.client_secret.is_empty() {
        f.push(("client_secret", cfg.client_secret.clone()));
    }
    f
}

/// Exchanges an authorization code for tokens.
pub async fn exchange(
    client: &OAuthClient,
    cfg: &GoogleOAuthSettings,
    pending: &Pending<Flow>,
    code: &str,
    proxy: Option<&OutboundProxy>,
) -> Result<TokenAnswer, OAuthError> {
    let mut form = vec![
        ("grant_type", "authorization_code".to_string()),
        ("code", code.to_string()),
        ("redirect_uri", cfg.redirect_uri.clone()),
        ("code_verifier", pending.verifier.clone()),
    ];
    form.extend(client_fields(cfg));
    Ok(client.token(&cfg.token_url, TokenBody::Form(form), proxy).await?.into())
}

/// Trades a refresh token for a new access token (the refresh token does not rotate).
pub async fn refresh(
    client: &OAuthClient,
    cfg: &GoogleOAuthSettings,
    refresh_token: &str,
    proxy: Option<&OutboundProxy>,
) -> Result<TokenAnswer, OAuthError> {
    let mut form = vec![
        ("grant_type", "refresh_token".to_string()),
        ("refresh_token", refresh_token.to_string()),
    ];
    form.extend(client_fields(cfg));
    Ok(client.token(&cfg.token_url, TokenBody::Form(form), proxy).await?.into())
}

/// The e-mail an id token names.
pub fn email(id_token: &str) -> Option<String> {
    claims(id_token)?["email"]
        .as_str()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use serde_json::{Value, json};

    use super::*;

    fn jwt(claims: &Value) -> String {
        let enc = |v: &Value| URL_SAFE_NO_PAD.encode(v.to_string());
        format!("{}.{}.c2ln", enc(&json!({"alg": "RS256"})), enc(claims))
    }

    #[test]
    fn authorize_urls_are_gemini_cli_s_with_pkce_and_offline_access() {
        let cfg = GoogleOAuthSettings::default();
        let s = Secrets::new(&Secrets::generate_key()).unwrap();
        let a = start(&cfg, &s, 1_000).unwrap();
        let u = url::Url::parse(&a.url).unwrap();
        assert_eq!(
            (u.host_str(), u.path()),
            (Some("accounts.google.com"), "/o/oauth2/v2/auth")
        );
        let q: HashMap<String, String> = u.query_pairs().into_owned().collect();
        assert_eq!(q["response_type"], "code");
        assert_eq!(
            q["client_id"],
            "681255809395-oo8ft2oprdrnp9e3aqf6av3hmdib135j.apps.googleusercontent.com"
        );
        assert_eq!(q["redirect_uri"], "https://codeassist.google.com/authcode");
        assert_eq!(
            q["scope"],
            "https://www.googleapis.com/auth/cloud-platform https://www.googleapis.com/auth/userinfo.email https://www.googleapis.com/auth/userinfo.profile"
        );
        assert_eq!(
            (q["access_type"].as_str(), q["prompt"].as_str()),
            ("offline", "consent")
        );
        assert_eq!(q["code_challenge_method"], "S256");
        assert!(
            !q.contains_key("client_secret"),
            "the secret goes to the token endpoint only"
        );
        let p = authorize::open::<Flow>(&s, &a.id, 1_001).unwrap();
        assert_eq!(q["state"], p.state);
        assert_eq!(q["code_challenge"], authorize::challenge(&p.verifier));
    }

    #[test]
    fn answers_name_the_email_of_the_id_token_and_keep_no_refresh_token_they_lack() {
        let f = TokenFields::read(json!({
            "access_token": "ya29.a", "expires_in": 3599, "scope": "a b", "token_type": "Bearer",
            "id_token": jwt(&json!({"email": "dev@example.com", "sub": "1"}))
        }))
        .unwrap();
        let a = TokenAnswer::from(f);
        assert_eq!(a.email.as_deref(), Some("dev@example.com"));
        assert_eq!((a.expires_in, a.pair.refresh_token.as_deref()), (Some(3599), None));
        let r = Refreshed::from(a);
        assert_eq!(r.identity.unwrap().email.as_deref(), Some("dev@example.com"));
        let bare = TokenAnswer::from(TokenFields::read(json!({"access_token": "ya29.b"})).unwrap());
        assert!(Refreshed::from(bare).identity.is_none());
        assert_eq!(email("not-a-jwt"), None);
    }
}
