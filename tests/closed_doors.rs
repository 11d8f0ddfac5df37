//! Closed doors, through the real binary (docs/security.md "Closed doors"): `[proxy.restrict]`
//! judges the TCP peer and believes `X-Forwarded-For` only from `trusted_hops`; mutating admin
//! calls need the `admin.token_file` token (or, without one, a loopback peer) and the
//! `dead-letters` CLI sends it; a TLS client that never sends a ClientHello is cut after
//! `proxy.tls_handshake_timeout`, an idle plain one after `proxy.header_read_timeout`;
//! connections beyond `proxy.max_connections` are answered 503 and closed; the store's
//! directory and files are private whatever the umask.
//!
//! A "guest" at another address than the sidecar's is a client socket bound to 127.0.0.2
//! (still loopback: no traffic leaves the host).

mod support;

use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use support::apache::Apache;
use support::broker_layout::free_port;
use support::certs;
use support::sidecar::{config, Sidecar};
use support::upstream;

const WAIT: Duration = Duration::from_secs(10);

/// Connects to `to` from `from` (port chosen by the kernel).
async fn connect_from(from: &str, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    let ip: IpAddr = from.parse().expect("ip");
    socket.bind(SocketAddr::new(ip, 0)).expect("bind");
    socket.connect(to).await.expect("connect")
}

/// Reads until the peer closes, or `wait` passes: (everything read, closed?).
async fn read_to_close(s: &mut TcpStream, wait: Duration) -> (String, bool) {
    let deadline = Instant::now() + wait;
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (String::from_utf8_lossy(&out).into_owned(), true),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => return (String::from_utf8_lossy(&out).into_owned(), false),
        }
    }
}

/// One request (`Connection: close`) from `from`; the status and the whole answer.
async fn send(from: &str, to: SocketAddr, req: &str) -> (u16, String) {
    let mut s = connect_from(from, to).await;
    s.write_all(req.as_bytes()).await.expect("write");
    let (text, _) = read_to_close(&mut s, WAIT).await;
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|t| t.get(..3))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, text)
}

