//! TLS for the broker link: the rustls client configuration and the naming of TLS failures.
//!
//! Owns reading the PEM trust anchor (`amqp.ca`, the only root trusted: never the system store)
//! and the client identity (`amqp.cert`, `amqp.key`), with the aws-lc-rs provider, and turning
//! rustls errors and alerts into distinct [`AmqpError`]s. The files are read at every connect and
//! the last good config per set of paths is kept, keyed by a hash of the files' contents: changed
//! files are used from the next connection on, and changed files that cannot be used are refused
//! with one log line while the last good config stays in use. It must not open sockets.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{AlertDescription, ClientConfig, RootCertStore};
use sha1::{Digest, Sha1};
use tokio_rustls::TlsConnector;

use super::error::AmqpError;
use crate::config::AmqpConfig;

/// The process-wide cache both links share, so a refused rotation is logged once.
static CLIENT_CONFIGS: ClientConfigCache = ClientConfigCache::new();

/// rustls client config: trusts only `amqp.ca`, presents `amqp.cert`/`amqp.key` if set.
/// Changed files are picked up here; see [`ClientConfigCache::get`].
pub(crate) fn tls_connector(cfg: &AmqpConfig) -> Result<TlsConnector, AmqpError> {
    CLIENT_CONFIGS.get(cfg).map(TlsConnector::from)
}

/// The files of one client config: `amqp.ca`, and `amqp.cert`/`amqp.key` when both are set.
type Paths = (PathBuf, Option<(PathBuf, PathBuf)>);

struct Good {
    /// SHA-1 over the files' contents when `config` was built from them.
    hash: [u8; 20],
    config: Arc<ClientConfig>,
    /// The reason the current (changed) files were last refused: logged once per reason.
    refused: Option<String>,
}

/// The last good client config per set of paths.
pub(crate) struct ClientConfigCache {
    good: Mutex<BTreeMap<Paths, Good>>,
}

impl ClientConfigCache {
    pub(crate) const fn new() -> ClientConfigCache {
        ClientConfigCache {
            good: Mutex::new(BTreeMap::new()),
        }
    }

    /// The config for `cfg`'s files. Unchanged files (same content hash): the cached config.
    /// Changed files: a new config, or, if they cannot be used and these paths built a config
    /// before, that last good one, with one warning naming the file and the reason (repeated
    /// only when the reason changes). Without a last good config the error is returned, so a
    /// first start with bad files fails as clearly as before.
    pub(crate) fn get(&self, cfg: &AmqpConfig) -> Result<Arc<ClientConfig>, AmqpError> {
        let paths = paths(cfg)?;
        let read = read_files(&paths);
        let mut good = self.good.lock().unwrap_or_else(|p| p.into_inner());
        if let (Ok((hash, _)), Some(g)) = (&read, good.get(&paths)) {
            if *hash == g.hash {
                return Ok(g.config.clone());
            }
        }
        match read.and_then(|(hash, files)| Ok((hash, build(cfg, &paths, &files)?))) {
            Ok((hash, config)) => {
                let config = Arc::new(config);
                let previous = good.insert(
                    paths.clone(),
                    Good {
                        hash,
                        config: config.clone(),
                        refused: None,
                    },
                );
                if previous.is_some() {
                    tracing::info!(
                        ca = %paths.0.display(),
                        "amqp TLS files changed: new connections use the new certificate, key and CA"
                    );
                }
                Ok(config)
            }
            Err(e) => {
                let Some(g) = good.get_mut(&paths) else {
                    return Err(e);
                };
                let reason = e.to_string();
                if g.refused.as_deref() != Some(reason.as_str()) {
                    tracing::warn!(
                        "amqp TLS files changed but are refused, new connections keep the last good ones: {reason}"
                    );
                    g.refused = Some(reason);
                }
                Ok(g.config.clone())
            }
        }
    }
}

