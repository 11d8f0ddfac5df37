//! TLS material for the proxy listener: PEM certificate chain and key into a rustls
//! server config (ALPN h2 + http/1.1), and picking up replaced files without a restart.
//!
//! Owns file loading and its errors (each naming the file), and [`ReloadingCert`], the
//! certificate resolver that looks at the files at most every [`CHECK_EVERY`] during a
//! handshake (at once after [`reload_now`]) and swaps in a changed pair, or keeps serving the
//! last good one and logs once why the new files were refused. It must not know about AMQP client TLS; `amqp::tls` has its own.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use sha1::{Digest, Sha1};

/// How often a handshake may look at the certificate and key files for a change.
pub const CHECK_EVERY: Duration = Duration::from_secs(2);

/// Bumped by [`reload_now`]; a resolver that sees a new value looks at its files at once.
static RELOAD: AtomicU64 = AtomicU64::new(0);

/// Makes every listener look at its certificate files at its next handshake, without
/// waiting for [`CHECK_EVERY`] (SIGHUP, `systemctl reload`).
pub fn reload_now() {
    RELOAD.fetch_add(1, Ordering::Relaxed);
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read certificates from {path}: {reason}")]
    Cert { path: String, reason: String },
    #[error("cannot read private key from {path}: {reason}")]
    Key { path: String, reason: String },
    #[error("certificate {cert} and key {key} do not make a TLS config: {reason}")]
    Config {
        cert: String,
        key: String,
        reason: String,
    },
}

/// Builds the listener's TLS acceptor from PEM files. Bad files fail here, at start; later
/// changes to the files are picked up by [`ReloadingCert`].
pub fn server_acceptor(cert: &Path, key: &Path) -> Result<tokio_rustls::TlsAcceptor, TlsError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let resolver = ReloadingCert::load(cert, key, provider.clone())?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| config_error(cert, key, e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// The listener's certificate, re-read from its files when they change.
#[derive(Debug)]
pub struct ReloadingCert {
    cert: PathBuf,
    key: PathBuf,
    provider: Arc<CryptoProvider>,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    current: Arc<CertifiedKey>,
    /// SHA-1 over both files' contents when `current` was loaded, or when they were refused.
    seen: [u8; 20],
    checked: Instant,
    /// The [`RELOAD`] value at the last look.
    generation: u64,
}

impl ReloadingCert {
    /// Loads the pair now; errors name the file and the reason.
    pub fn load(
        cert: &Path,
        key: &Path,
        provider: Arc<CryptoProvider>,
    ) -> Result<ReloadingCert, TlsError> {
        let (seen, loaded) = read_pair(cert, key, &provider);
        let current = Arc::new(loaded?);
        Ok(ReloadingCert {
            cert: cert.to_owned(),
            key: key.to_owned(),
            provider,
            state: Mutex::new(State {
                current,
                seen,
                checked: Instant::now(),
                generation: RELOAD.load(Ordering::Relaxed),
            }),
        })
    }

    /// The certified key to serve, after looking at the files if [`CHECK_EVERY`] has passed.
    pub fn current(&self) -> Arc<CertifiedKey> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let generation = RELOAD.load(Ordering::Relaxed);
        if state.checked.elapsed() >= CHECK_EVERY || state.generation != generation {
            state.checked = Instant::now();
            state.generation = generation;
            let (seen, loaded) = read_pair(&self.cert, &self.key, &self.provider);
            if seen != state.seen {
                state.seen = seen;
                match loaded {
                    Ok(new) => {
                        state.current = Arc::new(new);
                        tracing::info!(cert = %self.cert.display(), key = %self.key.display(),
                            "listener certificate reloaded: new TLS connections get it");
                    }
                    Err(e) => tracing::warn!(
                        "listener certificate files changed but are refused, still serving the previous certificate: {e}"
                    ),
                }
            }
        }
        state.current.clone()
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// Hashes both files' contents (unreadable files hash their error) and loads the pair.
fn read_pair(
    cert: &Path,
    key: &Path,
    provider: &CryptoProvider,
) -> ([u8; 20], Result<CertifiedKey, TlsError>) {
    let cert_pem = std::fs::read(cert).map_err(|e| TlsError::Cert {
        path: cert.display().to_string(),
        reason: e.to_string(),
    });
    let key_pem = std::fs::read(key).map_err(|e| TlsError::Key {
        path: key.display().to_string(),
        reason: e.to_string(),
    });
    let mut hasher = Sha1::new();
    for part in [&cert_pem, &key_pem] {
        let bytes = match part {
            Ok(b) => b.clone(),
            Err(e) => e.to_string().into_bytes(),
        };
        hasher.update((bytes.len() as u64).to_be_bytes());
        hasher.update(&bytes);
    }
    let loaded =
        cert_pem.and_then(|c| key_pem.and_then(|k| parse_pair(cert, &c, key, &k, provider)));
    (hasher.finalize().into(), loaded)
}

fn parse_pair(
    cert: &Path,
    cert_pem: &[u8],
    key: &Path,
    key_pem: &[u8],
    provider: &CryptoProvider,
) -> Result<CertifiedKey, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Cert {
            path: cert.display().to_string(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Cert {
            path: cert.display().to_string(),
            reason: "no CERTIFICATE block".into(),
        });
    }
    let key_der = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| TlsError::Key {
        path: key.display().to_string(),
        reason: e.to_string(),
    })?;
    CertifiedKey::from_der(certs, key_der, provider)
        .map_err(|e| config_error(cert, key, e.to_string()))
}

