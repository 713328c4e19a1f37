//! Where the gateway's own outbound requests may go (media URLs, webhooks): the public internet
//! only, unless an operator allows its own network. The daemon, which makes the requests,
//! resolves names to public addresses only; the functions use the same rule to refuse an
//! address-literal URL when it is registered, before anything is stored.

use std::net::IpAddr;

/// A URL's host as the `url` crate writes it (`example.com`, `10.0.0.1`, `[::1]`): a name (the
/// resolver checks where it leads) other than `localhost`, or a public address.
pub fn host_is_public(host: &str) -> bool {
    let literal = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    match literal.parse::<IpAddr>() {
        Ok(ip) => is_public(ip),
        Err(_) => {
            let name = host.trim_end_matches('.').to_ascii_lowercase();
            !name.is_empty() && name != "localhost" && !name.ends_with(".localhost")
        }
    }
}

/// An address on the public internet: not loopback, private, link-local, shared (CGNAT),
/// unspecified, multicast, broadcast, benchmarking or reserved, in either family; an IPv6
/// address that carries an IPv4 one (mapped, compatible, NAT64, 6to4) is judged by that one.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_multicast()
                || v4.is_broadcast()
                || v4.is_documentation()
                || a == 0
                || (a == 100 && (64..128).contains(&b))
                || (a == 192 && b == 0 && c == 0)
                || (a == 198 && (18..20).contains(&b))
                || a >= 240)
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            let embedded = |hi: u16, lo: u16| IpAddr::V4(std::net::Ipv4Addr::from(((hi as u32) << 16) | lo as u32));
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            if s[..6] == [0; 6] && !v6.is_loopback() && !v6.is_unspecified() {
                return is_public(embedded(s[6], s[7])); // IPv4-compatible
            }
            if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
                return is_public(embedded(s[6], s[7])); // NAT64, well-known prefix
            }
            if (s[0] == 0x64 && s[1] == 0xff9b && s[2] == 1) || s[..6] == [0, 0, 0, 0, 0xffff, 0] {
                return false; // local NAT64 (RFC 8215), IPv4-translated: where they lead is the network's
            }
            if s[0] == 0x2002 {
                return is_public(embedded(s[1], s[2])); // 6to4
            }
            !(v6.is_loopback() || v6.is_unspecified() || v6.is_multicast() || (s[0] & 0xfe00) == 0xfc00 || (s[0] & 0xffc0) == 0xfe80 || (s[0] & 0xffc0) == 0xfec0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_public_addresses_pass() {
        for private in ["127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "0.0.0.0", "100.64.0.1", "224.0.0.1",
            "255.255.255.255", "192.0.0.8", "198.18.0.1", "::1", "::", "fd00::1", "fe80::1", "fec0::1", "::ffff:127.0.0.1", "::ffff:10.0.0.1",
            "::127.0.0.1", "64:ff9b::a00:1", "64:ff9b:1::a00:1", "64:ff9b:1:a00:1:0:808:808", "::ffff:0:808:808", "2002:a00:1::1", "2002:7f00:1::"] {
            assert!(!is_public(private.parse().unwrap()), "{private}");
        }
        for public in ["8.8.8.8", "157.240.1.1", "2a03:2880:f10c:83:face:b00c:0:25de", "::ffff:8.8.8.8", "64:ff9b::808:808", "2002:808:808::1"] {
            assert!(is_public(public.parse().unwrap()), "{public}");
        }
    }

    #[test]
    fn hosts_are_names_or_public_addresses() {
        assert!(host_is_public("cdn.example.com") && host_is_public("8.8.8.8") && host_is_public("[2a03:2880::1]"));
        for inside in ["127.0.0.1", "[::1]", "localhost", "LOCALHOST.", "a.localhost", "10.0.0.1", "[::ffff:10.0.0.1]", ""] {
            assert!(!host_is_public(inside), "{inside}");
        }
    }
}
