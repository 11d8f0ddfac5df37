//! Optional hardening of the proxy (`[proxy.restrict]`, off by default): which client
//! addresses may delete a deployment, and which may call the server's OAuth-protected paths
//! without any OAuth parameters.
//!
//! Owns the decision only: given a request's method, path, query, headers (and, on a capturing
//! route whose body is read anyway, its form body) and the TCP peer, whether it must be refused
//! and why. It must not read a streamed body (bodies of other routes are never buffered), edit
//! requests, or verify signatures (the server does).
//!
//! The address judged is the TCP peer, or, when the peer is one of `trusted_hops` (a reverse
//! proxy in front of the sidecar), the `X-Forwarded-For` walk over those hops only. It is never
//! the address recorded for the guest (`proxy.trusted_proxies`, Rack's defaults): those trust
//! the private ranges guests live in, so a guest at 10.1.2.3 could send
//! `X-Forwarded-For: 127.0.0.1` and pass `unsigned_from = ["127.0.0.1/32"]`.
//!
//! The real server leaves `DELETE /deployment/*` unauthenticated and answers 500 to an
//! unsigned call on `/configs/*`, `/params/*`, `/files/*` and `/auth`. A call counts as signed
//! when `oauth_signature` appears in an `Authorization: OAuth` header, in the query string,
//! or in the form body of a capturing route; on another protected route the body is not looked
//! into (it is streamed), so the signature must be in the header or the query string.

use std::net::IpAddr;

use http::{HeaderMap, Method};
use percent_encoding::percent_decode_str;

use super::forwarded::{parse_cidr, Cidr, TrustedProxies};
use super::headers::forwarded_for;
use crate::config::RestrictConfig;

/// Why a request is refused: the stable metric label and the one-line reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub label: &'static str,
    pub reason: String,
}

/// The compiled `[proxy.restrict]` lists; `None` means the check is off.
#[derive(Debug, Default)]
pub struct Restrict {
    delete_deployment_from: Option<Vec<Cidr>>,
    unsigned_from: Option<Vec<Cidr>>,
    /// `trusted_hops`: the only peers whose `X-Forwarded-For` is believed here.
    hops: TrustedProxies,
}

impl Restrict {
    /// Compiles the lists; an entry that does not parse is skipped (config validation
    /// refuses it first).
    pub fn new(cfg: &RestrictConfig) -> Restrict {
        let compile = |list: &[String]| -> Option<Vec<Cidr>> {
            (!list.is_empty()).then(|| list.iter().filter_map(|s| parse_cidr(s).ok()).collect())
        };
        Restrict {
            delete_deployment_from: compile(&cfg.delete_deployment_from),
            unsigned_from: compile(&cfg.unsigned_from),
            hops: TrustedProxies::new(&cfg.trusted_hops),
        }
    }

    /// True when no restriction is configured.
    pub fn is_off(&self) -> bool {
        self.delete_deployment_from.is_none() && self.unsigned_from.is_none()
    }

    /// The address these checks judge: `peer` (the TCP peer), or the `X-Forwarded-For` walk
    /// when `peer` is one of `trusted_hops`.
    pub fn judged(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        self.hops.client_addr(peer, forwarded_for(headers))
    }

    /// Checks a request before its body is read. `path_and_query` is the request target,
    /// `peer` the TCP peer.
    pub fn check_head(
        &self,
        method: &Method,
        path_and_query: &str,
        headers: &HeaderMap,
        peer: IpAddr,
        body_will_be_read: bool,
    ) -> Result<(), Refusal> {
        let client = self.judged(peer, headers);
        let (path, query) = path_and_query
            .split_once('?')
            .unwrap_or((path_and_query, ""));
        let first = first_segment(path);
        if let Some(allowed) = &self.delete_deployment_from {
            if method == Method::DELETE
                && first.as_deref() == Some("deployment")
                && !allowed.iter().any(|c| c.contains(client))
            {
                return Err(Refusal {
                    label: "delete_deployment_from",
                    reason: format!(
                        "DELETE /deployment from {client} is not allowed (proxy.restrict.delete_deployment_from)"
                    ),
                });
            }
        }
        if self.unsigned_from.is_some()
            && is_protected(first.as_deref())
            && !signed_in_head(query, headers)
            && !body_will_be_read
        {
            return self.unsigned(client);
        }
        Ok(())
    }

