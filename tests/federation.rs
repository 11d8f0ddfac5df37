//! Two sites over a real RabbitMQ with mutual TLS: the I1/I2 scenario of the federation
//! issue, end to end through real sidecar processes.

mod support;

use std::time::{Duration, Instant};

use support::client::{audrey_data, Client, Creds, Placement, Response};
use support::scenario;
use support::site::Site;

/// Polls `f` until it gives an answer `done` accepts, for at most `limit`.
async fn eventually<F, Fut>(
    limit: Duration,
    what: &str,
    mut f: F,
    done: impl Fn(&Response) -> bool,
) -> Response
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Response>>,
{
    let deadline = Instant::now() + limit;
    loop {
        let r = f().await.expect(what);
        if done(&r) {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: still {} {:?} after {limit:?}",
            r.status,
            r.text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn i1_at_a_and_i2_at_b_resolve_each_other() {
    let shared = support::broker::shared();
    let url = shared.read().await.amqps_url();
    let dir = tempfile::tempdir().unwrap();
    let a = Site::start("site-a", &url, &shared.certs, &dir.path().join("a"));
    let b = Site::start("site-b", &url, &shared.certs, &dir.path().join("b"));

    let (i1, i2) = (scenario::i1(), scenario::i2());
    let (ca, cb) = (a.client(), b.client());
    assert_eq!(
        ca.register(&Site::conductor(), 1, "I1", &i1.to_xml())
            .await
            .unwrap()
            .status,
        200
    );
    assert_eq!(
        cb.register(&Site::conductor(), 1, "I2", &i2.to_xml())
            .await
            .unwrap()
            .status,
        200
    );
    // Each guest reports through its own sidecar, from its own (public) address.
    let r = ca
        .clone()
        .with_header("X-Forwarded-For", "198.51.100.11")
        .put_params(
            2,
            "I1",
            &i1.secret,
            &audrey_data(&[("ipaddress", "10.0.0.5")]),
            Placement::Header,
        )
        .await
        .unwrap();
    assert!(r.status == 200 || r.status == 202, "{r:?}");
    let r = cb
        .clone()
        .with_header("X-Forwarded-For", "203.0.113.22")
        .put_params(
            2,
            "I2",
            &i2.secret,
            &audrey_data(&[("ipaddress", "10.1.0.7")]),
            Placement::Body,
        )
        .await
        .unwrap();
    assert!(r.status == 200 || r.status == 202, "{r:?}");

    let limit = Duration::from_secs(30);
    let creds2 = Creds::new("I2", &i2.secret);
    let r = eventually(
        limit,
        "GET /configs/2/I2 at B",
        || cb.get_configs(2, "I2", None, &creds2),
        |r| r.status == 200,
    )
    .await;
    assert!(
        r.text().contains("peer_ip&MTAuMC4wLjU="),
        "I1's 10.0.0.5 at B: {}",
        r.text()
    );
    let creds1 = Creds::new("I1", &i1.secret);
    let r = eventually(
        limit,
        "GET /configs/2/I1 at A",
        || ca.get_configs(2, "I1", None, &creds1),
        |r| r.status == 200,
    )
    .await;
    assert!(
        r.text().contains("peer_ip&MTAuMS4wLjc="),
        "I2's 10.1.0.7 at A: {}",
        r.text()
    );

    // Each server recorded the remote guest's own address, not the sidecar's.
    let server_b: Client = b.server();
    assert_eq!(
        server_b.get_ip(2, "I1").await.unwrap().text(),
        "198.51.100.11"
    );
    assert_eq!(
        a.server().get_ip(2, "I2").await.unwrap().text(),
        "203.0.113.22"
    );
}
