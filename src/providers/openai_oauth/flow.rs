//! The OAuth conversation with OpenAI's sign-in, as Codex CLI has it: the authorize URL (PKCE
//! S256, state, the sealed authorization id of [`crate::credentials::authorize`]), the code
//! exchange and the refresh at the token endpoint (form bodies), and what the id token says.
//!
//! The id token's claims (`https://api.openai.com/auth`: `chatgpt_account_id`,
//! `chatgpt_plan_type`; `email`) are read without checking its signature: it comes straight from
//! the token endpoint over TLS, and the relay only reads whom the token acts for.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::settings::OpenAiOAuthSettings;
use crate::credentials::authorize::{self, Pending, Started};
use crate::credentials::client::{OAuthClient, TokenBody, TokenFields};
use crate::credentials::{Identity, OAuthError, Refreshed, TokenPair, claims};
use crate::outbound::OutboundProxy;
use crate::secrets::Secrets;

/// The claim of OpenAI's tokens that names the ChatGPT account and plan.
const AUTH_CLAIM: &str = "https://api.openai.com/auth";

/// The flow an authorization id of this provider is sealed with (there is one), so an id of
/// another provider does not open here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Flow {
    #[serde(rename = "chatgpt")]
    ChatGpt,
}

/// Starts an authorization: a fresh verifier and state, the URL to open (with the parameters
/// Codex CLI adds), the sealed id.
pub fn start(cfg: &OpenAiOAuthSettings, secrets: &Secrets, now_s: i64) -> Result<Started, String> {
    let params = [
        ("response_type", "code"),
        ("client_id", cfg.client_id.as_str()),
        ("redirect_uri", cfg.redirect_uri.as_str()),
        ("scope", &cfg.scopes.join(" ")),
        ("id_token_add_organizations", "true"),
        ("codex_cli_simplified_flow", "true"),
    ];
    authorize::start(secrets, Flow::ChatGpt, now_s, &cfg.authorize_url, &params)
}

/// What the token endpoint answered.
#[derive(Debug)]
pub struct TokenAnswer {
    pub pair: TokenPair,
    /// Seconds: the answer's `expires_in`, else what the access token's own expiry leaves.
    pub expires_in: Option<u64>,
    pub scopes: Vec<String>,
    /// Whom the tokens act for: the id token's claims, else the access token's.
    pub identity: Identity,
}

impl TokenAnswer {
    fn of(f: TokenFields, now_s: i64) -> TokenAnswer {
        let id_token = f.answer["id_token"].as_str();
        TokenAnswer {
            expires_in: f
                .expires_in
                .or_else(|| expiry_s(&f.pair.access_token).map(|e| e.saturating_sub(now_s).max(0) as u64)),
            identity: identity(id_token, &f.pair.access_token),
            pair: f.pair,
            scopes: f.scopes,
        }
    }
}

fn now_s() -> i64 {
    chrono::Utc::now().timestamp()
}

/// What the refresh machinery keeps of a refresh's answer.
impl From<TokenAnswer> for Refreshed {
    fn from(a: TokenAnswer) -> Refreshed {
        Refreshed {
            pair: a.pair,
            expires_in: a.expires_in,
            scopes: a.scopes,
            identity: Some(a.identity),
        }
    }
}

/// Exchanges an authorization code for tokens.
pub async fn exchange(
    client: &OAuthClient,
    cfg: &OpenAiOAuthSettings,
    pending: &Pending<Flow>,
    code: &str,
    proxy: Option<&OutboundProxy>,
) -> Result<TokenAnswer, OAuthError> {
    let body = TokenBody::Form(vec![
        ("grant_type", "authorization_code".into()),
        ("code", code.to_string()),
        ("redirect_uri", cfg.redirect_uri.clone()),
        ("client_id", cfg.client_id.clone()),
        ("code_verifier", pending.verifier.clone()),
    ]);
    let f = client.token(&cfg.token_url, body, proxy).await?;
    Ok(TokenAnswer::of(f, now_s()))
}

/// Trades a refresh token for a new pair (the refresh token rotates).
pub async fn refresh(
    client: &OAuthClient,
    cfg: &OpenAiOAuthSettings,
    refresh_token: &str,
    proxy: Option<&OutboundProxy>,
) -> Result<TokenAnswer, OAuthError> {
    let body = TokenBody::Form(vec![
        ("grant_type", "refresh_token".into()),
        ("refresh_token", refresh_token.to_string()),
        ("client_id", cfg.client_id.clone()),
        ("scope", cfg.scopes.join(" ")),
    ]);
    let f = client.token(&cfg.token_url, body, proxy).await?;
    Ok(TokenAnswer::of(f, now_s()))
}

