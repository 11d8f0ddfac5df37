//! Hostile HTTP against the real sidecar binary: oversized heads, header floods, slow-loris,
//! request smuggling, odd methods and paths, memory under abuse, and `[proxy.restrict]`.
//! Requests are written as raw bytes (no client library would send them); the counting echo
//! upstream proves what was (not) forwarded. docs/security.md lists what each test proves.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use support::sidecar::{config, Sidecar};
use support::upstream;

/// What a raw exchange gave: everything read until the server closed (or the deadline).
struct Raw {
    text: String,
    closed: bool,
}

impl Raw {
    fn status(&self) -> Option<u16> {
        self.text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
    }

    fn responses(&self) -> usize {
        self.text.matches("HTTP/1.1 ").count()
    }
}

/// Writes `bytes` (ignoring a reset once the server gave up) and reads until close or `wait`.
async fn raw(addr: SocketAddr, bytes: &[u8], wait: Duration) -> Raw {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let _ = s.write_all(bytes).await;
    read_until_closed(&mut s, wait).await
}

async fn read_until_closed(s: &mut TcpStream, wait: Duration) -> Raw {
    let deadline = Instant::now() + wait;
    let mut out = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                return Raw {
                    text: String::from_utf8_lossy(&out).into_owned(),
                    closed: true,
                }
            }
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => {
                return Raw {
                    text: String::from_utf8_lossy(&out).into_owned(),
                    closed: false,
                }
            }
        }
    }
}

async fn site(proxy_extra: &str) -> (Sidecar, Arc<AtomicUsize>, tempfile::TempDir) {
    let (up, seen) = upstream::echo_counting().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let sc = Sidecar::start(
        dir.path(),
        &config("a", &format!("http://{up}"), dir.path(), proxy_extra, ""),
    );
    (sc, seen, dir)
}

async fn metrics(sc: &Sidecar) -> String {
    let r = raw(
        sc.admin,
        b"GET /metrics HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    r.text
}

const SECOND: Duration = Duration::from_secs(5);

#[tokio::test]
async fn oversized_heads_and_header_floods_are_refused_before_the_upstream() {
    let (sc, seen, _dir) = site("").await;
    let big = format!(
        "GET /version HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n",
        "a".repeat(600 * 1024)
    );
    let r = raw(sc.proxy, big.as_bytes(), SECOND).await;
    assert_eq!(r.status(), Some(431), "{}", r.text);
    assert!(r.closed);

    let mut flood = String::from("GET /version HTTP/1.1\r\nHost: a\r\n");
    for i in 0..150 {
        flood.push_str(&format!("X-H{i}: v\r\n"));
    }
    flood.push_str("\r\n");
    let r = raw(sc.proxy, flood.as_bytes(), SECOND).await;
    assert_eq!(r.status(), Some(431), "{}", r.text);

    let long_target = format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "p".repeat(70 * 1024));
    let r = raw(sc.proxy, long_target.as_bytes(), SECOND).await;
    assert_eq!(r.status(), Some(414), "{}", r.text);

    // A capturing route's body over proxy.capture_body_limit: 413 before anything is forwarded.
    let over = format!(
        "PUT /params/2/I1 HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n",
        2 * 1024 * 1024
    );
    let r = raw(sc.proxy, over.as_bytes(), SECOND).await;
    assert_eq!(r.status(), Some(413), "{}", r.text);
    assert_eq!(
        seen.load(Ordering::SeqCst),
        0,
        "a refused request reached the upstream"
    );

    // The sidecar still serves.
    let ok = raw(
        sc.proxy,
        b"GET /version HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        SECOND,
    )
    .await;
    assert_eq!(ok.status(), Some(200), "{}", ok.text);
}

