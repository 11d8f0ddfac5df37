//! The transparent reverse proxy in front of the Config Server.
//!
//! Owns forwarding one request to the one upstream and handing each successful
//! capturing request to the capture step before the client sees the answer. It must not
//! wait on the broker (it only appends to the outbox) and must not change anything the
//! upstream answered beyond hop-by-hop headers.
//!
//! Once a capturing request has been read and is sent to the upstream, the exchange and the
//! durable append run on a task of their own (tracked, so the shutdown drain waits for it):
//! a client that goes away (FIN, RST, an HTTP/2 stream reset, its own timeout) drops only
//! its wait for the answer, never the capture of a change the server made (what nginx calls
//! `proxy_ignore_client_abort`, for the capturing routes).
//!
//! Capturing exchanges of one instance (or deployment) take turns ([`Turns`]): the server
//! applies them in the order the outbox records them, even when a guest sends its next report
//! without waiting for the answer to the last (one it left). The server handles one request at
//! a time anyway, so this costs other instances nothing.

pub mod capture;
pub mod error;
pub mod forwarded;
pub mod headers;
pub mod restrict;
pub mod upstream;

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header::{HeaderValue, CONTENT_LENGTH, EXPECT, HOST};
use http::{Request, Response, Uri, Version};
use hyper::body::Incoming;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use tokio::sync::Notify;
use tokio_util::task::TaskTracker;

use crate::body::{boxed, ProxyBody};
use crate::capture::route::{classify, route_class, Route};
use crate::config::ProxyConfig;
use crate::serve::Peer;
use crate::store::Store;
use error::ProxyError;
use forwarded::TrustedProxies;
use restrict::{Refusal, Restrict};

/// Shared state of the proxy listener.
pub struct Proxy {
    client: Client<HttpConnector, ProxyBody>,
    upstream: http::uri::Authority,
    upstream_url: String,
    timeout: Duration,
    body_limit: usize,
    /// `proxy.capture`: when false every route is forwarded as a non-capturing one.
    capture: bool,
    trusted: TrustedProxies,
    restrict: Restrict,
    store: Store,
    /// Woken after each durable append, so the publisher need not poll.
    wake: Arc<Notify>,
    /// The capturing exchanges in flight (see the module header); shutdown waits for them.
    captures: TaskTracker,
    turns: Turns,
}

/// Striped per-instance turns for capturing exchanges: exchange and append under one lock.
struct Turns([tokio::sync::Mutex<()>; Turns::STRIPES]);

impl Turns {
    const STRIPES: usize = 64;

    fn new() -> Turns {
        Turns(std::array::from_fn(|_| tokio::sync::Mutex::new(())))
    }

    /// The lock of the instance (or deployment) a capturing route changes.
    fn of(&self, route: &Route) -> &tokio::sync::Mutex<()> {
        use std::hash::{Hash as _, Hasher as _};
        let key = match route {
            Route::PutParams { instance, .. } | Route::PostConfigs { instance, .. } => {
                instance.as_str()
            }
            Route::DeleteDeployment { deployment, .. } => deployment.as_str(),
            Route::Other => "",
        };
        let mut h = std::collections::hash_map::DefaultHasher::new();
        key.hash(&mut h);
        &self.0[(h.finish() as usize) % Self::STRIPES]
    }
}

impl Proxy {
    /// `upstream` is `cfg.upstream` already parsed (see [`upstream::parse_upstream`]).
    pub fn new(
        cfg: &ProxyConfig,
        upstream: http::uri::Authority,
        store: Store,
        wake: Arc<Notify>,
        captures: TaskTracker,
    ) -> Arc<Proxy> {
        Arc::new(Proxy {
            client: upstream::client(cfg.upstream_idle_timeout),
            upstream_url: format!("http://{upstream}"),
            upstream,
            timeout: cfg.upstream_timeout,
            body_limit: cfg.capture_body_limit,
            capture: cfg.capture,
            trusted: TrustedProxies::new(&cfg.trusted_proxies),
            restrict: Restrict::new(&cfg.restrict),
            store,
            wake,
            captures,
            turns: Turns::new(),
        })
    }

