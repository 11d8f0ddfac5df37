//! X-Forwarded-* handling and trusted proxy ranges.
use std::net::IpAddr;

/// A parsed CIDR range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
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