#[tokio::test]
async fn a_slow_loris_is_disconnected_after_the_header_read_timeout() {
    let (sc, seen, _dir) = site("header_read_timeout = 1").await;
    let started = Instant::now();
    let mut s = TcpStream::connect(sc.proxy).await.expect("connect");
    s.write_all(b"GET /version HTTP/1.1\r\nHost: a\r\n")
        .await
        .expect("write");
    // One header byte every 100 ms, never finishing the head; bounded at 100 bytes (10 s).
    let mut cut = false;
    for b in b"X-Slow: ".iter().chain([b'a'; 92].iter()) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if s.write_all(&[*b]).await.is_err() {
            cut = true;
            break;
        }
        let mut probe = [0u8; 512];
        // Anything but a timeout: closed (0), reset, or an answer (408) before the close.
        if tokio::time::timeout(Duration::from_millis(1), s.read(&mut probe))
            .await
            .is_ok()
        {
            cut = true;
            break;
        }
    }
    let elapsed = started.elapsed();
    assert!(cut, "connection still open after {elapsed:?}");
    assert!(
        elapsed >= Duration::from_millis(900) && elapsed < Duration::from_secs(4),
        "closed after {elapsed:?}, expected about 1 s"
    );
    assert_eq!(seen.load(Ordering::SeqCst), 0);
    let ok = raw(
        sc.proxy,
        b"GET /version HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        SECOND,
    )
    .await;
    assert_eq!(ok.status(), Some(200), "{}", ok.text);
}