    /// Forwards one request; never fails (errors become 4xx/5xx answers).
    pub async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        peer: Peer,
    ) -> Response<ProxyBody> {
        let started = Instant::now();
        let class = route_class(req.uri().path());
        let resp = match self.clone().forward(req, peer).await {
            Ok(resp) => resp,
            Err(e) => e.into_response(&self.upstream_url),
        };
        crate::metrics::proxy_request(class.as_str(), resp.status(), started.elapsed());
        resp
    }

    async fn forward(
        self: Arc<Self>,
        req: Request<Incoming>,
        peer: Peer,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let (mut parts, body) = req.into_parts();
        let route = classify(&parts.method, parts.uri.path());
        let client_addr = self
            .trusted
            .client_addr(peer.addr.ip(), headers::forwarded_for(&parts.headers));
        let target = parts
            .uri
            .path_and_query()
            .map_or_else(|| parts.uri.path().to_owned(), |pq| pq.as_str().to_owned());
        if !self.restrict.is_off() {
            self.restrict
                .check_head(
                    &parts.method,
                    &target,
                    &parts.headers,
                    peer.addr.ip(),
                    route.is_capturing(),
                )
                .map_err(refused)?;
        }

        headers::strip_hop_by_hop(&mut parts.headers);
        // We answer `Expect: 100-continue` ourselves (hyper does when the body is read).
        parts.headers.remove(EXPECT);
        // HTTP/2 clients send :authority instead of Host; the server signs over Host.
        if !parts.headers.contains_key(HOST) {
            if let Some(v) = parts
                .uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
            {
                parts.headers.insert(HOST, v);
            }
        }
        headers::add_forwarded(&mut parts.headers, peer.addr.ip(), peer.tls);
        parts.uri = self.upstream_uri(&parts.uri)?;
        parts.version = Version::HTTP_11;

        let (body, pending) = if self.capture && route.is_capturing() {
            let declared = parts
                .headers
                .get(CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
            let bytes = capture::read_body(body, declared, self.body_limit).await?;
            if !self.restrict.is_off() {
                self.restrict
                    .check_body(&target, &parts.headers, &bytes, peer.addr.ip())
                    .map_err(refused)?;
            }
            let pending = capture::prepare(&route, &bytes, client_addr);
            (crate::body::full(bytes), pending)
        } else {
            (boxed(body), None)
        };

        let upstream_req = Request::from_parts(parts, body);
        let resp = match pending {
            None => self.exchange(upstream_req).await?,
            Some(c) => {
                // From here on the client cannot cancel the capture: if it goes, this
                // handler is dropped but the task runs on (bounded by the upstream timeout
                // and the store's append).
                let this = self.clone();
                let task = self
                    .captures
                    .spawn(async move { this.exchange_and_capture(route, upstream_req, c).await });
                match task.await {
                    Ok(result) => result?,
                    Err(e) => {
                        tracing::error!(error = %e, "capture task failed");
                        return Err(ProxyError::Store(format!("capture task failed: {e}")));
                    }
                }
            }
        };

        let (mut parts, body) = resp.into_parts();
        headers::strip_hop_by_hop(&mut parts.headers);
        Ok(Response::from_parts(parts, boxed(body)))
    }

    /// Sends a request upstream and waits (at most `proxy.upstream_timeout`) for its head.
    async fn exchange(&self, req: Request<ProxyBody>) -> Result<Response<Incoming>, ProxyError> {
        match tokio::time::timeout(self.timeout, self.client.request(req)).await {
            Err(_) => Err(ProxyError::Timeout(self.timeout)),
            Ok(Err(e)) => Err(ProxyError::Upstream(e)),
            Ok(Ok(resp)) => Ok(resp),
        }
    }

    /// [`Proxy::exchange`], then the durable append of `capture` if the status says the
    /// change happened, then the publisher's wake-up. Runs on its own task.
    async fn exchange_and_capture(
        &self,
        route: Route,
        req: Request<ProxyBody>,
        capture: crate::change::Capture,
    ) -> Result<Response<Incoming>, ProxyError> {
        let _turn = self.turns.of(&route).lock().await;
        let resp = self.exchange(req).await?;
        if capture::captures_status(&route, resp.status()) {
            capture::commit(&self.store, capture).await?;
            self.wake.notify_one();
        } else {
            crate::metrics::capture_skipped("upstream_status");
        }
        Ok(resp)
    }

    fn upstream_uri(&self, uri: &Uri) -> Result<Uri, ProxyError> {
        let pq = uri.path_and_query().map(|pq| pq.as_str()).unwrap_or("/");
        Uri::builder()
            .scheme("http")
            .authority(self.upstream.clone())
            .path_and_query(pq)
            .build()
            .map_err(|e| ProxyError::BadRequest(format!("cannot rebuild request target: {e}")))
    }
}

/// A request `[proxy.restrict]` refuses: counted, logged, answered 403, never forwarded.
fn refused(r: Refusal) -> ProxyError {
    crate::metrics::proxy_refused(r.label);
    tracing::warn!(reason = %r.reason, "request refused by proxy.restrict");
    ProxyError::Forbidden(r.reason)
}
