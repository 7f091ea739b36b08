//! Upstream kinds: how each is addressed and authenticated. One module per kind.

pub mod anthropic_console;
pub mod anthropic_oauth;

use http::HeaderValue;

/// A parsed upstream base URL: `https://api.anthropic.com`, `http://127.0.0.1:8080/prefix`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamBase {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    /// Path prefix without a trailing slash (empty for none).
    pub path_prefix: String,
    /// The `Host` header value: the host, with the port when it is not the scheme's default.
    pub host_header: HeaderValue,
}

impl UpstreamBase {
    pub fn parse(s: &str) -> Result<UpstreamBase, String> {
        let u = url::Url::parse(s.trim()).map_err(|e| format!("`{s}` is not a URL: {e}"))?;
        let tls = match u.scheme() {
            "https" => true,
            "http" => false,
            other => return Err(format!("scheme `{other}` is not supported (use https or http)")),
        };
        if u.query().is_some() || u.fragment().is_some() {
            return Err(format!("`{s}` must not have a query or fragment"));
        }
        if !u.username().is_empty() || u.password().is_some() {
            return Err(format!("`{s}` must not carry credentials"));
        }
        let host = match u.host() {
            Some(url::Host::Domain(d)) => d.to_string(),
            Some(url::Host::Ipv4(ip)) => ip.to_string(),
            Some(url::Host::Ipv6(ip)) => ip.to_string(),
            None => return Err(format!("`{s}` has no host")),
        };
        let port = u.port_or_known_default().unwrap_or(if tls { 443 } else { 80 });
        let host_part = if host.contains(':') {
            format!("[{host}]")
        } else {
            host.clone()
        };
        let host_header = if u.port().is_some() {
            format!("{host_part}:{port}")
        } else {
            host_part
        };
        let host_header = HeaderValue::from_str(&host_header).map_err(|_| format!("`{s}` has an invalid host"))?;
        let path_prefix = u.path().trim_end_matches('/').to_string();
        Ok(UpstreamBase {
            tls,
            host,
            port,
            path_prefix,
            host_header,
        })
    }

    /// The upstream path for a relay path such as `/v1/messages`, with the query appended.
    pub fn path_and_query(&self, path: &str, query: Option<&str>) -> String {
        let mut out = String::with_capacity(self.path_prefix.len() + path.len() + query.map_or(0, |q| q.len() + 1));
        out.push_str(&self.path_prefix);
        out.push_str(path);
        if let Some(q) = query {
            out.push('?');
            out.push_str(q);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bases() {
        let b = UpstreamBase::parse("https://api.anthropic.com").unwrap();
        assert_eq!(
            (b.tls, b.host.as_str(), b.port, b.path_prefix.as_str()),
            (true, "api.anthropic.com", 443, "")
        );
        assert_eq!(b.host_header, "api.anthropic.com");
        let b = UpstreamBase::parse("http://127.0.0.1:8080/proxy/").unwrap();
        assert_eq!((b.tls, b.port, b.path_prefix.as_str()), (false, 8080, "/proxy"));
        assert_eq!(b.host_header, "127.0.0.1:8080");
        assert_eq!(
            b.path_and_query("/v1/messages", Some("beta=true")),
            "/proxy/v1/messages?beta=true"
        );
        assert!(UpstreamBase::parse("ftp://x").is_err());
        assert!(UpstreamBase::parse("https://u:p@x").is_err());
        assert!(UpstreamBase::parse("nope").is_err());
    }
}
