//! The publisher and the subscriber against a real RabbitMQ 3.10 node over mutual TLS with
//! SASL EXTERNAL: order, documented message properties, held entries, inbound dead letters,
//! handler retries, a broker restart, and an untrusted client certificate.
//!
//! Owns only assertions and small helpers; the broker and PKI come from `tests/support`. Every
//! test takes the shared broker's write lock (they consume the same per-site queues, and one
//! restarts the broker), uses an origin site name of its own and ignores messages of other
//! origins left in the queues. Events are awaited by polling with deadlines, never by sleeping.

mod support;

use std::future::Future;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use audrey_federation::amqp::{codec, run_publisher, run_subscriber};
use audrey_federation::change::{Capture, Change, Event};
use audrey_federation::config::AmqpConfig;
use audrey_federation::store::Store;
use audrey_federation::wire;
use fe2o3_amqp::types::messaging::{Body, Message, Outcome, Properties};
use fe2o3_amqp::types::primitives::{SimpleValue, Value};
use fe2o3_amqp::{Receiver, Sender, Session};
use metrics_exporter_prometheus::PrometheusHandle;
use support::broker::{self, Broker};
use support::certs::CertPaths;
use support::logs::LogBuffer;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

const DEADLINE: Duration = Duration::from_secs(20);

fn nonce(tag: &str) -> String {
    format!("{tag}-{:08x}", rand::random::<u32>())
}

/// Unsigned on both ends: these tests publish under made-up origin sites (one per test, on a
/// shared broker) that no certificate names; tests/hostile_federation.rs covers signatures.
fn amqp_cfg(url: &str, ca: &CertPaths, id: &CertPaths, site: &str, extra: &str) -> AmqpConfig {
    let text = format!(
        "url = {url:?}\nca = {:?}\ncert = {:?}\nkey = {:?}\nsasl = \"external\"\n\
         reconnect_initial = 0.05\nreconnect_max = 0.5\n\
         sign = false\naccept_unsigned = true\n{extra}",
        ca.ca.display().to_string(),
        id.site_cert(site).display().to_string(),
        id.site_key(site).display().to_string(),
    );
    toml::from_str(&text).unwrap_or_else(|e| panic!("test config: {e}\n{text}"))
}

fn site_cfg(b: &Broker, site: &str) -> AmqpConfig {
    let certs = &broker::shared().certs;
    amqp_cfg(&b.amqps_url(), certs, certs, site, "")
}

/// One Prometheus recorder for the whole binary, to read the gauges.
fn recorder() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        metrics_exporter_prometheus::PrometheusBuilder::new()
            .install_recorder()
            .expect("install recorder")
    })
}

