//! Upstream connections: Pingora's HTTP/1 and HTTP/2 connectors, with one rule of ours for
//! opening HTTP/2 connections, and an HTTP/1 request sent in one write ([`send_request`]).
//!
//! A pooled HTTP/2 connection carries many requests at once (see the peer module). Pingora takes
//! a connection out of its pool while it opens a stream on it and puts it back afterwards, and a
//! new connection enters the pool only once its TLS handshake is done. A request that looks in
//! either window finds no connection with a free stream and opens one of its own: a burst of
//! requests to a cold upstream, or to a busy one on a busy machine, becomes a burst of TLS
//! handshakes and connections.
//!
//! So when no pooled connection has a free stream, one request at a time opens the next
//! connection to an upstream that speaks (or may speak) HTTP/2; the requests that find it busy
//! wait for it and then share the new connection. When that attempt fails, the requests that
//! waited for it fail at once with a connect error, and fail over like it, instead of each
//! trying the same unreachable upstream again in turn. An upstream that answered with HTTP/1 is
//! not gated: every request in flight needs a connection of its own there.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::{Buf, Bytes};
use pingora::connectors::http::{v1, v2};
use pingora::http::RequestHeader;
use pingora::protocols::http::client::HttpSession;
use pingora::protocols::http::v1::client::{HttpSession as Http1Session, http_req_header_to_wire};
use pingora::upstreams::peer::{HttpPeer, Peer};
use pingora::{Error, ErrorType, OrErr, Result};
use tokio::io::AsyncWriteExt;

/// Upstreams whose gate is kept; past this, gates no request holds are dropped (peers change
/// when names resolve to new addresses).
const GATES_KEPT: usize = 256;

pub struct Connector {
    h1: v1::Connector,
    h2: v2::Connector,
    /// By the peer's pool hash (address, TLS name, pool group).
    gates: Mutex<HashMap<u64, Arc<Gate>>>,
}

#[derive(Default)]
struct Gate {
    /// Held by the request opening a connection to the upstream.
    opening: tokio::sync::Mutex<LastOpen>,
    /// The upstream chose HTTP/1: its connections are not shared, so opening is not gated.
    speaks_h1: AtomicBool,
}

#[derive(Default)]
struct LastOpen {
    /// When the last attempt to open a connection failed, unless one succeeded since.
    failed_at: Option<Instant>,
}

impl Default for Connector {
    fn default() -> Self {
        Self::new()
    }
}

impl Connector {
    pub fn new() -> Self {
        Connector {
            h1: v1::Connector::new(None),
            h2: v2::Connector::new(None),
            gates: Mutex::new(HashMap::new()),
        }
    }

    /// A session to `peer`, and whether it runs on a connection that was already open (such a
    /// connection may turn out to be stale; a new one has no such excuse).
    ///
    /// Most requests find a pooled connection; only opening one (TCP, TLS handshake: a future of
    /// about 9 KB) is boxed, so that it is neither part of every request's state for the life of
    /// its stream nor copied into a box on every request.
    pub async fn session(&self, peer: &HttpPeer) -> Result<(HttpSession, bool)> {
        let h1_only = peer
            .get_peer_options()
            .is_none_or(|o| o.alpn.get_max_http_version() == 1);
        let pooled = if h1_only {
            self.h1.reused_http_session(peer).await.map(HttpSession::H1)
        } else {
            self.reused(peer).await?
        };
        match pooled {
            Some(session) => Ok((session, true)),
            None => Box::pin(self.open(peer, h1_only)).await,
        }
    }

    /// A session on a connection of its own when `h1_only`, else as the gate (module
    /// documentation) decides: a stream on the connection another request opened meanwhile, or
    /// a new connection.
    async fn open(&self, peer: &HttpPeer, h1_only: bool) -> Result<(HttpSession, bool)> {
        if h1_only {
            let (h1, reused) = self.h1.get_http_session(peer).await?;
            return Ok((HttpSession::H1(h1), reused));
        }
        let gate = self.gate(peer.reuse_hash());
        if gate.speaks_h1.load(Ordering::Relaxed) {
            return Ok((self.h2.new_http_session(peer).await?, false));
        }
        let (mut last, waited_since) = match gate.opening.try_lock() {
            Ok(last) => (last, None),
            Err(_) => {
                let since = Instant::now();
                (gate.opening.lock().await, Some(since))
            }
        };
        // Whoever held the gate may have opened a connection while this request waited for the
        // lock or looked in the pool.
        if let Some(session) = self.reused(peer).await? {
            return Ok((session, true));
        }
        if let Some(since) = waited_since {
            if last.failed_at.is_some_and(|at| at >= since) {
                return Error::e_explain(
                    ErrorType::ConnectError,
                    "the connection another request was opening to this upstream failed",
                );
            }
            if gate.speaks_h1.load(Ordering::Relaxed) {
                drop(last);
                return Ok((self.h2.new_http_session(peer).await?, false));
            }
        }
        let opened = self.h2.new_http_session(peer).await;
        match &opened {
            Ok(HttpSession::H1(_)) => gate.speaks_h1.store(true, Ordering::Relaxed),
            Ok(_) => last.failed_at = None,
            Err(_) => last.failed_at = Some(Instant::now()),
        }
        drop(last);
        Ok((opened?, false))
    }

