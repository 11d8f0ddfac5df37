//! Test PKI: runs the shipped `certs/gen-certs.sh` into a temporary folder and returns the paths.
//!
//! Owns nothing but the generated files (deleted when the last `CertPaths` clone is dropped).
//! It must not carry its own certificate logic: tests exercise the same tool operators run.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

/// Where `gen-certs.sh` wrote a development PKI.
#[derive(Debug, Clone)]
pub struct CertPaths {
    pub dir: PathBuf,
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    _tmp: Option<Arc<tempfile::TempDir>>,
}

impl CertPaths {
    /// The client certificate of `site` (CN = site).
    pub fn site_cert(&self, site: &str) -> PathBuf {
        self.dir.join(format!("{site}.pem"))
    }

    /// The client key of `site`.
    pub fn site_key(&self, site: &str) -> PathBuf {
        self.dir.join(format!("{site}.key"))
    }
}

/// The script under test, from the crate root.
pub fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("certs")
        .join("gen-certs.sh")
}

/// A fresh CA, a server certificate and one client certificate per site, in a new temp folder.
pub fn generate(sites: &[&str]) -> CertPaths {
    let tmp = tempfile::Builder::new()
        .prefix("audrey-pki-")
        .tempdir()
        .expect("create temp dir for certs");
    let mut paths = generate_into(tmp.path(), sites);
    paths._tmp = Some(Arc::new(tmp));
    paths
}

/// Runs `gen-certs.sh DIR SITE...` (reusing a CA already in `dir`); the caller owns `dir`.
pub fn generate_into(dir: &Path, sites: &[&str]) -> CertPaths {
    let out = Command::new("bash")
        .arg(script())
        .arg(dir)
        .args(sites)
        .output()
        .expect("run certs/gen-certs.sh (bash and openssl are needed)");
    assert!(
        out.status.success(),
        "gen-certs.sh failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    CertPaths {
        dir: dir.to_owned(),
        ca: dir.join("ca.pem"),
        server_cert: dir.join("server.pem"),
        server_key: dir.join("server.key"),
        _tmp: None,
    }
}

/// The leaf certificate a TLS listener at `addr` serves for `localhost`, trusting any of `roots`.
pub async fn served_cert(
    addr: std::net::SocketAddr,
    roots: &[&Path],
) -> anyhow::Result<rustls::pki_types::CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName};
    let mut store = rustls::RootCertStore::empty();
    for root in roots {
        store.add(CertificateDer::from_pem_file(root)?)?;
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(store)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost")?, tcp)
        .await?;
    let leaf = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .ok_or_else(|| anyhow::anyhow!("no server certificate"))?;
    Ok(leaf.clone().into_owned())
}
