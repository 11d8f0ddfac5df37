//! Proxy-only behaviour against in-test upstreams: header rules, streaming, 502/504,
//! config errors. The real-server conformance lives in `conformance.rs`.

mod support;

use std::process::Command;

use bytes::Bytes;
use http_body_util::BodyExt;
use support::client::exchange as send;
use support::sidecar::{config, Sidecar};
use support::upstream;

fn empty() -> http_body_util::combinators::BoxBody<Bytes, std::io::Error> {
    http_body_util::Empty::new()
        .map_err(|never| match never {})
        .boxed()
}

#[tokio::test]
async fn forwards_keeps_host_appends_xff_and_strips_hop_by_hop() {
    let up = upstream::echo().await;
    let dir = tempfile::tempdir().unwrap();
    let sc = Sidecar::start(
        dir.path(),
        &config("a", &format!("http://{up}"), dir.path(), "", ""),
    );
    let req = http::Request::get("/configs/2/abc?oauth_nonce=1&x=%2F")
        .header("host", "configserver.example:443")
        .header("x-forwarded-for", "198.51.100.1")
        .header("connection", "x-client-hop")
        .header("x-client-hop", "1")
        .header("x-end-to-end", "kept")
        .body(empty())
        .unwrap();
    let (status, h, body) = send(sc.proxy, req).await;
    assert_eq!(status, 200);
    assert_eq!(&body[..], b"echo");
    assert_eq!(
        h["x-echo-host"], "configserver.example:443",
        "Host must pass unchanged"
    );
    assert_eq!(
        h["x-echo-uri"], "/configs/2/abc?oauth_nonce=1&x=%2F",
        "origin-form target, query intact"
    );
    assert_eq!(h["x-echo-xff"], "198.51.100.1, 127.0.0.1");
    assert_eq!(h["x-echo-xfp"], "http");
    let names = h["x-echo-headers"].to_str().unwrap();
    assert!(names.contains("x-end-to-end"), "{names}");
    assert!(
        !names.contains("x-client-hop"),
        "header named in Connection leaked upstream: {names}"
    );
    assert_eq!(h["content-type"], "text/html;charset=utf-8");
    assert!(
        !h.contains_key("x-hop") && !h.contains_key("keep-alive"),
        "hop-by-hop leaked to client: {h:?}"
    );

    // A client's X-Forwarded-Proto is kept.
    let req = http::Request::get("/version")
        .header("x-forwarded-proto", "https")
        .body(empty())
        .unwrap();
    let (_, h, _) = send(sc.proxy, req).await;
    assert_eq!(h["x-echo-xfp"], "https");
}

/// A body generated chunk by chunk, never held whole by the client either.
struct Chunks {
    left: u64,
    chunk: Bytes,
}

impl http_body::Body for Chunks {
    type Data = Bytes;
    type Error = std::io::Error;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, std::io::Error>>> {
        if self.left == 0 {
            return std::task::Poll::Ready(None);
        }
        let n = self.left.min(self.chunk.len() as u64);
        self.left -= n;
        std::task::Poll::Ready(Some(Ok(http_body::Frame::data(
            self.chunk.slice(..n as usize),
        ))))
    }
    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.left)
    }
}

#[tokio::test]
async fn streams_a_body_far_larger_than_the_capture_limit() {
    const SIZE: u64 = 256 * 1024 * 1024;
    let up = upstream::echo().await;
    let dir = tempfile::tempdir().unwrap();
    let sc = Sidecar::start(
        dir.path(),
        &config(
            "a",
            &format!("http://{up}"),
            dir.path(),
            "capture_body_limit = 65536",
            "",
        ),
    );
    let body = Chunks {
        left: SIZE,
        chunk: Bytes::from(vec![7u8; 64 * 1024]),
    };
    let req = http::Request::put("/files/2/abc")
        .header("content-type", "multipart/form-data; boundary=x")
        .body(body.boxed())
        .unwrap();
    let (status, h, _) = send(sc.proxy, req).await;
    assert_eq!(status, 200);
    assert_eq!(h["x-echo-bytes"], SIZE.to_string().as_str());
    let peak = sc.peak_rss_kib();
    assert!(
        peak < 96 * 1024,
        "sidecar peak RSS {peak} KiB: the body was buffered, not streamed"
    );
}