/// The expiry (Unix seconds) a JWT access token carries.
pub fn expiry_s(token: &str) -> Option<i64> {
    claims(token)?["exp"].as_i64()
}

/// Whom tokens act for: the id token's claims where it has them, else the access token's (which
/// carries the same auth claim).
pub fn identity(id_token: Option<&str>, access_token: &str) -> Identity {
    let of = |jwt: &str| {
        let c = claims(jwt).unwrap_or(Value::Null);
        let auth = &c[AUTH_CLAIM];
        let text = |v: &Value| v.as_str().map(str::trim).filter(|s| !s.is_empty()).map(String::from);
        Identity {
            account_id: text(&auth["chatgpt_account_id"]),
            plan: text(&auth["chatgpt_plan_type"]),
            email: text(&c["email"]).or_else(|| text(&c["https://api.openai.com/profile"]["email"])),
        }
    };
    let from_id = id_token.map(of).unwrap_or_default();
    let from_access = of(access_token);
    Identity {
        account_id: from_id.account_id.or(from_access.account_id),
        plan: from_id.plan.or(from_access.plan),
        email: from_id.email.or(from_access.email),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use serde_json::json;

    fn jwt(claims: &Value) -> String {
        let enc = |v: &Value| URL_SAFE_NO_PAD.encode(v.to_string());
        format!(
            "{}.{}.c2lnbmF0dXJl",
            enc(&json!({"alg": "RS256", "typ": "JWT"})),
            enc(claims)
        )
    }

    #[test]
    fn authorize_urls_are_codex_s_with_pkce() {
        let cfg = OpenAiOAuthSettings::default();
        let s = Secrets::new(&Secrets::generate_key()).unwrap();
        let a = start(&cfg, &s, 1_000).unwrap();
        let u = url::Url::parse(&a.url).unwrap();
        assert_eq!((u.host_str(), u.path()), (Some("auth.openai.com"), "/oauth/authorize"));
        let q: HashMap<String, String> = u.query_pairs().into_owned().collect();
        assert_eq!(q["response_type"], "code");
        assert_eq!(q["client_id"], "app_EMoamEEZ73f0CkXaXp7hrann");
        assert_eq!(q["redirect_uri"], "http://localhost:1455/auth/callback");
        assert_eq!(q["scope"], "openid profile email offline_access");
        assert_eq!(q["code_challenge_method"], "S256");
        assert_eq!(q["id_token_add_organizations"], "true");
        assert_eq!(q["codex_cli_simplified_flow"], "true");
        let p = authorize::open::<Flow>(&s, &a.id, 1_001).unwrap();
        assert_eq!(q["state"], p.state);
        assert_eq!(q["code_challenge"], authorize::challenge(&p.verifier));
        assert_eq!(a.expires_at, 1_600);
    }

    #[test]
    fn the_identity_comes_from_the_id_token_then_the_access_token() {
        let id = jwt(&json!({
            "email": "sub@example.com",
            "https://api.openai.com/auth": {"chatgpt_account_id": "acc-1", "chatgpt_plan_type": "plus"}
        }));
        let access = jwt(&json!({"exp": 2_000, "https://api.openai.com/auth": {"chatgpt_account_id": "acc-2"}}));
        let i = identity(Some(&id), &access);
        assert_eq!(i.account_id.as_deref(), Some("acc-1"));
        assert_eq!(i.plan.as_deref(), Some("plus"));
        assert_eq!(i.email.as_deref(), Some("sub@example.com"));
        assert_eq!(identity(None, &access).account_id.as_deref(), Some("acc-2"));
        assert_eq!(identity(Some("not-a-jwt"), "opaque"), Identity::default());
        assert_eq!(expiry_s(&access), Some(2_000));
        assert_eq!(expiry_s("a.b"), None);
        assert_eq!(claims("a.!!.c"), None);
    }

    #[test]
    fn the_lifetime_falls_back_to_the_access_token_s_expiry() {
        let access = jwt(&json!({"exp": 1_000 + 3_600}));
        let f = |v: Value| TokenAnswer::of(TokenFields::read(v).unwrap(), 1_000);
        assert_eq!(
            f(json!({"access_token": access, "expires_in": 60})).expires_in,
            Some(60)
        );
        assert_eq!(f(json!({"access_token": access})).expires_in, Some(3_600));
        assert_eq!(f(json!({"access_token": "opaque"})).expires_in, None);
    }
}
