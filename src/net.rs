//! Network helpers shared by the relay and the admin listener.

use std::net::IpAddr;

use http::HeaderMap;
use ipnet::IpNet;

/// The client's address: the TCP peer, or, when the peer is a trusted proxy, the nearest untrusted
/// address in `X-Forwarded-For`, read right to left across every such header (the last header
/// first), so that a client cannot forge its way in: what it sent itself stands left of what the
/// trusted proxies appended. When every hop is trusted, the leftmost one is taken; an entry that
/// is not an IP address stops the walk at the nearest trusted hop seen so far.
///
/// IPv4-mapped IPv6 addresses (`::ffff:192.0.2.1`, what a dual-stack listener reports for IPv4
/// peers) are read as the IPv4 address, so `trusted_proxies` written in IPv4 match them.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(ip));
    let peer = peer.to_canonical();
    if !is_trusted(&peer) {
        return peer;
    }
    let mut found = peer;
    for value in headers.get_all("x-forwarded-for").iter().rev() {
        let Ok(v) = value.to_str() else { return found };
        for hop in v.rsplit(',') {
            match hop.trim().parse::<IpAddr>().map(|ip| ip.to_canonical()) {
                Ok(ip) if is_trusted(&ip) => found = ip,
                Ok(ip) => return ip,
                Err(_) => return found,
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn headers(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append("x-forwarded-for", HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn forwarded_for_is_read_only_from_trusted_peers_right_to_left() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        // An untrusted peer's header is its own word.
        assert_eq!(
            client_ip(ip("192.0.2.7"), &headers(&["203.0.113.1"]), &trusted),
            ip("192.0.2.7")
        );
        // A trusted peer: the nearest untrusted hop, not the forged leftmost one.
        assert_eq!(
            client_ip(ip("10.0.0.1"), &headers(&["1.1.1.1, 203.0.113.5, 10.0.0.2"]), &trusted),
            ip("203.0.113.5")
        );
        // Several headers: the last one is the nearest (HAProxy appends a header of its own).
        assert_eq!(
            client_ip(ip("10.0.0.1"), &headers(&["1.1.1.1", "203.0.113.5"]), &trusted),
            ip("203.0.113.5")
        );
        // No header, every hop trusted, garbage: the nearest trusted address.
        assert_eq!(client_ip(ip("10.0.0.1"), &headers(&[]), &trusted), ip("10.0.0.1"));
        assert_eq!(
            client_ip(ip("10.0.0.1"), &headers(&["10.0.0.9"]), &trusted),
            ip("10.0.0.9")
        );
        assert_eq!(
            client_ip(ip("10.0.0.1"), &headers(&["203.0.113.5, junk, 10.0.0.3"]), &trusted),
            ip("10.0.0.3")
        );
        // IPv4-mapped peers match IPv4 ranges.
        assert_eq!(
            client_ip(ip("::ffff:10.0.0.1"), &headers(&["203.0.113.5"]), &trusted),
            ip("203.0.113.5")
        );
        assert_eq!(client_ip(ip("::ffff:192.0.2.7"), &headers(&[]), &[]), ip("192.0.2.7"));
    }
}