    /// A stream on a pooled HTTP/2 connection with a free stream, else an idle pooled HTTP/1
    /// connection (an upstream offered both may have chosen either).
    async fn reused(&self, peer: &HttpPeer) -> Result<Option<HttpSession>> {
        if let Some(h2) = self.h2.reused_http_session(peer).await? {
            return Ok(Some(HttpSession::H2(h2)));
        }
        Ok(self.h1.reused_http_session(peer).await.map(HttpSession::H1))
    }

    fn gate(&self, hash: u64) -> Arc<Gate> {
        let mut gates = self.gates.lock().unwrap_or_else(|p| p.into_inner());
        if gates.len() >= GATES_KEPT && !gates.contains_key(&hash) {
            gates.retain(|_, g| Arc::strong_count(g) > 1);
        }
        gates.entry(hash).or_default().clone()
    }

    /// Returns a finished session's connection to its pool.
    pub async fn release(&self, session: HttpSession, peer: &HttpPeer) {
        match session {
            // Boxed: in place, this future (about 2.5 KB) would be part of every request's state
            // for the request's whole life; an HTTP/2 stream is released without one.
            HttpSession::H1(h1) => Box::pin(self.h1.release_http_session(h1, peer, None)).await,
            HttpSession::H2(h2) => self.h2.release_http_session(h2, peer, None),
            HttpSession::Custom(()) => {}
        }
    }
}

/// Sends a request with its whole body on a new session of [`Connector::session`].
///
/// Over HTTP/1, Pingora's client flushes the request head before the body is written, which
/// costs every request a second write to the socket (and on loopback the upstream's receive
/// work, which runs in the sender's system call). So an HTTP/1 request whose body length its
/// head states leaves here in one write (one `writev`, without copying the body), on the
/// same connection; the session is then built again on it, as Pingora's connector builds
/// it, to read the response. A `HEAD` request, or one that asks for an upgrade or names its
/// connection's options, is sent by Pingora's client, which keeps those for the response.
pub async fn send_request(up: &mut HttpSession, peer: &HttpPeer, req: &RequestHeader, body: &Bytes) -> Result<()> {
    if matches!(up, HttpSession::H1(_)) && one_write(req, body.len()) {
        let HttpSession::H1(h1) = std::mem::replace(up, HttpSession::Custom(())) else {
            unreachable!("matched as HTTP/1 above")
        };
        let (read_timeout, write_timeout) = (h1.read_timeout, h1.write_timeout);
        let mut stream = h1.into_inner();
        let written = match http_req_header_to_wire(req) {
            Some(head) => {
                // `write_all_buf` writes a chain with `writev` where the socket takes it.
                let write = async {
                    stream
                        .write_all_buf(&mut (&head[..]).chain(&body[..]))
                        .await
                        .or_err(ErrorType::WriteError, "writing the request")?;
                    stream
                        .flush()
                        .await
                        .or_err(ErrorType::WriteError, "flushing the request")
                };
                match write_timeout {
                    Some(t) => tokio::time::timeout(t, write)
                        .await
                        .unwrap_or_else(|_| Error::e_explain(ErrorType::WriteTimedout, "writing the request")),
                    None => write.await,
                }
            }
            None => Error::e_explain(ErrorType::InvalidHTTPHeader, "the request line holds a forbidden byte"),
        };
        let mut h1 = Http1Session::new_with_options(stream, peer);
        h1.read_timeout = read_timeout;
        h1.write_timeout = write_timeout;
        *up = HttpSession::H1(h1);
        return written;
    }
    up.write_request_header(Box::new(req.clone())).await?;
    up.write_request_body(body.clone(), true).await?;
    up.finish_request_body().await
}

/// Whether an HTTP/1 request can leave in one write: its head states its body's length (the
/// relay always does) and nothing in it changes how the response is read.
fn one_write(req: &RequestHeader, body_len: usize) -> bool {
    let h = &req.headers;
    req.method != http::Method::HEAD
        && !h.contains_key(http::header::CONNECTION)
        && !h.contains_key(http::header::UPGRADE)
        && !h.contains_key(http::header::TRANSFER_ENCODING)
        && h.get_all(http::header::CONTENT_LENGTH).iter().count() == 1
        && h.get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok())
            == Some(body_len)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn post(headers: &[(&str, &str)]) -> RequestHeader {
        let mut req = RequestHeader::build("POST", b"/v1/messages", None).unwrap();
        for (k, v) in headers {
            req.append_header(k.to_string(), *v).unwrap();
        }
        req
    }

    #[test]
    fn only_a_request_whose_head_states_its_length_and_nothing_more_leaves_in_one_write() {
        assert!(one_write(&post(&[("content-length", "12"), ("x-api-key", "k")]), 12));
        // The length must be the body's, stated once.
        assert!(!one_write(&post(&[("content-length", "11")]), 12));
        assert!(!one_write(&post(&[]), 12));
        assert!(!one_write(
            &post(&[("content-length", "12"), ("content-length", "12")]),
            12
        ));
        assert!(!one_write(&post(&[("content-length", "twelve")]), 12));
        // What Pingora's client keeps for reading the response goes through it.
        for (name, value) in [
            ("connection", "close"),
            ("upgrade", "websocket"),
            ("transfer-encoding", "chunked"),
        ] {
            assert!(
                !one_write(&post(&[("content-length", "12"), (name, value)]), 12),
                "{name}"
            );
        }
        let mut head = RequestHeader::build("HEAD", b"/v1/models", None).unwrap();
        head.append_header("content-length", "0").unwrap();
        assert!(!one_write(&head, 0));
    }
}
