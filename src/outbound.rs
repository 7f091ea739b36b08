//! Per-account outbound proxies: SOCKS5 (remote DNS) and HTTP CONNECT, with credentials.
//!
//! Pingora's own `HttpPeer.proxy` speaks CONNECT over a Unix socket only, so a proxied peer gets a
//! custom L4 connector instead ([`tunnel_connector`]): it dials the proxy, opens a tunnel to the
//! real `host:port` and hands the raw stream back; Pingora adds TLS (SNI = the real host), ALPN
//! and HTTP on top. How such peers are keyed in the connection pool is `proxy::peer`'s business.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;
use pingora::connectors::L4Connect;
use pingora::protocols::l4::socket::SocketAddr as PeerAddr;
use pingora::protocols::l4::stream::Stream;
use pingora::{Error, ErrorType, Result};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_socks::tcp::Socks5Stream;

/// Largest CONNECT reply head we read before giving up on the proxy.
const MAX_CONNECT_REPLY: usize = 8 * 1024;

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
        write!(f, "{scheme}://{auth}{}", authority(&self.host, self.port))
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

/// `host:port`, with an IPv6 literal in brackets.
fn authority(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// The L4 connector that reaches `host:port` through `proxy`, which listens at `proxy_addr`.
///
/// The connector ignores the address Pingora hands it (the peer's address, which `proxy::peer` sets
/// to the proxy's so that pooled connections pass Pingora's `matches_fd` check) and dials
/// `proxy_addr`. The target name goes to the proxy unresolved (SOCKS5 remote DNS, CONNECT
/// authority). `timeout` bounds the whole tunnel set-up: the TCP connect and the handshake.
pub fn tunnel_connector(
    proxy: Arc<OutboundProxy>,
    proxy_addr: SocketAddr,
    host: &str,
    port: u16,
    timeout: Duration,
) -> Arc<dyn L4Connect + Send + Sync> {
    let tunnel = Tunnel {
        proxy,
        proxy_addr,
        host: host.to_string(),
        port,
        timeout,
    };
    match tunnel.proxy.kind {
        ProxyKind::Socks5 => Arc::new(Socks5Connector(tunnel)),
        ProxyKind::HttpConnect => Arc::new(HttpConnectConnector(tunnel)),
    }
}

/// What both connectors share. `Debug` prints the proxy masked.
#[derive(Debug)]
struct Tunnel {
    proxy: Arc<OutboundProxy>,
    proxy_addr: SocketAddr,
    host: String,
    port: u16,
    timeout: Duration,
}

impl Tunnel {
    fn target(&self) -> String {
        authority(&self.host, self.port)
    }

    async fn dial_proxy(&self) -> Result<TcpStream> {
        TcpStream::connect(self.proxy_addr).await.map_err(|e| {
            let etype = match e.kind() {
                std::io::ErrorKind::ConnectionRefused => ErrorType::ConnectRefused,
                _ => ErrorType::ConnectError,
            };
            Error::because(
                etype,
                format!("cannot reach outbound proxy {} at {}", self.proxy, self.proxy_addr),
                e,
            )
        })
    }

    /// Runs a tunnel set-up within the connect timeout.
    async fn within(&self, setup: impl Future<Output = Result<Stream>>) -> Result<Stream> {
        match tokio::time::timeout(self.timeout, setup).await {
            Ok(r) => r,
            Err(_) => Error::e_explain(
                ErrorType::ConnectTimedout,
                format!(
                    "outbound proxy {} did not open a tunnel to {} within {:?}",
                    self.proxy,
                    self.target(),
                    self.timeout
                ),
            ),
        }
    }

    fn refused(&self, why: impl fmt::Display) -> Box<Error> {
        Error::explain(
            ErrorType::ConnectProxyFailure,
            format!(
                "outbound proxy {} refused the tunnel to {}: {why}",
                self.proxy,
                self.target()
            ),
        )
    }
}

/// SOCKS5 (RFC 1928) with username/password authentication (RFC 1929) when the URL has
/// credentials, and remote DNS: a host name is sent to the proxy as a name.
#[derive(Debug)]
struct Socks5Connector(Tunnel);

#[async_trait]
impl L4Connect for Socks5Connector {
    async fn connect(&self, _addr: &PeerAddr) -> Result<Stream> {
        let t = &self.0;
        t.within(async {
            let tcp = t.dial_proxy().await?;
            // A host that parses as an IP literal is sent as an address, anything else as a name.
            let target = (t.host.as_str(), t.port);
            let tunnel = match &t.proxy.auth {
                Some((user, pass)) => Socks5Stream::connect_with_password_and_socket(tcp, target, user, pass).await,
                None => Socks5Stream::connect_with_socket(tcp, target).await,
            };
            // tokio-socks errors never carry the credentials.
            let tunnel = tunnel.map_err(|e| t.refused(e))?;
            Ok(Stream::from(tunnel.into_inner()))
        })
        .await
    }
}

/// HTTP CONNECT over plain TCP, with `Proxy-Authorization: Basic` when the URL has credentials.
#[derive(Debug)]
struct HttpConnectConnector(Tunnel);

#[async_trait]
impl L4Connect for HttpConnectConnector {
    async fn connect(&self, _addr: &PeerAddr) -> Result<Stream> {
        let t = &self.0;
        t.within(async {
            let mut tcp = t.dial_proxy().await?;
            let request = connect_request(&t.target(), t.proxy.auth.as_ref());
            tcp.write_all(request.as_bytes())
                .await
                .map_err(|e| t.refused(format_args!("writing the CONNECT request: {e}")))?;
            let (status, status_line, rest) = read_connect_reply(&mut tcp).await.map_err(|why| t.refused(why))?;
            if !(200..300).contains(&status) {
                return Err(t.refused(format_args!("it answered `{status_line}`")));
            }
            let mut stream = Stream::from(tcp);
            // A proxy may pass on tunnel bytes in the same read as its reply head; keep them.
            if !rest.is_empty() {
                stream.rewind(&rest);
            }
            Ok(stream)
        })
        .await
    }
}

fn connect_request(target: &str, auth: Option<&(String, String)>) -> String {
    let mut req = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
    if let Some((user, pass)) = auth {
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
        req.push_str("Proxy-Authorization: Basic ");
        req.push_str(&token);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    req
}

/// Reads a CONNECT reply head (at most [`MAX_CONNECT_REPLY`] bytes). Returns the status code, the
/// status line made printable, and the bytes read past the head.
async fn read_connect_reply<R: AsyncRead + Unpin>(r: &mut R) -> std::result::Result<(u16, String, Vec<u8>), String> {
    let mut buf: Vec<u8> = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    let head_end = loop {
        let n = r
            .read(&mut chunk)
            .await
            .map_err(|e| format!("reading the CONNECT reply: {e}"))?;
        if n == 0 {
            return Err("it closed the connection before answering CONNECT".into());
        }
        let from = buf.len().saturating_sub(3);
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = head_end(&buf, from) {
            break end;
        }
        if buf.len() > MAX_CONNECT_REPLY {
            return Err(format!(
                "its CONNECT reply head is larger than {MAX_CONNECT_REPLY} bytes"
            ));
        }
    };
    if head_end > MAX_CONNECT_REPLY {
        return Err(format!(
            "its CONNECT reply head is larger than {MAX_CONNECT_REPLY} bytes"
        ));
    }
    let first = buf.split(|b| *b == b'\n').next().unwrap_or_default();
    let line: String = String::from_utf8_lossy(first)
        .trim_end()
        .chars()
        .map(|c| if c.is_ascii_graphic() || c == ' ' { c } else { '?' })
        .take(120)
        .collect();
    let mut parts = line.split(' ');
    let status = match (parts.next(), parts.next()) {
        (Some(v), Some(code)) if v.starts_with("HTTP/1.") && code.len() == 3 => code.parse::<u16>().ok(),
        _ => None,
    }
    .ok_or_else(|| format!("its CONNECT reply is not HTTP: `{line}`"))?;
    Ok((status, line, buf.split_off(head_end)))
}

/// The end of an HTTP head (`\r\n\r\n`, or a bare `\n\n`) in `buf`, searching from `from`.
fn head_end(buf: &[u8], from: usize) -> Option<usize> {
    (from..buf.len()).find_map(|i| {
        if buf[i..].starts_with(b"\r\n\r\n") {
            Some(i + 4)
        } else if buf[i..].starts_with(b"\n\n") {
            Some(i + 2)
        } else {
            None
        }
    })
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
        let v6 = OutboundProxy::parse("http://u:p@[::1]:3128").unwrap();
        assert_eq!(
            (v6.host.as_str(), v6.to_string().as_str()),
            ("::1", "http://***@[::1]:3128")
        );
    }

    #[test]
    fn connect_request_carries_basic_credentials() {
        let auth = ("user".to_string(), "p@ss".to_string());
        assert_eq!(
            connect_request("localhost:8080", Some(&auth)),
            "CONNECT localhost:8080 HTTP/1.1\r\nHost: localhost:8080\r\nProxy-Authorization: Basic dXNlcjpwQHNz\r\n\r\n"
        );
        assert_eq!(
            connect_request("[::1]:443", None),
            "CONNECT [::1]:443 HTTP/1.1\r\nHost: [::1]:443\r\n\r\n"
        );
    }

    #[tokio::test]
    async fn connect_reply_is_bounded_and_keeps_tunnel_bytes() {
        let mut ok: &[u8] = b"HTTP/1.1 200 Connection established\r\nVia: x\r\n\r\nHELLO";
        let (status, line, rest) = read_connect_reply(&mut ok).await.unwrap();
        assert_eq!(
            (status, line.as_str(), &rest[..]),
            (200, "HTTP/1.1 200 Connection established", &b"HELLO"[..])
        );
        let mut denied: &[u8] = b"HTTP/1.0 407 Proxy Authentication Required\r\n\r\n";
        assert_eq!(read_connect_reply(&mut denied).await.unwrap().0, 407);
        let mut eof: &[u8] = b"HTTP/1.1 200 OK\r\n";
        assert!(read_connect_reply(&mut eof).await.unwrap_err().contains("closed"));
        let mut garbage: &[u8] = b"SSH-2.0-OpenSSH\r\n\r\n";
        assert!(read_connect_reply(&mut garbage).await.unwrap_err().contains("not HTTP"));
        let huge = [b"HTTP/1.1 200 OK\r\nX: ".as_slice(), &[b'a'; 9000], b"\r\n\r\n"].concat();
        let mut huge = &huge[..];
        assert!(read_connect_reply(&mut huge).await.unwrap_err().contains("larger than"));
    }

    fn tunnel_to(proxy: &str, addr: SocketAddr, timeout: Duration) -> Arc<dyn L4Connect + Send + Sync> {
        let p = Arc::new(OutboundProxy::parse(proxy).unwrap());
        tunnel_connector(p, addr, "localhost", 8080, timeout)
    }

    fn any_addr() -> PeerAddr {
        PeerAddr::Inet("192.0.2.1:9".parse().unwrap())
    }

    #[tokio::test]
    async fn http_connect_tunnel_opens_and_keeps_early_bytes() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 1024];
            let mut got = Vec::new();
            while !got.ends_with(b"\r\n\r\n") {
                let n = s.read(&mut buf).await.unwrap();
                got.extend_from_slice(&buf[..n]);
            }
            s.write_all(b"HTTP/1.1 200 OK\r\n\r\nEARLY").await.unwrap();
            let n = s.read(&mut buf).await.unwrap();
            s.write_all(&buf[..n]).await.unwrap();
            String::from_utf8(got).unwrap()
        });
        // The address Pingora passes is ignored: the connector dials the proxy.
        let c = tunnel_to(&format!("http://u:secret@{addr}"), addr, Duration::from_secs(5));
        let mut stream = c.connect(&any_addr()).await.unwrap();
        let mut early = [0u8; 5];
        stream.read_exact(&mut early).await.unwrap();
        assert_eq!(&early, b"EARLY");
        stream.write_all(b"ping").await.unwrap();
        stream.flush().await.unwrap();
        let mut echo = [0u8; 4];
        stream.read_exact(&mut echo).await.unwrap();
        assert_eq!(&echo, b"ping");
        let request = server.await.unwrap();
        assert!(request.starts_with("CONNECT localhost:8080 HTTP/1.1\r\n"), "{request}");
        assert!(
            request.contains("Proxy-Authorization: Basic dTpzZWNyZXQ=\r\n"),
            "{request}"
        );
    }

    #[tokio::test]
    async fn failures_name_the_masked_proxy_and_never_the_password() {
        // A proxy that refuses CONNECT.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 1024];
            let _ = s.read(&mut buf).await.unwrap();
            s.write_all(b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n")
                .await
                .unwrap();
        });
        let c = tunnel_to(&format!("http://u:hunter2@{addr}"), addr, Duration::from_secs(5));
        let e = c.connect(&any_addr()).await.unwrap_err();
        let text = format!("{e} {e:?} {c:?}");
        assert_eq!(e.etype(), &ErrorType::ConnectProxyFailure);
        assert!(text.contains(&format!("http://***@{addr}")), "{text}");
        assert!(text.contains("407") && !text.contains("hunter2"), "{text}");

        // A SOCKS5 proxy that rejects the password (RFC 1929 status 1).
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut greeting = [0u8; 4];
            s.read_exact(&mut greeting).await.unwrap();
            assert_eq!(greeting, [5, 2, 0, 2]);
            s.write_all(&[5, 2]).await.unwrap();
            let mut buf = vec![0u8; 600];
            let _ = s.read(&mut buf).await.unwrap();
            s.write_all(&[1, 1]).await.unwrap();
        });
        let c = tunnel_to(&format!("socks5://u:hunter2@{addr}"), addr, Duration::from_secs(5));
        let e = c.connect(&any_addr()).await.unwrap_err();
        let text = format!("{e} {e:?}");
        assert_eq!(e.etype(), &ErrorType::ConnectProxyFailure);
        assert!(
            text.contains(&format!("socks5://***@{addr}")) && !text.contains("hunter2"),
            "{text}"
        );

        // Nobody listening.
        let dead = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let c = tunnel_to(&format!("socks5://u:hunter2@{dead}"), dead, Duration::from_secs(5));
        let e = c.connect(&any_addr()).await.unwrap_err();
        assert_eq!(e.etype(), &ErrorType::ConnectRefused);
        assert!(!format!("{e}").contains("hunter2"));
    }

    #[tokio::test]
    async fn a_silent_proxy_times_out_within_the_connect_timeout() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let _keep = tokio::spawn(async move {
            let (_s, _) = listener.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(60)).await;
        });
        for url in [format!("socks5://{addr}"), format!("http://{addr}")] {
            let c = tunnel_to(&url, addr, Duration::from_millis(200));
            let started = std::time::Instant::now();
            let e = c.connect(&any_addr()).await.unwrap_err();
            assert_eq!(e.etype(), &ErrorType::ConnectTimedout, "{url}");
            assert!(started.elapsed() < Duration::from_secs(2));
        }
    }
}
