//! Client connections: what a connection may cost before it has earned a request.
//!
//! Pingora reads a request head with a timeout per read, so a client dripping one byte every few
//! seconds, or a keep-alive connection left open, holds its socket and buffers indefinitely.
//! [`GuardedApp`] wraps the proxy's HTTP application and gives every HTTP/1 connection:
//!
//! - a **per-address cap** on open connections (peers in `trusted_proxies` are exempt; a refused
//!   connection is closed at once);
//! - a **deadline for the whole request head**: `timeouts.request_head` from the accept, and
//!   again from the first byte of every later request;
//! - an **idle keep-alive timeout**: `timeouts.keepalive_idle` after a request finished, the
//!   connection is closed unless a new request has started.
//!
//! The phases come from two places: the request hooks mark a request as started
//! ([`request_started`], once its head is parsed) and finished ([`request_finished`]), and the
//! [`GuardedStream`] around the socket notices the first byte of the next request. While no
//! request is active, whatever Pingora itself writes is its answer to a head it refused (400 for a
//! malformed or oversized head, 405 for `CONNECT`): the stream replaces that bodiless answer with
//! one in the caller's error shape.
//!
//! Request bodies are bounded where they are read (`timeouts.request_body_idle`,
//! `timeouts.request_body`, see the proxy module). HTTP/2 connections (ALPN) are left to
//! Pingora's own idle timeout.

use std::collections::HashMap;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::{Buf, Bytes};
use pingora::apps::ServerApp;
use pingora::protocols::{
    ALPN, GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, Ssl, Stream, UniqueID, UniqueIDType,
};
use pingora::server::ShutdownWatch;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;

use super::error::{ErrorSource, RelayError, error_body};

/// The limits a connection lives under.
#[derive(Clone, Debug)]
pub struct ConnLimits {
    pub request_head: Duration,
    pub keepalive_idle: Duration,
    /// Open connections per client address; 0: no limit.
    pub per_ip: u32,
    /// Peers exempt from the per-address cap.
    pub trusted: Vec<ipnet::IpNet>,
}

const FRESH: u8 = 0;
const HEAD: u8 = 1;
const ACTIVE: u8 = 2;
const DONE: u8 = 3;

/// The phase of one connection and the deadline of that phase.
#[derive(Debug)]
pub struct ConnState {
    phase: AtomicU8,
    /// Milliseconds since `epoch` at which the connection is cut while it is not active.
    deadline_ms: AtomicU64,
    epoch: Instant,
    changed: Notify,
    limits: Arc<ConnLimits>,
}

impl ConnState {
    fn new(limits: Arc<ConnLimits>) -> Self {
        ConnState {
            phase: AtomicU8::new(FRESH),
            deadline_ms: AtomicU64::new(limits.request_head.as_millis() as u64),
            epoch: Instant::now(),
            changed: Notify::new(),
            limits,
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn enter(&self, phase: u8, lasts: Option<Duration>) {
        if let Some(d) = lasts {
            self.deadline_ms
                .store(self.now_ms().saturating_add(d.as_millis() as u64), Ordering::Relaxed);
        }
        self.phase.store(phase, Ordering::Release);
        self.changed.notify_one();
    }

    /// The first byte of a new request arrived on an idle connection.
    fn bytes_arrived(&self) {
        let phase = self.phase.load(Ordering::Acquire);
        if phase == DONE
            && self
                .phase
                .compare_exchange(DONE, HEAD, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            self.enter(HEAD, Some(self.limits.request_head));
        }
    }

    /// Whether a request head is awaited (so what Pingora writes now is its own refusal).
    fn awaiting_head(&self) -> bool {
        matches!(self.phase.load(Ordering::Acquire), FRESH | HEAD)
    }

    /// Resolves when the connection has outlived its phase's deadline without a request active.
    async fn expired(&self) {
        loop {
            let notified = self.changed.notified();
            if self.phase.load(Ordering::Acquire) == ACTIVE {
                notified.await;
                continue;
            }
            let deadline = self.deadline_ms.load(Ordering::Relaxed);
            let now = self.now_ms();
            if now >= deadline {
                return;
            }
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep(Duration::from_millis(deadline - now)) => {}
            }
        }
    }
}

tokio::task_local! {
    static CONN: Arc<ConnState>;
}

/// Called once a request's head is parsed: the connection is busy, no deadline applies (the body
/// and the upstream have their own timeouts).
pub fn request_started() {
    let _ = CONN.try_with(|c| c.enter(ACTIVE, None));
}

/// Called when a request is finished: the connection idles until its next request.
pub fn request_finished() {
    let _ = CONN.try_with(|c| {
        let idle = c.limits.keepalive_idle;
        c.enter(DONE, Some(idle))
    });
}

/// Open connections per client address.
#[derive(Default)]
struct PerAddress(Mutex<HashMap<IpAddr, u32>>);

struct Slot<'a> {
    table: &'a PerAddress,
    ip: IpAddr,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let mut map = self.table.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

impl PerAddress {
    fn take(&self, ip: IpAddr, cap: u32) -> Option<Slot<'_>> {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(ip).or_insert(0);
        if *n >= cap {
            return None;
        }
        *n += 1;
        Some(Slot { table: self, ip })
    }
}

