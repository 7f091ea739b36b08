//! `claude-console` accounts: an Anthropic API key for the Anthropic API or any
//! Anthropic-compatible base URL.
//!
//! A key that starts with `sk-ant-` is an Anthropic key and goes in `x-api-key`; anything else
//! (compatible gateways) is sent as `Authorization: Bearer`.

use http::{HeaderName, HeaderValue};

use super::{Call, PrepareError, Prepared, Provider, ProviderEnv, Target, Wire, anthropic};

/// The provider of `claude-console` accounts.
pub struct Console;

impl Provider for Console {
    fn wire(&self) -> Wire {
        Wire::AnthropicMessages
    }

    fn prepare(&self, _env: &ProviderEnv, call: &Call<'_>, target: &Target<'_>) -> Result<Prepared, PrepareError> {
        anthropic::prepare(call, target)
    }

    fn observe(&self, headers: &http::HeaderMap, now_s: i64) -> Option<anthropic::UnifiedLimits> {
        anthropic::UnifiedLimits::from_headers(headers, now_s)
    }
}

/// The credential header of a console account, computed once when the snapshot is built.
pub fn auth_header(api_key: &str) -> Result<(HeaderName, HeaderValue), String> {
    let key = api_key.trim();
    let (name, value) = if key.starts_with("sk-ant-") {
        (HeaderName::from_static("x-api-key"), HeaderValue::from_str(key))
    } else {
        (
            http::header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {key}")),
        )
    };
    let mut value = value.map_err(|_| "the API key contains characters not allowed in a header".to_string())?;
    value.set_sensitive(true);
    Ok((name, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_header_by_key_shape() {
        let (n, v) = auth_header("sk-ant-api03-xyz").unwrap();
        assert_eq!((n.as_str(), v.to_str().unwrap()), ("x-api-key", "sk-ant-api03-xyz"));
        let (n, v) = auth_header("other-gateway-key").unwrap();
        assert_eq!(
            (n.as_str(), v.to_str().unwrap()),
            ("authorization", "Bearer other-gateway-key")
        );
        assert!(auth_header("bad\nkey").is_err());
    }
}
