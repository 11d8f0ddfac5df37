//! Certificate rotation without a restart, through the real binary: the proxy listener serves a
//! replaced certificate to new TLS connections, and the AMQP link presents a replaced client
//! certificate on its next connection to a real RabbitMQ; in both, files that cannot be used are
//! refused with a log line naming them while the last good certificate stays in use.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use support::broker::{Broker, BrokerOptions};
use support::certs::{self, served_cert, CertPaths};
use support::sidecar::{config, Sidecar};
use support::site::{self, Site};

const LIMIT: Duration = Duration::from_secs(20);
const SITE: &str = "site-r";

fn leaf(path: &Path) -> CertificateDer<'static> {
    CertificateDer::from_pem_file(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn copy(from: &Path, to: &Path) {
    std::fs::copy(from, to).unwrap_or_else(|e| panic!("copy {}: {e}", from.display()));
}

#[tokio::test]
async fn listener_serves_a_replaced_certificate_and_keeps_it_when_the_next_is_garbage() {
    let (one, two) = (certs::generate(&[SITE]), certs::generate(&[SITE]));
    let tmp = tempfile::tempdir().unwrap();
    let (cert, key) = (tmp.path().join("tls.pem"), tmp.path().join("tls.key"));
    copy(&one.server_cert, &cert);
    copy(&one.server_key, &key);
    let proxy_tls = format!(
        "tls_cert = {:?}\ntls_key = {:?}\n",
        cert.display().to_string(),
        key.display().to_string()
    );
    let sidecar = Sidecar::start(
        tmp.path(),
        &config(SITE, "http://127.0.0.1:9", tmp.path(), &proxy_tls, ""),
    );
    let pid = sidecar.pid();
    let roots = [one.ca.as_path(), two.ca.as_path()];
    let first = served_cert(sidecar.proxy, &roots)
        .await
        .expect("TLS with the first pair");
    assert_eq!(first, leaf(&one.server_cert));

    // Rotate: CA2's pair over the same files; new connections get it, same process.
    copy(&two.server_cert, &cert);
    copy(&two.server_key, &key);
    let rotated = leaf(&two.server_cert);
    let deadline = Instant::now() + LIMIT;
    loop {
        if served_cert(sidecar.proxy, &roots)
            .await
            .expect("TLS during rotation")
            == rotated
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still the old certificate after {LIMIT:?}\n{}",
            sidecar.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(sidecar.pid(), pid);

    // Garbage: refused with one line naming the file; new connections keep the last good one.
    std::fs::write(&cert, "garbage, not PEM\n").unwrap();
    let named = cert.display().to_string();
    let deadline = Instant::now() + LIMIT;
    loop {
        let served = served_cert(sidecar.proxy, &roots)
            .await
            .expect("TLS after a bad rotation");
        assert_eq!(served, rotated, "the last good certificate must be served");
        let log = sidecar.log();
        let refused: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("refused") && l.contains(&named))
            .collect();
        if !refused.is_empty() {
            assert_eq!(refused.len(), 1, "{refused:?}");
            assert!(refused[0].contains("no CERTIFICATE block"), "{refused:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no refusal logged after {LIMIT:?}\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        served_cert(sidecar.proxy, &roots).await.expect("TLS"),
        rotated
    );
    assert_eq!(sidecar.pid(), pid);
}

/// How many times the sidecar's subscribe link has attached so far.
fn attached(sidecar: &Sidecar) -> usize {
    sidecar.log().matches("subscribe link attached").count()
}

/// Waits until `sidecar`'s log satisfies `done`.
async fn log_until(sidecar: &Sidecar, what: &str, done: impl Fn(&str) -> bool) {
    let deadline = Instant::now() + LIMIT;
    loop {
        let log = sidecar.log();
        if done(&log) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not seen after {LIMIT:?}\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Restarts the broker application (not the VM: faster) trusting only the client CA in `ca`;
/// every connection is closed, and the TLS listener reads its CA file afresh.
fn restart_trusting(broker: &Broker, ca: &Path) {
    broker.ctl(&["stop_app"]);
    copy(ca, &broker.root().join("etc/ca.pem"));
    broker.ctl(&["eval", "ssl:clear_pem_cache()."]);
    broker.ctl(&["start_app"]);
}

#[tokio::test]
async fn amqp_link_presents_a_replaced_client_certificate_without_a_restart() {
    let (one, two) = (certs::generate(&[SITE]), certs::generate(&[SITE]));
    // The broker trusts both CAs at first (a roll-over); its own certificate is CA1's.
    let bundle = one.dir.join("bundle.pem");
    let both =
        std::fs::read_to_string(&one.ca).unwrap() + &std::fs::read_to_string(&two.ca).unwrap();
    std::fs::write(&bundle, both).unwrap();
    let mut trust: CertPaths = one.clone();
    trust.ca = bundle;
    let broker = Broker::start(BrokerOptions {
        sites: &[SITE],
        certs: &trust,
    });

    let tmp = tempfile::tempdir().unwrap();
    let (cert, key) = (tmp.path().join("client.pem"), tmp.path().join("client.key"));
    copy(&one.site_cert(SITE), &cert);
    copy(&one.site_key(SITE), &key);
    let amqp = site::with_identity(&broker.amqps_url(), &one.ca, &cert, &key);
    let site = Site::launch(
        SITE,
        &amqp,
        &tmp.path().join("site"),
        Site::emulator(),
        None,
        "",
    );
    let sidecar = &site.sidecar;
    let pid = sidecar.pid();
    log_until(sidecar, "first attach with CA1's certificate", |_| {
        attached(sidecar) >= 1
    })
    .await;

    // The broker now trusts CA2 only: CA1's certificate is refused on every reconnect.
    restart_trusting(&broker, &two.ca);
    log_until(sidecar, "CA1's certificate refused", |log| {
        log.contains("does not trust our client certificate")
    })
    .await;
    let before = attached(sidecar);

    // Rotate to CA2's certificate for the same CN: the next reconnect attempt presents it.
    copy(&two.site_cert(SITE), &cert);
    copy(&two.site_key(SITE), &key);
    log_until(sidecar, "attach with CA2's certificate", |_| {
        attached(sidecar) > before
    })
    .await;
    assert!(
        sidecar.log().contains("amqp TLS files changed"),
        "{}",
        sidecar.log()
    );
    assert_eq!(sidecar.pid(), pid, "no restart");

    // A bad rotation does not take the link down: the last good identity is used on reconnect.
    std::fs::write(&key, "garbage, not a key\n").unwrap();
    let before = attached(sidecar);
    restart_trusting(&broker, &two.ca);
    log_until(sidecar, "reattach with the last good certificate", |_| {
        attached(sidecar) > before
    })
    .await;
    let log = sidecar.log();
    let named = key.display().to_string();
    let refused = log
        .lines()
        .filter(|l| l.contains("refused") && l.contains(&named))
        .count();
    assert_eq!(refused, 1, "one refusal naming {named}:\n{log}");
    assert_eq!(sidecar.pid(), pid);
}
