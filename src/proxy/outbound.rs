//! Per-account outbound proxies: SOCKS5 (remote DNS) and HTTP CONNECT, with credentials.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProxyKind {
    Socks5,
    HttpConnect,
}

/// A parsed proxy URL. Its credentials are never printed (`Debug`/`Display` mask them).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct OutboundProxy {
    pub kind: ProxyKind,
    pub host: String,
    pub port: u16,
    pub auth: Option<(String, String)>,
}

impl fmt::Debug for OutboundProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for OutboundProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = match self.kind {
            ProxyKind::Socks5 => "socks5",
            ProxyKind::HttpConnect => "http",
        };
        let auth = if self.auth.is_some() { "***@" } else { "" };
        write!(f, "{scheme}://{auth}{}:{}", self.host, self.port)
    }
}

impl OutboundProxy {
    /// `socks5://[user:pass@]host:port` (also `socks5h://`) or `http://[user:pass@]host:port`.
    pub fn parse(s: &str) -> Result<OutboundProxy, String> {
        let u = url::Url::parse(s.trim()).map_err(|_| "is not a proxy URL like socks5://host:1080".to_string())?;
        let kind = match u.scheme() {
            "socks5" | "socks5h" => ProxyKind::Socks5,
            "http" => ProxyKind::HttpConnect,
            other => return Err(format!("proxy scheme `{other}` is not supported (use socks5 or http)")),
        };
        let host = match u.host() {
            Some(url::Host::Domain(d)) => d.to_string(),
            Some(url::Host::Ipv4(ip)) => ip.to_string(),
            Some(url::Host::Ipv6(ip)) => ip.to_string(),
            None => return Err("proxy URL has no host".into()),
        };
        let port = u.port().ok_or_else(|| "proxy URL needs an explicit port".to_string())?;
        let auth = if u.username().is_empty() {
            None
        } else {
            let dec = |v: &str| {
                percent_decode(v).ok_or_else(|| "proxy credentials are not valid percent-encoded UTF-8".to_string())
            };
            Some((dec(u.username())?, dec(u.password().unwrap_or(""))?))
        };
        if u.path() != "/" && !u.path().is_empty() {
            return Err("proxy URL must not have a path".into());
        }
        Ok(OutboundProxy { kind, host, port, auth })
    }
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let h = std::str::from_utf8(&bytes[i + 1..i + 3]).ok()?;
            out.push(u8::from_str_radix(h, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_masks() {
        let p = OutboundProxy::parse("socks5://user:p%40ss@10.0.0.5:1080").unwrap();
        assert_eq!(p.kind, ProxyKind::Socks5);
        assert_eq!((p.host.as_str(), p.port), ("10.0.0.5", 1080));
        assert_eq!(p.auth, Some(("user".into(), "p@ss".into())));
        assert_eq!(p.to_string(), "socks5://***@10.0.0.5:1080");
        let h = OutboundProxy::parse("http://proxy.local:3128").unwrap();
        assert_eq!((h.kind, h.auth.is_none()), (ProxyKind::HttpConnect, true));
        assert!(OutboundProxy::parse("ftp://x:1").is_err());
        assert!(OutboundProxy::parse("socks5://x").is_err());
    }
}
