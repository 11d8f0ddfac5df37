//! The admin listener: `/healthz`, `/readyz`, `/metrics`.
//!
//! Owns the operator's view of the process. It must not proxy anything and must stay
//! cheap: a readiness probe opens one TCP connection to the upstream and makes one tiny
//! durable write, nothing more.

use std::sync::Arc;
use std::time::Duration;

use http::header::CONTENT_TYPE;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use metrics_exporter_prometheus::PrometheusHandle;

use crate::body::{full, ProxyBody};
use crate::store::Store;

/// What the admin endpoints look at.
pub struct Admin {
    pub upstream: http::uri::Authority,
    pub store: Store,
    pub metrics: PrometheusHandle,
}

impl Admin {
    pub async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<ProxyBody> {
        if req.uri().path().starts_with("/dead-letters") {
            return crate::deadletters::handle(&self.store, req).await;
        }
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n");
        }
        match req.uri().path() {
            "/healthz" => text(StatusCode::OK, "ok\n"),
            "/readyz" => self.readyz().await,
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
                "not found: try /healthz, /readyz or /metrics\n",
            ),
        }
    }

    /// Ready when the upstream accepts a TCP connection and the outbox takes a durable write.
    async fn readyz(&self) -> Response<ProxyBody> {
        let mut problems = Vec::new();
        let target = self.upstream.as_str().to_string();
        match tokio::time::timeout(
            Duration::from_secs(2),
            tokio::net::TcpStream::connect(&target),
        )
        .await
        {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => problems.push(format!("upstream {target} unreachable: {e}")),
            Err(_) => problems.push(format!(
                "upstream {target} did not accept a connection within 2s"
            )),
        }
        match tokio::time::timeout(Duration::from_secs(5), self.store.probe_writable()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => problems.push(format!("outbox not writable: {e}")),
            Err(_) => problems.push("outbox write probe did not finish within 5s".to_string()),
        }
        if problems.is_empty() {
            text(StatusCode::OK, "ready\n")
        } else {
            text(StatusCode::SERVICE_UNAVAILABLE, problems.join("\n") + "\n")
        }
    }

    fn refresh_gauges(&self) {
        let depth = self.store.depth();
        let age = self
            .store
            .oldest_captured_ms()
            .map(|ms| Duration::from_millis(crate::change::now_ms().saturating_sub(ms)));
        crate::metrics::outbox_state(depth, age);
    }
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
