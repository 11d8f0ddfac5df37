//! The proxy's side of change capture: bounded body reads, parsing before forwarding,
//! and the durable append after the upstream said yes.
//!
//! Owns the order "read (bounded) → forward → 2xx? → append durably → answer". It must
//! not decide what a body means (that is `crate::capture`) nor talk to the broker.

use bytes::Bytes;
use http::StatusCode;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

use super::error::ProxyError;
use crate::capture::route::Route;
use crate::change::{now_ms, Capture};
use crate::store::Store;

/// Which upstream statuses mean the change happened.
pub fn captures_status(route: &Route, status: StatusCode) -> bool {
    match route {
        Route::PutParams { .. } => status == StatusCode::OK || status == StatusCode::ACCEPTED,
        Route::PostConfigs { .. } | Route::DeleteDeployment { .. } => status == StatusCode::OK,
        Route::Other => false,
    }
}

/// Reads a captured route's body, refusing (413) anything over `limit` before forwarding.
pub async fn read_body(
    body: Incoming,
    declared: Option<u64>,
    limit: usize,
) -> Result<Bytes, ProxyError> {
    if declared.is_some_and(|n| n > limit as u64) {
        crate::metrics::capture_skipped("body_too_large");
        return Err(ProxyError::TooLarge { limit });
    }
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            crate::metrics::capture_skipped("body_too_large");
            Err(ProxyError::TooLarge { limit })
        }
        Err(e) => Err(ProxyError::BadRequest(format!(
            "could not read the request body: {e}"
        ))),
    }
}

/// Parses what will be captured if the upstream accepts the request. A body that does
/// not parse is still forwarded untouched (the server gives its own answer); it is
/// counted and logged as not captured.
pub fn prepare(route: &Route, body: &[u8], client: std::net::IpAddr) -> Option<Capture> {
    match crate::capture::capture_from(route, body, Some(client.to_string()), now_ms()) {
        Ok(c) => Some(c),
        Err(reason) => {
            crate::metrics::capture_skipped(reason.as_str());
            tracing::warn!(route = ?route, reason = %reason, "request forwarded but not captured");
            None
        }
    }
}

/// Appends durably; the client gets its answer only after this succeeded.
pub async fn commit(store: &Store, capture: Capture) -> Result<(), ProxyError> {
    let kind = capture.event.kind();
    match store.append(capture).await {
        Ok(change) => {
            crate::metrics::captured(kind);
            if change.deployment.is_none() {
                crate::metrics::capture_unknown_deployment();
                tracing::info!(
                    instance = change.instance.as_deref().unwrap_or(""),
                    seq = change.origin_seq,
                    "captured a change for an instance whose deployment is not known yet; it waits in the outbox"
                );
            }
            Ok(())
        }
        Err(e) => {
            crate::metrics::outbox_write_error();
            tracing::error!(error = %e, "OUTBOX WRITE FAILED: answering 503 so the client retries");
            Err(ProxyError::Store(e.to_string()))
        }
    }
}
