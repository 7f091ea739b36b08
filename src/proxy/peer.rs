//! Upstream peers: asynchronous DNS with a small cache, and the [`HttpPeer`] options each upstream
//! gets (TLS with SNI, ALPN h2 then h1, connect timeouts). `HttpPeer::new` with a host name would
//! resolve synchronously and panic on failure, so names are resolved here first.
//!
//! A peer behind an outbound proxy is addressed at the PROXY's socket address, with a custom L4
//! connector that tunnels to the real host (SNI stays the real host name). Pingora reuses a pooled
//! connection only when the socket's remote address equals the peer address (`matches_fd`), and
//! the remote of a tunnelled socket is the proxy. Its pool hash ignores `custom_l4`, so such a
//! peer also gets a `group_key` derived from the proxy (credentials included) and the target:
//! accounts behind different proxies, or the same proxy with different credentials, never share a
//! pooled connection.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pingora::upstreams::peer::HttpPeer;

use super::error::RelayError;
use crate::outbound::{OutboundProxy, tunnel_connector};
use crate::providers::UpstreamBase;

const DNS_TTL: Duration = Duration::from_secs(60);
/// How long an idle pooled upstream connection is kept.
const POOL_IDLE: Duration = Duration::from_secs(90);
/// Requests in flight on one HTTP/2 upstream connection (the server's own
/// `SETTINGS_MAX_CONCURRENT_STREAMS` caps it further). Pingora's default is 1: every request in
/// flight would hold a TLS connection of its own, with its handshake, buffers and descriptor.
const H2_STREAMS: usize = 100;
/// Flow-control window of one HTTP/2 stream: what the upstream may send ahead of the client.
const H2_STREAM_WINDOW: u32 = 8 << 20;

#[derive(Hash, PartialEq, Eq, Clone)]
struct PeerKey {
    host: String,
    port: u16,
    tls: bool,
    proxy: Option<OutboundProxy>,
}

pub struct Peers {
    cache: Mutex<HashMap<PeerKey, (Arc<HttpPeer>, Instant)>>,
    connect_timeout: Duration,
    /// Addresses no upstream connection may reach (`upstreams.deny_addresses`).
    deny: Vec<ipnet::IpNet>,
}

impl Peers {
    pub fn new(connect_timeout: Duration, deny: Vec<ipnet::IpNet>) -> Self {
        Peers {
            cache: Mutex::new(HashMap::new()),
            connect_timeout,
            deny,
        }
    }

    fn denied(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.deny.iter().any(|n| n.contains(&ip))
    }