#[tokio::test]
async fn refused_upstream_answers_502_naming_it() {
    let port = upstream::closed_port();
    let dir = tempfile::tempdir().unwrap();
    let sc = Sidecar::start(
        dir.path(),
        &config("a", &format!("http://{port}"), dir.path(), "", ""),
    );
    let (status, h, body) = send(
        sc.proxy,
        http::Request::get("/version").body(empty()).unwrap(),
    )
    .await;
    assert_eq!(status, 502);
    assert!(h["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let body = String::from_utf8(body.to_vec()).unwrap();
    assert_eq!(body.lines().count(), 1, "{body:?}");
    assert!(
        body.contains(&format!("http://{port}")) && body.contains("refused"),
        "{body:?}"
    );
}

#[tokio::test]
async fn slow_upstream_answers_504() {
    let up = upstream::silent().await;
    let dir = tempfile::tempdir().unwrap();
    let sc = Sidecar::start(
        dir.path(),
        &config(
            "a",
            &format!("http://{up}"),
            dir.path(),
            "upstream_timeout = 0.3",
            "",
        ),
    );
    let (status, _, body) = send(
        sc.proxy,
        http::Request::get("/version").body(empty()).unwrap(),
    )
    .await;
    assert_eq!(status, 504);
    let body = String::from_utf8(body.to_vec()).unwrap();
    assert!(
        body.contains(&format!("http://{up}")) && body.contains("0.3s"),
        "{body:?}"
    );
}

#[test]
fn config_errors_name_the_key_and_exit_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let cases: &[(&str, &str)] = &[
        ("site = \"a\"\n[proxy]\nupstream = \"https://x:1\"\n", "proxy.upstream"),
        ("site = \"a\"\n[proxy]\nlisten = \"nonsense\"\n", "listen"),
        ("site = \"a\"\n[proxy]\nbogus = 1\n", "bogus"),
        ("site = \"\"\n", "site"),
        ("[proxy]\n", "site"),
        ("site = \"a\"\n[proxy]\ntls_cert = \"/c.pem\"\n", "proxy.tls_key"),
        ("site = \"a\"\n[proxy]\ntrusted_proxies = [\"10.0.0.0/99\"]\n", "proxy.trusted_proxies"),
        ("site = \"a\"\n[proxy]\nupstream_timeout = -1\n", "upstream_timeout"),
        (
            "site = \"a\"\n[oauth]\nconductor_key = \"k\"\nconductor_secret_file = \"/s\"\n[amqp]\nurl = \"amqp://localhost:5672\"\n",
            "amqp.url",
        ),
        (
            "site = \"a\"\n[oauth]\nconductor_key = \"k\"\nconductor_secret_file = \"/s\"\n[amqp]\nurl = \"amqps://localhost:5671\"\nca = \"/ca.pem\"\n",
            "amqp.cert",
        ),
    ];
    for (text, key) in cases {
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, text).unwrap();
        for sub in ["check", "run"] {
            let out = Command::new(env!("CARGO_BIN_EXE_audrey-federation"))
                .args([sub, "--config"])
                .arg(&path)
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{sub} {text:?}: {err}");
            assert!(
                err.contains(key),
                "{sub} {text:?}: error does not name {key}: {err}"
            );
        }
    }
    let good = dir.path().join("good.toml");
    std::fs::write(&good, "site = \"a\"\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_audrey-federation"))
        .args(["check", "--config-only", "--config"])
        .arg(&good)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn terminates_tls_with_the_configured_certificate() {
    use std::sync::Arc;
    let certs = support::certs::generate(&["a"]);
    let up = upstream::echo().await;
    let dir = tempfile::tempdir().unwrap();
    let tls = format!(
        "tls_cert = \"{}\"\ntls_key = \"{}\"",
        certs.server_cert.display(),
        certs.server_key.display()
    );
    let sc = Sidecar::start(
        dir.path(),
        &config("a", &format!("http://{up}"), dir.path(), &tls, ""),
    );

    let mut roots = rustls::RootCertStore::empty();
    use rustls::pki_types::pem::PemObject;
    for c in rustls::pki_types::CertificateDer::pem_file_iter(&certs.ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(sc.proxy).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(name, tcp)
        .await
        .unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get("/version")
        .header("host", "localhost")
        .body(empty())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["x-echo-xfp"],
        "https",
        "X-Forwarded-Proto from the TLS listener"
    );
}
