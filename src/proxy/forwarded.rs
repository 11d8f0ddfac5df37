//! `X-Forwarded-*` handling and trusted proxy ranges.
//!
//! Owns the rule for "which address is the guest": the same walk Rack 2.2 (the
//! server's `request.ip`) and nginx `real_ip_recursive` make. It must not touch
//! the request itself; `headers.rs` does that.

use std::net::IpAddr;

/// A parsed CIDR range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Cidr {
    /// True when `ip` lies in this range (IPv4-mapped IPv6 addresses match IPv4 ranges).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// Parses `a.b.c.d/n`, `::1/128` or a bare address.
pub fn parse_cidr(s: &str) -> Result<Cidr, String> {
    let (a, p) = match s.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (s, None),
    };
    let addr: IpAddr = a
        .trim()
        .parse()
        .map_err(|_| "not an IP address".to_string())?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let prefix = match p {
        Some(p) => p
            .trim()
            .parse::<u8>()
            .map_err(|_| "bad prefix length".to_string())?,
        None => max,
    };
    if prefix > max {
        return Err(format!("prefix length over {max}"));
    }
    Ok(Cidr { addr, prefix })
}

/// The set of peers whose `X-Forwarded-For` is believed.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Vec<Cidr>);

impl TrustedProxies {
    /// Builds the set from already-validated config strings; invalid entries are skipped
    /// (config validation rejects them before we get here).
    pub fn new<S: AsRef<str>>(ranges: &[S]) -> Self {
        TrustedProxies(
            ranges
                .iter()
                .filter_map(|r| parse_cidr(r.as_ref()).ok())
                .collect(),
        )
    }

    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|c| c.contains(ip))
    }

    /// The guest's address: the TCP peer if untrusted; otherwise, reading
    /// `X-Forwarded-For` (all values, in order), the last untrusted entry, else the first
    /// entry, else the peer. Unparsable entries end the walk (they are not believed).
    pub fn client_addr<'a>(&self, peer: IpAddr, xff: impl Iterator<Item = &'a str>) -> IpAddr {
        if !self.is_trusted(peer) {
            return peer;
        }
        let chain: Vec<&str> = xff
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        let mut first = None;
        for (i, entry) in chain.iter().enumerate().rev() {
            let Some(ip) = parse_xff_entry(entry) else {
                break;
            };
            if !self.is_trusted(ip) {
                return ip;
            }
            if i == 0 {
                first = Some(ip);
            }
        }
        first.unwrap_or(peer)
    }
}

/// One `X-Forwarded-For` entry: an address, possibly with a port or brackets.
fn parse_xff_entry(s: &str) -> Option<IpAddr> {
    if let Ok(ip) = s.parse() {
        return Some(ip);
    }
    if let Some(rest) = s.strip_prefix('[') {
        return rest.split(']').next()?.parse().ok();
    }
    s.rsplit_once(':').and_then(|(a, _)| a.parse().ok())
}

/// Rack 2.2's trusted proxies: loopback and private ranges. The default for
/// `proxy.trusted_proxies`, so the sidecar records the same guest address the server does.
pub const RACK_TRUSTED: &[&str] = &[
    "127.0.0.0/8",
    "::1/128",
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "fc00::/7",
];

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn cidr_membership() {
        let c = parse_cidr("10.0.0.0/8").unwrap();
        assert!(c.contains(ip("10.200.1.1")));
        assert!(!c.contains(ip("11.0.0.1")));
        assert!(c.contains(ip("::ffff:10.1.2.3")));
        assert!(parse_cidr("0.0.0.0/0").unwrap().contains(ip("8.8.8.8")));
        assert!(parse_cidr("::1").unwrap().contains(ip("::1")));
        assert!(parse_cidr("1.2.3.4/33").is_err());
        assert!(parse_cidr("nope").is_err());
    }

    #[test]
    fn client_address_walk_matches_rack() {
        let t = TrustedProxies::new(RACK_TRUSTED);
        // Untrusted peer: the peer, whatever the header says.
        assert_eq!(
            t.client_addr(ip("203.0.113.9"), ["1.1.1.1"].into_iter()),
            ip("203.0.113.9")
        );
        // Trusted peer: last untrusted in the chain.
        assert_eq!(
            t.client_addr(
                ip("127.0.0.1"),
                ["198.51.100.1, 203.0.113.5, 10.0.0.2"].into_iter()
            ),
            ip("203.0.113.5")
        );
        // All trusted: the first one.
        assert_eq!(
            t.client_addr(ip("127.0.0.1"), ["10.0.0.5, 192.168.1.1"].into_iter()),
            ip("10.0.0.5")
        );
        // Several header lines count as one list.
        assert_eq!(
            t.client_addr(ip("127.0.0.1"), ["10.0.0.5", "198.51.100.7"].into_iter()),
            ip("198.51.100.7")
        );
        // No header: the peer.
        assert_eq!(
            t.client_addr(ip("127.0.0.1"), std::iter::empty()),
            ip("127.0.0.1")
        );
        // Garbage stops the walk and is never believed.
        assert_eq!(
            t.client_addr(ip("127.0.0.1"), ["evil, 10.0.0.1"].into_iter()),
            ip("127.0.0.1")
        );
        assert_eq!(
            t.client_addr(ip("127.0.0.1"), ["[2001:db8::1]:443"].into_iter()),
            ip("2001:db8::1")
        );
    }
}
