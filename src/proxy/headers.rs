//! Header hygiene towards the client: drop hop-by-hop and framing headers from the upstream's
//! answer, and the headers that would identify the account. (Towards the upstream it is
//! `providers::request`'s business.) Also the loop guard and the query without a relay key.

use http::HeaderName;
use pingora::http::ResponseHeader;

use crate::providers::request::{HOP_BY_HOP, connection_tokens};

/// The header in which each relay process a request passes through leaves its mark.
pub const HOPS: &str = "x-relay-hops";
/// More relays than this in a row is a loop, whoever they are.
pub const MAX_HOPS: usize = 8;

/// Whether the request passed through this process before (its `own` mark is in [`HOPS`]), or
/// through more than [`MAX_HOPS`] relays.
pub fn loop_detected(headers: &http::HeaderMap, own: &str) -> bool {
    const HOPS_NAME: HeaderName = HeaderName::from_static(HOPS);
    let mut hops = 0;
    for v in headers.get_all(HOPS_NAME) {
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

/// Header names whose values are credentials, whatever the upstream.
const CREDENTIALS: [&str; 8] = [
    "authorization",
    "x-api-key",
    "api-key",
    "x-goog-api-key",
    "x-amz-security-token",
    "cookie",
    "proxy-authorization",
    "x-amz-content-sha256",
];

/// The headers as `name: value` lines for a debug log, every credential replaced by
/// `<redacted>`.
pub fn redacted(headers: &http::HeaderMap) -> String {
    let mut out = String::new();
    for (name, value) in headers {
        let secret = value.is_sensitive() || CREDENTIALS.contains(&name.as_str());
        let shown = if secret {
            "<redacted>"
        } else {
            value.to_str().unwrap_or("<binary>")
        };
        if !out.is_empty() {
            out.push_str(", ");
        }
        out.push_str(name.as_str());
        out.push_str(": ");
        out.push_str(shown);
    }
    out
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
    // The names the answer holds are compared, and only those to drop are removed (an answer
    // usually holds none of them).
    let extra_hop = connection_tokens(&upstream.headers);
    let dropped: Vec<HeaderName> = upstream
        .headers
        .keys()
        .filter(|name| {
            let n = name.as_str();
            HOP_BY_HOP.contains(&n)
                || extra_hop.iter().any(|t| t == n)
                || hide.contains(name)
                || (body_rewritten && *name == http::header::CONTENT_LENGTH)
        })
        .cloned()
        .collect();
    for name in &dropped {
        resp.remove_header(name);
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
    fn the_answer_loses_hop_by_hop_and_hidden_headers_and_keeps_the_rest() {
        let mut up = ResponseHeader::build(200, None).unwrap();
        for (n, v) in [
            ("content-type", "application/json"),
            ("connection", "keep-alive, X-Upstream-Hop"),
            ("keep-alive", "timeout=5"),
            ("x-upstream-hop", "1"),
            ("transfer-encoding", "chunked"),
            ("proxy-authenticate", "Basic"),
            ("anthropic-organization-id", "org-secret"),
            ("set-cookie", "a=1"),
            ("set-cookie", "b=2"),
            ("request-id", "req_1"),
            ("anthropic-ratelimit-requests-remaining", "99"),
            ("vary", "accept-encoding"),
            ("vary", "origin"),
            ("content-length", "12"),
        ] {
            up.append_header(n, v).unwrap();
        }
        let hide = [
            HeaderName::from_static("anthropic-organization-id"),
            HeaderName::from_static("set-cookie"),
        ];
        let value = |r: &ResponseHeader, n: &str| r.headers.get(n).map(|v| v.to_str().unwrap().to_string());
        let out = downstream_response(&up, &hide, false, false, false).unwrap();
        for gone in [
            "connection",
            "keep-alive",
            "x-upstream-hop",
            "transfer-encoding",
            "proxy-authenticate",
            "anthropic-organization-id",
            "set-cookie",
        ] {
            assert!(
                !out.headers.contains_key(gone),
                "{gone} reached the client: {:?}",
                out.headers
            );
        }
        assert_eq!(value(&out, "content-type").as_deref(), Some("application/json"));
        assert_eq!(value(&out, "request-id").as_deref(), Some("req_1"));
        assert_eq!(
            value(&out, "anthropic-ratelimit-requests-remaining").as_deref(),
            Some("99")
        );
        assert_eq!(value(&out, "content-length").as_deref(), Some("12"));
        let vary: Vec<_> = out
            .headers
            .get_all("vary")
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect();
        assert_eq!(vary, ["accept-encoding", "origin"]);
        assert_eq!(out.headers.len(), 6, "{:?}", out.headers);
        // A rewritten body loses its length; an HTTP/1.1 client gets it chunked, an HTTP/2 one
        // framed by its stream.
        let out = downstream_response(&up, &hide, false, false, true).unwrap();
        assert_eq!(value(&out, "content-length"), None);
        assert_eq!(value(&out, "transfer-encoding").as_deref(), Some("chunked"));
        let out = downstream_response(&up, &hide, true, false, true).unwrap();
        assert_eq!(value(&out, "content-length"), None);
        assert_eq!(value(&out, "transfer-encoding"), None);
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
    fn credentials_never_reach_the_debug_view() {
        let mut h = http::HeaderMap::new();
        h.insert(
            "authorization",
            "AWS4-HMAC-SHA256 Credential=AKID/x, Signature=abc".parse().unwrap(),
        );
        h.insert("x-api-key", "sk-ant-api03-secret".parse().unwrap());
        let mut bearer: http::HeaderValue = "Bearer tok".parse().unwrap();
        bearer.set_sensitive(true);
        h.insert("x-custom-auth", bearer);
        h.insert("anthropic-version", "2023-06-01".parse().unwrap());
        let v = redacted(&h);
        assert!(
            !v.contains("secret") && !v.contains("Signature") && !v.contains("tok"),
            "{v}"
        );
        assert!(v.contains("anthropic-version: 2023-06-01"), "{v}");
    }

    #[test]
    fn key_param_is_stripped() {
        assert_eq!(strip_key_param(Some("beta=true")), Some("beta=true".into()));
        assert_eq!(strip_key_param(Some("key=cr_x&beta=true")), Some("beta=true".into()));
        assert_eq!(strip_key_param(Some("key=cr_x")), None);
        assert_eq!(strip_key_param(None), None);
    }
}
