//! The admin listener: `/healthz`, `/readyz`, `/status`, `/metrics`, and the dead-letter
//! routes (`crate::deadletters`).
//!
//! Owns the operator's view of the process, and who may change state through it
//! ([`MutateAuth`]: every method but GET and HEAD needs the bearer token of
//! `admin.token_file`, or, without one, a loopback peer). It must not proxy anything and must
//! stay cheap: a readiness probe opens one TCP connection to the upstream and makes one tiny
//! durable write, nothing more; `/status` only reads counters and one small table. Neither
//! says anything secret: no credentials, no message bodies (a link error is the text the log
//! already shows).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http::header::{AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Serialize;

use crate::body::{full, ProxyBody};
use crate::change::now_ms;
use crate::serve::Peer;
use crate::status::{LinkSnapshot, LinkStates};
use crate::store::Store;

/// What the admin endpoints look at.
pub struct Admin {
    pub site: String,
    pub upstream: http::uri::Authority,
    pub store: Store,
    pub metrics: PrometheusHandle,
    /// The broker links; `None` without federation (no `[amqp]`).
    pub links: Option<LinkStates>,
    /// `admin.ready_requires_broker`: a down link makes `/readyz` 503.
    pub ready_requires_broker: bool,
    /// Who may call the mutating endpoints.
    pub mutate: MutateAuth,
}

/// Who may call a mutating admin endpoint (any method but GET and HEAD:
/// `POST /dead-letters/retry`, `POST /dead-letters/drop`).
pub enum MutateAuth {
    /// `admin.token_file` unset: loopback peers only.
    LoopbackOnly,
    /// `Authorization: Bearer <token>`, the token read from `admin.token_file`, from any peer.
    Token(String),
}

/// Why a mutating call was refused: status, metric label, one-line reason.
#[derive(Debug, PartialEq, Eq)]
pub struct AdminRefusal {
    pub status: StatusCode,
    pub label: &'static str,
    pub reason: &'static str,
}

impl MutateAuth {
    /// From `admin.token_file`; the error names what is wrong with the file.
    pub fn from_file(token_file: Option<&Path>) -> Result<MutateAuth, String> {
        match token_file {
            None => Ok(MutateAuth::LoopbackOnly),
            Some(path) => read_token_file(path).map(MutateAuth::Token),
        }
    }

    /// Whether a mutating call from `peer` with `headers` may run.
    pub fn check(&self, peer: IpAddr, headers: &HeaderMap) -> Result<(), AdminRefusal> {
        match self {
            MutateAuth::LoopbackOnly if loopback(peer) => Ok(()),
            MutateAuth::LoopbackOnly => Err(AdminRefusal {
                status: StatusCode::FORBIDDEN,
                label: "not_loopback",
                reason: "mutating admin calls are accepted from loopback only; set admin.token_file to accept a bearer token",
            }),
            MutateAuth::Token(token) => {
                let sent = headers
                    .get(AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.split_once(' '))
                    .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
                    .map(|(_, t)| t.trim());
                match sent {
                    None => Err(AdminRefusal {
                        status: StatusCode::UNAUTHORIZED,
                        label: "no_token",
                        reason: "this call needs `Authorization: Bearer <the token in admin.token_file>`",
                    }),
                    Some(t) if bool::from(subtle::ConstantTimeEq::ct_eq(t.as_bytes(), token.as_bytes())) => Ok(()),
                    Some(_) => Err(AdminRefusal {
                        status: StatusCode::UNAUTHORIZED,
                        label: "bad_token",
                        reason: "the bearer token is not the one in admin.token_file",
                    }),
                }
            }
        }
    }
}

/// The token in `path`: its first line, which must not be empty.
pub fn read_token_file(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read admin.token_file {}: {e}", path.display()))?;
    let token = text.lines().next().unwrap_or_default().trim();
    if token.is_empty() {
        return Err(format!("admin.token_file {} is empty", path.display()));
    }
    Ok(token.to_owned())
}

/// 127.0.0.0/8, ::1 and IPv4-mapped loopback.
fn loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
        IpAddr::V4(v4) => v4.is_loopback(),
    }
}

/// The `/status` document (README "Status"). Field names are an interface: add, never rename.
#[derive(Debug, Serialize)]
pub struct Status {
    pub site: String,
    pub version: &'static str,
    /// `host:port` of the local Config Server.
    pub upstream: String,
    pub federation: bool,
    /// Unix time (ms) this document was made.
    pub now_ms: u64,
    /// `publish` and `subscribe`; empty without federation.
    pub links: BTreeMap<&'static str, LinkSnapshot>,
    pub outbox: Outbox,
    /// Inbound changes waiting for their instance's registration.
    pub parked: u64,
    pub dead_letters: DeadLetters,
    /// Per origin site whose changes were applied here.
    pub origins: BTreeMap<String, Origin>,
    /// Why `origins` could not be read, if it could not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub origins_error: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Outbox {
    pub pending: u64,
    /// Age of the oldest pending change; `null` when the outbox is empty.
    pub oldest_age_seconds: Option<f64>,
    /// Entries the publisher holds back (deployment unknown); `null` until it has looked.
    pub held: Option<u64>,
}

