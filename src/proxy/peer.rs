//! Upstream peers: asynchronous DNS with a small cache, and the [`HttpPeer`] options each upstream
//! gets (TLS with SNI, ALPN h2 then h1, connect timeouts). `HttpPeer::new` with a host name would
//! resolve synchronously and panic on failure, so names are resolved here first.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pingora::upstreams::peer::HttpPeer;

use super::error::RelayError;
use crate::providers::UpstreamBase;

const DNS_TTL: Duration = Duration::from_secs(60);
/// How long an idle pooled upstream connection is kept.
const POOL_IDLE: Duration = Duration::from_secs(90);

#[derive(Hash, PartialEq, Eq, Clone)]
struct PeerKey {
    host: String,
    port: u16,
    tls: bool,
}

pub struct Peers {
    cache: Mutex<HashMap<PeerKey, (Arc<HttpPeer>, Instant)>>,
    connect_timeout: Duration,
}

impl Peers {
    pub fn new(connect_timeout: Duration) -> Self {
        Peers {
            cache: Mutex::new(HashMap::new()),
            connect_timeout,
        }
    }

    /// The peer for an upstream base, reached directly or through an outbound proxy, resolving
    /// names when the cached entry is stale.
    pub async fn get(
        &self,
        base: &UpstreamBase,
        _proxy: Option<&super::outbound::OutboundProxy>,
    ) -> Result<Arc<HttpPeer>, RelayError> {
        let key = PeerKey {
            host: base.host.clone(),
            port: base.port,
            tls: base.tls,
        };
        if let Some((peer, at)) = self.cache.lock().unwrap_or_else(|p| p.into_inner()).get(&key)
            && at.elapsed() < DNS_TTL
        {
            return Ok(peer.clone());
        }
        let addr = self.resolve(&base.host, base.port).await?;
        let peer = Arc::new(self.build(addr, base));
        self.cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, (peer.clone(), Instant::now()));
        Ok(peer)
    }

    /// Forgets a cached peer (after a connect failure, so the name is resolved again).
    pub fn forget(&self, base: &UpstreamBase) {
        let key = PeerKey {
            host: base.host.clone(),
            port: base.port,
            tls: base.tls,
        };
        self.cache.lock().unwrap_or_else(|p| p.into_inner()).remove(&key);
    }

    async fn resolve(&self, host: &str, port: u16) -> Result<SocketAddr, RelayError> {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(SocketAddr::new(ip, port));
        }
        let lookup = tokio::time::timeout(self.connect_timeout, tokio::net::lookup_host((host, port)))
            .await
            .map_err(|_| RelayError::UpstreamUnreachable(format!("DNS lookup of {host} timed out")))?
            .map_err(|e| RelayError::UpstreamUnreachable(format!("DNS lookup of {host} failed: {e}")))?;
        let addrs: Vec<SocketAddr> = lookup.collect();
        addrs
            .iter()
            .find(|a| a.is_ipv4())
            .or_else(|| addrs.first())
            .copied()
            .ok_or_else(|| RelayError::UpstreamUnreachable(format!("{host} has no address")))
    }

    fn build(&self, addr: SocketAddr, base: &UpstreamBase) -> HttpPeer {
        let mut peer = HttpPeer::new(addr, base.tls, base.host.clone());
        peer.options.connection_timeout = Some(self.connect_timeout);
        peer.options.total_connection_timeout = Some(self.connect_timeout);
        peer.options.idle_timeout = Some(POOL_IDLE);
        if base.tls {
            peer.options.set_http_version(2, 1);
        } else {
            peer.options.set_http_version(1, 1);
        }
        peer
    }
}
