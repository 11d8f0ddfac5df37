//! The admin listener through the real binary: `/status` fields and values, `/healthz`,
//! `/readyz` following the upstream and (with `admin.ready_requires_broker`) the broker
//! links, unknown paths. Capture-only against an echo upstream; federation against a real
//! RabbitMQ over mutual TLS that the test stops and starts again.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::broker::{Broker, BrokerOptions};
use support::client::exchange;
use support::sidecar::{config, Sidecar};
use support::site::Site;
use support::upstream;

const LIMIT: Duration = Duration::from_secs(30);

async fn get(admin: SocketAddr, path: &str) -> (u16, String) {
    let req = http::Request::get(path).body(String::new()).unwrap();
    let (status, _, body) = exchange(admin, req).await;
    (status.as_u16(), String::from_utf8_lossy(&body).into_owned())
}

async fn status(admin: SocketAddr) -> Value {
    let (code, body) = get(admin, "/status").await;
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("/status is not JSON ({e}): {body}"))
}

/// Polls `path` on `admin` until `done(status, body)`, for at most [`LIMIT`].
async fn until(admin: SocketAddr, path: &str, what: &str, done: impl Fn(u16, &str) -> bool) {
    let deadline = Instant::now() + LIMIT;
    loop {
        let (code, body) = get(admin, path).await;
        if done(code, &body) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {path} still {code} {body:?} after {LIMIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn capture(method: &str, path: &str, body: String) -> http::Request<String> {
    http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "configserver.example")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .unwrap()
}

fn registration(uuid: &str, deployment: &str) -> String {
    let xml = format!(
        "<instance-config id='{uuid}' name='db' secret='S3cr3t'><deployable name='wp' id='{deployment}'/>\
         <provided-parameters><provided-parameter name='ipaddress'/></provided-parameters><services/></instance-config>"
    );
    let enc: String = form_urlencoded::byte_serialize(xml.as_bytes()).collect();
    format!("data={enc}")
}

#[tokio::test]
async fn capture_only_status_health_and_readiness() {
    let up = upstream::echo().await;
    let dir = tempfile::tempdir().unwrap();
    let sc = Sidecar::start(
        dir.path(),
        &config("a", &format!("http://{up}"), dir.path(), "", ""),
    );
    let p = sc.proxy;
    let reg = capture("POST", "/configs/1/I1", registration("I1", "D1"));
    assert_eq!(exchange(p, reg).await.0, 200);
    let params = "audrey_data=%7Cipaddress%26MTAuMC4wLjU%3D%7C".to_string();
    for _ in 0..2 {
        let put = capture("PUT", "/params/2/I1", params.clone());
        assert_eq!(exchange(p, put).await.0, 200);
    }

    let deadline = Instant::now() + LIMIT;
    let s = loop {
        let s = status(sc.admin).await;
        if s["outbox"]["oldest_age_seconds"].as_f64().unwrap_or(0.0) > 0.0 {
            break s;
        }
        assert!(Instant::now() < deadline, "oldest age never > 0: {s}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(s["site"], "a");
    assert_eq!(s["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(s["upstream"], up.to_string());
    assert_eq!(s["federation"], false);
    assert_eq!(s["links"], serde_json::json!({}));
    assert_eq!(s["outbox"]["pending"], 3, "{s}");
    assert!(s["outbox"]["held"].is_null(), "{s}");
    assert_eq!(s["parked"], 0);
    assert_eq!(
        s["dead_letters"],
        serde_json::json!({"outbound": 0, "inbound": 0})
    );
    assert_eq!(s["origins"], serde_json::json!({}));
    assert!(s["now_ms"].as_u64().is_some_and(|n| n > 0), "{s}");

    assert_eq!(get(sc.admin, "/healthz").await, (200, "ok\n".to_string()));
    let (code, body) = get(sc.admin, "/readyz").await;
    assert_eq!(code, 200, "{body}");
    assert!(body.starts_with("ready\n"), "{body}");
    assert!(body.contains("federation disabled"), "{body}");
    let (code, body) = get(sc.admin, "/nope").await;
    assert_eq!(code, 404, "{body}");
    assert!(body.contains("/status"), "{body}");

    // A sidecar whose upstream is gone: not ready, and the reason names the upstream.
    let gone = upstream::closed_port();
    let dir2 = tempfile::tempdir().unwrap();
    let lost = Sidecar::start(
        dir2.path(),
        &config("a", &format!("http://{gone}"), dir2.path(), "", ""),
    );
    let (code, body) = get(lost.admin, "/readyz").await;
    assert_eq!(code, 503, "{body}");
    assert!(
        body.contains(&format!("upstream {gone} unreachable")),
        "{body}"
    );
    assert_eq!(get(lost.admin, "/healthz").await.0, 200);
}

#[tokio::test]
async fn federation_links_in_status_and_readiness() {
    let certs = support::certs::generate(&["site-a"]);
    let mut broker = Broker::start(BrokerOptions {
        sites: &["site-a"],
        certs: &certs,
    });
    let dir = tempfile::tempdir().unwrap();
    let mut a = Site::start("site-a", &broker.amqps_url(), &certs, dir.path());
    let admin = a.sidecar.admin;

    let deadline = Instant::now() + LIMIT;
    loop {
        let s = status(admin).await;
        let up = |l: &str| s["links"][l]["up"] == true;
        if up("publish") && up("subscribe") && s["outbox"]["held"] == 0 {
            assert_eq!(s["federation"], true);
            assert_eq!(s["site"], "site-a");
            assert!(s["links"]["publish"]["since_ms"].as_u64().is_some(), "{s}");
            let text = s.to_string();
            assert!(!text.contains(support::site::CONDUCTOR.1), "{text}");
            break;
        }
        assert!(Instant::now() < deadline, "links never up: {s}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    until(admin, "/readyz", "links up", |c, b| {
        c == 200 && b.contains("broker publish link up") && b.contains("broker subscribe link up")
    })
    .await;

    // Default: a down broker is reported but does not make the site unready.
    broker.stop();
    until(admin, "/readyz", "links down, still ready", |c, b| {
        c == 200
            && b.contains("broker publish link down")
            && b.contains("broker subscribe link down")
    })
    .await;
    let deadline = Instant::now() + LIMIT;
    loop {
        let s = status(admin).await;
        if s["links"]["publish"]["last_error"].is_string() {
            assert_eq!(s["links"]["publish"]["up"], false, "{s}");
            break;
        }
        assert!(Instant::now() < deadline, "no link error recorded: {s}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // With admin.ready_requires_broker the down links make it 503, until the broker is back.
    let path = a.sidecar.config_path();
    let toml = std::fs::read_to_string(&path).unwrap();
    let toml = toml.replacen("[admin]\n", "[admin]\nready_requires_broker = true\n", 1);
    std::fs::write(&path, toml).unwrap();
    a.kill_and_restart_sidecar();
    let admin = a.sidecar.admin;
    let (code, body) = get(admin, "/readyz").await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("broker publish link down"), "{body}");
    assert!(body.contains("broker subscribe link down"), "{body}");
    broker.start_again();
    until(admin, "/readyz", "ready once the broker is back", |c, b| {
        c == 200 && b.contains("broker publish link up") && b.contains("broker subscribe link up")
    })
    .await;
}
