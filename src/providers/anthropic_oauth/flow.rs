//! The OAuth conversation with Anthropic: the authorize URL (PKCE S256), the authorization id,
//! the token endpoint (code exchange and refresh), and the profile and usage endpoints.
//!
//! The authorization id is the pending authorization itself (verifier, state, flow, expiry),
//! sealed with the relay's secret: any instance sharing the secret can finish an authorization
//! another one started, nothing needs storing, and the verifier never leaves the relay.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::settings::OAuthSettings;
use crate::credentials::{OAuthError, TokenPair};
use crate::outbound::{OutboundProxy, ProxyKind};
use crate::secrets::{Sealed, Secrets};

/// How long an authorization may take, from the URL to the code.
pub const AUTHORIZATION_TTL_S: i64 = 600;

/// Which authorization: the browser flow (refreshable tokens) or the long-lived setup token
/// (inference scope only, no refresh token).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Flow {
    #[default]
    Oauth,
    SetupToken,
}

/// A started authorization, as sealed into its id.
#[derive(Serialize, Deserialize)]
pub struct Pending {
    #[serde(rename = "v")]
    verifier: String,
    #[serde(rename = "s")]
    pub state: String,
    #[serde(rename = "f")]
    pub flow: Flow,
    /// Unix seconds.
    #[serde(rename = "e")]
    pub expires_at: i64,
}

pub struct Authorization {
    pub id: String,
    pub url: String,
    pub flow: Flow,
    pub expires_at: i64,
}

fn random_b64(n: usize) -> String {
    let mut b = vec![0u8; n];
    rand::rngs::OsRng.fill_bytes(&mut b);
    URL_SAFE_NO_PAD.encode(b)
}

/// `base64url(sha256(verifier))`, the S256 code challenge.
pub fn challenge(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

/// Starts an authorization: a fresh verifier and state, the URL to open, the sealed id.
pub fn start(cfg: &OAuthSettings, secrets: &Secrets, flow: Flow, now_s: i64) -> Result<Authorization, String> {
    let pending = Pending {
        verifier: random_b64(32),
        state: random_b64(32),
        flow,
        expires_at: now_s + AUTHORIZATION_TTL_S,
    };
    let scopes = match flow {
        Flow::Oauth => &cfg.scopes,
        Flow::SetupToken => &cfg.setup_token_scopes,
    };
    let mut url = url::Url::parse(&cfg.authorize_url).map_err(|e| format!("authorize_url: {e}"))?;
    url.query_pairs_mut()
        .append_pair("code", "true")
        .append_pair("client_id", &cfg.client_id)
        .append_pair("response_type", "code")
        .append_pair("redirect_uri", &cfg.redirect_uri)
        .append_pair("scope", &scopes.join(" "))
        .append_pair("code_challenge", &challenge(&pending.verifier))
        .append_pair("code_challenge_method", "S256")
        .append_pair("state", &pending.state);
    let id = secrets
        .seal(&serde_json::to_string(&pending).map_err(|e| e.to_string())?)
        .0;
    Ok(Authorization {
        id,
        url: url.into(),
        flow,
        expires_at: pending.expires_at,
    })
}

/// Opens an authorization id; refuses tampered, foreign and expired ones.
pub fn open(secrets: &Secrets, id: &str, now_s: i64) -> Result<Pending, String> {
    let unknown = || "`authorization_id` is unknown or was not issued by this relay".to_string();
    let plain = secrets.open(&Sealed(id.trim().to_string())).map_err(|_| unknown())?;
    let p: Pending = serde_json::from_str(&plain).map_err(|_| unknown())?;
    if p.expires_at <= now_s {
        return Err("the authorization expired (10 minutes); start a new one".into());
    }
    Ok(p)
}

/// The code out of what the admin pasted: the bare code, `code#state`, or the callback URL.
/// Returns the code and the state that came with it, if any.
pub fn parse_code(input: &str) -> Result<(String, Option<String>), String> {
    let input = input.trim();
    if input.is_empty() {
        return Err("`code` must not be empty".into());
    }
    if input.contains("://")
        && let Ok(u) = url::Url::parse(input)
    {
        let q: HashMap<String, String> = u.query_pairs().into_owned().collect();
        if let Some(err) = q.get("error") {
            return Err(format!("the callback carries an error: {err}"));
        }
        let code = q
            .get("code")
            .cloned()
            .ok_or("the callback URL has no `code` parameter")?;
        return Ok((code, q.get("state").cloned()));
    }
    let (code, state) = match input.split_once('#') {
        Some((c, s)) => (c, Some(s.split('&').next().unwrap_or_default().to_string())),
        None => (input, None),
    };
    let code = code.split('&').next().unwrap_or_default().trim();
    if code.is_empty() || code.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("`code` is not an authorization code".into());
    }
    Ok((code.to_string(), state.filter(|s| !s.is_empty())))
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

/// The OAuth error code of a refusal (`invalid_grant`), when it is a plain identifier.
fn error_code(body: &[u8]) -> String {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let code = v["error"]
        .as_str()
        .or_else(|| v["error"]["type"].as_str())
        .unwrap_or_default();
    if !code.is_empty() && code.len() <= 64 && code.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        code.to_string()
    } else {
        String::new()
    }
}