async fn metrics(sc: &Sidecar) -> String {
    send(
        "127.0.0.1",
        sc.admin,
        "GET /metrics HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await
    .1
}

fn get(path: &str, headers: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: a\r\n{headers}Connection: close\r\n\r\n")
}

fn post(path: &str, headers: &str) -> String {
    format!("POST {path} HTTP/1.1\r\nHost: a\r\n{headers}Content-Length: 0\r\nConnection: close\r\n\r\n")
}

async fn site(proxy_extra: &str) -> (Sidecar, tempfile::TempDir) {
    let up = upstream::echo().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let sc = Sidecar::start(
        dir.path(),
        &config("a", &format!("http://{up}"), dir.path(), proxy_extra, ""),
    );
    (sc, dir)
}

#[tokio::test]
async fn restrict_judges_the_tcp_peer_not_a_forwarded_for_it_sends() {
    // The documentation's example; Rack's default trusted proxies (loopback and private
    // ranges) stay in place for recording the guest's address.
    let (sc, _dir) = site("[proxy.restrict]\nunsigned_from = [\"127.0.0.1/32\"]").await;
    // A guest at 127.0.0.2 claims 127.0.0.1.
    let claim = "X-Forwarded-For: 127.0.0.1\r\n";
    let (code, text) = send("127.0.0.2", sc.proxy, &get("/configs/1/I1", claim)).await;
    assert_eq!(code, 403, "the X-Forwarded-For bypass passed: {text}");
    assert!(text.contains("127.0.0.2"), "{text}");
    assert!(text.contains("proxy.restrict.unsigned_from"), "{text}");
    // The allowed peer itself passes, whatever it forwards.
    let (code, text) = send(
        "127.0.0.1",
        sc.proxy,
        &get("/configs/1/I1", "X-Forwarded-For: 192.0.2.9\r\n"),
    )
    .await;
    assert_eq!(code, 200, "{text}");
    let m = metrics(&sc).await;
    assert!(
        m.contains("audrey_federation_proxy_refused_total{reason=\"unsigned_from\"} 1"),
        "{m}"
    );
}

#[tokio::test]
async fn restrict_believes_forwarded_for_only_from_its_trusted_hops() {
    // A reverse proxy on 127.0.0.1 in front of the sidecar appends the guest's address.
    let (sc, _dir) = site(
        "[proxy.restrict]\nunsigned_from = [\"127.0.0.1/32\"]\ntrusted_hops = [\"127.0.0.1/32\"]",
    )
    .await;
    // Through the hop: a guest at 10.1.2.3 that claimed 127.0.0.1.
    let (code, text) = send(
        "127.0.0.1",
        sc.proxy,
        &get("/configs/1/I1", "X-Forwarded-For: 127.0.0.1, 10.1.2.3\r\n"),
    )
    .await;
    assert_eq!(code, 403, "{text}");
    assert!(text.contains("10.1.2.3"), "{text}");
    // A local caller through the hop.
    let (code, text) = send(
        "127.0.0.1",
        sc.proxy,
        &get("/configs/1/I1", "X-Forwarded-For: 127.0.0.1\r\n"),
    )
    .await;
    assert_eq!(code, 200, "{text}");
    // Not through the hop: the header of 127.0.0.2 is not read.
    let (code, text) = send(
        "127.0.0.2",
        sc.proxy,
        &get("/configs/1/I1", "X-Forwarded-For: 127.0.0.1\r\n"),
    )
    .await;
    assert_eq!(code, 403, "{text}");
}

#[tokio::test]
async fn behind_a_real_apache_restrict_judges_the_guest_apache_names() {
    // docs/install.md: Apache on loopback in front of the sidecar, trusted_hops = its address.
    let (sc, dir) = site(
        "[proxy.restrict]\nunsigned_from = [\"127.0.0.1/32\"]\ntrusted_hops = [\"127.0.0.1/32\"]",
    )
    .await;
    let port = free_port();
    let apache_dir = dir.path().join("apache");
    std::fs::create_dir_all(&apache_dir).expect("apache dir");
    Apache::configure(&apache_dir, port);
    std::fs::write(
        apache_dir.join("vhost.conf"),
        format!(
            "<VirtualHost 127.0.0.1:*>\n\
             \x20   ProxyPass        / http://{p}/\n\
             \x20   ProxyPassReverse / http://{p}/\n\
             </VirtualHost>\n",
            p = sc.proxy
        ),
    )
    .expect("vhost");
    let apache = Apache::start(&apache_dir, port);
    // A guest at 127.0.0.2 claiming 127.0.0.1: Apache appends 127.0.0.2, which is judged.
    let (code, text) = send(
        "127.0.0.2",
        apache.addr,
        &get("/configs/1/I1", "X-Forwarded-For: 127.0.0.1\r\n"),
    )
    .await;
    assert_eq!(code, 403, "{text}");
    assert!(text.contains("127.0.0.2"), "{text}");
    // A local caller through Apache passes.
    let (code, text) = send("127.0.0.1", apache.addr, &get("/configs/1/I1", "")).await;
    assert_eq!(code, 200, "{text}");
}

#[tokio::test]
async fn mutating_admin_calls_need_the_token_and_the_cli_sends_it() {
    let up = upstream::echo().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let token_file = dir.path().join("admin.token");
    std::fs::write(&token_file, "t0ken-for-tests\n").expect("token");
    let toml = config("a", &format!("http://{up}"), dir.path(), "", "").replacen(
        "[admin]\n",
        &format!("[admin]\ntoken_file = \"{}\"\n", token_file.display()),
        1,
    );
    let sc = Sidecar::start(dir.path(), &toml);
    let drop_all = "/dead-letters/drop?all=true";

    // Without the token, even from loopback: 401 with a one-line reason, never acted on.
    let (code, text) = send("127.0.0.2", sc.admin, &post(drop_all, "")).await;
    assert_eq!(code, 401, "{text}");
    assert!(text.contains("admin.token_file"), "{text}");
    assert!(
        text.contains("WWW-Authenticate: Bearer") || text.contains("www-authenticate: Bearer"),
        "{text}"
    );
    let (code, text) = send(
        "127.0.0.1",
        sc.admin,
        &post(
            "/dead-letters/retry?all=true",
            "Authorization: Bearer nope\r\n",
        ),
    )
    .await;
    assert_eq!(code, 401, "{text}");
    // Any other mutating method is refused before routing.
    let (code, text) = send("127.0.0.2", sc.admin, &post("/healthz", "")).await;
    assert_eq!(code, 401, "{text}");
    // With it: done.
    let (code, text) = send(
        "127.0.0.2",
        sc.admin,
        &post(drop_all, "Authorization: Bearer t0ken-for-tests\r\n"),
    )
    .await;
    assert_eq!(code, 200, "{text}");
    // Reading needs nothing.
    let (code, text) = send("127.0.0.2", sc.admin, &get("/dead-letters", "")).await;
    assert_eq!(code, 200, "{text}");

    let m = metrics(&sc).await;
    for line in [
        "audrey_federation_admin_refused_total{reason=\"no_token\"} 2",
        "audrey_federation_admin_refused_total{reason=\"bad_token\"} 1",
    ] {
        assert!(m.contains(line), "{line} missing:\n{m}");
    }
    assert!(sc.log().contains("admin call refused"));

    // The CLI, against the running sidecar (its store is locked), reads the same file.
    let cli = |config: &std::path::Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_audrey-federation"))
            .args(["dead-letters", "drop", "--all", "--config"])
            .arg(config)
            .arg("--admin-listen")
            .arg(sc.admin.to_string())
            .env_remove("AUDREY_FEDERATION_CONFIG")
            .output()
            .expect("run cli")
    };
    let out = cli(&sc.config_path());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("asking its admin listener"), "{stderr}");
    // The same config without the token file: refused, and the CLI says why.
    let tokenless = dir.path().join("tokenless.toml");
    std::fs::write(
        &tokenless,
        toml.replace(&format!("token_file = \"{}\"\n", token_file.display()), ""),
    )
    .expect("write");
    let out = cli(&tokenless);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("401"), "{stderr}");
}