#[tokio::test]
async fn smuggling_attempts_are_refused_or_neutralised() {
    let (sc, seen, _dir) = site("").await;
    let smuggled = "GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n";

    // Content-Length and Transfer-Encoding: the chunked framing wins, Content-Length is dropped
    // (RFC 9112 §6.3), and the connection closes after the answer: the trailing request is
    // never read as a second request, by the sidecar or by the upstream.
    let both = format!(
        "POST /files/1/x HTTP/1.1\r\nHost: a\r\nContent-Length: 60\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}"
    );
    let r = raw(sc.proxy, both.as_bytes(), SECOND).await;
    assert_eq!(r.status(), Some(200), "{}", r.text);
    assert_eq!(r.responses(), 1, "{}", r.text);
    assert!(r.closed, "connection kept open after CL+TE");
    let headers_seen = r
        .text
        .lines()
        .find_map(|l| l.strip_prefix("x-echo-headers: "))
        .unwrap_or_default()
        .to_owned();
    assert!(
        !headers_seen.contains("content-length"),
        "Content-Length forwarded beside chunked framing: {headers_seen}"
    );
    assert!(r.text.contains("x-echo-bytes: 0"), "{}", r.text);
    assert_eq!(
        seen.load(Ordering::SeqCst),
        1,
        "only the first request reaches the upstream"
    );

    // Refused outright with 400, nothing forwarded.
    let refused = [
        ("differing Content-Length", "POST /files/1/x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!".to_owned()),
        ("obs-fold", "GET /version HTTP/1.1\r\nHost: a\r\nX-A: a\r\n folded\r\n\r\n".to_owned()),
        ("Transfer-Encoding not chunked", "POST /files/1/x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n".to_owned()),
        ("Transfer-Encoding on HTTP/1.0", "POST /files/1/x HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_owned()),
        ("bad Content-Length", "POST /files/1/x HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\nhello".to_owned()),
        ("space before colon", "GET /version HTTP/1.1\r\nHost : a\r\n\r\n".to_owned()),
        ("bad chunk size on a capturing route", format!("PUT /params/2/I1 HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\naudrey_data=x\r\n0\r\n\r\n{smuggled}")),
    ];
    for (what, req) in refused {
        let r = raw(sc.proxy, req.as_bytes(), SECOND).await;
        assert_eq!(r.status(), Some(400), "{what}: {}", r.text);
        assert!(r.closed, "{what}: connection kept open");
        assert_eq!(
            seen.load(Ordering::SeqCst),
            1,
            "{what} reached the upstream"
        );
    }

    // A bad chunk size on a streamed route: the head was already on its way, but the body
    // breaks off, the connection is dropped, and no second request is ever parsed.
    let bad_chunk = format!(
        "PUT /files/2/x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n{smuggled}"
    );
    let r = raw(sc.proxy, bad_chunk.as_bytes(), SECOND).await;
    eprintln!(
        "bad chunk on a streamed route: upstream saw {} request(s) in all; client got {:?}",
        seen.load(Ordering::SeqCst),
        r.status()
    );
    assert!(
        r.closed,
        "connection kept open after a bad chunk: {}",
        r.text
    );
    assert!(
        matches!(r.status(), None | Some(400) | Some(502)) && r.responses() <= 1,
        "{}",
        r.text
    );
    assert_eq!(
        seen.load(Ordering::SeqCst),
        2,
        "the streamed head reached the upstream, the smuggled request never did"
    );
}

#[tokio::test]
async fn odd_methods_and_paths_are_forwarded_as_the_server_would_see_them() {
    let (sc, seen, _dir) = site("").await;
    let cases = [
        (
            "PROPFIND /configs/1/I1 HTTP/1.1",
            "PROPFIND",
            "/configs/1/I1",
        ),
        ("GET /../../etc/passwd HTTP/1.1", "GET", "/../../etc/passwd"),
        ("PUT /params/2/%2e%2e HTTP/1.1", "PUT", "/params/2/%2e%2e"),
        (
            "GET /params/2/%00?x=%ff HTTP/1.1",
            "GET",
            "/params/2/%00?x=%ff",
        ),
        (
            "GET http://elsewhere.example/version HTTP/1.1",
            "GET",
            "/version",
        ),
    ];
    for (line, method, uri) in cases {
        let req = format!("{line}\r\nHost: a\r\nConnection: close\r\nContent-Length: 0\r\n\r\n");
        let r = raw(sc.proxy, req.as_bytes(), SECOND).await;
        assert_eq!(r.status(), Some(200), "{line}: {}", r.text);
        assert!(
            r.text.contains(&format!("x-echo-method: {method}")),
            "{line}: {}",
            r.text
        );
        assert!(
            r.text.contains(&format!("x-echo-uri: {uri}\r\n")),
            "{line}: {}",
            r.text
        );
    }
    let forwarded = seen.load(Ordering::SeqCst);
    // Not HTTP: refused by the parser, never forwarded.
    let junks: [&[u8]; 5] = [
        b"GET /a b HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET /\x01 HTTP/1.1\r\nHost: a\r\n\r\n",
        b"G@T / HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET / HTTP/9.9\r\nHost: a\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
    ];
    for junk in junks {
        let r = raw(sc.proxy, junk, SECOND).await;
        let junk = String::from_utf8_lossy(junk);
        assert!(r.closed, "{junk:?}: connection kept open");
        assert!(
            matches!(r.status(), None | Some(400) | Some(505)),
            "{junk:?}: {}",
            r.text
        );
    }
    assert_eq!(
        seen.load(Ordering::SeqCst),
        forwarded,
        "junk reached the upstream"
    );
}

#[tokio::test]
async fn memory_stays_bounded_under_hostile_load() {
    let (sc, seen, _dir) = site("").await;
    let header = format!(
        "GET /version HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n",
        "a".repeat(600 * 1024)
    );
    let mut tasks = Vec::new();
    for i in 0..60 {
        let addr = sc.proxy;
        let header = header.clone();
        tasks.push(tokio::spawn(async move {
            if i % 2 == 0 {
                raw(addr, header.as_bytes(), SECOND).await.status()
            } else {
                // A capturing route, chunked, no declared length: read up to the limit, then 413.
                let mut s = TcpStream::connect(addr).await.expect("connect");
                let head =
                    "PUT /params/2/I1 HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n";
                let _ = s.write_all(head.as_bytes()).await;
                let chunk = format!("10000\r\n{}\r\n", "x".repeat(0x10000));
                for _ in 0..40 {
                    if s.write_all(chunk.as_bytes()).await.is_err() {
                        break;
                    }
                }
                read_until_closed(&mut s, SECOND).await.status()
            }
        }));
    }
    for t in tasks {
        let status = t.await.expect("task");
        assert!(
            matches!(status, Some(413) | Some(431) | Some(200) | None),
            "{status:?}"
        );
    }
    let peak = sc.peak_rss_kib();
    eprintln!("sidecar peak RSS under hostile load: {peak} KiB");
    assert!(peak < 160 * 1024, "peak RSS {peak} KiB under hostile load");
    assert_eq!(seen.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn restrict_refuses_with_403_counts_and_never_forwards() {
    // The TCP peer (loopback) is no trusted proxy here: its X-Forwarded-For is not believed.
    let (sc, seen, _dir) = site(
        "trusted_proxies = [\"192.0.2.1\"]\n\
         [proxy.restrict]\n\
         delete_deployment_from = [\"127.0.0.0/8\"]\n\
         unsigned_from = [\"10.0.0.0/8\"]",
    )
    .await;
    let send = |req: String| {
        let addr = sc.proxy;
        async move { raw(addr, req.as_bytes(), SECOND).await }
    };
    let r = send("DELETE /deployment/1/D1 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n".into())
        .await;
    assert_eq!(r.status(), Some(200), "{}", r.text);
    let r = send(
        "GET /configs/1/I1 HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 10.0.0.7\r\nConnection: close\r\n\r\n".into(),
    )
    .await;
    assert_eq!(r.status(), Some(403), "{}", r.text);
    assert!(
        r.text.contains("proxy.restrict.unsigned_from"),
        "{}",
        r.text
    );
    let r = send("PUT /params/2/I1 HTTP/1.1\r\nHost: a\r\nContent-Length: 13\r\nConnection: close\r\n\r\naudrey_data=x".into()).await;
    assert_eq!(r.status(), Some(403), "{}", r.text);
    let r = send("GET /configs/1/I1 HTTP/1.1\r\nHost: a\r\nAuthorization: OAuth oauth_consumer_key=\"k\", oauth_signature=\"s\"\r\nConnection: close\r\n\r\n".into()).await;
    assert_eq!(r.status(), Some(200), "signed: {}", r.text);
    let r = send("GET /version HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n".into()).await;
    assert_eq!(r.status(), Some(200), "open path: {}", r.text);
    assert_eq!(
        seen.load(Ordering::SeqCst),
        3,
        "a refused request reached the upstream"
    );
    let m = metrics(&sc).await;
    assert!(
        m.contains("audrey_federation_proxy_refused_total{reason=\"unsigned_from\"} 2"),
        "{m}"
    );
    assert!(sc.log().contains("refused by proxy.restrict"));

    // A hop listed in proxy.restrict.trusted_hops (here loopback, as Apache in front would
    // be): X-Forwarded-For names the client. Without it the TCP peer is judged
    // (tests/closed_doors.rs).
    let (sc, seen, _dir) = site(
        "[proxy.restrict]\n\
         delete_deployment_from = [\"10.0.0.0/8\"]\n\
         trusted_hops = [\"127.0.0.0/8\"]",
    )
    .await;
    let del = |xff: &str| {
        format!("DELETE /deployment/1/D1 HTTP/1.1\r\nHost: a\r\n{xff}Connection: close\r\n\r\n")
    };
    let r = raw(sc.proxy, del("").as_bytes(), SECOND).await;
    assert_eq!(r.status(), Some(403), "{}", r.text);
    assert!(r.text.contains("127.0.0.1"), "{}", r.text);
    let r = raw(
        sc.proxy,
        del("X-Forwarded-For: 10.1.2.3\r\n").as_bytes(),
        SECOND,
    )
    .await;
    assert_eq!(r.status(), Some(200), "{}", r.text);
    assert_eq!(seen.load(Ordering::SeqCst), 1);
    let m = metrics(&sc).await;
    assert!(
        m.contains("audrey_federation_proxy_refused_total{reason=\"delete_deployment_from\"} 1"),
        "{m}"
    );
}

#[test]
fn hardening_keys_are_validated_naming_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let amqp = "[oauth]\nconductor_key = \"k\"\nconductor_secret_file = \"/s\"\n\
                [amqp]\nurl = \"amqps://localhost:5671\"\nca = \"/ca\"\ncert = \"/c\"\nkey = \"/k\"\n";
    let cases = [
        (
            "[proxy]\nheader_read_timeout = 0\n".to_owned(),
            "proxy.header_read_timeout",
        ),
        (
            "[proxy.restrict]\ndelete_deployment_from = [\"10.0.0.0/33\"]\n".to_owned(),
            "proxy.restrict.delete_deployment_from",
        ),
        (
            "[proxy.restrict]\nunsigned_from = [\"nowhere\"]\n".to_owned(),
            "proxy.restrict.unsigned_from",
        ),
        (
            "[proxy.restrict]\nsigned_from = []\n".to_owned(),
            "signed_from",
        ),
        (
            "[proxy.restrict]\ntrusted_hops = [\"10.0.0.0/40\"]\n".to_owned(),
            "proxy.restrict.trusted_hops",
        ),
        (
            "[proxy]\ntls_handshake_timeout = 0\n".to_owned(),
            "proxy.tls_handshake_timeout",
        ),
        (
            "[proxy]\nmax_connections = 0\n".to_owned(),
            "proxy.max_connections",
        ),
        (
            format!("{amqp}accept_origins = [\"site a\"]\n"),
            "amqp.accept_origins",
        ),
    ];
    for (text, key) in cases {
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, format!("site = \"a\"\n{text}")).expect("write");
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_audrey-federation"))
            .args(["run", "--config"])
            .arg(&path)
            .output()
            .expect("run");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{text:?}: {err}");
        assert!(
            err.contains(key),
            "{text:?}: error does not name {key}: {err}"
        );
    }
}
