//! The authorization-code flow with PKCE, as every OAuth provider starts and finishes it: a fresh
//! verifier and state, the S256 challenge, the pending authorization sealed into an opaque id,
//! and the code read out of what an admin pastes.
//!
//! The authorization id is the pending authorization itself (verifier, state, the provider's flow,
//! expiry), sealed with the relay's secret: any instance sharing the secret can finish an
//! authorization another one started, nothing needs storing, and the verifier never leaves the
//! relay. The flow type `F` is the provider's own, so an id one provider issued does not open as
//! another's.

use std::collections::HashMap;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::secrets::{Sealed, Secrets};

/// How long an authorization may take, from the URL to the code.
pub const AUTHORIZATION_TTL_S: i64 = 600;

/// A started authorization, as sealed into its id.
#[derive(Serialize, Deserialize)]
pub struct Pending<F> {
    #[serde(rename = "v")]
    pub verifier: String,
    #[serde(rename = "s")]
    pub state: String,
    #[serde(rename = "f")]
    pub flow: F,
    /// Unix seconds.
    #[serde(rename = "e")]
    pub expires_at: i64,
}

impl<F: Serialize> Pending<F> {
    /// A fresh verifier and state for `flow`, valid for [`AUTHORIZATION_TTL_S`] from `now_s`.
    pub fn new(flow: F, now_s: i64) -> Pending<F> {
        Pending {
            verifier: random_b64(32),
            state: random_b64(32),
            flow,
            expires_at: now_s + AUTHORIZATION_TTL_S,
        }
    }

    /// The S256 challenge of the verifier.
    pub fn challenge(&self) -> String {
        challenge(&self.verifier)
    }

    /// The authorization id: this pending authorization, sealed.
    pub fn seal(&self, secrets: &Secrets) -> Result<String, String> {
        Ok(secrets.seal(&serde_json::to_string(self).map_err(|e| e.to_string())?).0)
    }
}

/// A started authorization: the id to finish it with, the URL to open, when it expires.
pub struct Started {
    pub id: String,
    pub url: String,
    /// Unix seconds.
    pub expires_at: i64,
}

/// Starts an authorization of `flow`: a fresh verifier and state, and the URL to open:
/// `authorize_url` with the provider's `params`, then the PKCE challenge and the state.
pub fn start<F: Serialize>(
    secrets: &Secrets,
    flow: F,
    now_s: i64,
    authorize_url: &str,
    params: &[(&str, &str)],
) -> Result<Started, String> {
    let pending = Pending::new(flow, now_s);
    let mut url = url::Url::parse(authorize_url).map_err(|e| format!("authorize_url: {e}"))?;
    url.query_pairs_mut()
        .extend_pairs(params)
        .append_pair("code_challenge", &pending.challenge())
        .append_pair("code_challenge_method", "S256")
        .append_pair("state", &pending.state);
    Ok(Started {
        id: pending.seal(secrets)?,
        url: url.into(),
        expires_at: pending.expires_at,
    })
}

/// Opens an authorization id; refuses tampered, foreign and expired ones, and those of another
/// provider's flow.
pub fn open<F: DeserializeOwned>(secrets: &Secrets, id: &str, now_s: i64) -> Result<Pending<F>, String> {
    let unknown = || "`authorization_id` is unknown or was not issued by this relay".to_string();
    let plain = secrets.open(&Sealed(id.trim().to_string())).map_err(|_| unknown())?;
    let p: Pending<F> = serde_json::from_str(&plain).map_err(|_| unknown())?;
    if p.expires_at <= now_s {
        return Err("the authorization expired (10 minutes); start a new one".into());
    }
    Ok(p)
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

/// The code of what the admin pasted, refused when the state that came with it is not the
/// pending authorization's (a code of another authorization).
pub fn code_for<F>(pending: &Pending<F>, input: &str) -> Result<String, String> {
    let (code, state) = parse_code(input)?;
    if state.is_some_and(|s| s != pending.state) {
        return Err("the code belongs to another authorization (its state does not match); start again".into());
    }
    Ok(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secrets() -> Secrets {
        Secrets::new(&Secrets::generate_key()).unwrap()
    }

    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    #[serde(rename_all = "kebab-case")]
    enum One {
        One,
    }

    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    #[serde(rename_all = "kebab-case")]
    enum Other {
        Other,
    }

    #[test]
    fn ids_open_only_here_unexpired_and_for_their_flow() {
        let s = secrets();
        let p = Pending::new(One::One, 1_000);
        assert_eq!(p.expires_at, 1_600);
        assert_eq!(p.challenge(), challenge(&p.verifier));
        let id = p.seal(&s).unwrap();
        let back: Pending<One> = open(&s, &id, 1_001).unwrap();
        assert_eq!((back.verifier, back.state, back.flow), (p.verifier, p.state, One::One));
        assert!(open::<One>(&s, &id, 1_600).is_err(), "expired");
        assert!(open::<One>(&secrets(), &id, 1_001).is_err(), "another relay's id");
        assert!(open::<Other>(&s, &id, 1_001).is_err(), "another provider's id");
        assert!(open::<One>(&s, "v1:AAAA", 1_001).is_err());
    }

    #[test]
    fn codes_come_bare_with_state_or_as_the_callback() {
        assert_eq!(parse_code(" abc ").unwrap(), ("abc".into(), None));
        assert_eq!(parse_code("abc#st").unwrap(), ("abc".into(), Some("st".into())));
        assert_eq!(
            parse_code("https://platform.claude.com/oauth/code/callback?code=abc&state=st").unwrap(),
            ("abc".into(), Some("st".into()))
        );
        assert_eq!(
            parse_code("http://localhost:1455/auth/callback?code=abc&scope=openid&state=st").unwrap(),
            ("abc".into(), Some("st".into()))
        );
        assert_eq!(parse_code("abc&state=x").unwrap(), ("abc".into(), None));
        assert!(parse_code("https://x/cb?error=access_denied").is_err());
        assert!(parse_code("").is_err());
        assert!(parse_code("a b").is_err());
    }

    #[test]
    fn a_code_with_another_state_is_refused() {
        let p = Pending::new(One::One, 0);
        assert_eq!(code_for(&p, "abc").unwrap(), "abc");
        assert_eq!(code_for(&p, &format!("abc#{}", p.state)).unwrap(), "abc");
        assert!(code_for(&p, "abc#other").is_err());
        assert!(code_for(&p, "http://localhost:1455/auth/callback?code=abc&state=other").is_err());
    }
}