/// HTTP client for the OAuth endpoints, one connection pool per outbound proxy.
pub struct OAuthClient {
    timeout: Duration,
    clients: Mutex<HashMap<String, reqwest::Client>>,
}

impl OAuthClient {
    pub fn new(timeout: Duration) -> Self {
        OAuthClient {
            timeout,
            clients: Mutex::new(HashMap::new()),
        }
    }

    fn client(&self, proxy: Option<&OutboundProxy>) -> Result<reqwest::Client, OAuthError> {
        let key = proxy
            .map(|p| format!("{:?}{}:{}{:?}", p.kind, p.host, p.port, p.auth))
            .unwrap_or_default();
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = clients.get(&key) {
            return Ok(c.clone());
        }
        let mut b = reqwest::Client::builder()
            .timeout(self.timeout)
            .connect_timeout(self.timeout.min(Duration::from_secs(10)))
            .user_agent(concat!("claude-relay/", env!("CARGO_PKG_VERSION")))
            .redirect(reqwest::redirect::Policy::none());
        if let Some(p) = proxy {
            let host = if p.host.contains(':') {
                format!("[{}]", p.host)
            } else {
                p.host.clone()
            };
            let url = match p.kind {
                // Names resolve at the proxy, as for relayed requests.
                ProxyKind::Socks5 => format!("socks5h://{host}:{}", p.port),
                ProxyKind::HttpConnect => format!("http://{host}:{}", p.port),
            };
            let mut px = reqwest::Proxy::all(url).map_err(|e| OAuthError::Unavailable(format!("proxy: {e}")))?;
            if let Some((u, pw)) = &p.auth {
                px = px.basic_auth(u, pw);
            }
            b = b.proxy(px);
        } else {
            b = b.no_proxy();
        }
        let c = b
            .build()
            .map_err(|e| OAuthError::Unavailable(format!("http client: {e}")))?;
        clients.insert(key, c.clone());
        Ok(c)
    }

    async fn token_call(
        &self,
        url: &str,
        body: Value,
        proxy: Option<&OutboundProxy>,
    ) -> Result<TokenAnswer, OAuthError> {
        let resp = self
            .client(proxy)?
            .post(url)
            .header(http::header::ACCEPT, "application/json")
            .json(&body)
            .send()
            .await
            .map_err(|e| OAuthError::Unavailable(transport(e)))?;
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.map_err(|e| OAuthError::Unavailable(transport(e)))?;
        if status == 429 || status >= 500 {
            return Err(OAuthError::Unavailable(format!("token endpoint answered {status}")));
        }
        if status >= 300 {
            return Err(OAuthError::Refused {
                status,
                code: error_code(&bytes),
            });
        }
        let v: Value = serde_json::from_slice(&bytes)
            .map_err(|_| OAuthError::Unavailable("token endpoint answered something other than JSON".into()))?;
        let access = v["access_token"].as_str().unwrap_or_default().trim();
        if access.is_empty() {
            return Err(OAuthError::Unavailable(
                "token endpoint answered without an access token".into(),
            ));
        }
        Ok(TokenAnswer {
            pair: TokenPair {
                access_token: access.to_string(),
                refresh_token: v["refresh_token"]
                    .as_str()
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(String::from),
            },
            expires_in: v["expires_in"].as_u64(),
            scopes: v["scope"]
                .as_str()
                .map(|s| s.split_whitespace().map(String::from).collect())
                .unwrap_or_default(),
            email: v["account"]["email_address"]
                .as_str()
                .or_else(|| v["account"]["email"].as_str())
                .map(String::from),
        })
    }

