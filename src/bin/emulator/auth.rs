//! What the server derives from the connection and headers: the URL it rebuilds for OAuth
//! (Rack 2.2 `request.url` from `Host`, `X-Forwarded-Host`, `X-Forwarded-Proto`…), the client
//! address it records (Rack 2.2 `request.ip`), and the OAuth check of protected paths.
//!
//! It only reads the request and the consumer secrets; it must not write anything.
use audrey_federation::oauth::{self, Incoming, Verdict};

use crate::store::Store;
use crate::web::{Params, Req};

/// Rack 2.2 `request.scheme`: `HTTPS`/`X-Forwarded-Ssl: on`, then `X-Forwarded-Scheme`, then
/// the first element of `X-Forwarded-Proto`, each only if `http` or `https`; else `http`.
pub fn scheme(req: &Req) -> String {
    if req.env("x-forwarded-ssl").as_deref() == Some("on") {
        return "https".into();
    }
    let allowed = |s: &str| matches!(s, "http" | "https").then(|| s.to_string());
    if let Some(s) = req.env("x-forwarded-scheme").and_then(|s| allowed(&s)) {
        return s;
    }
    if let Some(p) = req.env("x-forwarded-proto") {
        let first = p.split(',').next().unwrap_or("");
        if let Some(s) = allowed(first) {
            return s;
        }
    }
    "http".into()
}

/// Rack 2.2 `request.authority`: the last `X-Forwarded-Host` entry, else `Host`, else the
/// server's own address.
pub fn authority(req: &Req) -> String {
    if let Some(fwd) = req.env("x-forwarded-host") {
        if let Some(last) = fwd.rsplit([',', ' ', '\t']).find(|s| !s.is_empty()) {
            return last.to_string();
        }
    }
    req.env("host").unwrap_or_else(|| req.local.to_string())
}

/// `request.url`: `scheme://authority/path?query` (the OAuth layer normalises it further).
pub fn url(req: &Req) -> String {
    let mut u = format!("{}://{}{}", scheme(req), authority(req), req.path);
    if !req.query.is_empty() {
        u.push('?');
        u.push_str(&req.query);
    }
    u
}

/// Rack 2.2's trusted proxies: loopback (127.0.0.0/8, `::1`), private IPv4 ranges, IPv6
/// unique-local `fc00::/7`, `localhost` and unix sockets; matched as text, case-insensitively.
pub fn trusted(ip: &str) -> bool {
    let ip = ip.to_ascii_lowercase();
    if ip == "::1" || ip == "localhost" || ip == "unix" || ip.starts_with("unix:") {
        return true;
    }
    let octets: Vec<&str> = ip.split('.').collect();
    if octets.len() == 4 && octets.iter().all(|o| octet(o)) {
        let second = octets[1].parse::<u16>().unwrap_or(999);
        return match octets[0] {
            "127" | "10" => true,
            "172" => (16..=31).contains(&second) && !octets[1].starts_with('0'),
            "192" => octets[1] == "168",
            _ => false,
        };
    }
    // /\Af[cd][0-9a-f]{2}(?::[0-9a-f]{0,4}){0,7}\z/
    let b = ip.as_bytes();
    if b.len() >= 4 && b[0] == b'f' && (b[1] == b'c' || b[1] == b'd') {
        let hex = |c: &u8| c.is_ascii_hexdigit();
        if b[2..4].iter().all(hex) {
            let groups: Vec<&str> = ip[4..].split(':').skip(1).collect();
            let rest_ok = ip[4..].is_empty() || ip[4..].starts_with(':');
            return rest_ok
                && groups.len() <= 7
                && groups
                    .iter()
                    .all(|g| g.len() <= 4 && g.bytes().all(|c| c.is_ascii_hexdigit()));
        }
    }
    false
}

/// An IPv4 octet as Rack's regex accepts it: `25[0-5]|2[0-4][0-9]|[01]?[0-9]?[0-9]`.
fn octet(o: &str) -> bool {
    !o.is_empty()
        && o.len() <= 3
        && o.bytes().all(|c| c.is_ascii_digit())
        && o.parse::<u16>().is_ok_and(|n| n <= 255)
}

