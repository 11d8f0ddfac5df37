//! Certificates that must not be trusted: a broker presenting an expired, a not-yet-valid, a
//! wrong-host or a foreign-CA certificate, and a listener configured with an expired one.
//!
//! The "broker" here is `openssl s_server` holding the bad certificate: the TLS handshake fails
//! before any AMQP is spoken, so no broker node is needed (the foreign-CA case against a real
//! RabbitMQ is in `amqp_connection.rs`). Certificates are made at test time by the shipped
//! `certs/gen-certs.sh` and by `openssl ca` with explicit dates and subjectAltName.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use audrey_federation::amqp::{connect, AmqpError};
use audrey_federation::config::AmqpConfig;
use support::certs::{self, issue_with_validity, openssl, CertPaths};
use support::sidecar::{config, Sidecar};
use support::upstream;

const DEADLINE: Duration = Duration::from_secs(20);

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 temp path")
}

/// A server certificate for `san`, signed by `pki`'s CA, valid from `start` to `end`
/// (`YYYYMMDDHHMMSSZ`); returns (certificate, key).
fn issue(
    pki: &CertPaths,
    work: &Path,
    name: &str,
    san: &str,
    start: &str,
    end: &str,
) -> (PathBuf, PathBuf) {
    let key = work.join(format!("{name}.key"));
    openssl(&[
        "genpkey",
        "-algorithm",
        "EC",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-out",
        s(&key),
    ]);
    let pem = issue_with_validity(pki, work, name, &key, "/CN=broker", Some(san), (start, end));
    (pem, key)
}

/// `openssl s_server` on a free loopback port, presenting `cert`; killed on drop.
struct TlsEndpoint {
    child: Child,
    addr: SocketAddr,
}

impl TlsEndpoint {
    fn start(cert: &Path, key: &Path) -> TlsEndpoint {
        let port = support::broker_layout::free_port();
        let child = Command::new("openssl")
            .args(["s_server", "-quiet", "-accept"])
            .arg(format!("127.0.0.1:{port}"))
            .args(["-cert", s(cert), "-key", s(key)])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn openssl s_server");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        let deadline = Instant::now() + DEADLINE;
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(Instant::now() < deadline, "openssl s_server did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        TlsEndpoint { child, addr }
    }
}

impl Drop for TlsEndpoint {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn amqp_lines(url: &str, pki: &CertPaths) -> String {
    format!(
        "url = \"{url}\"\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\nsasl = \"external\"\n\
         reconnect_initial = 0.05\nreconnect_max = 0.2\n",
        pki.ca.display(),
        pki.site_cert("site-a").display(),
        pki.site_key("site-a").display(),
    )
}

const PAST: (&str, &str) = ("20200101000000Z", "20200201000000Z");
const FUTURE: (&str, &str) = ("20990101000000Z", "20990201000000Z");
const NOW: (&str, &str) = ("20240101000000Z", "20380101000000Z");

#[tokio::test]
async fn untrustworthy_broker_certificates_are_refused_naming_the_reason() {
    let pki = certs::generate(&["site-a"]);
    let foreign = certs::generate(&["site-a"]);
    let work = tempfile::tempdir().expect("tempdir");
    let w = work.path();
    let ip = "IP:127.0.0.1,DNS:localhost";
    let cases = [
        (
            "expired",
            issue(&pki, w, "expired", ip, PAST.0, PAST.1),
            "certificate expired",
        ),
        (
            "not yet valid",
            issue(&pki, w, "future", ip, FUTURE.0, FUTURE.1),
            "certificate not valid yet",
        ),
        (
            "wrong host",
            issue(&pki, w, "elsewhere", "DNS:elsewhere.example", NOW.0, NOW.1),
            "certificate not valid for name \"127.0.0.1\"",
        ),
        (
            "another CA",
            (foreign.server_cert.clone(), foreign.server_key.clone()),
            "UnknownIssuer",
        ),
    ];
    for (what, (cert, key), expected) in cases {
        let endpoint = TlsEndpoint::start(&cert, &key);
        let cfg: AmqpConfig =
            toml::from_str(&amqp_lines(&format!("amqps://{}", endpoint.addr), &pki)).expect("cfg");
        let err = connect(&cfg, "hostile-tls").await.expect_err(what);
        assert!(
            matches!(err, AmqpError::ServerCertificateRejected { .. }),
            "{what}: {err:?}"
        );
        let text = err.to_string();
        assert!(text.contains(expected), "{what}: {text}");
        assert!(text.contains("check amqp.ca"), "{what}: {text}");
    }
}

#[tokio::test]
async fn a_sidecar_facing_an_expired_broker_certificate_keeps_proxying_and_counts_it() {
    let pki = certs::generate(&["site-a"]);
    let work = tempfile::tempdir().expect("tempdir");
    let (cert, key) = issue(&pki, work.path(), "expired", "IP:127.0.0.1", PAST.0, PAST.1);
    let endpoint = TlsEndpoint::start(&cert, &key);
    let up = upstream::echo().await;
    let dir = work.path().join("site");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let secret = dir.join("conductor.secret");
    std::fs::write(&secret, "c0nduct0r").expect("secret");
    let extra = format!(
        "[oauth]\nconductor_key = \"conductor\"\nconductor_secret_file = \"{}\"\n[amqp]\n{}",
        secret.display(),
        amqp_lines(&format!("amqps://{}", endpoint.addr), &pki)
    );
    let text = config("site-a", &format!("http://{up}"), &dir, "", &extra);
    let sc = Sidecar::start(&dir, &text);
    let deadline = Instant::now() + DEADLINE;
    while !sc.log().contains("certificate expired") {
        assert!(
            Instant::now() < deadline,
            "no TLS reason logged:\n{}",
            sc.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let get = |addr: SocketAddr, path: &'static str| async move {
        let req = http::Request::get(path)
            .header("host", "a")
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .expect("request");
        support::client::exchange(addr, req).await
    };
    let (status, _, _) = get(sc.proxy, "/version").await;
    assert_eq!(status, 200, "the proxy keeps serving without the broker");
    let (_, _, body) = get(sc.admin, "/metrics").await;
    let metrics = String::from_utf8_lossy(&body);
    let failures = metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix("audrey_federation_broker_connect_failures_total{link=\"publish\"} ")
        })
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(failures >= 1.0, "{metrics}");