    /// Exchanges an authorization code for tokens.
    pub async fn exchange(
        &self,
        cfg: &OAuthSettings,
        pending: &Pending,
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
        self.token_call(&cfg.token_url, body, proxy).await
    }

    /// Trades a refresh token for a new pair.
    pub async fn refresh(
        &self,
        cfg: &OAuthSettings,
        refresh_token: &str,
        proxy: Option<&OutboundProxy>,
    ) -> Result<TokenAnswer, OAuthError> {
        let body = json!({
            "grant_type": "refresh_token",
            "refresh_token": refresh_token,
            "client_id": cfg.client_id,
        });
        self.token_call(&cfg.token_url, body, proxy).await
    }

    /// GETs a JSON resource with the account's token (the profile and usage endpoints).
    pub async fn get_json(
        &self,
        url: &str,
        beta: &str,
        access_token: &str,
        proxy: Option<&OutboundProxy>,
    ) -> Result<Value, OAuthError> {
        let resp = self
            .client(proxy)?
            .get(url)
            .bearer_auth(access_token)
            .header("anthropic-beta", beta)
            .header(http::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| OAuthError::Unavailable(transport(e)))?;
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.map_err(|e| OAuthError::Unavailable(transport(e)))?;
        if status >= 300 {
            return Err(if status == 429 || status >= 500 {
                OAuthError::Unavailable(format!("answered {status}"))
            } else {
                OAuthError::Refused {
                    status,
                    code: error_code(&bytes),
                }
            });
        }
        serde_json::from_slice(&bytes).map_err(|_| OAuthError::Unavailable("answered something other than JSON".into()))
    }
}

/// A transport error without the URL (which is configuration, but keeps logs short).
fn transport(e: reqwest::Error) -> String {
    if e.is_timeout() {
        "timed out".into()
    } else if e.is_connect() {
        "could not connect".into()
    } else {
        e.without_url().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let p = open(&s, &a.id, 1_001).unwrap();
        assert_eq!(q["state"], p.state);
        assert_eq!(q["code_challenge"], challenge(&p.verifier));
        assert_eq!(a.expires_at, 1_600);
        assert!(open(&s, &a.id, 1_600).is_err(), "expired");
        assert!(open(&secrets(), &a.id, 1_001).is_err(), "another relay's id");
        assert!(open(&s, "v1:AAAA", 1_001).is_err());
        let setup = start(&cfg, &s, Flow::SetupToken, 1_000).unwrap();
        assert!(setup.url.contains("scope=user%3Ainference&"));
    }

    #[test]
    fn codes_come_bare_with_state_or_as_the_callback() {
        assert_eq!(parse_code(" abc ").unwrap(), ("abc".into(), None));
        assert_eq!(parse_code("abc#st").unwrap(), ("abc".into(), Some("st".into())));
        assert_eq!(
            parse_code("https://platform.claude.com/oauth/code/callback?code=abc&state=st").unwrap(),
            ("abc".into(), Some("st".into()))
        );
        assert_eq!(parse_code("abc&state=x").unwrap(), ("abc".into(), None));
        assert!(parse_code("https://x/cb?error=access_denied").is_err());
        assert!(parse_code("").is_err());
        assert!(parse_code("a b").is_err());
    }

    #[test]
    fn refusal_codes_are_kept_only_when_plain() {
        assert_eq!(
            error_code(br#"{"error":"invalid_grant","error_description":"x"}"#),
            "invalid_grant"
        );
        assert_eq!(error_code(br#"{"error":"sk-ant-ort01-leak"}"#), "");
        assert_eq!(error_code(b"nope"), "");
    }
}
