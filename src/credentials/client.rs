//! The HTTP side of OAuth, shared by every provider: one connection pool per outbound proxy,
//! calls to a token endpoint (JSON or form bodies) read into a [`TokenPair`] and its lifetime, and
//! bearer-authenticated JSON reads. Errors never carry tokens nor URLs.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use serde_json::Value;

use super::{OAuthError, TokenPair};
use crate::outbound::{OutboundProxy, ProxyKind};

/// A token endpoint request body: JSON (Anthropic's endpoint) or a form (the OAuth standard).
pub enum TokenBody {
    Json(Value),
    Form(Vec<(&'static str, String)>),
}

/// What every token endpoint answers: the pair, its lifetime and scopes; and the whole answer,
/// for what a provider reads besides (an account, an id token).
#[derive(Debug)]
pub struct TokenFields {
    pub pair: TokenPair,
    /// Seconds.
    pub expires_in: Option<u64>,
    pub scopes: Vec<String>,
    pub answer: Value,
}

impl TokenFields {
    /// Reads a token endpoint's JSON answer; one without an access token is no answer.
    pub fn read(v: Value) -> Result<TokenFields, OAuthError> {
        let text = |k: &str| v[k].as_str().map(str::trim).filter(|s| !s.is_empty()).map(String::from);
        let Some(access_token) = text("access_token") else {
            return Err(OAuthError::Unavailable(
                "token endpoint answered without an access token".into(),
            ));
        };
        Ok(TokenFields {
            pair: TokenPair {
                access_token,
                refresh_token: text("refresh_token"),
            },
            expires_in: v["expires_in"].as_u64(),
            scopes: v["scope"]
                .as_str()
                .map(|s| s.split_whitespace().map(String::from).collect())
                .unwrap_or_default(),
            answer: v,
        })
    }
}

/// The OAuth error code of a refusal (`invalid_grant`), when it is a plain identifier.
pub fn error_code(body: &[u8]) -> String {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let code = v["error"]
        .as_str()
        .or_else(|| v["error"]["code"].as_str())
        .or_else(|| v["error"]["type"].as_str())
        // Google's APIs: {"error": {"code": 403, "message", "status": "PERMISSION_DENIED"}}.
        .or_else(|| v["error"]["status"].as_str())
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

    /// Calls a token endpoint: a code exchange or a refresh. A 4xx other than 429 is a refusal
    /// (the code or refresh token is no good); 429, 5xx and transport errors are temporary.
    pub async fn token(
        &self,
        url: &str,
        body: TokenBody,
        proxy: Option<&OutboundProxy>,
    ) -> Result<TokenFields, OAuthError> {
        let rb = self
            .client(proxy)?
            .post(url)
            .header(http::header::ACCEPT, "application/json");
        let rb = match body {
            TokenBody::Json(v) => rb.json(&v),
            TokenBody::Form(fields) => {
                let mut form = url::form_urlencoded::Serializer::new(String::new());
                for (k, v) in &fields {
                    form.append_pair(k, v);
                }
                rb.header(http::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                    .body(form.finish())
            }
        };
        let resp = rb.send().await.map_err(|e| OAuthError::Unavailable(transport(e)))?;
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
        TokenFields::read(v)
    }

    /// GETs a JSON resource with the account's token and `headers` (a profile or usage endpoint).
    pub async fn get_json(
        &self,
        url: &str,
        headers: &[(&str, &str)],
        access_token: &str,
        proxy: Option<&OutboundProxy>,
    ) -> Result<Value, OAuthError> {
        let mut rb = self
            .client(proxy)?
            .get(url)
            .bearer_auth(access_token)
            .header(http::header::ACCEPT, "application/json");
        for (k, v) in headers {
            rb = rb.header(*k, *v);
        }
        read_json(rb).await
    }

    /// Calls a JSON method of a provider's API as the account (`authorization`: its live
    /// `Authorization` header): a POST of `body`, or a GET without one.
    pub async fn call_json(
        &self,
        url: &str,
        authorization: &http::HeaderValue,
        body: Option<&Value>,
        proxy: Option<&OutboundProxy>,
    ) -> Result<Value, OAuthError> {
        let client = self.client(proxy)?;
        let rb = match body {
            Some(b) => client.post(url).json(b),
            None => client.get(url),
        };
        read_json(
            rb.header(http::header::AUTHORIZATION, authorization.clone())
                .header(http::header::ACCEPT, "application/json"),
        )
        .await
    }
}

/// Sends a request and reads its JSON answer. A 4xx other than 429 is a refusal; 429, 5xx and
/// transport errors are temporary.
async fn read_json(rb: reqwest::RequestBuilder) -> Result<Value, OAuthError> {
    let resp = rb.send().await.map_err(|e| OAuthError::Unavailable(transport(e)))?;
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
    use serde_json::json;

    #[test]
    fn refusal_codes_are_kept_only_when_plain() {
        assert_eq!(
            error_code(br#"{"error":"invalid_grant","error_description":"x"}"#),
            "invalid_grant"
        );
        assert_eq!(
            error_code(br#"{"error":{"type":"invalid_request_error","code":"refresh_token_reused","message":"m"}}"#),
            "refresh_token_reused"
        );
        assert_eq!(
            error_code(br#"{"error":{"code":403,"message":"m","status":"PERMISSION_DENIED"}}"#),
            "PERMISSION_DENIED"
        );
        assert_eq!(error_code(br#"{"error":"sk-ant-ort01-leak"}"#), "");
        assert_eq!(error_code(b"nope"), "");
    }

    #[test]
    fn token_answers_need_an_access_token() {
        let f =
            TokenFields::read(json!({"access_token": " a ", "refresh_token": "", "expires_in": 60, "scope": "x y"}))
                .unwrap();
        assert_eq!(f.pair.access_token, "a");
        assert_eq!(f.pair.refresh_token, None);
        assert_eq!(
            (f.expires_in, f.scopes),
            (Some(60), vec!["x".to_string(), "y".to_string()])
        );
        assert!(TokenFields::read(json!({"refresh_token": "r"})).is_err());
    }
}