#[tokio::test]
async fn without_a_token_file_loopback_peers_may_mutate() {
    let (sc, _dir) = site("").await;
    let (code, text) = send(
        "127.0.0.2",
        sc.admin,
        &post("/dead-letters/drop?all=true", ""),
    )
    .await;
    assert_eq!(code, 200, "{text}");
}

#[tokio::test]
async fn a_client_that_never_sends_a_client_hello_is_cut_after_the_handshake_timeout() {
    let pki = certs::generate(&["site-a"]);
    let extra = format!(
        "tls_cert = \"{}\"\ntls_key = \"{}\"\ntls_handshake_timeout = 1",
        pki.server_cert.display(),
        pki.server_key.display()
    );
    let (sc, _dir) = site(&extra).await;
    let started = Instant::now();
    let mut silent = TcpStream::connect(sc.proxy).await.expect("connect");
    let (_, closed) = read_to_close(&mut silent, WAIT).await;
    assert!(
        closed,
        "a silent TLS client was still connected after {WAIT:?}"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "cut before the limit: {:?}",
        started.elapsed()
    );
    let m = metrics(&sc).await;
    assert!(
        m.contains("audrey_federation_connections_closed_total{listener=\"proxy\",reason=\"tls_handshake_timeout\"} 1"),
        "{m}"
    );
}

#[tokio::test]
async fn a_plain_client_that_sends_nothing_is_cut_after_the_header_read_timeout() {
    let (sc, _dir) = site("header_read_timeout = 1").await;
    let mut silent = TcpStream::connect(sc.proxy).await.expect("connect");
    let (_, closed) = read_to_close(&mut silent, WAIT).await;
    assert!(closed, "a silent client was still connected after {WAIT:?}");
}

