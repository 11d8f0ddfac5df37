//! Header rules of a transparent proxy: hop-by-hop removal (RFC 9110 §7.6.1) and the
//! `X-Forwarded-*` headers.
//!
//! Owns header edits only. It must never touch `Host` (the server's OAuth signatures
//! cover it) nor any end-to-end header.

use std::net::IpAddr;

use http::header::{
    HeaderMap, HeaderName, HeaderValue, CONNECTION, HOST, TE, TRAILER, TRANSFER_ENCODING, UPGRADE,
};

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// Headers that are hop-by-hop whatever `Connection` says.
const HOP_BY_HOP: &[&str] = &[
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
];

/// Removes hop-by-hop headers: the fixed set and every header named in `Connection`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for name in named {
        // Never let a client strip Host through `Connection: host`.
        if name != HOST {
            headers.remove(&name);
        }
    }
    for name in [CONNECTION, TE, TRAILER, TRANSFER_ENCODING, UPGRADE] {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(*name);
    }
}

/// Appends the peer to `X-Forwarded-For` (folding existing lines into one, as nginx's
/// `$proxy_add_x_forwarded_for` does) and sets `X-Forwarded-Proto` from the listener's
/// scheme unless the client sent one.
pub fn add_forwarded(headers: &mut HeaderMap, peer: IpAddr, tls: bool) {
    let mut xff: Vec<String> = headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    xff.push(peer.to_string());
    if let Ok(v) = HeaderValue::from_str(&xff.join(", ")) {
        headers.insert(X_FORWARDED_FOR.clone(), v);
    }
    if !headers.contains_key(&X_FORWARDED_PROTO) {
        let scheme = if tls { "https" } else { "http" };
        headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(scheme));
    }
}

/// The raw `X-Forwarded-For` values, in order.
pub fn forwarded_for(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_fixed_and_connection_named_headers() {
        let mut h = HeaderMap::new();
        h.insert(
            CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret, host"),
        );
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert(HOST, HeaderValue::from_static("configserver:443"));
        h.insert(TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        h.insert(UPGRADE, HeaderValue::from_static("h2c"));
        h.insert(
            "content-type",
            HeaderValue::from_static("text/html;charset=utf-8"),
        );
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 2, "{h:?}");
        assert_eq!(h[HOST], "configserver:443");
        assert_eq!(h["content-type"], "text/html;charset=utf-8");
    }

    #[test]
    fn forwarded_headers() {
        let mut h = HeaderMap::new();
        add_forwarded(&mut h, "127.0.0.1".parse().unwrap(), true);
        assert_eq!(h["x-forwarded-for"], "127.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "https");

        let mut h = HeaderMap::new();
        h.append("x-forwarded-for", HeaderValue::from_static("10.0.0.5"));
        h.append(
            "x-forwarded-for",
            HeaderValue::from_static("192.168.0.1, 172.16.0.1"),
        );
        h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        add_forwarded(&mut h, "::1".parse().unwrap(), false);
        assert_eq!(
            h["x-forwarded-for"],
            "10.0.0.5, 192.168.0.1, 172.16.0.1, ::1"
        );
        assert_eq!(h["x-forwarded-proto"], "https");
    }
}
