//! Tiny real outbound proxies on `127.0.0.1:0` for the relay's per-account proxy tests: a SOCKS5
//! server (RFC 1928, no-auth or username/password per RFC 1929) and an HTTP CONNECT proxy. Both
//! record every connection they accept (the requested target as sent, name or address, and the
//! credentials offered), then splice bytes to the target.
#![allow(dead_code)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The target a client asked the proxy for, exactly as it was sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// A host name, left for the proxy to resolve (SOCKS5 ATYP 3, or a CONNECT authority that is
    /// not an IP literal).
    Name(String, u16),
    Addr(SocketAddr),
}

/// What a proxy saw on one accepted connection.
#[derive(Clone, Debug, Default)]
pub struct Conn {
    pub target: Option<Target>,
    /// SOCKS5: the RFC 1929 username and password offered.
    pub credentials: Option<(String, String)>,
    /// HTTP CONNECT: the `Proxy-Authorization` header value.
    pub proxy_authorization: Option<String>,
    /// HTTP CONNECT: the request line and the `Host` header value.
    pub request_line: Option<String>,
    pub host_header: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Socks5,
    HttpConnect,
}

pub struct ProxyServer {
    pub kind: Kind,
    pub addr: SocketAddr,
    conns: Arc<Mutex<Vec<Conn>>>,
    task: tokio::task::JoinHandle<()>,
}

impl ProxyServer {
    /// A SOCKS5 proxy. With an empty `users` it offers no-auth only; otherwise it requires
    /// username/password authentication with one of `users`.
    pub async fn socks5(users: &[(&str, &str)]) -> ProxyServer {
        Self::start(Kind::Socks5, users).await
    }

    /// An HTTP CONNECT proxy. With a non-empty `users` it requires `Proxy-Authorization: Basic`
    /// for one of them (407 otherwise).
    pub async fn http_connect(users: &[(&str, &str)]) -> ProxyServer {
        Self::start(Kind::HttpConnect, users).await
    }

    pub async fn start(kind: Kind, users: &[(&str, &str)]) -> ProxyServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let conns: Arc<Mutex<Vec<Conn>>> = Arc::default();
        let auth: Arc<Vec<(String, String)>> =
            Arc::new(users.iter().map(|(u, p)| (u.to_string(), p.to_string())).collect());
        let seen = conns.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let idx = {
                    let mut c = seen.lock().unwrap();
                    c.push(Conn::default());
                    c.len() - 1
                };
                let rec = Recorder(seen.clone(), idx);
                let auth = auth.clone();
                tokio::spawn(async move {
                    let _ = match kind {
                        Kind::Socks5 => serve_socks5(client, auth, rec).await,
                        Kind::HttpConnect => serve_connect(client, auth, rec).await,
                    };
                });
            }
        });
        ProxyServer {
            kind,
            addr,
            conns,
            task,
        }
    }

    /// The proxy URL for the relay config, with credentials when given.
    pub fn url(&self, auth: Option<(&str, &str)>) -> String {
        let scheme = match self.kind {
            Kind::Socks5 => "socks5",
            Kind::HttpConnect => "http",
        };
        match auth {
            Some((u, p)) => format!("{scheme}://{u}:{p}@{}", self.addr),
            None => format!("{scheme}://{}", self.addr),
        }
    }

    /// Every connection accepted so far, in order.
    pub fn conns(&self) -> Vec<Conn> {
        self.conns.lock().unwrap().clone()
    }

    pub fn connections(&self) -> usize {
        self.conns.lock().unwrap().len()
    }
}

impl Drop for ProxyServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Updates one connection's record.
struct Recorder(Arc<Mutex<Vec<Conn>>>, usize);

impl Recorder {
    fn update(&self, f: impl FnOnce(&mut Conn)) {
        f(&mut self.0.lock().unwrap()[self.1]);
    }
}

async fn dial(target: &Target) -> std::io::Result<TcpStream> {
    match target {
        Target::Name(host, port) => TcpStream::connect((host.as_str(), *port)).await,
        Target::Addr(a) => TcpStream::connect(a).await,
    }
}

async fn splice(mut client: TcpStream, mut upstream: TcpStream, early: &[u8]) -> std::io::Result<()> {
    if !early.is_empty() {
        upstream.write_all(early).await?;
    }
    tokio::io::copy_bidirectional(&mut client, &mut upstream).await?;
    Ok(())
}