fn paths(cfg: &AmqpConfig) -> Result<Paths, AmqpError> {
    let ca = cfg.ca.clone().ok_or(AmqpError::Missing {
        key: "ca",
        reason: "amqps:// trusts only this CA",
    })?;
    let identity = match (&cfg.cert, &cfg.key) {
        (Some(cert), Some(key)) => Some((cert.clone(), key.clone())),
        (None, None) => None,
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
    Ok((ca, identity))
}

/// The files' bytes (ca, then cert and key if set) and one hash over all of them.
fn read_files(paths: &Paths) -> Result<([u8; 20], Vec<Vec<u8>>), AmqpError> {
    let mut all = vec![&paths.0];
    if let Some((cert, key)) = &paths.1 {
        all.extend([cert, key]);
    }
    let mut hasher = Sha1::new();
    let mut files = Vec::with_capacity(all.len());
    for path in all {
        let bytes = std::fs::read(path).map_err(|e| bad_pem(path, e.to_string()))?;
        hasher.update((bytes.len() as u64).to_be_bytes());
        hasher.update(&bytes);
        files.push(bytes);
    }
    Ok((hasher.finalize().into(), files))
}

fn build(cfg: &AmqpConfig, paths: &Paths, files: &[Vec<u8>]) -> Result<ClientConfig, AmqpError> {
    let (ca, identity) = paths;
    let mut roots = RootCertStore::empty();
    for cert in load_certs(ca, &files[0])? {
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
    Ok(match (identity, files.get(1), files.get(2)) {
        (Some((cert, key)), Some(cert_pem), Some(key_pem)) => {
            let chain = load_certs(cert, cert_pem)?;
            let private = PrivateKeyDer::from_pem_slice(key_pem)
                .map_err(|e| bad_pem(key, pem_reason(e, "PRIVATE KEY")))?;
            builder
                .with_client_auth_cert(chain, private)
                .map_err(|e| AmqpError::BadIdentity {
                    cert: cert.clone(),
                    key: key.clone(),
                    reason: e.to_string(),
                })?
        }
        _ => builder.with_no_client_auth(),
    })
}

fn load_certs(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, AmqpError> {
    let certs = CertificateDer::pem_slice_iter(pem)
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
            reason: reason.to_string(),
        },
        other => AmqpError::Tls {
            addr: addr.to_owned(),
            source: other.clone(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// Runs the shipped `certs/gen-certs.sh` into `dir` (a fresh CA and `site-r`'s pair).
    fn pki(dir: &Path) {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("certs/gen-certs.sh");
        let out = Command::new("bash")
            .arg(script)
            .arg(dir)
            .arg("site-r")
            .output()
            .expect("run gen-certs.sh");
        assert!(out.status.success(), "{out:?}");
    }

    /// A log sink for one test's `tracing` output.
    #[derive(Clone, Default)]
    struct Logs(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Logs {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Logs {
        fn refusals(&self) -> Vec<String> {
            String::from_utf8_lossy(&self.0.lock().unwrap())
                .lines()
                .filter(|l| l.contains("refused"))
                .map(str::to_owned)
                .collect()
        }
    }

    #[test]
    fn a_bad_replacement_keeps_the_last_good_config_and_is_logged_once() {
        let tmp = tempfile::tempdir().unwrap();
        let (one, two, live) = (tmp.path().join("1"), tmp.path().join("2"), tmp.path());
        pki(&one);
        pki(&two);
        let (ca, cert, key) = (live.join("ca.pem"), live.join("c.pem"), live.join("c.key"));
        std::fs::copy(one.join("ca.pem"), &ca).unwrap();
        std::fs::copy(one.join("site-r.pem"), &cert).unwrap();
        std::fs::copy(one.join("site-r.key"), &key).unwrap();
        let cfg: AmqpConfig = toml::from_str(&format!(
            "url = \"amqps://localhost:1\"\nca = {:?}\ncert = {:?}\nkey = {:?}\n",
            ca.display().to_string(),
            cert.display().to_string(),
            key.display().to_string()
        ))
        .unwrap();
        let logs = Logs::default();
        let sink = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || sink.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let cache = ClientConfigCache::new();
            let first = cache.get(&cfg).expect("good files");
            assert!(
                Arc::ptr_eq(&first, &cache.get(&cfg).unwrap()),
                "unchanged: cached"
            );

            // Garbage in the certificate: the last good config, one line naming the file.
            std::fs::write(&cert, "garbage\n").unwrap();
            for _ in 0..3 {
                assert!(Arc::ptr_eq(&first, &cache.get(&cfg).expect("last good")));
            }
            let lines = logs.refusals();
            assert_eq!(lines.len(), 1, "{lines:?}");
            assert!(lines[0].contains(&cert.display().to_string()), "{lines:?}");
            assert!(lines[0].contains("no CERTIFICATE block"), "{lines:?}");

            // Half a rotation: CA2's certificate with CA1's key does not match.
            std::fs::copy(two.join("site-r.pem"), &cert).unwrap();
            assert!(Arc::ptr_eq(&first, &cache.get(&cfg).expect("last good")));
            let lines = logs.refusals();
            assert_eq!(lines.len(), 2, "{lines:?}");
            assert!(
                lines[1].contains("do not form a usable identity"),
                "{lines:?}"
            );
            assert!(lines[1].contains(&key.display().to_string()), "{lines:?}");

            // The rotation completes: a new config, no further refusal.
            std::fs::copy(two.join("site-r.key"), &key).unwrap();
            let second = cache.get(&cfg).expect("new files");
            assert!(!Arc::ptr_eq(&first, &second), "rotated files must be used");
            assert!(Arc::ptr_eq(&second, &cache.get(&cfg).unwrap()));
            assert_eq!(logs.refusals().len(), 2);

            // A first use with bad files fails as before (nothing good to keep).
            std::fs::write(&key, "garbage\n").unwrap();
            let err = ClientConfigCache::new()
                .get(&cfg)
                .expect_err("no last good");
            assert!(matches!(err, AmqpError::BadPem { .. }), "{err:?}");
            assert!(
                err.to_string().contains(&key.display().to_string()),
                "{err}"
            );
        });
    }
}