    /// Checks a protected call whose form body was read (a capturing route), once read.
    /// `peer` is the TCP peer.
    pub fn check_body(
        &self,
        path_and_query: &str,
        headers: &HeaderMap,
        body: &[u8],
        peer: IpAddr,
    ) -> Result<(), Refusal> {
        let (path, query) = path_and_query
            .split_once('?')
            .unwrap_or((path_and_query, ""));
        if self.unsigned_from.is_none()
            || !is_protected(first_segment(path).as_deref())
            || signed_in_head(query, headers)
            || has_signature(body)
        {
            return Ok(());
        }
        self.unsigned(self.judged(peer, headers))
    }

    fn unsigned(&self, client: IpAddr) -> Result<(), Refusal> {
        match &self.unsigned_from {
            Some(allowed) if !allowed.iter().any(|c| c.contains(client)) => Err(Refusal {
                label: "unsigned_from",
                reason: format!(
                    "unsigned call from {client} to an OAuth-protected path is not allowed (proxy.restrict.unsigned_from)"
                ),
            }),
            _ => Ok(()),
        }
    }
}

fn first_segment(path: &str) -> Option<String> {
    let rest = path.strip_prefix('/')?;
    let first = rest.split('/').next().unwrap_or_default();
    percent_decode_str(first)
        .decode_utf8()
        .ok()
        .map(|s| s.into_owned())
}

/// `/configs/*`, `/params/*`, `/files/*` and `/auth` (the server's OAuth-protected paths), by
/// their first segment, percent-decoded as the server matches it.
fn is_protected(first: Option<&str>) -> bool {
    matches!(first, Some("configs" | "params" | "files" | "auth"))
}

fn signed_in_head(query: &str, headers: &HeaderMap) -> bool {
    let in_header = headers
        .get_all(http::header::AUTHORIZATION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| {
            v.trim_start()
                .get(..5)
                .is_some_and(|s| s.eq_ignore_ascii_case("oauth"))
                && v.contains("oauth_signature")
        });
    in_header || has_signature(query.as_bytes())
}