/// The relay's HTTP application with connection limits around it.
pub struct GuardedApp<A> {
    inner: Arc<A>,
    limits: Arc<ConnLimits>,
    open: PerAddress,
    refused: prometheus::IntCounterVec,
}

impl<A> GuardedApp<A> {
    pub fn new(inner: A, limits: ConnLimits, refused: prometheus::IntCounterVec) -> Self {
        GuardedApp {
            inner: Arc::new(inner),
            limits: Arc::new(limits),
            open: PerAddress::default(),
            refused,
        }
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for GuardedApp<A> {
    async fn process_new(self: &Arc<Self>, stream: Stream, shutdown: &ShutdownWatch) -> Option<Stream> {
        let ip = stream
            .get_socket_digest()
            .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).map(|a| a.ip().to_canonical()));
        let _slot = match ip {
            Some(ip) if self.limits.per_ip > 0 && !self.limits.trusted.iter().any(|n| n.contains(&ip)) => {
                match self.open.take(ip, self.limits.per_ip) {
                    Some(slot) => Some(slot),
                    None => {
                        self.refused.with_label_values(&["per_ip"]).inc();
                        tracing::debug!(%ip, "connection refused: too many open connections from this address");
                        return None;
                    }
                }
            }
            _ => None,
        };
        if matches!(stream.selected_alpn_proto(), Some(ALPN::H2)) {
            // Streams of one HTTP/2 connection run as tasks of their own; its idle timeout is
            // Pingora's (`h2_idle_timeout`).
            return self.inner.process_new(stream, shutdown).await;
        }
        let state = Arc::new(ConnState::new(self.limits.clone()));
        let guarded: Stream = Box::new(GuardedStream::new(stream, state.clone()));
        let served = CONN.scope(state.clone(), self.inner.process_new(guarded, shutdown));
        tokio::select! {
            r = served => r,
            _ = state.expired() => {
                let label = if state.phase.load(Ordering::Acquire) == DONE { "keepalive_idle" } else { "request_head" };
                self.refused.with_label_values(&[label]).inc();
                None
            }
        }
    }

    /// Runs when the listeners have stopped accepting. Pingora's own cleanup closes every
    /// connection waiting for a request head, and a connection accepted just before the
    /// listeners stopped may not have sent its first one yet (its TLS handshake, then the head,
    /// take a few hundred milliseconds on a loaded machine): that client's request would fail.
    /// They get [`CLEANUP_DELAY`] first; whatever is answered meanwhile while handing over says
    /// `Connection: close`. The process does not wait for this: it exits once nothing is in
    /// flight (see `server::shutdown`).
    async fn cleanup(&self) {
        tokio::time::sleep(CLEANUP_DELAY).await;
        self.inner.cleanup().await
    }
}

/// How long connections accepted before the listeners stopped may still send their first
/// request (see [`GuardedApp`]'s `cleanup`).
const CLEANUP_DELAY: Duration = Duration::from_secs(2);

/// How many bytes of a request head are kept to name the endpoint of an error answer.
const REQUEST_LINE_KEPT: usize = 256;

/// The socket of a guarded connection: notices when a new request starts arriving, and gives
/// Pingora's own refusals of a request head a body in the caller's error shape.
#[derive(Debug)]
pub struct GuardedStream {
    inner: Stream,
    state: Arc<ConnState>,
    /// The start of the head being read (for the dialect of an error answer).
    head_start: Vec<u8>,
    /// Our replacement of a refusal Pingora is writing, and whether it was sent.
    replacing: Option<Bytes>,
    replaced: bool,
}

impl GuardedStream {
    fn new(inner: Stream, state: Arc<ConnState>) -> Self {
        GuardedStream {
            inner,
            state,
            head_start: Vec::new(),
            replacing: None,
            replaced: false,
        }
    }