    // `check` names the same reason on the broker line and exits 1.
    let out = Command::new(env!("CARGO_BIN_EXE_audrey-federation"))
        .args(["check", "--config", s(&sc.config_path())])
        .env_remove("AUDREY_FEDERATION_CONFIG")
        .output()
        .expect("check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("FAIL") && l.contains("certificate expired")),
        "{stdout}"
    );
}

#[tokio::test]
async fn an_expired_listener_certificate_is_named_by_check_and_refused_by_clients() {
    let pki = certs::generate(&["site-a"]);
    let work = tempfile::tempdir().expect("tempdir");
    let (cert, key) = issue(
        &pki,
        work.path(),
        "listener",
        "IP:127.0.0.1",
        PAST.0,
        PAST.1,
    );
    let up = upstream::echo().await;
    let dir = work.path().join("site");
    let proxy_extra = format!(
        "tls_cert = \"{}\"\ntls_key = \"{}\"",
        cert.display(),
        key.display()
    );
    let sc = Sidecar::start(
        &dir,
        &config("site-a", &format!("http://{up}"), &dir, &proxy_extra, ""),
    );

    let out = Command::new(env!("CARGO_BIN_EXE_audrey-federation"))
        .args(["check", "--config", s(&sc.config_path())])
        .env_remove("AUDREY_FEDERATION_CONFIG")
        .output()
        .expect("check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("FAIL proxy.tls_cert") && l.contains("expired")),
        "{stdout}"
    );

    // `run` starts anyway and says why clients will refuse it.
    let log = sc.log();
    assert!(
        log.lines()
            .any(|l| l.contains("certificate will be refused by peers")
                && l.contains("proxy.tls_cert")
                && l.contains("expired")),
        "{log}"
    );

    // A client that trusts the CA still refuses the expired certificate, and so does one that
    // trusts another CA (webpki reports the expiry first). The sidecar keeps accepting.
    let foreign = certs::generate(&["site-a"]);
    for (ca, expected) in [
        (&pki.ca, "certificate expired"),
        (&foreign.ca, "invalid peer certificate"),
    ] {
        let err = tls_client(sc.proxy, ca).await.expect_err("must be refused");
        assert!(err.contains(expected), "{err}");
    }
    let (status, _, _) = support::client::exchange(
        sc.admin,
        http::Request::get("/healthz")
            .header("host", "a")
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .expect("request"),
    )
    .await;
    assert_eq!(status, 200);
}

/// A TLS handshake with `addr` trusting only `ca`; the error text when it fails.
async fn tls_client(addr: SocketAddr, ca: &Path) -> Result<(), String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).expect("ca") {
        roots.add(c.expect("cert")).expect("add");
    }
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let name = ServerName::try_from("127.0.0.1").expect("name");
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(name, tcp)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}