fn config_error(cert: &Path, key: &Path, reason: String) -> TlsError {
    TlsError::Config {
        cert: cert.display().to_string(),
        key: key.display().to_string(),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the shipped `certs/gen-certs.sh` into `dir` (a fresh CA and its server pair).
    fn pki(dir: &Path) {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("certs/gen-certs.sh");
        let out = std::process::Command::new("bash")
            .arg(script)
            .arg(dir)
            .arg("unused-site")
            .output()
            .expect("run gen-certs.sh");
        assert!(out.status.success(), "{out:?}");
    }

    #[test]
    fn bad_files_at_start_fail_naming_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        let (one, two) = (tmp.path().join("1"), tmp.path().join("2"));
        pki(&one);
        pki(&two);
        let (cert, key) = (one.join("server.pem"), one.join("server.key"));
        assert!(server_acceptor(&cert, &key).is_ok());

        let junk = tmp.path().join("junk.pem");
        std::fs::write(&junk, "garbage\n").unwrap();
        let err = server_acceptor(&junk, &key)
            .err()
            .expect("garbage certificate");
        assert!(matches!(err, TlsError::Cert { .. }), "{err:?}");
        assert!(
            err.to_string().contains(&junk.display().to_string()),
            "{err}"
        );

        let err = server_acceptor(&cert, &two.join("server.key"))
            .err()
            .expect("someone else's key");
        assert!(matches!(err, TlsError::Config { .. }), "{err:?}");
    }

    #[test]
    fn reload_now_makes_the_next_handshake_look_at_the_files() {
        let tmp = tempfile::tempdir().unwrap();
        let (one, two) = (tmp.path().join("1"), tmp.path().join("2"));
        pki(&one);
        pki(&two);
        let (cert, key) = (tmp.path().join("tls.pem"), tmp.path().join("tls.key"));
        std::fs::copy(one.join("server.pem"), &cert).unwrap();
        std::fs::copy(one.join("server.key"), &key).unwrap();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let resolver = ReloadingCert::load(&cert, &key, provider).unwrap();
        let first = resolver.current().cert[0].clone();

        std::fs::copy(two.join("server.pem"), &cert).unwrap();
        std::fs::copy(two.join("server.key"), &key).unwrap();
        let started = Instant::now();
        let unprompted = resolver.current().cert[0].clone();
        reload_now();
        let prompted = resolver.current().cert[0].clone();
        if started.elapsed() < CHECK_EVERY {
            assert_eq!(
                unprompted, first,
                "looked before CHECK_EVERY without a reload"
            );
        }
        assert_ne!(prompted, first, "reload_now must make it look at once");
        let new = CertificateDer::from_pem_file(two.join("server.pem")).unwrap();
        assert_eq!(prompted, new);
    }
}
