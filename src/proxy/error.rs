//! Why a request could not be forwarded, and the synthetic answer for each reason.
//!
//! Owns the mapping error -> status + one-line plain-text reason (the edge of the
//! proxy). It must not log request bodies or credentials.

use std::time::Duration;

use http::{header::CONTENT_TYPE, HeaderValue, Response, StatusCode};

use crate::body::{full, ProxyBody};

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("request body over the capture limit of {limit} bytes for this route")]
    TooLarge { limit: usize },
    #[error("upstream did not answer within {0:?}")]
    Timeout(Duration),
    #[error("upstream unreachable: {0}")]
    Upstream(hyper_util::client::legacy::Error),
    #[error("change not recorded: {0}")]
    Store(String),
    /// Refused by `[proxy.restrict]`; never forwarded.
    #[error("refused: {0}")]
    Forbidden(String),
}

impl ProxyError {
    /// The answer the client gets: a short `text/plain` line naming the cause.
    pub fn into_response(self, upstream: &str) -> Response<ProxyBody> {
        let (status, line) = match &self {
            ProxyError::BadRequest(m) => (StatusCode::BAD_REQUEST, format!("audrey-federation: {m}")),
            ProxyError::TooLarge { limit } => (
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("audrey-federation: request body larger than {limit} bytes (proxy.capture_body_limit); nothing was forwarded"),
            ),
            ProxyError::Timeout(t) => (
                StatusCode::GATEWAY_TIMEOUT,
                format!("audrey-federation: upstream {upstream} did not answer within {}s", t.as_secs_f64()),
            ),
            ProxyError::Upstream(e) => (
                StatusCode::BAD_GATEWAY,
                format!("audrey-federation: upstream {upstream} unreachable: {}", root_cause(e)),
            ),
            ProxyError::Forbidden(m) => (StatusCode::FORBIDDEN, format!("audrey-federation: {m}")),
            ProxyError::Store(m) => (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("audrey-federation: the change reached the server but could not be recorded for federation ({m}); retry"),
            ),
        };
        if status.is_server_error() {
            tracing::warn!(%status, reason = %line, "answering with a synthetic error");
        }
        let mut resp = Response::new(full(format!("{line}\n")));
        *resp.status_mut() = status;
        resp.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        if status == StatusCode::SERVICE_UNAVAILABLE {
            resp.headers_mut()
                .insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        resp
    }
}

/// The innermost error message (e.g. "Connection refused (os error 111)").
fn root_cause(e: &hyper_util::client::legacy::Error) -> String {
    let mut cur: &dyn std::error::Error = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    let msg = cur.to_string();
    if e.is_connect() {
        format!("connect failed: {msg}")
    } else {
        msg
    }
}
