//! Credentials that refresh, shared by every OAuth provider: each account's token cell, read on
//! the hot path with one atomic load, and the refresh that keeps it live.
//!
//! A token is refreshed ahead of expiry by its provider's background work, or on demand by a
//! request that meets an expired token or a 401. Whatever triggers it, a refresh runs once at a
//! time per account: a local mutex (so 100 requests on this instance wait for one refresh), then a
//! lock in the coordination store (so instances sharing Redis do too), and before calling the
//! token endpoint the store is read again, since another instance may have finished a refresh a
//! moment ago. The new pair is written to the store before the lock is released, so a rotated
//! refresh token is never used twice nor lost.
//!
//! What differs per provider is its [`Grant`]: the refresh call. The pair is a [`TokenPair`] for
//! every provider, sealed as JSON in the account's secret. The account a token belongs to is a [`Holder`]: the scheduler's account,
//! which sits above this module and is known here only through that trait.
//!
//! - [`cell`]: the [`TokenCell`] of one account and the [`Live`] token it holds.
//! - [`refresh`]: [`Tokens`], the cells of one provider's accounts and their refresh.
//! - [`authorize`]: the authorization-code flow with PKCE (the sealed pending authorization, the
//!   pasted code).
//! - [`client`]: the HTTP calls to token endpoints and bearer-authenticated JSON reads.

pub mod authorize;
pub mod cell;
pub mod client;
pub mod refresh;

use std::fmt;

use serde::{Deserialize, Serialize};

pub use cell::{Live, TokenCell};
pub use refresh::{Grant, Holder, Identity, OnRefused, Refreshed, Shared, Tokens};

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// The claims of a JWT (an OpenID id token), its payload decoded without checking the signature:
/// it comes straight from the token endpoint over TLS, and the relay only reads whom the tokens
/// act for. `None` when the token is not a JWT.
pub fn claims(jwt: &str) -> Option<serde_json::Value> {
    use base64::Engine;
    let mut parts = jwt.trim().split('.');
    let (_header, payload, _signature) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    v.is_object().then_some(v)
}

/// An access token and the refresh token that renews it; sealed as JSON in the account record's
/// `secret`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenPair {
    pub access_token: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
}

impl fmt::Debug for TokenPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenPair")
            .field("access_token", &crate::secrets::mask(&self.access_token))
            .field(
                "refresh_token",
                &self.refresh_token.as_deref().map(crate::secrets::mask),
            )
            .finish()
    }
}

impl TokenPair {
    /// Reads an account's opened secret. A bare string (not JSON) is an access token without a
    /// refresh token.
    pub fn parse(secret: &str) -> TokenPair {
        match serde_json::from_str::<TokenPair>(secret) {
            Ok(p) => p,
            Err(_) => TokenPair {
                access_token: secret.trim().to_string(),
                refresh_token: None,
            },
        }
    }

    pub fn to_secret(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// Why a call to an OAuth endpoint failed. Messages never contain tokens.
#[derive(Debug, Clone, thiserror::Error)]
pub enum OAuthError {
    /// The endpoint refused (4xx other than 429): the code or refresh token is no good.
    #[error("refused with {status}{}", if code.is_empty() { String::new() } else { format!(" ({code})") })]
    Refused { status: u16, code: String },
    /// The endpoint could not be reached or answered with a temporary error; try again later.
    #[error("unavailable: {0}")]
    Unavailable(String),
}

impl OAuthError {
    pub fn is_refusal(&self) -> bool {
        matches!(self, OAuthError::Refused { .. })
    }
}

/// Why an account has no usable token.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("the token expired and the account has no refresh token")]
    NoRefreshToken,
    #[error("token refresh {0}")]
    Refresh(OAuthError),
    #[error("another instance is refreshing the token and did not finish in time")]
    LockTimeout,
    #[error("this process is handing over to a new one, which refreshes tokens from now on")]
    HandingOver,
}

impl TokenError {
    /// Whether the account's grant is dead (only an admin brings it back).
    pub fn is_permanent(&self) -> bool {
        match self {
            TokenError::NoRefreshToken => true,
            TokenError::Refresh(e) => e.is_refusal(),
            TokenError::LockTimeout | TokenError::HandingOver => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_pairs_round_trip_and_never_print() {
        let p = TokenPair {
            access_token: "sk-ant-oat01-abcdefghijklmnop".into(),
            refresh_token: Some("sk-ant-ort01-abcdefghijklmnop".into()),
        };
        assert_eq!(TokenPair::parse(&p.to_secret()), p);
        assert!(!format!("{p:?}").contains("abcdefghijklmnop"));
        assert_eq!(TokenPair::parse(" bare ").access_token, "bare");
    }
}