fn metric(line_prefix: &str) -> Option<f64> {
    recorder()
        .render()
        .lines()
        .find(|l| l.starts_with(line_prefix) && l[line_prefix.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

fn link_up(link: &str) -> Option<f64> {
    metric(&format!(
        "audrey_federation_broker_link_up{{link=\"{link}\"}}"
    ))
}

/// Polls `check` every 20 ms until it holds or `limit` passes.
async fn wait_for(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check() {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn params(instance: &str, deployment: Option<&str>, n: u64) -> Capture {
    Capture {
        api_version: 2,
        instance: Some(instance.to_owned()),
        deployment: deployment.map(str::to_owned),
        client_addr: Some("10.0.0.5".into()),
        captured_at_ms: 1_700_000_000_000 + n,
        event: Event::Params {
            audrey_data: format!("|n&{n}|"),
            values: vec![("n".into(), n.to_string())],
            return_codes: false,
        },
    }
}

fn registration(instance: &str, deployment: &str) -> Capture {
    Capture {
        api_version: 2,
        instance: Some(instance.to_owned()),
        deployment: Some(deployment.to_owned()),
        client_addr: None,
        captured_at_ms: 1_700_000_000_000,
        event: Event::Registration {
            instance_config: format!("<instance-config id='{instance}' secret='S'/>"),
            secret: "S".into(),
        },
    }
}

fn deletion(deployment: &str) -> Capture {
    Capture {
        api_version: 1,
        instance: None,
        deployment: Some(deployment.to_owned()),
        client_addr: None,
        captured_at_ms: 1_700_000_000_001,
        event: Event::Deletion,
    }
}

struct Running {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    fn spawn(fut: impl Future<Output = ()> + Send + 'static, stop: CancellationToken) -> Running {
        Running {
            stop,
            task: tokio::spawn(fut),
        }
    }

    async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(15), self.task)
            .await
            .expect("task stops within 15 s of shutdown")
            .expect("task did not panic");
    }
}

fn publisher(cfg: AmqpConfig, store: &Store, wake: &Arc<Notify>) -> Running {
    let stop = CancellationToken::new();
    let fut = run_publisher(
        cfg,
        store.site().to_owned(),
        store.clone(),
        wake.clone(),
        stop.clone(),
    );
    Running::spawn(fut, stop)
}

/// Appends `captures` to `store`, publishes them as site A and waits, up to `limit`, until
/// the outbox is empty; the publisher is stopped again.
async fn publish_all(
    b: &Broker,
    store: &Store,
    captures: impl IntoIterator<Item = Capture>,
    limit: Duration,
) {
    for capture in captures {
        store.append(capture).await.expect("append");
    }
    let running = publisher(site_cfg(b, "site-a"), store, &Arc::new(Notify::new()));
    wait_for("publication", limit, || store.depth() == 0).await;
    running.stop().await;
}

/// Receives from `queue` (accepting everything) until `n` distinct changes of `origin` arrived;
/// returns them with their messages, duplicates included, in arrival order.
async fn collect(
    cfg: &AmqpConfig,
    queue: &str,
    origin: &str,
    n: usize,
) -> Vec<(Message<Body<Value>>, Change)> {
    let mut conn = audrey_federation::amqp::connect(cfg, &nonce("collector"))
        .await
        .expect("connect");
    let mut session = Session::begin(&mut conn).await.expect("session");
    let address = format!("/amq/queue/{queue}");
    let mut receiver = Receiver::attach(&mut session, nonce("collect"), address.as_str())
        .await
        .expect("attach");
    let mut got = Vec::new();
    let mut seqs = std::collections::BTreeSet::new();
    let deadline = Instant::now() + DEADLINE;
    while seqs.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        let delivery = tokio::time::timeout(left, receiver.recv::<Body<Value>>())
            .await
            .unwrap_or_else(|_| {
                panic!("{queue}: only {seqs:?} of {n} changes from {origin} arrived")
            })
            .expect("recv");
        receiver.accept(&delivery).await.expect("accept");
        let message = delivery.into_message();
        let Ok(w) = codec::from_message(&message) else {
            continue;
        };
        let Ok(change) = wire::decode(&w) else {
            continue;
        };
        if change.origin_site == origin {
            seqs.insert(change.origin_seq);
            got.push((message, change));
        }
    }
    support::teardown("detach receiver", receiver.detach()).await;
    support::teardown("end receiving session", session.end()).await;
    support::teardown("close receiving connection", conn.close()).await;
    got
}

fn temp_store(site: &str) -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open(dir.path(), site).expect("open store");
    (dir, store)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_in_order_to_every_site_with_the_documented_properties() {
    recorder();
    let b = broker::shared().write().await;
    let origin = nonce("pub-order");
    let (_dir, store) = temp_store(&origin);
    let mut appended = Vec::new();
    for capture in [
        registration("I1", "D1"),
        params("I1", None, 1),
        params("I2", Some("D2"), 2),
        deletion("D3"),
        params("I1", None, 3),
    ] {
        appended.push(store.append(capture).await.expect("append"));
    }
    assert_eq!(store.depth(), 5);
    let wake = Arc::new(Notify::new());
    let running = publisher(site_cfg(&b, "site-a"), &store, &wake);
    wait_for("the outbox to empty", DEADLINE, || store.depth() == 0).await;
    assert_eq!(link_up("publish"), Some(1.0));

    // A later append is published at once when the publisher is woken.
    appended.push(store.append(params("I1", None, 4)).await.expect("append"));
    wake.notify_one();
    wait_for("the woken outbox to empty", DEADLINE, || store.depth() == 0).await;
    running.stop().await;
    assert_eq!(link_up("publish"), Some(0.0));

    for site in broker::SHARED_SITES {
        let got = collect(
            &site_cfg(&b, site),
            &Broker::queue_name(site),
            &origin,
            appended.len(),
        )
        .await;
        let changes: Vec<&Change> = got.iter().map(|(_, c)| c).collect();
        assert_eq!(
            changes,
            appended.iter().collect::<Vec<_>>(),
            "{site}: order and content"
        );
        for (m, c) in &got {
            let deployment = c
                .deployment
                .as_deref()
                .expect("routed changes carry a deployment");
            let p = m.properties.as_ref().expect("properties");
            assert!(
                m.header.as_ref().is_some_and(|h| h.durable),
                "durable header"
            );
            assert_eq!(
                p.subject.as_deref(),
                Some(format!("audrey.federation.{deployment}").as_str())
            );
            assert_eq!(
                p.message_id,
                Some(fe2o3_amqp::types::messaging::MessageId::String(
                    c.message_id()
                ))
            );
            assert_eq!(
                p.content_type.as_ref().map(|s| s.0.as_str()),
                Some("application/json")
            );
            assert_eq!(
                p.creation_time.as_ref().map(|t| t.milliseconds()),
                Some(c.captured_at_ms as i64)
            );
            let ap = &m
                .application_properties
                .as_ref()
                .expect("application properties")
                .0;
            assert_eq!(ap.get("audrey_format"), Some(&SimpleValue::Ubyte(2)));
            assert_eq!(
                ap.get("origin_seq"),
                Some(&SimpleValue::Ulong(c.origin_seq))
            );
            assert_eq!(
                ap.get("incarnation"),
                Some(&SimpleValue::String(c.incarnation.clone()))
            );
            assert_eq!(
                ap.get("deployment"),
                Some(&SimpleValue::String(deployment.into()))
            );
            assert!(
                matches!(&m.body, Body::Data(batch) if batch.len() == 1),
                "one data section"
            );
        }
    }
    // The params changes captured before their deployment was stored got it from the store.
    assert_eq!(appended[1].deployment.as_deref(), Some("D1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_with_an_unknown_deployment_is_held_until_it_is_learnt() {
    recorder();
    let b = broker::shared().write().await;
    let origin = nonce("pub-held");
    let (_dir, store) = temp_store(&origin);
    let held = store
        .append(params("I-new", None, 1))
        .await
        .expect("append");
    assert_eq!(held.deployment, None);
    let routable = store
        .append(params("I-known", Some("D7"), 2))
        .await
        .expect("append");
    let wake = Arc::new(Notify::new());
    let running = publisher(site_cfg(&b, "site-a"), &store, &wake);
    wait_for("the routable change to leave the outbox", DEADLINE, || {
        store.depth() == 1
    })
    .await;
    wait_for("the held gauge", DEADLINE, || {
        metric("audrey_federation_outbox_held") == Some(1.0)
    })
    .await;
    assert_eq!(
        store.pending(None, 10).expect("pending")[0].origin_seq,
        held.origin_seq
    );

    store.learn_deployment("I-new", "D9").await.expect("learn");
    wait_for("the held change to leave the outbox", DEADLINE, || {
        store.depth() == 0
    })
    .await;
    wait_for("the held gauge to clear", DEADLINE, || {
        metric("audrey_federation_outbox_held") == Some(0.0)
    })
    .await;
    running.stop().await;

    let got = collect(
        &site_cfg(&b, "site-a"),
        &Broker::queue_name("site-a"),
        &origin,
        2,
    )
    .await;
    let seqs: Vec<u64> = got.iter().map(|(_, c)| c.origin_seq).collect();
    assert_eq!(
        seqs,
        vec![routable.origin_seq, held.origin_seq],
        "the held change comes after"
    );
    let (m, c) = &got[1];
    assert_eq!(c.deployment.as_deref(), Some("D9"));
    assert_eq!(
        m.properties.as_ref().and_then(|p| p.subject.as_deref()),
        Some("audrey.federation.D9")
    );
}

#[tokio::test]
async fn a_client_certificate_from_another_ca_keeps_retrying_and_names_the_tls_failure() {
    recorder();
    let (logs, _guard) = LogBuffer::capture();

    let b = broker::shared().write().await;
    let rogue = support::certs::generate(&["site-a"]);
    let cfg = amqp_cfg(
        &b.amqps_url(),
        &broker::shared().certs,
        &rogue,
        "site-a",
        "",
    );
    let origin = nonce("pub-rogue");
    let (_dir, store) = temp_store(&origin);
    store
        .append(params("I1", Some("D1"), 1))
        .await
        .expect("append");
    let running = publisher(cfg, &store, &Arc::new(Notify::new()));
    let failures = || {
        logs.text()
            .lines()
            .filter(|l| l.contains("publishing to the broker failed"))
            .count()
    };
    wait_for("three failed attempts", DEADLINE, || failures() >= 3).await;
    running.stop().await;
    let text = logs.text();
    let line = text
        .lines()
        .find(|l| l.contains("publishing to the broker failed"))
        .expect("a failure line");
    assert!(
        line.contains("does not trust our client certificate") && line.contains("UnknownCA"),
        "{line}"
    );
    assert!(line.contains("attempt=1"), "{line}");
    assert_eq!(link_up("publish"), Some(0.0));
    assert_eq!(store.depth(), 1, "nothing leaves the outbox unaccepted");
}

/// What a test handler saw: the `origin_seq` of every call for its origin, retries included.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<u64>>>);

impl Seen {
    fn calls(&self) -> Vec<u64> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Distinct seqs in order of first arrival.
    fn distinct(&self) -> Vec<u64> {
        let mut out: Vec<u64> = Vec::new();
        for s in self.calls() {
            if !out.contains(&s) {
                out.push(s);
            }
        }
        out
    }
}

/// A subscriber whose handler records the changes of `origin`, answering `Err` for
/// `fail_first` attempts at `fail_seq`, and `Ok` for everything else.
fn subscriber(
    cfg: AmqpConfig,
    site: &str,
    store: &Store,
    origin: &str,
    fail: Option<(u64, usize)>,
) -> (Running, Seen) {
    subscriber_failing(cfg, site, store, origin, move |seq, calls| {
        fail.is_some_and(|(at, n)| seq == at && calls.iter().filter(|s| **s == at).count() <= n)
    })
}

/// A subscriber whose handler records the changes of `origin` and answers `Err` when
/// `fails(origin_seq, calls so far including this one)` says so.
fn subscriber_failing(
    cfg: AmqpConfig,
    site: &str,
    store: &Store,
    origin: &str,
    fails: impl Fn(u64, &[u64]) -> bool + Send + Sync + 'static,
) -> (Running, Seen) {
    let seen = Seen::default();
    let record = seen.clone();
    let origin = origin.to_owned();
    let fails = Arc::new(fails);
    let handler = move |change: Change| {
        let record = record.clone();
        let fails = fails.clone();
        let mine = change.origin_site == origin;
        async move {
            if !mine {
                return Ok(());
            }
            let mut calls = record
                .0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            calls.push(change.origin_seq);
            if fails(change.origin_seq, &calls) {
                return Err("local server unavailable".to_owned());
            }
            Ok(())
        }
    };
    (spawn_subscriber(cfg, site, store, handler), seen)
}

/// A running subscriber of `site` handing its changes to `handler`.
fn spawn_subscriber(
    cfg: AmqpConfig,
    site: &str,
    store: &Store,
    handler: impl audrey_federation::amqp::ChangeHandler,
) -> Running {
    let stop = CancellationToken::new();
    let fut = run_subscriber(cfg, site.to_owned(), store.clone(), handler, stop.clone());
    Running::spawn(
        async move {
            fut.await.expect("subscriber starts");
        },
        stop,
    )
}

/// Sends a message that is not an audrey change to `amq.topic`, as a foreign producer would.
async fn send_junk(cfg: &AmqpConfig) {
    let mut conn = audrey_federation::amqp::connect(cfg, &nonce("junk"))
        .await
        .expect("connect");
    let mut session = Session::begin(&mut conn).await.expect("session");
    let mut sender = Sender::attach(&mut session, nonce("junk"), "/exchange/amq.topic")
        .await
        .expect("attach");
    let junk = Message::builder()
        .properties(
            Properties::builder()
                .subject("audrey.federation.junk")
                .message_id("junk:1".to_string())
                .build(),
        )
        .value("this is not a change")
        .build();
    let outcome = sender.send(junk).await.expect("send junk");
    assert!(matches!(outcome, Outcome::Accepted(_)), "{outcome:?}");
    support::teardown("detach sender", sender.detach()).await;
    support::teardown("end session", session.end()).await;
    support::teardown("close connection", conn.close()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_subscriber_hands_changes_over_in_order_retries_failures_and_rejects_junk() {
    recorder();
    let b = broker::shared().write().await;
    let origin = nonce("sub-order");
    let (_odir, origin_store) = temp_store(&origin);
    let (_ldir, local) = temp_store("site-c");
    let wake = Arc::new(Notify::new());
    let running_pub = publisher(site_cfg(&b, "site-a"), &origin_store, &wake);
    origin_store
        .append(registration("I1", "D1"))
        .await
        .expect("append");
    origin_store
        .append(params("I1", None, 1))
        .await
        .expect("append");
    wake.notify_one();
    wait_for("the first two to be published", DEADLINE, || {
        origin_store.depth() == 0
    })
    .await;
    send_junk(&site_cfg(&b, "site-a")).await;
    origin_store
        .append(params("I1", None, 2))
        .await
        .expect("append");
    origin_store
        .append(params("I1", None, 3))
        .await
        .expect("append");
    wake.notify_one();
    wait_for("the last two to be published", DEADLINE, || {
        origin_store.depth() == 0
    })
    .await;
    running_pub.stop().await;

    let (running_sub, seen) = subscriber(
        site_cfg(&b, "site-c"),
        "site-c",
        &local,
        &origin,
        Some((2, 2)),
    );
    wait_for("all four changes handled", DEADLINE, || {
        seen.distinct().len() == 4
    })
    .await;
    assert_eq!(
        seen.calls(),
        vec![1, 2, 2, 2, 3, 4],
        "seq 2 retried twice, nothing overtook it"
    );
    assert_eq!(link_up("subscribe"), Some(1.0));
    wait_for("the junk to be dead-lettered", DEADLINE, || {
        local.inbound_dead_letter_count() == 1
    })
    .await;
    let letters = local.dead_letters_inbound(10).expect("dead letters");
    assert!(
        letters[0].reason.contains("audrey_format"),
        "{}",
        letters[0].reason
    );
    assert_eq!(
        metric("audrey_federation_rejected_total{reason=\"unsupported_version\"}"),
        Some(1.0)
    );
    // Everything was settled: accepted changes and the rejected junk leave the queue.
    let queue = Broker::queue_name("site-c");
    let deadline = Instant::now() + DEADLINE;
    while b.queue_messages(&queue) != 0 {
        assert!(Instant::now() < deadline, "{queue} still holds messages");
    }
    running_sub.stop().await;
    assert_eq!(link_up("subscribe"), Some(0.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_not_accepted_before_a_stop_is_delivered_again() {
    recorder();
    let b = broker::shared().write().await;
    let origin = nonce("sub-redeliver");
    let (_odir, origin_store) = temp_store(&origin);
    let (_ldir, local) = temp_store("site-b");
    let captures = [params("I1", Some("D1"), 1), params("I1", Some("D1"), 2)];
    publish_all(&b, &origin_store, captures, DEADLINE).await;

    // The handler keeps failing on seq 1: stop the subscriber while it is retrying.
    let (first, seen) = subscriber(
        site_cfg(&b, "site-b"),
        "site-b",
        &local,
        &origin,
        Some((1, usize::MAX)),
    );
    wait_for("seq 1 to be retried", DEADLINE, || seen.calls().len() >= 2).await;
    first.stop().await;
    assert!(seen.calls().iter().all(|s| *s == 1), "{:?}", seen.calls());

    let (second, seen) = subscriber(site_cfg(&b, "site-b"), "site-b", &local, &origin, None);
    wait_for("both changes after the restart", DEADLINE, || {
        seen.distinct().len() == 2
    })
    .await;
    assert_eq!(seen.distinct(), vec![1, 2]);
    second.stop().await;
}

/// Instances are handled side by side: while I1's first change keeps failing, I2's changes
/// and the deletion's wait show what may pass it and what may not. The handler fails I1's
/// first change once, then until I2's second has been handled, so the test needs no timing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_instance_holds_only_its_own_later_changes() {
    recorder();
    let b = broker::shared().write().await;
    let origin = nonce("sub-lanes");
    let (_odir, origin_store) = temp_store(&origin);
    let (_ldir, local) = temp_store("site-c");
    let captures = [
        params("I1", Some("D1"), 1), // seq 1: fails until seq 4 was handled
        params("I2", Some("D1"), 1), // seq 2
        params("I1", Some("D1"), 2), // seq 3: after seq 1, whatever happens to I2
        params("I2", Some("D1"), 2), // seq 4: passes the failing seq 1
        deletion("D1"),              // seq 5: only once 1-4 are done
        params("I2", Some("D1"), 3), // seq 6: only after the deletion
    ];
    publish_all(&b, &origin_store, captures, DEADLINE).await;

    let (running_sub, seen) = subscriber_failing(
        site_cfg(&b, "site-c"),
        "site-c",
        &local,
        &origin,
        |seq, calls| {
            let first_try = calls.iter().filter(|s| **s == 1).count() == 1;
            seq == 1 && (first_try || !calls.contains(&4))
        },
    );
    wait_for("all six changes handled", DEADLINE, || {
        seen.distinct().len() == 6
    })
    .await;
    let calls = seen.calls();
    let at = |seq: u64| calls.iter().position(|s| *s == seq).expect("handled");
    let last_of_1 = calls.iter().rposition(|s| *s == 1).expect("seq 1 handled");
    assert!(
        calls.iter().filter(|s| **s == 1).count() >= 2,
        "seq 1 retried: {calls:?}"
    );
    assert!(at(4) < last_of_1, "I2 passed the failing I1: {calls:?}");
    assert!(at(2) < at(4), "I2 in its own order: {calls:?}");
    assert!(
        last_of_1 < at(3),
        "I1's second waited for its first: {calls:?}"
    );
    assert!(
        at(3) < at(5) && at(4) < at(5),
        "the deletion waited: {calls:?}"
    );
    assert!(at(5) < at(6), "nothing passed the deletion: {calls:?}");
    assert_eq!(
        calls.iter().filter(|s| **s != 1).count(),
        5,
        "only seq 1 was retried: {calls:?}"
    );
    running_sub.stop().await;
}

/// A backlog of many instances' changes, handled out of order of completion: every change
/// arrives, each instance's in order, and the link is never dropped. (RabbitMQ 3.x sends
/// more than the credit when a grant crosses deliveries in flight; the subscriber grants
/// only once the last grant has arrived, else this backlog drops the link again and again.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_of_many_instances_flows_without_a_link_drop() {
    const INSTANCES: u64 = 100;
    const EACH: u64 = 15;
    recorder();
    let b = broker::shared().write().await;
    let origin = nonce("sub-backlog");
    let (_odir, origin_store) = temp_store(&origin);
    let (_ldir, local) = temp_store("site-b");
    let captures = (1..=EACH)
        .flat_map(|n| (0..INSTANCES).map(move |i| params(&format!("I{i}"), Some("D1"), n)));
    publish_all(&b, &origin_store, captures, Duration::from_secs(60)).await;

    let lost_before = metric("audrey_federation_broker_connect_failures_total{link=\"subscribe\"}")
        .unwrap_or(0.0);
    let seen: Arc<Mutex<Vec<(String, u64)>>> = Arc::default();
    let record = seen.clone();
    let mine = origin.clone();
    let handler = move |change: Change| {
        let record = record.clone();
        let mine = change.origin_site == mine;
        async move {
            if !mine {
                return Ok(());
            }
            // 0-3 ms, varying with the change: completions come out of arrival order.
            let pause = Duration::from_millis(change.origin_seq * 7 % 4);
            tokio::time::sleep(pause).await;
            let instance = change.instance.clone().unwrap_or_default();
            record
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push((instance, change.instance_seq));
            Ok(())
        }
    };
    let running_sub = spawn_subscriber(site_cfg(&b, "site-b"), "site-b", &local, handler);
    let total = (INSTANCES * EACH) as usize;
    let count = || {
        seen.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len()
    };
    wait_for("every change handled", Duration::from_secs(60), || {
        count() >= total
    })
    .await;
    running_sub.stop().await;
    let lost_after = metric("audrey_federation_broker_connect_failures_total{link=\"subscribe\"}")
        .unwrap_or(0.0);
    let seen = seen
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    assert_eq!(seen.len(), total, "each change handled once");
    let mut next: std::collections::HashMap<&str, u64> = Default::default();
    for (instance, seq) in &seen {
        let expected = next.entry(instance.as_str()).or_insert(1);
        assert_eq!(*seq, *expected, "{instance} out of order");
        *expected += 1;
    }
    assert_eq!(
        lost_after - lost_before,
        0.0,
        "the subscribe link was dropped while the backlog flowed (see the log)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_loses_nothing() {
    recorder();
    let mut b = broker::shared().write().await;
    let origin = nonce("restart");
    let (_odir, origin_store) = temp_store(&origin);
    let (_ldir, local) = temp_store("site-b");
    let wake = Arc::new(Notify::new());
    let running_pub = publisher(site_cfg(&b, "site-a"), &origin_store, &wake);
    let (running_sub, seen) = subscriber(site_cfg(&b, "site-b"), "site-b", &local, &origin, None);
    for n in 1..=3 {
        origin_store
            .append(params("I1", Some("D1"), n))
            .await
            .expect("append");
        wake.notify_one();
    }
    wait_for("the first three handled", DEADLINE, || {
        seen.distinct().len() == 3
    })
    .await;

    tokio::task::block_in_place(|| b.stop());
    wait_for("both links down", DEADLINE, || {
        link_up("publish") == Some(0.0) && link_up("subscribe") == Some(0.0)
    })
    .await;
    for n in 4..=8 {
        origin_store
            .append(params("I1", Some("D1"), n))
            .await
            .expect("append while the broker is down");
        wake.notify_one();
    }
    assert_eq!(
        origin_store.depth(),
        5,
        "changes wait in the outbox while the broker is down"
    );
    tokio::task::block_in_place(|| b.start_again());

    wait_for(
        "the outbox to drain after the restart",
        Duration::from_secs(40),
        || origin_store.depth() == 0,
    )
    .await;
    wait_for("all eight handled", DEADLINE, || seen.distinct().len() == 8).await;
    assert_eq!(
        seen.distinct(),
        (1..=8).collect::<Vec<u64>>(),
        "in order, none lost"
    );
    assert_eq!(link_up("publish"), Some(1.0));
    assert_eq!(link_up("subscribe"), Some(1.0));
    running_pub.stop().await;
    running_sub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_deployment_mode_attaches_a_durable_subscription_by_link_name() {
    recorder();
    let b = broker::shared().write().await;
    let certs = &broker::shared().certs;
    let (_ldir, local) = temp_store("site-c");
    let no_address = amqp_cfg(
        &b.amqps_url(),
        certs,
        certs,
        "site-c",
        "subscribe_mode = \"per_deployment\"\n",
    );
    let err = run_subscriber(
        no_address,
        "site-c".into(),
        local.clone(),
        |_c: Change| async { Ok(()) },
        CancellationToken::new(),
    )
    .await
    .expect_err("per_deployment without an address cannot start");
    assert!(err.to_string().contains("amqp.subscribe_address"), "{err}");

    // RabbitMQ 3.10 accepts the durable terminus (without honouring it): the link works.
    let extra = "subscribe_mode = \"per_deployment\"\nsubscribe_address = \"/exchange/amq.topic/audrey.federation.#\"\n";
    let cfg = amqp_cfg(&b.amqps_url(), certs, certs, "site-c", extra);
    let origin = nonce("per-deployment");
    let (running_sub, seen) = subscriber(cfg, "site-c", &local, &origin, None);
    wait_for("the subscribe link", DEADLINE, || {
        link_up("subscribe") == Some(1.0)
    })
    .await;
    let (_odir, origin_store) = temp_store(&origin);
    origin_store
        .append(params("I1", Some("D1"), 1))
        .await
        .expect("append");
    let running_pub = publisher(
        site_cfg(&b, "site-a"),
        &origin_store,
        &Arc::new(Notify::new()),
    );
    wait_for("the change handled", DEADLINE, || {
        seen.distinct() == vec![1]
    })
    .await;
    running_pub.stop().await;
    running_sub.stop().await;
}
