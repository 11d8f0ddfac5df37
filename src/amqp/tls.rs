//! TLS for the broker link: the rustls client configuration and the naming of TLS failures.
//!
//! Owns reading the PEM trust anchor (`amqp.ca`, the only root trusted: never the system store)
//! and the client identity (`amqp.cert`, `amqp.key`), with the aws-lc-rs provider, and turning
//! rustls errors and alerts into distinct [`AmqpError`]s. It must not open sockets.

use std::io;
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{AlertDescription, ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;

use super::error::AmqpError;
use crate::config::AmqpConfig;

/// rustls client config: trusts only `amqp.ca`, presents `amqp.cert`/`amqp.key` if set.
pub(crate) fn tls_connector(cfg: &AmqpConfig) -> Result<TlsConnector, AmqpError> {
    let ca = cfg.ca.as_deref().ok_or(AmqpError::Missing {
        key: "ca",
        reason: "amqps:// trusts only this CA",
    })?;
    let mut roots = RootCertStore::empty();
    for cert in load_certs(ca)? {
        roots
            .add(cert)
            .map_err(|e| bad_pem(ca, format!("not a usable CA certificate: {e}")))?;
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| AmqpError::Tls {
            addr: cfg.url.clone(),
            source: e,
        })?
        .with_root_certificates(roots);
    let config = match (&cfg.cert, &cfg.key) {
        (Some(cert), Some(key)) => {
            let chain = load_certs(cert)?;
            let private = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| bad_pem(key, pem_reason(e, "PRIVATE KEY")))?;
            builder
                .with_client_auth_cert(chain, private)
                .map_err(|e| AmqpError::BadIdentity {
                    cert: cert.clone(),
                    key: key.clone(),
                    reason: e.to_string(),
                })?
        }
        (None, None) => builder.with_no_client_auth(),
        (Some(_), None) => {
            return Err(AmqpError::Missing {
                key: "key",
                reason: "amqp.cert is set",
            })
        }
        (None, Some(_)) => {
            return Err(AmqpError::Missing {
                key: "cert",
                reason: "amqp.key is set",
            })
        }
    };
    Ok(TlsConnector::from(Arc::new(config)))
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, AmqpError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| bad_pem(path, pem_reason(e, "CERTIFICATE")))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad_pem(path, pem_reason(e, "CERTIFICATE")))?;
    if certs.is_empty() {
        return Err(bad_pem(path, "no CERTIFICATE block found".into()));
    }
    Ok(certs)
}

fn bad_pem(path: &Path, reason: String) -> AmqpError {
    AmqpError::BadPem {
        path: path.to_owned(),
        reason,
    }
}

fn pem_reason(e: rustls::pki_types::pem::Error, what: &str) -> String {
    use rustls::pki_types::pem::Error as E;
    match e {
        E::Io(io) => io.to_string(),
        E::NoItemsFound => format!("no {what} block found"),
        other => format!("not valid PEM: {other}"),
    }
}

/// Finds a rustls error inside an I/O error and names it; TLS 1.3 reports the broker's verdict
/// on our certificate as an alert on the first read after the handshake, hence `stage`.
pub(crate) fn classify_io(
    e: io::Error,
    addr: &str,
    stage: &'static str,
    has_cert: bool,
) -> AmqpError {
    let Some(tls) = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    else {
        return AmqpError::Io {
            addr: addr.to_owned(),
            stage,
            source: e,
        };
    };
    let alert = |a: &AlertDescription| format!("{a:?}");
    match tls {
        rustls::Error::AlertReceived(a @ AlertDescription::CertificateRequired) => {
            AmqpError::ClientCertificateRequired { alert: alert(a) }
        }
        rustls::Error::AlertReceived(a @ AlertDescription::HandshakeFailure) if !has_cert => {
            AmqpError::ClientCertificateRequired { alert: alert(a) }
        }
        rustls::Error::AlertReceived(
            a @ (AlertDescription::UnknownCA
            | AlertDescription::BadCertificate
            | AlertDescription::UnsupportedCertificate
            | AlertDescription::CertificateExpired
            | AlertDescription::CertificateRevoked
            | AlertDescription::CertificateUnknown
            | AlertDescription::AccessDenied),
        ) if has_cert => AmqpError::ClientCertificateRejected { alert: alert(a) },
        rustls::Error::InvalidCertificate(reason) => AmqpError::ServerCertificateRejected {
            reason: format!("{reason:?}"),
        },
        other => AmqpError::Tls {
            addr: addr.to_owned(),
            source: other.clone(),
        },
    }
}
