//! The systemd side channel through the real binary, with the test as the service manager: a
//! datagram socket in `$NOTIFY_SOCKET` receives READY=1 only once the listeners answer,
//! WATCHDOG=1 at half of `$WATCHDOG_USEC`, RELOADING=1 then READY=1 around SIGHUP (after which
//! the listener serves replaced certificate files at once), and STOPPING=1 at SIGTERM, which
//! then exits 0.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use support::certs::{self, served_cert};
use support::client::exchange;
use support::sidecar::{config, Sidecar};
use tokio::net::UnixDatagram;

const LIMIT: Duration = Duration::from_secs(20);

/// The service manager's end: every datagram, in order, as text.
struct Manager {
    socket: UnixDatagram,
    seen: Vec<String>,
}

impl Manager {
    /// Receives datagrams until one satisfies `done`, for at most [`LIMIT`].
    async fn until(&mut self, what: &str, done: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + LIMIT;
        let mut buf = vec![0u8; 4096];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.socket.recv(&mut buf)).await {
                Ok(Ok(n)) => {
                    let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                    self.seen.push(msg.clone());
                    if done(&msg) {
                        return msg;
                    }
                }
                Ok(Err(e)) => panic!("recv on the notify socket: {e}"),
                Err(_) => panic!("no {what} within {LIMIT:?}; got {:?}", self.seen),
            }
        }
    }
}

fn has(msg: &str, line: &str) -> bool {
    msg.lines().any(|l| l == line)
}

fn copy(from: &Path, to: &Path) {
    std::fs::copy(from, to).unwrap_or_else(|e| panic!("copy {}: {e}", from.display()));
}

#[tokio::test]
async fn ready_watchdog_reload_and_stopping_reach_the_service_manager() {
    let (one, two) = (certs::generate(&["s"]), certs::generate(&["s"]));
    let tmp = tempfile::tempdir().unwrap();
    let (cert, key) = (tmp.path().join("tls.pem"), tmp.path().join("tls.key"));
    copy(&one.server_cert, &cert);
    copy(&one.server_key, &key);
    let notify = tmp.path().join("notify.sock");
    let mut manager = Manager {
        socket: UnixDatagram::bind(&notify).unwrap(),
        seen: Vec::new(),
    };
    let proxy_tls = format!("tls_cert = {cert:?}\ntls_key = {key:?}\n");
    let path = tmp.path().join("config.toml");
    std::fs::write(
        &path,
        config("s", "http://127.0.0.1:9", tmp.path(), &proxy_tls, ""),
    )
    .unwrap();
    let notify_env = notify.display().to_string();
    let mut sidecar = Sidecar::start_with_env(
        tmp.path(),
        path,
        &[
            ("NOTIFY_SOCKET", notify_env.as_str()),
            ("WATCHDOG_USEC", "200000"),
        ],
    );

    // READY=1 with a status line, and by then the admin listener answers.
    let ready = manager.until("READY=1", |m| has(m, "READY=1")).await;
    assert!(
        ready
            .lines()
            .any(|l| l.starts_with("STATUS=site s: proxying to http://127.0.0.1:9")),
        "{ready:?}"
    );
    let req = http::Request::get("/healthz").body(String::new()).unwrap();
    assert_eq!(exchange(sidecar.admin, req).await.0, 200);

    // The watchdog is fed while the runtime runs (every 100 ms here).
    manager.until("WATCHDOG=1", |m| has(m, "WATCHDOG=1")).await;

    // SIGHUP: RELOADING=1 (with MONOTONIC_USEC), then READY=1; the replaced certificate is
    // served at the next handshake, not after the periodic check.
    let roots = [one.ca.as_path(), two.ca.as_path()];
    let first = served_cert(sidecar.proxy, &roots)
        .await
        .expect("TLS, first pair");
    let looked = Instant::now();
    assert_eq!(
        first,
        CertificateDer::from_pem_file(&one.server_cert).unwrap()
    );
    copy(&two.server_cert, &cert);
    copy(&two.server_key, &key);
    kill(sidecar.pid(), Signal::SIGHUP).unwrap();
    let reloading = manager
        .until("RELOADING=1", |m| has(m, "RELOADING=1"))
        .await;
    assert!(
        reloading.lines().any(|l| l.starts_with("MONOTONIC_USEC=")),
        "{reloading:?}"
    );
    manager
        .until("READY=1 after reload", |m| has(m, "READY=1"))
        .await;
    let served = served_cert(sidecar.proxy, &roots)
        .await
        .expect("TLS, second pair");
    assert_eq!(
        served,
        CertificateDer::from_pem_file(&two.server_cert).unwrap(),
        "after SIGHUP the next handshake must get the new pair ({:?} after the last look)",
        looked.elapsed()
    );

    // SIGTERM: STOPPING=1, then a clean exit.
    let pid = sidecar.pid();
    let waiter = std::thread::spawn(move || sidecar.terminate());
    manager.until("STOPPING=1", |m| has(m, "STOPPING=1")).await;
    let status = waiter.join().unwrap();
    assert!(status.success(), "exit after SIGTERM: {status} (pid {pid})");
}

#[tokio::test]
async fn without_a_notify_socket_nothing_is_sent_and_it_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let sidecar = Sidecar::start(
        tmp.path(),
        &config("s", "http://127.0.0.1:9", tmp.path(), "", ""),
    );
    let req = http::Request::get("/healthz").body(String::new()).unwrap();
    assert_eq!(exchange(sidecar.admin, req).await.0, 200);
    assert!(
        !sidecar.log().contains("cannot notify"),
        "{}",
        sidecar.log()
    );
}
