//! The upstream request head every provider starts from: the client's headers without its
//! credentials, hop-by-hop and framing headers, keeping everything else (`anthropic-version`,
//! `anthropic-beta`, `user-agent`, `x-app`, `x-stainless-*`, session ids, unknown headers); an
//! uncompressed answer asked for (the usage reader needs to read it). The provider then adds
//! the account's credential, and signs last when its wire wants that.

use http::HeaderName;
use pingora::http::RequestHeader;

/// Headers that never cross the relay in either direction.
pub const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Client headers that carry the relay key or are rebuilt for the upstream (the body goes
/// upstream decoded, so its `content-encoding` does not).
const CLIENT_ONLY: [&str; 10] = [
    "host",
    "content-length",
    "content-encoding",
    "expect",
    "x-api-key",
    "authorization",
    "x-goog-api-key",
    "api-key",
    "accept-encoding",
    filters::RELAY_KEY_HEADER,
];

/// The header tokens a `Connection` header names as hop-by-hop.
pub fn connection_tokens(headers: &http::HeaderMap) -> Vec<String> {
    headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect()
}

/// Builds the upstream request head from the client's.
pub fn upstream_request(
    client: &RequestHeader,
    path_and_query: &str,
    host: &http::HeaderValue,
    auth: Option<&(HeaderName, http::HeaderValue)>,
    body_len: usize,
) -> pingora::Result<RequestHeader> {
    let mut req = RequestHeader::build("POST", path_and_query.as_bytes(), Some(client.headers.len() + 4))?;
    let extra_hop = connection_tokens(&client.headers);
    for (name, value) in client.headers.iter() {
        let n = name.as_str();
        if HOP_BY_HOP.contains(&n) || CLIENT_ONLY.contains(&n) || extra_hop.iter().any(|t| t == n) {
            continue;
        }
        req.append_header(name.clone(), value.clone())?;
    }
    req.insert_header(http::header::HOST, host.clone())?;
    req.insert_header(http::header::CONTENT_LENGTH, body_len.to_string())?;
    req.insert_header(http::header::ACCEPT_ENCODING, "identity")?;
    if let Some((name, value)) = auth {
        req.insert_header(name.clone(), value.clone())?;
    }
    Ok(req)
}

/// Merges an account's beta flag into the request's `anthropic-beta` list: the client's flags stay
/// as sent, the flag is added once.
pub fn merge_beta(req: &mut RequestHeader, flag: &str) -> pingora::Result<()> {
    let values: Vec<&[u8]> = req
        .headers
        .get_all("anthropic-beta")
        .iter()
        .map(|v| v.as_bytes())
        .collect();
    let joined = (!values.is_empty()).then(|| values.join(&b","[..]));
    if let Some(merged) = super::anthropic_oauth::merged_beta(joined.as_deref(), flag) {
        req.insert_header("anthropic-beta", merged)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_headers_are_cleaned_and_credentials_replaced() {
        let mut c = RequestHeader::build("POST", b"/api/v1/messages?beta=true", None).unwrap();
        for (k, v) in [
            ("x-api-key", "cr_client"),
            ("authorization", "Bearer cr_client"),
            ("anthropic-beta", "claude-code-20250219,context-1m-2025-08-07"),
            ("anthropic-version", "2023-06-01"),
            ("x-stainless-retry-count", "0"),
            ("x-claude-code-session-id", "abc"),
            ("connection", "keep-alive, x-drop-me"),
            ("x-drop-me", "1"),
            ("accept-encoding", "gzip, br"),
            ("expect", "100-continue"),
            ("x-unknown", "kept"),
            ("host", "relay:3000"),
        ] {
            c.append_header(k, v).unwrap();
        }
        let auth = (
            HeaderName::from_static("x-api-key"),
            http::HeaderValue::from_static("sk-ant-up"),
        );
        let r = upstream_request(
            &c,
            "/v1/messages?beta=true",
            &http::HeaderValue::from_static("up.example"),
            Some(&auth),
            42,
        )
        .unwrap();
        let get = |k: &str| r.headers.get(k).map(|v| v.to_str().unwrap().to_string());
        assert_eq!(get("x-api-key").as_deref(), Some("sk-ant-up"));
        assert_eq!(get("authorization"), None);
        assert_eq!(
            get("anthropic-beta").as_deref(),
            Some("claude-code-20250219,context-1m-2025-08-07")
        );
        assert_eq!(get("x-claude-code-session-id").as_deref(), Some("abc"));
        assert_eq!(get("x-unknown").as_deref(), Some("kept"));
        assert_eq!(get("x-drop-me"), None);
        assert_eq!(get("connection"), None);
        assert_eq!(get("expect"), None);
        assert_eq!(get("host").as_deref(), Some("up.example"));
        assert_eq!(get("content-length").as_deref(), Some("42"));
        assert_eq!(get("accept-encoding").as_deref(), Some("identity"));
        assert_eq!(r.headers.get_all("x-api-key").iter().count(), 1);
    }
}