    /// The peer for an upstream base, reached directly or through an outbound proxy, resolving
    /// names when the cached entry is stale.
    pub async fn get(&self, base: &UpstreamBase, proxy: Option<&OutboundProxy>) -> Result<Arc<HttpPeer>, RelayError> {
        let key = PeerKey {
            host: base.host.clone(),
            port: base.port,
            tls: base.tls,
            proxy: proxy.cloned(),
        };
        if let Some((peer, at)) = self.cache.lock().unwrap_or_else(|p| p.into_inner()).get(&key)
            && at.elapsed() < DNS_TTL
        {
            return Ok(peer.clone());
        }
        let peer = match proxy {
            None => {
                let addr = self
                    .resolve(&base.host, base.port)
                    .await
                    .map_err(RelayError::UpstreamUnreachable)?;
                self.build(addr, base)
            }
            Some(proxy) => {
                // Only the proxy's name is resolved here; the target's name goes to the proxy.
                let proxy_addr = self
                    .resolve(&proxy.host, proxy.port)
                    .await
                    .map_err(|e| RelayError::UpstreamUnreachable(format!("outbound proxy {proxy}: {e}")))?;
                self.build_proxied(proxy_addr, base, proxy)
            }
        };
        let peer = Arc::new(peer);
        self.cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, (peer.clone(), Instant::now()));
        Ok(peer)
    }

    /// Forgets the cached peers of an upstream base, direct and through any proxy (after a
    /// connect failure, so names are resolved again).
    pub fn forget(&self, base: &UpstreamBase) {
        self.cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|k, _| !(k.host == base.host && k.port == base.port && k.tls == base.tls));
    }

    /// The address to connect to: resolved asynchronously, never one in the deny list (checked
    /// on every resolution, so a name that changes its address is caught too).
    async fn resolve(&self, host: &str, port: u16) -> Result<SocketAddr, String> {
        let denied = || format!("{host} is in a denied address range (upstreams.deny_addresses)");
        if let Ok(ip) = host.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>() {
            if self.denied(ip) {
                return Err(denied());
            }
            return Ok(SocketAddr::new(ip, port));
        }
        let lookup = tokio::time::timeout(self.connect_timeout, tokio::net::lookup_host((host, port)))
            .await
            .map_err(|_| format!("DNS lookup of {host} timed out"))?
            .map_err(|e| format!("DNS lookup of {host} failed: {e}"))?;
        let all: Vec<SocketAddr> = lookup.collect();
        let addrs: Vec<SocketAddr> = all.iter().copied().filter(|a| !self.denied(a.ip())).collect();
        if addrs.is_empty() && !all.is_empty() {
            return Err(denied());
        }
        addrs
            .iter()
            .find(|a| a.is_ipv4())
            .or_else(|| addrs.first())
            .copied()
            .ok_or_else(|| format!("{host} has no address"))
    }

    fn build(&self, addr: SocketAddr, base: &UpstreamBase) -> HttpPeer {
        let mut peer = HttpPeer::new(addr, base.tls, base.host.clone());
        peer.options.connection_timeout = Some(self.connect_timeout);
        peer.options.total_connection_timeout = Some(self.connect_timeout);
        peer.options.idle_timeout = Some(POOL_IDLE);
        if base.tls {
            peer.options.set_http_version(2, 1);
            peer.options.max_h2_streams = H2_STREAMS;
            // A client that stops reading leaves its stream's unread data counted against the
            // connection's window; room for every stream's full window keeps one such client
            // from stalling the other streams of the connection.
            peer.options.h2_stream_window_size = Some(H2_STREAM_WINDOW);
            peer.options.h2_connection_window_size = Some(H2_STREAM_WINDOW * H2_STREAMS as u32);
        } else {
            peer.options.set_http_version(1, 1);
        }
        peer
    }

    /// A peer reached through `proxy`, which listens at `proxy_addr` (see the module notes).
    fn build_proxied(&self, proxy_addr: SocketAddr, base: &UpstreamBase, proxy: &OutboundProxy) -> HttpPeer {
        let mut peer = self.build(proxy_addr, base);
        peer.options.custom_l4 = Some(tunnel_connector(
            Arc::new(proxy.clone()),
            proxy_addr,
            &base.host,
            base.port,
            self.connect_timeout,
        ));
        peer.group_key = proxied_group_key(proxy, base);
        peer
    }
}

/// The pool group of connections to `base` through `proxy`. The credentials take part: the
/// same proxy used with other credentials may egress elsewhere.
fn proxied_group_key(proxy: &OutboundProxy, base: &UpstreamBase) -> u64 {
    let mut h = DefaultHasher::new();
    proxy.hash(&mut h);
    base.host.hash(&mut h);
    base.port.hash(&mut h);
    base.tls.hash(&mut h);
    // 0 is the group of direct peers.
    h.finish().max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora::upstreams::peer::Peer;

    fn base(url: &str) -> UpstreamBase {
        UpstreamBase::parse(url).unwrap()
    }

    #[tokio::test]
    async fn proxied_peers_use_the_proxy_address_the_real_sni_and_their_own_pool_group() {
        let peers = Peers::new(Duration::from_secs(5), Vec::new());
        let api = base("https://api.example.com");
        let a = OutboundProxy::parse("socks5://alice:one@127.0.0.1:1080").unwrap();
        let b = OutboundProxy::parse("socks5://bob:two@127.0.0.1:1080").unwrap();
        let pa = peers.get(&api, Some(&a)).await.unwrap();
        assert_eq!(pa.address().to_string(), "127.0.0.1:1080");
        assert_eq!(pa.sni(), "api.example.com");
        assert!(pa.options.custom_l4.is_some() && pa.is_tls());
        // Cached per proxy; the same proxy with other credentials is another pool group.
        assert!(Arc::ptr_eq(&pa, &peers.get(&api, Some(&a)).await.unwrap()));
        let pb = peers.get(&api, Some(&b)).await.unwrap();
        assert!(!Arc::ptr_eq(&pa, &pb));
        assert_ne!(pa.reuse_hash(), pb.reuse_hash());
        assert_ne!(pa.group_key, 0);
        // The direct peer is untouched by proxies (and resolves its own address).
        let local = base("http://127.0.0.1:8080");
        let direct = peers.get(&local, None).await.unwrap();
        assert_eq!(
            (direct.address().to_string(), direct.group_key),
            ("127.0.0.1:8080".to_string(), 0)
        );
        assert!(direct.options.custom_l4.is_none());
        let via = peers.get(&local, Some(&a)).await.unwrap();
        assert_ne!(direct.reuse_hash(), via.reuse_hash());
        // Forgetting a base drops its direct and proxied entries alike.
        peers.forget(&api);
        assert!(!Arc::ptr_eq(&pa, &peers.get(&api, Some(&a)).await.unwrap()));
    }
}
