//! Why a replay attempt failed transiently, and nothing else.
//!
//! Owns `ReplayError`: every failure after which the caller must retry the same change later
//! (with backoff, keeping per-link order) and must not settle its message. Permanent failures
//! are not errors: they end as `Outcome::DeadLettered`. It must not decide retry timing or log.

use std::time::Duration;

use crate::store::StoreError;

/// A transient replay failure: nothing about the change was recorded as settled; retrying
/// the same change later is safe (every step is idempotent at the local server or checked
/// against the store first).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplayError {
    /// The local server could not be reached (connection refused, reset, closed early).
    #[error("local server unreachable: {0}")]
    Unreachable(String),
    /// The local server did not answer within the request timeout.
    #[error("local server did not answer {method} {path} within {timeout:?}")]
    Timeout {
        method: &'static str,
        path: String,
        timeout: Duration,
    },
    /// The local server answered with a server error (5xx) or an answer it never gives
    /// for this request.
    #[error("local server answered {status} to {method} {path}")]
    Server {
        status: u16,
        method: &'static str,
        path: String,
    },
    /// The local server refused Conductor's signature (401): the configured
    /// `oauth.conductor_key` / secret do not match the server's. Retrying succeeds once
    /// the credentials are fixed; no change is dropped meanwhile.
    #[error("local server refused Conductor's credentials (401) on {method} {path}")]
    Unauthorized { method: &'static str, path: String },
    /// The state store could not record the outcome (the request itself may have been
    /// applied; replaying it again is harmless).
    #[error("state store: {0}")]
    Store(#[from] StoreError),
}

impl ReplayError {
    /// Short stable label for metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            ReplayError::Unreachable(_) => "unreachable",
            ReplayError::Timeout { .. } => "timeout",
            ReplayError::Server { .. } => "server_error",
            ReplayError::Unauthorized { .. } => "unauthorized",
            ReplayError::Store(_) => "store",
        }
    }
}