#[derive(Debug, Serialize)]
pub struct DeadLetters {
    pub outbound: u64,
    pub inbound: u64,
}

#[derive(Debug, Serialize)]
pub struct Origin {
    pub applied: u64,
    pub max_origin_seq: u64,
    /// Unix time (ms) the newest applied change was captured at its origin.
    pub last_applied_origin_time_ms: u64,
    /// Unix time (ms) it was applied here.
    pub last_applied_at_ms: u64,
    /// Now minus `last_applied_origin_time_ms`.
    pub lag_seconds: f64,
}

impl Admin {
    pub async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        peer: Peer,
    ) -> Response<ProxyBody> {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            if let Err(r) = self.mutate.check(peer.addr.ip(), req.headers()) {
                crate::metrics::admin_refused(r.label);
                tracing::warn!(peer = %peer.addr, method = %req.method(), path = req.uri().path(), reason = r.reason, "admin call refused");
                let mut resp = text(r.status, format!("{}\n", r.reason));
                if r.status == StatusCode::UNAUTHORIZED {
                    resp.headers_mut().insert(
                        WWW_AUTHENTICATE,
                        HeaderValue::from_static("Bearer realm=\"audrey-federation admin\""),
                    );
                }
                return resp;
            }
        }
        if req.uri().path().starts_with("/dead-letters") {
            return crate::deadletters::handle(&self.store, req).await;
        }
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n");
        }
        match req.uri().path() {
            "/healthz" => text(StatusCode::OK, "ok\n"),
            "/readyz" => self.readyz().await,
            "/status" => match serde_json::to_vec_pretty(&self.status()) {
                Ok(mut body) => {
                    body.push(b'\n');
                    let mut resp = text(StatusCode::OK, body);
                    resp.headers_mut()
                        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                    resp
                }
                Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("status: {e}\n")),
            },
            "/metrics" => {
                self.refresh_gauges();
                let mut resp = text(StatusCode::OK, self.metrics.render());
                resp.headers_mut().insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                resp
            }
            _ => text(
                StatusCode::NOT_FOUND,
                "not found: try /healthz, /readyz, /status or /metrics\n",
            ),
        }
    }

    /// Ready when the upstream accepts a TCP connection and the outbox takes a durable write;
    /// with `ready_requires_broker`, also when both broker links are up. The body always
    /// names the links' state.
    async fn readyz(&self) -> Response<ProxyBody> {
        let mut problems = Vec::new();
        let shown = self.upstream_shown();
        match tokio::time::timeout(
            Duration::from_secs(2),
            tokio::net::TcpStream::connect(self.upstream.as_str()),
        )
        .await
        {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => problems.push(format!("upstream {shown} unreachable: {e}")),
            Err(_) => problems.push(format!(
                "upstream {shown} did not accept a connection within 2s"
            )),
        }
        match tokio::time::timeout(Duration::from_secs(5), self.store.probe_writable()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => problems.push(format!("outbox not writable: {e}")),
            Err(_) => problems.push("outbox write probe did not finish within 5s".to_string()),
        }
        let mut notes = Vec::new();
        match &self.links {
            None => notes.push("broker: federation disabled (capture only)".to_string()),
            Some(links) => {
                for (name, link) in links.all() {
                    let line = link_line(name, &link);
                    if !link.up && self.ready_requires_broker {
                        problems.push(line);
                    } else {
                        notes.push(line);
                    }
                }
            }
        }
        if problems.is_empty() {
            notes.insert(0, "ready".to_string());
            text(StatusCode::OK, notes.join("\n") + "\n")
        } else {
            problems.extend(notes);
            text(StatusCode::SERVICE_UNAVAILABLE, problems.join("\n") + "\n")
        }
    }

    /// The `/status` document, from counters and the origins table.
    pub fn status(&self) -> Status {
        let now = now_ms();
        let stats = self.store.stats();
        let links = self
            .links
            .as_ref()
            .map(|l| l.all().into_iter().collect())
            .unwrap_or_default();
        let (origins, origins_error) = match self.store.origins() {
            Ok(list) => (
                list.into_iter()
                    .map(|(site, o)| {
                        let origin = Origin {
                            applied: o.applied,
                            max_origin_seq: o.max_origin_seq,
                            last_applied_origin_time_ms: o.last_captured_at_ms,
                            last_applied_at_ms: o.last_applied_at_ms,
                            lag_seconds: seconds_since(now, o.last_captured_at_ms),
                        };
                        (site, origin)
                    })
                    .collect(),
                None,
            ),
            Err(e) => (BTreeMap::new(), Some(e.to_string())),
        };
        Status {
            site: self.site.clone(),
            version: env!("CARGO_PKG_VERSION"),
            upstream: self.upstream_shown(),
            federation: self.links.is_some(),
            now_ms: now,
            links,
            outbox: Outbox {
                pending: self.store.depth(),
                oldest_age_seconds: self
                    .store
                    .oldest_captured_ms()
                    .map(|ms| seconds_since(now, ms)),
                held: self.links.as_ref().and_then(LinkStates::held),
            },
            parked: stats.parked,
            dead_letters: DeadLetters {
                outbound: self.store.dead_letter_count(),
                inbound: self.store.inbound_dead_letter_count(),
            },
            origins,
            origins_error,
        }
    }

    /// The upstream as `host:port`, never with any user information.
    fn upstream_shown(&self) -> String {
        match self.upstream.port_u16() {
            Some(p) => format!("{}:{p}", self.upstream.host()),
            None => self.upstream.host().to_string(),
        }
    }

    fn refresh_gauges(&self) {
        let depth = self.store.depth();
        let age = self
            .store
            .oldest_captured_ms()
            .map(|ms| Duration::from_millis(crate::change::now_ms().saturating_sub(ms)));
        crate::metrics::outbox_state(depth, age);
        crate::metrics::kept_state(
            self.store.parked_count(),
            self.store.dead_letter_count(),
            self.store.inbound_dead_letter_count(),
        );
    }
}

