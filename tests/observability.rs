//! Observability of the federation through real processes: the lag histogram, heartbeats
//! keeping `audrey_federation_last_applied_timestamp_seconds` moving while nothing changes
//! (and stopping when the origin goes away), and the publisher's drain on SIGTERM losing
//! nothing. One broker, two sites; the phases run in one test to start the broker once.

mod support;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use audrey_federation::config::Config;
use audrey_federation::store::Store;
use support::broker::{Broker, BrokerOptions};
use support::client::{audrey_data, Placement};
use support::emulator::Emulator;
use support::scenario;
use support::site::{self, Site};

const LIMIT: Duration = Duration::from_secs(30);
const HEARTBEAT: &str = "heartbeat_interval = 0.2\n";
const LAST: &str = "audrey_federation_last_applied_timestamp_seconds";
const FROM_A: &str = "origin_site=\"site-a\"";
const FROM_B: &str = "origin_site=\"site-b\"";
const BURST: u64 = 40;

fn now_s() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs_f64()
}

/// Polls `site`'s metric until `done` accepts it, for at most [`LIMIT`]; returns the value.
async fn poll(
    site: &Site,
    metric: &str,
    labels: &[&str],
    what: &str,
    done: impl Fn(f64) -> bool,
) -> f64 {
    let deadline = Instant::now() + LIMIT;
    loop {
        let v = site.metric(metric, labels).await;
        if done(v) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{}: {what}: {metric}{labels:?} = {v} after {LIMIT:?}",
            site.name
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn start(
    name: &str,
    broker: &Broker,
    certs: &support::certs::CertPaths,
    dir: &std::path::Path,
) -> Site {
    let amqp = format!(
        "{}{HEARTBEAT}",
        site::mtls(&broker.amqps_url(), certs, name)
    );
    Site::launch(
        name,
        &amqp,
        &dir.join(name),
        Emulator::start(site::CONDUCTOR.0, site::CONDUCTOR.1),
        None,
        "",
    )
}

#[tokio::test]
async fn lag_heartbeats_and_drain() {
    let certs = support::certs::generate(&["site-a", "site-b"]);
    let broker = Broker::start(BrokerOptions {
        sites: &["site-a", "site-b"],
        certs: &certs,
    });
    let dir = tempfile::tempdir().unwrap();
    let mut a = start("site-a", &broker, &certs, dir.path());
    let mut b = start("site-b", &broker, &certs, dir.path());

    // Heartbeats alone, no guest activity: B's view of A's time advances, twice.
    let first = poll(&b, LAST, &[FROM_A], "a first heartbeat", |v| v > 0.0).await;
    assert!(
        (now_s() - first).abs() < 10.0,
        "origin time {first} is A's clock, near now"
    );
    let second = poll(&b, LAST, &[FROM_A], "advances once", |v| v > first).await;
    poll(&b, LAST, &[FROM_A], "advances twice", |v| v > second).await;
    // B's own heartbeats come back through its queue: counted, skipped, never changes.
    poll(
        &b,
        "audrey_federation_heartbeats_received_total",
        &[FROM_B],
        "own heartbeats",
        |v| v >= 1.0,
    )
    .await;
    assert!(
        b.metric("audrey_federation_heartbeats_received_total", &[FROM_A])
            .await
            >= 2.0
    );
    assert_eq!(
        b.metric(LAST, &[FROM_B]).await,
        0.0,
        "own heartbeats move no gauge"
    );
    for counter in [
        "audrey_federation_own_origin_total",
        "audrey_federation_duplicate_total",
        "audrey_federation_applied_total",
        "audrey_federation_received_total",
        "audrey_federation_rejected_total",
    ] {
        assert_eq!(
            b.metric(counter, &[]).await,
            0.0,
            "{counter} counts no heartbeat"
        );
    }

    // Changes at A: B's lag histogram for site-a moves.
    let lag = "audrey_federation_lag_seconds";
    assert_eq!(b.metric(&format!("{lag}_count"), &[FROM_A]).await, 0.0);
    let i1 = scenario::i1();
    let c = a.client();
    let r = c
        .register(&Site::conductor(), 1, &i1.uuid, &i1.to_xml())
        .await
        .unwrap();
    assert_eq!(r.status, 200, "register: {r:?}");
    poll(
        &b,
        &format!("{lag}_count"),
        &[FROM_A],
        "lag observed",
        |v| v >= 1.0,
    )
    .await;
    assert!(
        b.metric(&format!("{lag}_sum"), &[FROM_A]).await > 0.0,
        "lag sum moved"
    );

    // Drain: a burst of acknowledged reports, SIGTERM right after the last answer.
    let mut acknowledged = 1; // the registration
    for n in 0..BURST {
        let value = format!("10.0.0.{}", n % 250);
        let r = c
            .put_params(
                2,
                &i1.uuid,
                &i1.secret,
                &audrey_data(&[("ipaddress", &value)]),
                Placement::Header,
            )
            .await
            .unwrap();
        assert!(r.status == 200 || r.status == 202, "report {n}: {r:?}");
        acknowledged += 1;
    }
    let status = a.sidecar.terminate();
    assert!(
        status.success(),
        "A exits 0 on SIGTERM: {status:?}\n{}",
        a.sidecar.log()
    );
    let store = Store::open(&a.dir.join("state"), "site-a").unwrap();
    let left: Vec<u64> = store
        .pending(None, 1000)
        .unwrap()
        .iter()
        .map(|c| c.origin_seq)
        .collect();
    store.close().await.unwrap();
    let delivered = acknowledged - left.len() as u64;
    assert!(
        left.iter().copied().eq(delivered + 1..=acknowledged),
        "what is left is the tail of the outbox: {left:?}"
    );

    // A is gone: B's value stops advancing, so the lag it shows grows past several intervals.
    let deadline = Instant::now() + LIMIT;
    loop {
        let v = b.metric(LAST, &[FROM_A]).await;
        if now_s() - v >= 2.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "B still sees A's time advance: {v}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Every acknowledged change reached B or is still in A's outbox: nothing lost.
    poll(
        &b,
        "audrey_federation_applied_total",
        &[],
        "everything published is applied",
        |v| v >= delivered as f64,
    )
    .await;
    let state = b.stop_and_read_origins(&["site-a"]).await;
    let state = state[0].clone().expect("B applied changes of site-a");
    assert_eq!(
        (state.applied, state.max_origin_seq),
        (delivered, delivered),
        "acknowledged {acknowledged} = delivered {delivered} + left {}",
        left.len()
    );
}

#[test]
fn heartbeat_interval_is_configurable_and_must_be_positive() {
    let text = |extra: &str| {
        format!(
            "site = \"s\"\n[amqp]\nurl = \"amqps://localhost:5671\"\nca = \"ca\"\ncert = \"c\"\nkey = \"k\"\n{extra}\
             [oauth]\nconductor_key = \"k\"\nconductor_secret_file = \"f\"\n"
        )
    };
    let path = std::path::Path::new("config.toml");
    let parsed = Config::parse(&text(""), path).unwrap();
    assert_eq!(
        parsed.amqp.as_ref().unwrap().heartbeat_interval,
        Duration::from_secs(10)
    );
    let parsed = Config::parse(&text("heartbeat_interval = 0.25\n"), path).unwrap();
    parsed.validate().unwrap();
    assert_eq!(
        parsed.amqp.as_ref().unwrap().heartbeat_interval,
        Duration::from_millis(250)
    );
    let zero = Config::parse(&text("heartbeat_interval = 0\n"), path).unwrap();
    let err = zero.validate().unwrap_err().to_string();
    assert!(err.contains("amqp.heartbeat_interval"), "{err}");
}
