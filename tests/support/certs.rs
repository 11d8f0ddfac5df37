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

/// Runs `openssl ARGS`; panics with its stderr when it fails.
pub fn openssl(args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn utf8(p: &Path) -> &str {
    p.to_str().expect("utf-8 temp path")
}

/// A certificate for `key` with `subject`, signed by `pki`'s CA and valid from `start` to
/// `end` (`YYYYMMDDHHMMSSZ`, past or future alike); with `san`, a server certificate for it.
/// Files go to `work` under `name`.
pub fn issue_with_validity(
    pki: &CertPaths,
    work: &Path,
    name: &str,
    key: &Path,
    subject: &str,
    san: Option<&str>,
    (start, end): (&str, &str),
) -> PathBuf {
    let db = work.join(format!("{name}-db"));
    std::fs::create_dir_all(&db).expect("mkdir");
    std::fs::write(db.join("index.txt"), "").expect("index");
    std::fs::write(db.join("serial"), "1000\n").expect("serial");
    let ext = san.map_or(String::new(), |san| {
        format!(
            "[ext]\nbasicConstraints = CA:FALSE\nextendedKeyUsage = serverAuth\nsubjectAltName = {san}\n"
        )
    });
    let cnf = work.join(format!("{name}.cnf"));
    std::fs::write(
        &cnf,
        format!(
            "[ca]\ndefault_ca = d\n[d]\ndatabase = {db}/index.txt\nnew_certs_dir = {db}\n\
             serial = {db}/serial\ndefault_md = sha256\npolicy = p\nunique_subject = no\n\
             [p]\ncommonName = supplied\n{ext}",
            db = db.display()
        ),
    )
    .expect("cnf");
    let csr = work.join(format!("{name}.csr"));
    let pem = work.join(format!("{name}.pem"));
    openssl(&[
        "req",
        "-new",
        "-key",
        utf8(key),
        "-subj",
        subject,
        "-out",
        utf8(&csr),
    ]);
    let ca_key = pki.dir.join("ca.key");
    let mut args = vec!["ca", "-batch", "-config", utf8(&cnf), "-notext"];
    if san.is_some() {
        args.extend(["-extensions", "ext"]);
    }
    args.extend([
        "-cert",
        utf8(&pki.ca),
        "-keyfile",
        utf8(&ca_key),
        "-startdate",
        start,
        "-enddate",
        end,
        "-in",
        utf8(&csr),
        "-out",
        utf8(&pem),
    ]);
    openssl(&args);
    pem
}