async fn serve_socks5(mut c: TcpStream, users: Arc<Vec<(String, String)>>, rec: Recorder) -> std::io::Result<()> {
    let mut head = [0u8; 2];
    c.read_exact(&mut head).await?;
    if head[0] != 5 {
        return Ok(());
    }
    let mut methods = vec![0u8; head[1] as usize];
    c.read_exact(&mut methods).await?;
    if users.is_empty() {
        if !methods.contains(&0) {
            c.write_all(&[5, 0xff]).await?;
            return Ok(());
        }
        c.write_all(&[5, 0]).await?;
    } else {
        if !methods.contains(&2) {
            c.write_all(&[5, 0xff]).await?;
            return Ok(());
        }
        c.write_all(&[5, 2]).await?;
        // RFC 1929: VER=1, ULEN, UNAME, PLEN, PASSWD.
        let mut ver_len = [0u8; 2];
        c.read_exact(&mut ver_len).await?;
        let mut u = vec![0u8; ver_len[1] as usize];
        c.read_exact(&mut u).await?;
        let mut plen = [0u8; 1];
        c.read_exact(&mut plen).await?;
        let mut p = vec![0u8; plen[0] as usize];
        c.read_exact(&mut p).await?;
        let got = (
            String::from_utf8_lossy(&u).to_string(),
            String::from_utf8_lossy(&p).to_string(),
        );
        let ok = ver_len[0] == 1 && users.contains(&got);
        rec.update(|r| r.credentials = Some(got));
        if !ok {
            c.write_all(&[1, 1]).await?;
            return Ok(());
        }
        c.write_all(&[1, 0]).await?;
    }
    // Request: VER, CMD, RSV, ATYP, DST.ADDR, DST.PORT.
    let mut req = [0u8; 4];
    c.read_exact(&mut req).await?;
    let ip = match req[3] {
        1 => {
            let mut b = [0u8; 4];
            c.read_exact(&mut b).await?;
            Some(IpAddr::V4(Ipv4Addr::from(b)))
        }
        4 => {
            let mut b = [0u8; 16];
            c.read_exact(&mut b).await?;
            Some(IpAddr::V6(Ipv6Addr::from(b)))
        }
        3 => None,
        _ => return Ok(()),
    };
    let name = if ip.is_none() {
        let mut len = [0u8; 1];
        c.read_exact(&mut len).await?;
        let mut n = vec![0u8; len[0] as usize];
        c.read_exact(&mut n).await?;
        Some(String::from_utf8_lossy(&n).to_string())
    } else {
        None
    };
    let mut port = [0u8; 2];
    c.read_exact(&mut port).await?;
    let port = u16::from_be_bytes(port);
    let target = match (ip, name) {
        (Some(ip), _) => Target::Addr(SocketAddr::new(ip, port)),
        (None, Some(n)) => Target::Name(n, port),
        (None, None) => return Ok(()),
    };
    rec.update(|r| r.target = Some(target.clone()));
    if req[1] != 1 {
        c.write_all(&[5, 7, 0, 1, 0, 0, 0, 0, 0, 0]).await?;
        return Ok(());
    }
    match dial(&target).await {
        Ok(up) => {
            c.write_all(&[5, 0, 0, 1, 0, 0, 0, 0, 0, 0]).await?;
            splice(c, up, &[]).await
        }
        Err(_) => {
            c.write_all(&[5, 5, 0, 1, 0, 0, 0, 0, 0, 0]).await?;
            Ok(())
        }
    }
}

async fn serve_connect(mut c: TcpStream, users: Arc<Vec<(String, String)>>, rec: Recorder) -> std::io::Result<()> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    let end = loop {
        let n = c.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > 16 * 1024 {
            return Ok(());
        }
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_string();
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default().to_string();
    let mut host_header = None;
    let mut proxy_auth = None;
    for l in lines {
        if let Some((k, v)) = l.split_once(':') {
            if k.eq_ignore_ascii_case("host") {
                host_header = Some(v.trim().to_string());
            } else if k.eq_ignore_ascii_case("proxy-authorization") {
                proxy_auth = Some(v.trim().to_string());
            }
        }
    }
    let mut parts = request_line.split(' ');
    let (method, authority) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
    let target = parse_authority(authority);
    rec.update(|r| {
        r.request_line = Some(request_line.clone());
        r.host_header = host_header.clone();
        r.proxy_authorization = proxy_auth.clone();
        r.target = target.clone();
    });
    let (Some(target), "CONNECT") = (target, method) else {
        c.write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
            .await?;
        return Ok(());
    };
    if !users.is_empty() {
        let allowed = users
            .iter()
            .any(|(u, p)| proxy_auth.as_deref() == Some(basic(u, p).as_str()));
        if !allowed {
            c.write_all(
                b"HTTP/1.1 407 Proxy Authentication Required\r\nproxy-authenticate: Basic realm=\"test\"\r\ncontent-length: 0\r\n\r\n",
            )
            .await?;
            return Ok(());
        }
    }
    match dial(&target).await {
        Ok(up) => {
            c.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n").await?;
            splice(c, up, &buf[end..]).await
        }
        Err(_) => {
            c.write_all(b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\n\r\n")
                .await?;
            Ok(())
        }
    }
}

/// The `Proxy-Authorization` value for a user.
pub fn basic(user: &str, pass: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
    )
}

/// `host:port` or `[v6]:port`.
fn parse_authority(a: &str) -> Option<Target> {
    let (host, port) = a.rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Some(match host.parse::<IpAddr>() {
        Ok(ip) => Target::Addr(SocketAddr::new(ip, port)),
        Err(_) => Target::Name(host.to_string(), port),
    })
}