    /// The whole answer to a head Pingora refused with `written` (its status line first).
    fn refusal(&self, written: &[u8]) -> Bytes {
        let status = written
            .get(9..12)
            .and_then(|s| std::str::from_utf8(s).ok())
            .and_then(|s| s.parse::<u16>().ok())
            .unwrap_or(400);
        let line = self
            .head_start
            .split(|b| *b == b'\r' || *b == b'\n')
            .next()
            .unwrap_or(&[]);
        let mut parts = line.split(|b| *b == b' ');
        let method = parts.next().and_then(|m| http::Method::from_bytes(m).ok());
        let path = parts.next().and_then(|p| std::str::from_utf8(p).ok()).unwrap_or("/");
        let dialect = crate::ingress::classify(method.as_ref().unwrap_or(&http::Method::POST), path).dialect;
        let err = match status {
            405 => RelayError::MethodNotAllowed("GET, HEAD, POST"),
            _ => RelayError::BadRequest("The request head is malformed or too large".into()),
        };
        let body = error_body(dialect, &err);
        let mut head = format!(
            "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\nx-relay-error-source: {}\r\n",
            err.status(),
            http::StatusCode::from_u16(err.status())
                .ok()
                .and_then(|s| s.canonical_reason())
                .unwrap_or(""),
            body.len(),
            ErrorSource::Relay.as_str(),
        );
        if let RelayError::MethodNotAllowed(allowed) = &err {
            head.push_str(&format!("allow: {allowed}\r\n"));
        }
        head.push_str("\r\n");
        let mut out = head.into_bytes();
        out.extend_from_slice(&body);
        Bytes::from(out)
    }

    /// Writes what is left of the replacement; `Ready(Ok)` once it is all out.
    fn poll_replacement(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        while let Some(rest) = self.replacing.as_mut() {
            if rest.is_empty() {
                self.replacing = None;
                break;
            }
            match Pin::new(&mut self.inner).poll_write(cx, rest) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => rest.advance(n),
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for GuardedStream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        let read = &buf.filled()[before..];
        if !read.is_empty() {
            this.state.bytes_arrived();
            if this.state.awaiting_head() {
                if this.head_start.len() < REQUEST_LINE_KEPT {
                    let take = read.len().min(REQUEST_LINE_KEPT - this.head_start.len());
                    this.head_start.extend_from_slice(&read[..take]);
                }
            } else if !this.head_start.is_empty() {
                this.head_start = Vec::new();
            }
        }
        r
    }
}

impl AsyncWrite for GuardedStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        if this.state.awaiting_head() && (this.replacing.is_some() || !this.replaced && buf.starts_with(b"HTTP/1.")) {
            if !this.replaced {
                this.replacing = Some(this.refusal(buf));
                this.replaced = true;
            }
            return match this.poll_replacement(cx) {
                Poll::Ready(Ok(())) => Poll::Ready(Ok(buf.len())),
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                Poll::Pending => Poll::Pending,
            };
        }
        if this.state.awaiting_head() && this.replaced {
            // The rest of the refusal Pingora writes (its empty body) is already answered.
            return Poll::Ready(Ok(buf.len()));
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        if self.state.awaiting_head() {
            let first = bufs.iter().find(|b| !b.is_empty()).map_or(&[][..], |b| &**b);
            return self.poll_write(cx, first);
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.poll_replacement(cx) {
            Poll::Ready(Ok(())) => Pin::new(&mut self.inner).poll_flush(cx),
            other => other,
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.poll_replacement(cx) {
            Poll::Ready(Ok(())) => Pin::new(&mut self.inner).poll_shutdown(cx),
            other => other,
        }
    }
}

#[async_trait]
impl Shutdown for GuardedStream {
    async fn shutdown(&mut self) {
        let _ = std::future::poll_fn(|cx| self.poll_replacement(cx)).await;
        self.inner.shutdown().await
    }
}

impl UniqueID for GuardedStream {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for GuardedStream {
    fn get_ssl(&self) -> Option<&pingora::protocols::tls::TlsRef> {
        self.inner.get_ssl()
    }
    fn get_ssl_digest(&self) -> Option<Arc<pingora::protocols::tls::SslDigest>> {
        self.inner.get_ssl_digest()
    }
    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for GuardedStream {
    fn get_timing_digest(&self) -> Vec<Option<pingora::protocols::TimingDigest>> {
        self.inner.get_timing_digest()
    }
    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }
    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for GuardedStream {
    fn get_proxy_digest(&self) -> Option<Arc<pingora::protocols::raw_connect::ProxyDigest>> {
        self.inner.get_proxy_digest()
    }
    fn set_proxy_digest(&mut self, digest: pingora::protocols::raw_connect::ProxyDigest) {
        self.inner.set_proxy_digest(digest)
    }
}

impl GetSocketDigest for GuardedStream {
    fn get_socket_digest(&self) -> Option<Arc<pingora::protocols::SocketDigest>> {
        self.inner.get_socket_digest()
    }
    fn set_socket_digest(&mut self, digest: pingora::protocols::SocketDigest) {
        self.inner.set_socket_digest(digest)
    }
}

#[async_trait]
impl Peek for GuardedStream {
    async fn try_peek(&mut self, buf: &mut [u8]) -> std::io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}
