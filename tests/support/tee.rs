//! A transparent TCP forwarder that keeps a copy of what clients send: put between a real client
//! and the relay, it shows the exact bytes the client sent (which the relay's upstream side can
//! then be compared with) without changing a byte in either direction.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// One HTTP/1.1 request read back from the recorded bytes.
#[derive(Debug, Clone)]
pub struct RawRequest {
    pub method: String,
    pub target: String,
    /// Header names lower-cased, values as sent, in order.
    pub headers: Vec<(String, String)>,
    /// The body as sent (de-chunked when it came chunked).
    pub body: Vec<u8>,
}

impl RawRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// The client-to-server bytes of one connection.
type Record = Arc<Mutex<Vec<u8>>>;

pub struct Tee {
    pub addr: SocketAddr,
    /// The client-to-server bytes of each connection, in the order connections were accepted.
    conns: Arc<Mutex<Vec<Record>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Tee {
    /// Listens on a random port of 127.0.0.1 and forwards every connection to `to`.
    pub async fn start(to: SocketAddr) -> Tee {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let conns: Arc<Mutex<Vec<Record>>> = Arc::default();
        let list = conns.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let record: Record = Arc::default();
                list.lock().unwrap().push(record.clone());
                tokio::spawn(forward(client, to, record));
            }
        });
        Tee { addr, conns, task }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request the clients sent so far, connection by connection, in order.
    pub fn requests(&self) -> Vec<RawRequest> {
        let conns = self.conns.lock().unwrap().clone();
        conns.iter().flat_map(|c| parse_requests(&c.lock().unwrap())).collect()
    }
}

impl Drop for Tee {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn forward(mut client: TcpStream, to: SocketAddr, record: Record) {
    let Ok(mut server) = TcpStream::connect(to).await else {
        return;
    };
    let (mut cr, mut cw) = client.split();
    let (mut sr, mut sw) = server.split();
    let up = async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match cr.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            record.lock().unwrap().extend_from_slice(&buf[..n]);
            if sw.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        let _ = sw.shutdown().await;
    };
    let down = async {
        let _ = tokio::io::copy(&mut sr, &mut cw).await;
        let _ = cw.shutdown().await;
    };
    tokio::join!(up, down);
}

/// The complete HTTP/1.1 requests in `bytes` (a request cut short at the end is left out).
pub fn parse_requests(mut bytes: &[u8]) -> Vec<RawRequest> {
    let mut out = Vec::new();
    while let Some(head_end) = find(bytes, b"\r\n\r\n") {
        let head = String::from_utf8_lossy(&bytes[..head_end]).to_string();
        let mut lines = head.split("\r\n");
        let mut first = lines.next().unwrap_or("").split(' ');
        let method = first.next().unwrap_or("").to_string();
        let target = first.next().unwrap_or("").to_string();
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let rest = &bytes[head_end + 4..];
        let get = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
        let (body, used) = if get("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
            match dechunk(rest) {
                Some(x) => x,
                None => break,
            }
        } else {
            let len: usize = get("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
            if rest.len() < len {
                break;
            }
            (rest[..len].to_vec(), len)
        };
        out.push(RawRequest {
            method,
            target,
            headers,
            body,
        });
        bytes = &rest[used..];
    }
    out
}

/// A chunked body at the start of `b`: the body and how many bytes it took, or `None` when it is
/// not complete.
fn dechunk(b: &[u8]) -> Option<(Vec<u8>, usize)> {
    let mut body = Vec::new();
    let mut at = 0;
    loop {
        let line_end = at + find(&b[at..], b"\r\n")?;
        let size_text = String::from_utf8_lossy(&b[at..line_end]).to_string();
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        at = line_end + 2;
        if size == 0 {
            // Trailers (none expected), then the final CRLF.
            let end = at + find(&b[at..], b"\r\n")?;
            return Some((body, end + 2));
        }
        if b.len() < at + size + 2 {
            return None;
        }
        body.extend_from_slice(&b[at..at + size]);
        at += size + 2;
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
