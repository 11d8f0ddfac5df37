//! The error of the AMQP connection boundary: one variant per thing an operator must check.
//!
//! Owns the wording (each message says what to look at) and the transient/permanent split that
//! reconnect loops use. It must not carry secrets: paths and user names only, never a password.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use fe2o3_amqp::connection::OpenError;

/// Why a connection could not be opened. Every variant says what to check.
#[derive(Debug, thiserror::Error)]
pub enum AmqpError {
    #[error("amqp.url {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("plain amqp:// is refused without amqp.allow_insecure = true")]
    InsecureRefused,
    #[error("amqp.{key} is required for this connection: {reason}")]
    Missing {
        key: &'static str,
        reason: &'static str,
    },
    #[error("cannot use PEM file {path}: {reason}")]
    BadPem { path: PathBuf, reason: String },
    #[error("cannot read amqp.password_file {path}: {source}")]
    PasswordFile { path: PathBuf, source: io::Error },
    #[error("client certificate {cert} and key {key} do not form a usable identity: {reason}")]
    BadIdentity {
        cert: PathBuf,
        key: PathBuf,
        reason: String,
    },
    #[error("cannot resolve broker host {host:?}: {source}")]
    Resolve { host: String, source: io::Error },
    #[error("connection refused by {addr}: is the broker running and listening there?")]
    ConnectionRefused { addr: String },
    #[error("cannot reach broker {addr}: {source}")]
    Unreachable { addr: String, source: io::Error },
    #[error(
        "broker requires a client certificate (TLS alert {alert}): set amqp.cert and amqp.key"
    )]
    ClientCertificateRequired { alert: String },
    #[error(
        "broker does not trust our client certificate (TLS alert {alert}): it was not issued by a CA the broker trusts"
    )]
    ClientCertificateRejected { alert: String },
    #[error("broker certificate rejected ({reason}): check amqp.ca and that the URL host is in the certificate")]
    ServerCertificateRejected { reason: String },
    #[error("TLS failure with {addr}: {source}")]
    Tls { addr: String, source: rustls::Error },
    #[error("broker does not offer SASL {mechanism} (offered: {offered})")]
    SaslNotOffered {
        mechanism: &'static str,
        offered: String,
    },
    #[error("broker refused SASL {mechanism} authentication (outcome {code}): {hint}")]
    SaslAuthFailed {
        mechanism: &'static str,
        code: &'static str,
        hint: &'static str,
    },
    #[error("SASL protocol error with {addr}: {reason}")]
    SaslProtocol { addr: String, reason: String },
    #[error("connection to {addr} dropped during {stage}: {source}")]
    Io {
        addr: String,
        stage: &'static str,
        source: io::Error,
    },
    #[error("AMQP open with {addr} failed: {source}")]
    Open { addr: String, source: OpenError },
    #[error("connecting to {addr} timed out after {after:?}")]
    Timeout { addr: String, after: Duration },
}

impl AmqpError {
    /// True when retrying later may succeed without an operator changing anything
    /// (the broker is down, restarting or slow); false for configuration and identity problems.
    pub fn is_transient(&self) -> bool {
        match self {
            AmqpError::ConnectionRefused { .. }
            | AmqpError::Unreachable { .. }
            | AmqpError::Resolve { .. }
            | AmqpError::Io { .. }
            | AmqpError::Open { .. }
            | AmqpError::Timeout { .. } => true,
            AmqpError::SaslAuthFailed { code, .. } => *code == "sys-temp" || *code == "sys",
            _ => false,
        }
    }
}
