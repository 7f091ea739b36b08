//! Header hygiene between client and upstream.
//!
//! Towards the upstream: drop the client's credentials, hop-by-hop headers and framing headers,
//! keep everything else (`anthropic-version`, `anthropic-beta`, `user-agent`, `x-app`,
//! `x-stainless-*`, session ids, unknown headers), ask for an uncompressed answer (the usage reader
//! needs to read it), and add the account's credential.
//! Towards the client: drop hop-by-hop and framing headers from the upstream's answer.

use http::HeaderName;
use pingora::http::{RequestHeader, ResponseHeader};

/// Headers that never cross the relay in either direction.
const HOP_BY_HOP: [&str; 9] = [
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
const CLIENT_ONLY: [&str; 9] = [
    "host",
    "content-length",
    "content-encoding",
    "expect",
    "x-api-key",
    "authorization",
    "x-goog-api-key",
    "api-key",
    "accept-encoding",
];

/// The header in which each relay process a request passes through leaves its mark.
pub const HOPS: &str = "x-relay-hops";
/// More relays than this in a row is a loop, whoever they are.
pub const MAX_HOPS: usize = 8;

/// Whether the request passed through this process before (its `own` mark is in [`HOPS`]), or
/// through more than [`MAX_HOPS`] relays.
pub fn loop_detected(headers: &http::HeaderMap, own: &str) -> bool {
    let mut hops = 0;
    for v in headers.get_all(HOPS) {
        for mark in v.as_bytes().split(|b| *b == b',') {
            let mark = mark.trim_ascii();
            if mark.is_empty() {
                continue;
            }
            if mark == own.as_bytes() {
                return true;
            }
            hops += 1;
        }
    }
    hops >= MAX_HOPS
}

fn connection_tokens(headers: &http::HeaderMap) -> Vec<String> {
    headers
        .get_all("connection")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect()
}

/// The query string without a `key=` parameter (a relay key must not travel upstream).
pub fn strip_key_param(query: Option<&str>) -> Option<String> {
    let q = query?;
    if !q.split('&').any(|kv| kv.starts_with("key=")) {
        return Some(q.to_string()).filter(|s| !s.is_empty());
    }
    let kept: Vec<&str> = q
        .split('&')
        .filter(|kv| !kv.starts_with("key=") && !kv.is_empty())
        .collect();
    if kept.is_empty() { None } else { Some(kept.join("&")) }
}

/// Builds the upstream request head from the client's.
pub fn upstream_request(
    client: &RequestHeader,
    path_and_query: &str,
    host: &http::HeaderValue,
    auth: &(HeaderName, http::HeaderValue),
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
    req.insert_header(auth.0.clone(), auth.1.clone())?;
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
    if let Some(merged) = crate::providers::anthropic_oauth::merged_beta(joined.as_deref(), flag) {
        req.insert_header("anthropic-beta", merged)?;
    }
    Ok(())
}

/// Prepares an upstream response head for the client: without hop-by-hop headers, and without
/// the `hide` headers that would identify the account behind the relay.
pub fn downstream_response(
    upstream: &ResponseHeader,
    hide: &[HeaderName],
    downstream_h2: bool,
    is_head_request: bool,
    body_rewritten: bool,
) -> pingora::Result<ResponseHeader> {
    let mut resp = upstream.clone();
    let extra_hop = connection_tokens(&upstream.headers);
    for h in HOP_BY_HOP.iter().map(|s| s.to_string()).chain(extra_hop) {
        resp.remove_header(&h);
    }
    for h in hide {
        resp.remove_header(h);
    }
    if body_rewritten {
        resp.remove_header("content-length");
    }
    if downstream_h2 {
        resp.set_version(http::Version::HTTP_2);
    } else {
        resp.set_version(http::Version::HTTP_11);
        let no_body = is_head_request || matches!(resp.status.as_u16(), 204 | 304) || resp.status.is_informational();
        if !no_body && resp.headers.get(http::header::CONTENT_LENGTH).is_none() {
            resp.insert_header(http::header::TRANSFER_ENCODING, "chunked")?;
        }
    }
    Ok(resp)
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
            &auth,
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

    #[test]
    fn loops_are_detected_by_mark_and_length() {
        let mut h = http::HeaderMap::new();
        assert!(!loop_detected(&h, "me"));
        h.append(HOPS, "other, someone".parse().unwrap());
        assert!(!loop_detected(&h, "me"));
        h.append(HOPS, "me".parse().unwrap());
        assert!(loop_detected(&h, "me"));
        let mut long = http::HeaderMap::new();
        long.insert(HOPS, ["x"; MAX_HOPS].join(",").parse().unwrap());
        assert!(loop_detected(&long, "me"));
    }

    #[test]
    fn key_param_is_stripped() {
        assert_eq!(strip_key_param(Some("beta=true")), Some("beta=true".into()));
        assert_eq!(strip_key_param(Some("key=cr_x&beta=true")), Some("beta=true".into()));
        assert_eq!(strip_key_param(Some("key=cr_x")), None);
        assert_eq!(strip_key_param(None), None);
    }
}
