//! Federation end to end through real processes: sidecars in front of emulated Config
//! Servers, over a real RabbitMQ with mutual TLS. Each test starts its own broker (so
//! stopping it or its queues' leftovers touch no other test) and the tests take turns.

mod support;

use std::time::{Duration, Instant};

use support::broker::{Broker, BrokerOptions};
use support::certs::CertPaths;
use support::client::{audrey_data, Client, Creds, InstanceXml, Placement, Response};
use support::relay::Relay;
use support::scenario;
use support::site::{self, Site};

/// One federation test at a time: each runs a broker and several processes.
static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const LIMIT: Duration = Duration::from_secs(60);

fn broker(sites: &[&str]) -> (Broker, CertPaths) {
    let certs = support::certs::generate(sites);
    let broker = Broker::start(BrokerOptions {
        sites,
        certs: &certs,
    });
    (broker, certs)
}

/// Polls `f` until `done` accepts its answer, for at most [`LIMIT`].
async fn eventually<F, Fut>(what: &str, mut f: F, done: impl Fn(&Response) -> bool) -> Response
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Response>>,
{
    let deadline = Instant::now() + LIMIT;
    loop {
        let r = f().await.expect(what);
        if done(&r) {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: still {} {:?} after {LIMIT:?}",
            r.status,
            r.text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every change `origin` captured (`captured`, numbered 1..=captured) was applied at `site`
/// exactly once, and `origin` applied none of its own.
async fn applied_exactly_once(origin: &mut Site, sites: &mut [&mut Site], captured: u64) {
    for s in sites.iter_mut() {
        let state = s
            .stop_and_read_origins(&[&origin.name])
            .await
            .remove(0)
            .expect("changes applied");
        assert_eq!(
            state.max_origin_seq, captured,
            "{}: last change from {}",
            s.name, origin.name
        );
        assert_eq!(
            state.applied, captured,
            "{}: changes from {} applied (lost or doubled)",
            s.name, origin.name
        );
    }
    let name = origin.name.clone();
    let own = origin.stop_and_read_origins(&[&name]).await.remove(0);
    assert!(
        own.is_none(),
        "{} applied its own changes: {own:?}",
        origin.name
    );
}

#[tokio::test]
async fn i1_at_a_and_i2_at_b_resolve_each_other() {
    let _turn = TURN.lock().await;
    let (broker, certs) = broker(&["site-a", "site-b"]);
    let dir = tempfile::tempdir().unwrap();
    let a = Site::start("site-a", &broker.amqps_url(), &certs, &dir.path().join("a"));
    let b = Site::start("site-b", &broker.amqps_url(), &certs, &dir.path().join("b"));

    let (i1, i2) = (scenario::i1(), scenario::i2());
    let (ca, cb) = (a.client(), b.client());
    a.register(&i1).await;
    b.register(&i2).await;
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

    let creds2 = Creds::new("I2", &i2.secret);
    let r = eventually(
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

#[tokio::test]
async fn three_sites_many_deployments_converge() {
    const DEPLOYMENTS: usize = 12;
    const REPORTS: usize = 5;
    let _turn = TURN.lock().await;
    let names = ["site-a", "site-b", "site-c"];
    let (broker, certs) = broker(&names);
    let dir = tempfile::tempdir().unwrap();
    let mut sites: Vec<Site> = names
        .iter()
        .map(|n| Site::start(n, &broker.amqps_url(), &certs, &dir.path().join(n)))
        .collect();

    // Deployment k: a provider at site k % 3, and at every site a consumer referencing it.
    let captured = scenario::stream(&sites, DEPLOYMENTS, REPORTS).await;
    // Exactly once, no echo: every site's durable replay state, per origin.
    scenario::applied_exactly_once(&mut sites, &captured).await;
}

/// I1 registered at A and reporting values 1..=n; I2 at B referencing it.
async fn stream_setup(a: &Site, b: &Site) -> (InstanceXml, InstanceXml) {
    let (i1, i2) = (scenario::i1(), scenario::i2());
    a.register(&i1).await;
    b.register(&i2).await;
    (i1, i2)
}

#[tokio::test]
async fn broker_stopped_while_guests_report_loses_nothing() {
    let _turn = TURN.lock().await;
    let (mut broker, certs) = broker(&["site-a", "site-b"]);
    let dir = tempfile::tempdir().unwrap();
    let mut a = Site::start("site-a", &broker.amqps_url(), &certs, &dir.path().join("a"));
    let mut b = Site::start("site-b", &broker.amqps_url(), &certs, &dir.path().join("b"));
    let (i1, i2) = stream_setup(&a, &b).await;
    for v in 1..=10 {
        a.report(&i1, &format!("10.0.0.{v}")).await;
    }
    b.sees(&i2, "10.0.0.10").await;

    broker.stop();
    // Guests keep reporting: the proxy keeps answering and the outbox keeps everything.
    for v in 11..=30 {
        a.report(&i1, &format!("10.0.0.{v}")).await;
    }
    assert!(
        a.metric("audrey_federation_broker_link_up", &["link=\"publish\""])
            .await
            == 0.0
    );
    broker.start_again();
    b.sees(&i2, "10.0.0.30").await;
    // A captured I1's registration and 30 reports.
    applied_exactly_once(&mut a, &mut [&mut b], 31).await;
}

#[tokio::test]
async fn sidecars_killed_mid_stream_lose_nothing_and_keep_order() {
    let _turn = TURN.lock().await;
    let (broker, certs) = broker(&["site-a", "site-b"]);
    let dir = tempfile::tempdir().unwrap();
    let mut a = Site::start("site-a", &broker.amqps_url(), &certs, &dir.path().join("a"));
    let mut b = Site::start("site-b", &broker.amqps_url(), &certs, &dir.path().join("b"));
    let (i1, i2) = stream_setup(&a, &b).await;
    for v in 1..=40 {
        a.report(&i1, &format!("10.0.0.{v}")).await;
        if v == 15 {
            // The origin dies with changes still in its outbox or in flight.
            a.kill_and_restart_sidecar();
        }
        if v == 25 {
            // The replaying site dies once it applied some, with more queued for it.
            b.metric_reaches("audrey_federation_applied_total", &["kind=\"params\""], 1.0)
                .await;
            b.kill_and_restart_sidecar();
        }
    }
    // In order: the last value wins at B, never an earlier one left behind.
    b.sees(&i2, "10.0.0.40").await;
    applied_exactly_once(&mut a, &mut [&mut b], 41).await;
}

#[tokio::test]
async fn local_server_down_at_b_then_applied_once_back() {
    let _turn = TURN.lock().await;
    let (broker, certs) = broker(&["site-a", "site-b"]);
    let dir = tempfile::tempdir().unwrap();
    let mut a = Site::start("site-a", &broker.amqps_url(), &certs, &dir.path().join("a"));
    let server_b = Site::emulator();
    let relay = Relay::start(server_b.addr()).await;
    let amqp = site::mtls(&broker.amqps_url(), &certs, "site-b");
    let mut b = Site::launch(
        "site-b",
        &amqp,
        &dir.path().join("b"),
        server_b,
        Some(relay.addr()),
        "",
    );
    let (i1, i2) = stream_setup(&a, &b).await;
    a.report(&i1, "10.0.0.1").await;
    b.sees(&i2, "10.0.0.1").await;

    relay.down().await;
    for v in 2..=10 {
        a.report(&i1, &format!("10.0.0.{v}")).await;
    }
    // B cannot apply while its server is away: it retries, keeping the order.
    b.metric_reaches("audrey_federation_replay_errors_total", &[], 1.0)
        .await;
    relay.up();
    b.sees(&i2, "10.0.0.10").await;
    applied_exactly_once(&mut a, &mut [&mut b], 11).await;
}

#[tokio::test]
async fn refused_identities_are_logged_retried_and_the_proxy_keeps_serving() {
    let _turn = TURN.lock().await;
    // site-x has a certificate from the broker's CA but no broker user.
    let certs = support::certs::generate(&["site-a", "site-x"]);
    let broker = Broker::start(BrokerOptions {
        sites: &["site-a"],
        certs: &certs,
    });
    let rogue = support::certs::generate(&["site-a"]);
    let dir = tempfile::tempdir().unwrap();
    let password = dir.path().join("password");
    std::fs::write(&password, support::broker::PLAIN_PASSWORD).unwrap();
    let url = broker.amqps_url();
    let cases = [
        (
            "no client certificate",
            format!(
                "url = \"{url}\"\nca = \"{}\"\nsasl = \"plain\"\nusername = \"{}\"\npassword_file = \"{}\"\n",
                certs.ca.display(),
                support::broker::PLAIN_USER,
                password.display()
            ),
            "broker requires a client certificate",
        ),
        (
            "certificate from another CA",
            site::with_identity(&url, &certs.ca, &rogue.site_cert("site-a"), &rogue.site_key("site-a")),
            "broker does not trust our client certificate",
        ),
        ("unknown identity", site::mtls(&url, &certs, "site-x"), "broker refused SASL EXTERNAL"),
    ];
    for (i, (case, amqp, expected)) in cases.iter().enumerate() {
        let name = if case.contains("unknown") {
            "site-x"
        } else {
            "site-a"
        };
        let s = Site::launch(
            name,
            amqp,
            &dir.path().join(i.to_string()),
            Site::emulator(),
            None,
            "",
        );
        // The refusal is logged with its reason, and retried.
        let deadline = Instant::now() + LIMIT;
        while s.sidecar.log().matches(expected).count() < 2 {
            assert!(
                Instant::now() < deadline,
                "{case}: no repeated {expected:?} in the log:\n{}",
                s.sidecar.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(
            s.metric("audrey_federation_broker_link_up", &[]).await,
            0.0,
            "{case}"
        );
        // Meanwhile guests are served and their changes kept for later.
        let x = scenario::i1();
        s.register(&x).await;
        s.report(&x, "10.0.0.5").await;
        assert_eq!(
            s.metric("audrey_federation_captured_total", &[]).await,
            2.0,
            "{case}"
        );
    }
}

#[tokio::test]
async fn an_instance_registered_before_the_sidecar_is_learnt_parked_then_applied() {
    let _turn = TURN.lock().await;
    let (broker, certs) = broker(&["site-a", "site-b"]);
    let dir = tempfile::tempdir().unwrap();
    // I1 was registered at A's server before audrey-federation was installed there: no
    // sidecar saw it, only the server's storage (deployables/D1/I1) knows its deployment.
    let server_a = Site::emulator();
    let i1 = scenario::i1();
    let r = Client::new(server_a.addr())
        .register(&Site::conductor(), 1, "I1", &i1.to_xml())
        .await;
    assert_eq!(r.unwrap().status, 200);
    let storage = format!(
        "upstream_storage_dir = \"{}\"",
        server_a.storage_dir().display()
    );
    let amqp = site::mtls(&broker.amqps_url(), &certs, "site-a");
    let a = Site::launch(
        "site-a",
        &amqp,
        &dir.path().join("a"),
        server_a,
        None,
        &storage,
    );
    let b = Site::start("site-b", &broker.amqps_url(), &certs, &dir.path().join("b"));
    let i2 = scenario::i2();
    b.register(&i2).await;

    // The report is published once A learnt I1's deployment, and reaches B before any
    // registration of I1 there: B parks it.
    a.report(&i1, "10.0.0.5").await;
    b.metric_reaches("audrey_federation_parked_total", &["kind=\"params\""], 1.0)
        .await;
    assert_eq!(
        b.server().get_ip(2, "I1").await.unwrap().status,
        404,
        "not applied while parked"
    );

    // Conductor registers I1 at B too: the parked change is applied.
    b.register(&i1).await;
    b.sees(&i2, "10.0.0.5").await;
    b.metric_reaches("audrey_federation_applied_total", &["kind=\"params\""], 1.0)
        .await;
}