/// One line of `/readyz` about a broker link.
fn link_line(name: &str, link: &LinkSnapshot) -> String {
    let state = if link.up { "up" } else { "down" };
    let ago = seconds_since(now_ms(), link.since_ms);
    let mut line = format!("broker {name} link {state} for {ago:.0}s");
    if let (false, Some(err)) = (link.up, &link.last_error) {
        line.push_str(": ");
        line.push_str(err);
    }
    line
}

/// Seconds from unix time `then_ms` to `now_ms` (0 if the clock went back).
fn seconds_since(now_ms: u64, then_ms: u64) -> f64 {
    now_ms.saturating_sub(then_ms) as f64 / 1000.0
}

fn text(status: StatusCode, body: impl Into<bytes::Bytes>) -> Response<ProxyBody> {
    let mut resp = Response::new(full(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    fn bearer(t: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, format!("Bearer {t}").parse().expect("hv"));
        h
    }

    #[test]
    fn without_a_token_file_only_loopback_peers_may_mutate() {
        let auth = MutateAuth::LoopbackOnly;
        let none = HeaderMap::new();
        for peer in ["127.0.0.1", "127.0.0.2", "::1", "::ffff:127.0.0.1"] {
            assert!(auth.check(ip(peer), &none).is_ok(), "{peer}");
        }
        let refused = auth.check(ip("10.1.2.3"), &bearer("x")).unwrap_err();
        assert_eq!(refused.status, StatusCode::FORBIDDEN);
        assert_eq!(refused.label, "not_loopback");
        assert!(refused.reason.contains("admin.token_file"));
    }

    #[test]
    fn with_a_token_file_every_peer_needs_the_token() {
        let auth = MutateAuth::Token("s3cret".into());
        for peer in ["127.0.0.1", "10.1.2.3"] {
            let no = auth.check(ip(peer), &HeaderMap::new()).unwrap_err();
            assert_eq!(
                (no.status, no.label),
                (StatusCode::UNAUTHORIZED, "no_token")
            );
            let bad = auth.check(ip(peer), &bearer("s3cre")).unwrap_err();
            assert_eq!(bad.label, "bad_token");
            assert!(auth.check(ip(peer), &bearer("s3cret")).is_ok());
        }
        let mut basic = HeaderMap::new();
        basic.insert(AUTHORIZATION, "Basic s3cret".parse().expect("hv"));
        assert_eq!(
            auth.check(ip("10.1.2.3"), &basic).unwrap_err().label,
            "no_token"
        );
    }

    #[test]
    fn the_token_file_must_hold_a_token() {
        let dir = std::env::temp_dir().join(format!("af-admin-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("token");
        std::fs::write(&file, "abc\n").expect("write");
        assert_eq!(read_token_file(&file), Ok("abc".to_string()));
        std::fs::write(&file, "\n").expect("write");
        assert!(read_token_file(&file).unwrap_err().contains("empty"));
        assert!(read_token_file(&dir.join("missing"))
            .unwrap_err()
            .contains("cannot read admin.token_file"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