fn has_signature(form: &[u8]) -> bool {
    form_urlencoded::parse(form).any(|(k, _)| k == "oauth_signature")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn restrict(delete: &[&str], unsigned: &[&str]) -> Restrict {
        Restrict::new(&RestrictConfig {
            delete_deployment_from: strings(delete),
            unsigned_from: strings(unsigned),
            trusted_hops: Vec::new(),
        })
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn off_by_default_allows_everything() {
        let r = restrict(&[], &[]);
        assert!(r.is_off());
        let h = HeaderMap::new();
        assert!(r
            .check_head(&Method::DELETE, "/deployment/1/D", &h, ip("8.8.8.8"), false)
            .is_ok());
        assert!(r
            .check_head(&Method::GET, "/configs/1/I", &h, ip("8.8.8.8"), false)
            .is_ok());
    }

    #[test]
    fn delete_deployment_only_from_the_listed_ranges() {
        let r = restrict(&["10.0.0.0/8", "127.0.0.1"], &[]);
        let h = HeaderMap::new();
        let del = |path: &str, from: &str| r.check_head(&Method::DELETE, path, &h, ip(from), false);
        assert!(del("/deployment/1/D", "10.1.2.3").is_ok());
        assert!(del("/deployment/1/D", "127.0.0.1").is_ok());
        let refused = del("/%64eployment/1/D?x", "192.168.1.1").unwrap_err();
        assert_eq!(refused.label, "delete_deployment_from");
        assert!(refused.reason.contains("192.168.1.1"), "{}", refused.reason);
        assert!(r
            .check_head(&Method::GET, "/deployment/1/D", &h, ip("8.8.8.8"), false)
            .is_ok());
    }

    #[test]
    fn unsigned_calls_to_protected_paths_only_from_the_listed_ranges() {
        let r = restrict(&[], &["127.0.0.0/8"]);
        let none = HeaderMap::new();
        let mut oauth = HeaderMap::new();
        oauth.insert(
            http::header::AUTHORIZATION,
            "OAuth oauth_consumer_key=\"k\", oauth_signature=\"s\""
                .parse()
                .expect("hv"),
        );
        let far = ip("192.0.2.1");
        let head = |m: Method, p: &str, h: &HeaderMap| r.check_head(&m, p, h, far, false);
        assert_eq!(
            head(Method::GET, "/configs/1/I", &none).unwrap_err().label,
            "unsigned_from"
        );
        assert!(head(Method::GET, "/auth", &none).is_err());
        assert!(head(Method::GET, "/configs/1/I", &oauth).is_ok());
        assert!(head(Method::GET, "/configs/1/I?oauth_signature=x", &none).is_ok());
        assert!(head(Method::GET, "/version", &none).is_ok());
        assert!(head(Method::GET, "/ip/1/I", &none).is_ok());
        assert!(r
            .check_head(&Method::GET, "/configs/1/I", &none, ip("127.0.0.1"), false)
            .is_ok());
        // A capturing route is judged once its body is read.
        assert!(r
            .check_head(&Method::PUT, "/params/2/I", &none, far, true)
            .is_ok());
        assert!(r
            .check_body(
                "/params/2/I",
                &none,
                b"audrey_data=x&oauth_signature=s",
                far
            )
            .is_ok());
        assert!(r
            .check_body("/params/2/I", &none, b"audrey_data=x", far)
            .is_err());
    }

    fn xff(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", value.parse().expect("hv"));
        h
    }

    #[test]
    fn a_guest_cannot_claim_an_allowed_address_by_sending_x_forwarded_for() {
        // The documentation's own example, with no trusted hop: the TCP peer is judged.
        let r = restrict(&[], &["127.0.0.1/32"]);
        let claim = xff("127.0.0.1");
        let refused = r
            .check_head(&Method::GET, "/configs/1/I", &claim, ip("10.1.2.3"), false)
            .unwrap_err();
        assert_eq!(refused.label, "unsigned_from");
        assert!(refused.reason.contains("10.1.2.3"), "{}", refused.reason);
        assert!(r
            .check_body("/params/2/I", &claim, b"audrey_data=x", ip("10.1.2.3"))
            .is_err());
        // A loopback peer is loopback, whatever it forwards.
        assert!(r
            .check_head(
                &Method::GET,
                "/configs/1/I",
                &xff("10.9.9.9"),
                ip("127.0.0.1"),
                false
            )
            .is_ok());
    }

    #[test]
    fn x_forwarded_for_is_believed_from_trusted_hops_only() {
        // Apache on loopback in front of the sidecar: it appends the guest's address.
        let r = Restrict::new(&RestrictConfig {
            delete_deployment_from: Vec::new(),
            unsigned_from: strings(&["127.0.0.1/32"]),
            trusted_hops: strings(&["127.0.0.1/32"]),
        });
        let get = |h: &HeaderMap, peer: &str| {
            r.check_head(&Method::GET, "/configs/1/I", h, ip(peer), false)
        };
        // The guest at 10.1.2.3 claimed 127.0.0.1; the hop appended the real address.
        assert!(get(&xff("127.0.0.1, 10.1.2.3"), "127.0.0.1").is_err());
        // A local caller through the hop.
        assert!(get(&xff("127.0.0.1"), "127.0.0.1").is_ok());
        // A peer that is no hop: its header is not read.
        assert!(get(&xff("127.0.0.1"), "10.1.2.3").is_err());
        assert_eq!(r.judged(ip("10.1.2.3"), &xff("127.0.0.1")), ip("10.1.2.3"));
    }
}