/// Rack 2.2 `request.ip`: an untrusted TCP peer is the answer; otherwise the last untrusted
/// `X-Forwarded-For` entry (ports stripped), or its first entry when all are trusted, or the
/// peer when there is none.
pub fn client_ip(req: &Req) -> String {
    let remote = req.peer.to_canonical().to_string();
    if !trusted(&remote) {
        return remote;
    }
    let forwarded: Vec<String> = req
        .env("x-forwarded-for")
        .map(|v| {
            v.split([',', ' ', '\t', '\n', '\r'])
                .filter(|s| !s.is_empty())
                .map(strip_port)
                .collect()
        })
        .unwrap_or_default();
    if let Some(last_untrusted) = forwarded.iter().rev().find(|ip| !trusted(ip)) {
        return last_untrusted.clone();
    }
    forwarded.first().cloned().unwrap_or(remote)
}

/// Rack's `strip_port`: `[v6]:port` → `v6`, `v4:port` → `v4`.
fn strip_port(ip: &str) -> String {
    if let (Some(start), Some(end)) = (ip.find('['), ip.find(']')) {
        if start < end {
            return ip[start + 1..end].to_string();
        }
    }
    match ip.split_once(':') {
        Some((host, _)) if ip.matches(':').count() == 1 => host.to_string(),
        _ => ip.to_string(),
    }
}

/// `authenticate!`: the OAuth verdict for a protected path. Unknown consumers get the empty
/// secret, as on the real server.
pub fn authenticate(req: &Req, params: &Params, store: &Store) -> Verdict {
    let url = url(req);
    let authorization = req.env("authorization");
    let incoming = Incoming {
        method: &req.method,
        url: &url,
        authorization: authorization.as_deref(),
        form: &params.oauth_form,
    };
    oauth::verify(&incoming, |key| store.consumer_secret(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(peer: &str, headers: &[(&str, &str)]) -> Req {
        Req {
            method: "GET".into(),
            path: "/ip/1/x".into(),
            query: String::new(),
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v.to_string()))
                .collect(),
            body: bytes::Bytes::new(),
            peer: peer.parse().expect("ip"),
            local: "127.0.0.1:4567".parse().expect("addr"),
        }
    }

    #[test]
    fn trust_list() {
        for t in [
            "127.0.0.1",
            "127.1.2.3",
            "10.0.0.5",
            "172.16.0.1",
            "172.31.9.9",
            "192.168.1.1",
            "::1",
            "fd00::1",
            "fc12:3::",
            "LOCALHOST",
            "unix:/x",
        ] {
            assert!(trusted(t), "{t}");
        }
        for u in [
            "8.8.8.8",
            "172.32.0.1",
            "192.169.0.1",
            "::ffff:127.0.0.1",
            "fe80::1",
            "garbage",
            "10.0.0",
        ] {
            assert!(!trusted(u), "{u}");
        }
    }

    #[test]
    fn request_ip_like_rack_2_2() {
        assert_eq!(client_ip(&req("127.0.0.1", &[])), "127.0.0.1");
        assert_eq!(
            client_ip(&req("203.0.113.9", &[("X-Forwarded-For", "10.0.0.5")])),
            "203.0.113.9"
        );
        assert_eq!(
            client_ip(&req("127.0.0.1", &[("X-Forwarded-For", "10.0.0.5")])),
            "10.0.0.5"
        );
        assert_eq!(
            client_ip(&req(
                "127.0.0.1",
                &[("X-Forwarded-For", "198.51.100.7, 203.0.113.9, 10.0.0.1")]
            )),
            "203.0.113.9"
        );
        assert_eq!(
            client_ip(&req(
                "127.0.0.1",
                &[("X-Forwarded-For", "10.0.0.5, 192.168.0.1")]
            )),
            "10.0.0.5"
        );
        assert_eq!(
            client_ip(&req(
                "127.0.0.1",
                &[("X-Forwarded-For", "198.51.100.7:5555")]
            )),
            "198.51.100.7"
        );
        assert_eq!(
            client_ip(&req(
                "::1",
                &[("X-Forwarded-For", "a"), ("X-Forwarded-For", "b")]
            )),
            "b"
        );
    }

    #[test]
    fn url_from_forwarded_headers() {
        let r = req("127.0.0.1", &[("Host", "cs.example:4567")]);
        assert_eq!(url(&r), "http://cs.example:4567/ip/1/x");
        let r = req(
            "127.0.0.1",
            &[
                ("Host", "localhost:4567"),
                ("X_FORWARDED_PROTO", "https"),
                ("X-Forwarded-Host", "a, cs.example"),
            ],
        );
        assert_eq!(url(&r), "https://cs.example/ip/1/x");
        let r = req("127.0.0.1", &[("Host", "h"), ("X-Forwarded-Proto", "ftp")]);
        assert_eq!(url(&r), "http://h/ip/1/x");
    }
}