#[tokio::test]
async fn connections_beyond_the_cap_are_answered_503_and_counted() {
    let (sc, _dir) = site("max_connections = 2").await;
    // Two connections held open, each proven served (one request answered, kept alive).
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(sc.proxy).await.expect("connect");
        s.write_all(b"GET /version HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .expect("write");
        let mut buf = [0u8; 1024];
        let n = tokio::time::timeout(WAIT, s.read(&mut buf))
            .await
            .expect("answer in time")
            .expect("read");
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
        held.push(s);
    }
    // The third: 503 and closed, without being read.
    let mut third = TcpStream::connect(sc.proxy).await.expect("connect");
    let (text, closed) = read_to_close(&mut third, WAIT).await;
    assert!(closed, "{text}");
    assert!(text.starts_with("HTTP/1.1 503"), "{text}");
    assert!(text.contains("max_connections"), "{text}");
    let m = metrics(&sc).await;
    assert!(
        m.contains("audrey_federation_connections_closed_total{listener=\"proxy\",reason=\"max_connections\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("audrey_federation_connections_open{listener=\"proxy\"} 2"),
        "{m}"
    );
    // A slot frees when a held connection ends: a new connection is served again (bounded).
    drop(held.pop());
    let deadline = Instant::now() + WAIT;
    loop {
        let (code, _) = send(
            "127.0.0.1",
            sc.proxy,
            "GET /version HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        )
        .await;
        if code == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "no slot freed within {WAIT:?}");
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn the_store_is_private_whatever_the_umask() {
    let up = upstream::echo().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).expect("state dir");
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let config_path = dir.path().join("config.toml");
    std::fs::write(
        &config_path,
        config("a", &format!("http://{up}"), dir.path(), "", ""),
    )
    .expect("config");
    let wrapper = ["sh", "-c", "umask 000 && exec \"$0\" \"$@\""].map(String::from);
    let sc = Sidecar::start_wrapped(dir.path(), config_path, &wrapper);
    // The admin listener serves once the store is open.
    let (code, text) = send("127.0.0.1", sc.admin, &get("/readyz", "")).await;
    assert_eq!(code, 200, "{text}");
    let mode =
        |p: &std::path::Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode(&state), 0o700, "state directory");
    let mut files = 0;
    for entry in std::fs::read_dir(&state).expect("read state dir") {
        let path = entry.expect("entry").path();
        assert_eq!(mode(&path), 0o600, "{}", path.display());
        files += 1;
    }
    assert!(files >= 1, "no state.redb");
}

#[test]
fn the_new_keys_are_documented_with_their_defaults() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).expect("README");
    let example = std::fs::read_to_string(root.join("packaging/config.toml")).expect("example");
    let defaults = audrey_federation::config::Config::parse("site = \"a\"\n", "d.toml".as_ref())
        .expect("defaults");
    let rows = [
        (
            "proxy.tls_handshake_timeout",
            defaults.proxy.tls_handshake_timeout.as_secs().to_string(),
            "# tls_handshake_timeout = 10",
        ),
        (
            "proxy.max_connections",
            defaults.proxy.max_connections.to_string(),
            "# max_connections = 10000",
        ),
        (
            "proxy.restrict.trusted_hops",
            "[]".into(),
            "# trusted_hops = ",
        ),
        ("admin.token_file", "none".into(), "# token_file = "),
    ];
    assert!(defaults.proxy.restrict.trusted_hops.is_empty() && defaults.admin.token_file.is_none());
    for (key, default, in_example) in rows {
        let row = format!("| `{key}` | `{default}` |");
        let row_none = format!("| `{key}` | {default} |");
        assert!(
            readme.contains(&row) || readme.contains(&row_none),
            "README has no row {row}"
        );
        assert!(
            example.contains(in_example),
            "packaging/config.toml lacks {in_example}"
        );
    }
}
