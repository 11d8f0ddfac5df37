//! What lands in the outbox for each route and status, through the real binary: nothing
//! for non-2xx answers, 413 over the limit, unparsable bodies forwarded but not captured,
//! and every acknowledged change still there after a SIGKILL.

mod support;

use audrey_federation::change::Event;
use audrey_federation::store::Store;
use support::client::exchange as send;
use support::sidecar::{config, Sidecar};
use support::upstream;

fn form(method: &str, path: &str, body: &str, status: u16) -> http::Request<String> {
    http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "configserver.example")
        .header("content-type", "application/x-www-form-urlencoded")
        .header("x-forwarded-for", "203.0.113.7")
        .header("x-echo-status", status.to_string())
        .body(body.to_string())
        .unwrap()
}

fn xml(uuid: &str, deployment: &str) -> String {
    format!(
        "<instance-config id='{uuid}' name='db' secret='S3cr3t'><deployable name='wp' id='{deployment}'/>\
         <provided-parameters><provided-parameter name='ipaddress'/></provided-parameters><services/></instance-config>"
    )
}

fn enc(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// Stops the sidecar (SIGTERM must exit 0) and reads the outbox.
async fn outbox(mut sc: Sidecar) -> Vec<audrey_federation::change::Change> {
    let status = sc.terminate();
    assert!(status.success(), "SIGTERM exit: {status:?}\n{}", sc.log());
    let store = Store::open(&sc.dir.join("state"), "a").unwrap();
    let all = store.pending(None, 10_000).unwrap();
    store.close().await.unwrap();
    all
}

#[tokio::test]
async fn captures_each_route_on_success_only() {
    let up = upstream::echo().await;
    let dir = tempfile::tempdir().unwrap();
    let sc = Sidecar::start(
        dir.path(),
        &config("a", &format!("http://{up}"), dir.path(), "", ""),
    );
    let p = sc.proxy;
    let reg = format!("data={}", enc(&xml("I1", "D1")));
    assert_eq!(
        send(p, form("POST", "/configs/1/I1?oauth_x=1", &reg, 200))
            .await
            .0,
        200
    );
    let params = "audrey_data=%7Cipaddress%26MTAuMC4wLjU%3D%7C";
    assert_eq!(
        send(p, form("PUT", "/params/2/I1", params, 202)).await.0,
        202
    );
    assert_eq!(
        send(p, form("PUT", "/params/2/I1", params, 200)).await.0,
        200
    );
    assert_eq!(
        send(p, form("DELETE", "/deployment/1/D1", "", 200)).await.0,
        200
    );
    // Not captured: error statuses, other versions, other routes.
    for (m, path, body, st) in [
        ("PUT", "/params/2/I1", params, 404),
        ("PUT", "/params/2/I1", params, 500),
        ("PUT", "/params/2/I1", params, 401),
        ("POST", "/configs/1/I2", reg.as_str(), 202),
        ("POST", "/configs/1/I2", reg.as_str(), 400),
        ("DELETE", "/deployment/1/D1", "", 404),
        ("PUT", "/params/3/I1", params, 200),
        ("GET", "/params/2/I1", "", 200),
        ("PUT", "/files/2/I1", params, 200),
    ] {
        assert_eq!(send(p, form(m, path, body, st)).await.0, st, "{m} {path}");
    }
    let got = outbox(sc).await;
    assert_eq!(got.len(), 4, "{got:#?}");
    let seqs: Vec<u64> = got.iter().map(|c| c.origin_seq).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");

    assert!(
        matches!(&got[0].event, Event::Registration { secret, instance_config } if secret == "S3cr3t" && instance_config.contains("id='D1'"))
    );
    assert_eq!(
        (
            got[0].instance.as_deref(),
            got[0].deployment.as_deref(),
            got[0].api_version
        ),
        (Some("I1"), Some("D1"), 1)
    );
    for c in &got[1..3] {
        assert_eq!(
            (
                c.instance.as_deref(),
                c.deployment.as_deref(),
                c.api_version
            ),
            (Some("I1"), Some("D1"), 2)
        );
        assert_eq!(
            c.client_addr.as_deref(),
            Some("203.0.113.7"),
            "the guest, from the trusted hop's XFF"
        );
        assert_eq!(c.origin_site, "a");
        match &c.event {
            Event::Params {
                audrey_data,
                values,
                return_codes,
            } => {
                assert_eq!(audrey_data, "|ipaddress&MTAuMC4wLjU=|");
                assert_eq!(
                    values,
                    &vec![("ipaddress".to_string(), "10.0.0.5".to_string())]
                );
                assert!(!return_codes);
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(
        (got[1].instance_seq, got[2].instance_seq),
        (2, 3),
        "per-instance sequence continues"
    );
    assert!(matches!(got[3].event, Event::Deletion));
    assert_eq!(got[3].deployment.as_deref(), Some("D1"));
}

#[tokio::test]
async fn params_for_an_unknown_deployment_are_kept() {
    let up = upstream::echo().await;
    let dir = tempfile::tempdir().unwrap();
    let sc = Sidecar::start(
        dir.path(),
        &config("a", &format!("http://{up}"), dir.path(), "", ""),
    );
    assert_eq!(
        send(
            sc.proxy,
            form("PUT", "/params/2/OLD", "audrey_data=%7C%26%7C", 202)
        )
        .await
        .0,
        202
    );
    let got = outbox(sc).await;
    assert_eq!(got.len(), 1);
    assert_eq!(
        (got[0].instance.as_deref(), got[0].deployment.as_deref()),
        (Some("OLD"), None)
    );
}

#[tokio::test]
async fn over_the_limit_is_413_and_unparsable_bodies_pass_uncaptured() {
    let up = upstream::echo().await;
    let dir = tempfile::tempdir().unwrap();
    let sc = Sidecar::start(
        dir.path(),
        &config(
            "a",
            &format!("http://{up}"),
            dir.path(),
            "capture_body_limit = 1024",
            "",
        ),
    );
    let big = format!("audrey_data={}", "A".repeat(2000));
    let (st, h, body) = send(sc.proxy, form("PUT", "/params/2/I1", &big, 200)).await;
    assert_eq!(st, 413);
    assert!(
        !h.contains_key("x-echo-method"),
        "a 413 must not be forwarded"
    );
    assert!(String::from_utf8_lossy(&body).contains("1024"), "{body:?}");

    // Unparsable: forwarded untouched (the echo sees the exact byte count), not captured.
    for bad in [
        "something=else",
        "data=%3Cnot-xml",
        "data=%3Cinstance-config%20id%3D%27I1%27%2F%3E",
    ] {
        let path = if bad.starts_with("data") {
            "/configs/1/I1"
        } else {
            "/params/2/I1"
        };
        let method = if bad.starts_with("data") {
            "POST"
        } else {
            "PUT"
        };
        let (st, h, _) = send(sc.proxy, form(method, path, bad, 200)).await;
        assert_eq!(st, 200, "{bad}");
        assert_eq!(h["x-echo-bytes"], bad.len().to_string().as_str(), "{bad}");
    }
    let metrics = {
        let req = http::Request::get("/metrics").body(String::new()).unwrap();
        String::from_utf8(send(sc.admin, req).await.2.to_vec()).unwrap()
    };
    for reason in ["body_too_large", "missing_audrey_data", "bad_xml"] {
        assert!(
            metrics
                .lines()
                .any(|l| l.starts_with("audrey_federation_capture_skipped_total")
                    && l.contains(reason)),
            "no skip counted for {reason}:\n{metrics}"
        );
    }
    assert!(outbox(sc).await.is_empty());
}

#[tokio::test]
async fn acknowledged_changes_survive_sigkill() {
    let up = upstream::echo().await;
    let dir = tempfile::tempdir().unwrap();
    let mut sc = Sidecar::start(
        dir.path(),
        &config("a", &format!("http://{up}"), dir.path(), "", ""),
    );
    let p = sc.proxy;
    // 64 guests report concurrently; every 200 they get is an acknowledged change.
    let mut tasks = Vec::new();
    for i in 0..64 {
        tasks.push(tokio::spawn(async move {
            let body = format!(
                "audrey_data={}",
                enc(&format!("|n&{}|", base64_of(&i.to_string())))
            );
            send(p, form("PUT", &format!("/params/2/G{i}"), &body, 200))
                .await
                .0
        }));
    }
    let mut acked = 0;
    for t in tasks {
        if t.await.unwrap() == 200 {
            acked += 1;
        }
    }
    assert_eq!(acked, 64);
    sc.kill();
    let store = Store::open(&dir.path().join("state"), "a").unwrap();
    let got = store.pending(None, 1000).unwrap();
    let mut instances: Vec<String> = got.iter().filter_map(|c| c.instance.clone()).collect();
    instances.sort();
    instances.dedup();
    assert_eq!(
        instances.len(),
        64,
        "acknowledged changes lost after SIGKILL"
    );
    store.close().await.unwrap();

    // Restarted on the same state, numbering continues.
    let sc = Sidecar::start_with(dir.path(), dir.path().join("config.toml"));
    assert_eq!(
        send(
            sc.proxy,
            form("PUT", "/params/2/G0", "audrey_data=%7C%26%7C", 200)
        )
        .await
        .0,
        200
    );
    let after = outbox(sc).await;
    assert_eq!(after.len(), 65);
    assert!(after.last().unwrap().origin_seq > got.iter().map(|c| c.origin_seq).max().unwrap());
}

fn base64_of(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

#[tokio::test]
async fn without_amqp_it_says_it_runs_capture_only() {
    let up = upstream::echo().await;
    let dir = tempfile::tempdir().unwrap();
    let sc = Sidecar::start(
        dir.path(),
        &config("a", &format!("http://{up}"), dir.path(), "", ""),
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !sc
        .log()
        .contains("no [amqp] section: running as a capturing proxy only")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no capture-only notice:\n{}",
            sc.log()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn sigterm_under_load_finishes_in_flight_requests_and_keeps_their_changes() {
    const GUESTS: usize = 32;
    let (up, started) = upstream::echo_counting().await;
    let dir = tempfile::tempdir().unwrap();
    let sc = Sidecar::start(
        dir.path(),
        &config("a", &format!("http://{up}"), dir.path(), "", ""),
    );
    let p = sc.proxy;
    let mut tasks = Vec::new();
    for i in 0..GUESTS {
        tasks.push(tokio::spawn(async move {
            let mut req = form(
                "PUT",
                &format!("/params/2/G{i}"),
                "audrey_data=%7C%26%7C",
                200,
            );
            req.headers_mut()
                .insert("x-echo-delay-ms", "400".parse().unwrap());
            send(p, req).await.0
        }));
    }
    // Every request has reached the upstream (so each is in flight in the sidecar) ...
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while started.load(std::sync::atomic::Ordering::SeqCst) < GUESTS {
        assert!(
            std::time::Instant::now() < deadline,
            "requests did not reach the upstream"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    // ... when SIGTERM arrives: each still gets its answer, and each change is kept.
    let stopping = tokio::task::spawn_blocking(move || outbox_blocking(sc));
    for t in tasks {
        assert_eq!(
            t.await.unwrap(),
            200,
            "an in-flight request lost its answer"
        );
    }
    let got = stopping.await.unwrap();
    assert_eq!(got, GUESTS, "acknowledged changes missing after SIGTERM");
}

/// SIGTERM (must exit 0), then count the outbox.
fn outbox_blocking(mut sc: Sidecar) -> usize {
    let status = sc.terminate();
    assert!(status.success(), "SIGTERM exit: {status:?}\n{}", sc.log());
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        let store = Store::open(&sc.dir.join("state"), "a").unwrap();
        let n = store.pending(None, 10_000).unwrap().len();
        store.close().await.unwrap();
        n
    })
}
