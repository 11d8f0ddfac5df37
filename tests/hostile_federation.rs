//! No one can forge another site's changes (docs/security.md, "Authenticity"): a real RabbitMQ
//! node, three real sidecars (site-a, site-b, site-c) in front of emulated Config Servers,
//! mutual TLS, every site signing what it publishes and sealing registration secrets.
//!
//! Hostile messages are sent with fe2o3-amqp as a producer holding a site's broker identity
//! could: site-b's key claiming site-a, a byte flipped in a signed message, an unsigned one,
//! one signed under another CA, one signed with an expired certificate, a heartbeat from the
//! far future. Each is refused at site-c with its own `reason` counter and never reaches its
//! server; the lag gauge keeps moving. A second test runs the two-site scenario and greps the
//! broker's data directory and every log for the instance secrets.

mod support;

use std::time::{Duration, Instant};

use audrey_federation::amqp::codec;
use audrey_federation::authn::Signer;
use audrey_federation::change::{now_ms, Change, Event};
use audrey_federation::config::AmqpConfig;
use audrey_federation::wire::{self, WireMessage};
use fe2o3_amqp::types::messaging::{Data, Message, Outcome};
use fe2o3_amqp::{Sender, Session};
use support::broker::{Broker, BrokerOptions};
use support::certs::{self, CertPaths};
use support::client::audrey_data;
use support::scenario;
use support::site::{self, Site};

const SITES: [&str; 3] = ["site-a", "site-b", "site-c"];

/// `[amqp]` of a test sender using `site`'s broker identity from `pki`.
fn sender_cfg(broker: &Broker, pki: &CertPaths, site: &str) -> AmqpConfig {
    let text = format!(
        "url = {:?}\nca = {:?}\ncert = {:?}\nkey = {:?}\nsasl = \"external\"\n",
        broker.amqps_url(),
        pki.ca.display().to_string(),
        pki.site_cert(site).display().to_string(),
        pki.site_key(site).display().to_string(),
    );
    toml::from_str(&text).expect("sender config")
}

/// Sends each message to `amq.topic` as `cfg`'s identity; the broker must take them all.
async fn send(cfg: &AmqpConfig, messages: Vec<Message<Data>>) {
    let tag = format!("hostile-fed-{:08x}", rand::random::<u32>());
    let mut conn = audrey_federation::amqp::connect(cfg, &tag)
        .await
        .expect("connect");
    let mut session = Session::begin(&mut conn).await.expect("session");
    let mut sender = Sender::attach(&mut session, tag, "/exchange/amq.topic")
        .await
        .expect("attach");
    for m in messages {
        let outcome = sender.send(m).await.expect("send");
        assert!(matches!(outcome, Outcome::Accepted(_)), "{outcome:?}");
    }
    support::teardown("detach sender", sender.detach()).await;
    support::teardown("end session", session.end()).await;
    support::teardown("close connection", conn.close()).await;
}

/// A params change of I1 claiming `origin`, setting its address to `ip`.
fn params(origin: &str, seq: u64, ip: &str) -> WireMessage {
    let c = Change {
        origin_site: origin.to_owned(),
        incarnation: "a1a1a1a1a1a1a1a1".into(),
        version_ms: 0,
        origin_seq: seq,
        instance_seq: seq,
        api_version: 2,
        instance: Some("I1".into()),
        deployment: Some("D1".into()),
        client_addr: Some("10.9.9.9".into()),
        captured_at_ms: now_ms(),
        event: Event::Params {
            audrey_data: audrey_data(&[("ipaddress", ip)]),
            values: vec![("ipaddress".into(), ip.into())],
            return_codes: false,
        },
    };
    wire::encode(&c, "audrey.federation.D1")
}

fn signer(cert: &std::path::Path, key: &std::path::Path) -> Signer {
    Signer::from_files(cert, key).expect("signer")
}

fn launch(name: &str, broker: &Broker, pki: &CertPaths, dir: &std::path::Path) -> Site {
    let amqp = format!(
        "{}heartbeat_interval = 1\n",
        site::mtls(&broker.amqps_url(), pki, name)
    );
    Site::launch(name, &amqp, &dir.join(name), Site::emulator(), None, "")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_tampered_unsigned_foreign_expired_and_future_messages_are_refused() {
    let pki = certs::generate(&SITES);
    let broker = Broker::start(BrokerOptions {
        sites: &SITES,
        certs: &pki,
    });
    let dir = tempfile::tempdir().unwrap();
    let a = launch("site-a", &broker, &pki, dir.path());
    let _b = launch("site-b", &broker, &pki, dir.path());
    let c = launch("site-c", &broker, &pki, dir.path());

    // A's real instance, registered and reported at A, applied at C.
    let i1 = scenario::i1();
    a.register(&i1).await;
    a.report(&i1, "10.0.0.5").await;
    c.metric_reaches("audrey_federation_applied_total", &[], 2.0)
        .await;
    let at_c = || async {
        c.server()
            .get_params(2, "I1", &scenario::own(&i1))
            .await
            .expect("GET /params at C")
            .text()
    };
    let before = at_c().await;

    // The hostile messages, all of them for A's instance.
    let b_signer = signer(&pki.site_cert("site-b"), &pki.site_key("site-b"));
    let a_signer = signer(&pki.site_cert("site-a"), &pki.site_key("site-a"));
    let forged = b_signer.sign(params("site-a", 1001, "6.6.6.1"));
    let mut tampered = a_signer.sign(params("site-a", 1002, "6.6.6.2"));
    let at = tampered.body.len() / 2;
    tampered.body[at] ^= 0x01;
    let unsigned = params("site-a", 1003, "6.6.6.3");
    let other_pki = certs::generate(&["site-a"]);
    let foreign = signer(
        &other_pki.site_cert("site-a"),
        &other_pki.site_key("site-a"),
    )
    .sign(params("site-a", 1004, "6.6.6.4"));
    let work = tempfile::tempdir().unwrap();
    let expired_cert = certs::issue_with_validity(
        &pki,
        work.path(),
        "expired-a",
        &pki.site_key("site-a"),
        "/CN=site-a",
        Some("DNS:site-a"),
        ("20200101000000Z", "20210101000000Z"),
    );
    let expired =
        signer(&expired_cert, &pki.site_key("site-a")).sign(params("site-a", 1005, "6.6.6.5"));
    send(
        &sender_cfg(&broker, &pki, "site-b"),
        [forged, tampered, unsigned, foreign, expired]
            .iter()
            .map(codec::to_message)
            .collect(),
    )
    .await;
    for reason in [
        "wrong_identity",
        "bad_signature",
        "unsigned",
        "unknown_ca",
        "expired_certificate",
    ] {
        let label = format!("reason=\"{reason}\"");
        c.metric_reaches("audrey_federation_rejected_total", &[&label], 1.0)
            .await;
    }
    let log = c.sidecar.log();
    for says in [
        "not origin_site",
        "does not match the message",
        "is unsigned",
        "not issued by the federation CA",
        "expired",
    ] {
        assert!(
            log.contains(says),
            "site-c's log never says {says:?}:\n{log}"
        );
    }

    // A heartbeat of A from a day ahead: refused, and the lag gauge still follows A's real ones.
    let hb = wire::Heartbeat {
        origin_site: "site-a".into(),
        sent_at_ms: now_ms() + 86_400_000,
    };
    let future = a_signer.sign(wire::encode_heartbeat(
        &hb,
        "audrey.federation._heartbeat",
        60_000,
    ));
    send(
        &sender_cfg(&broker, &pki, "site-a"),
        vec![codec::to_message(&future)],
    )
    .await;
    c.metric_reaches(
        "audrey_federation_rejected_total",
        &["reason=\"future_time\""],
        1.0,
    )
    .await;
    let last = "audrey_federation_last_applied_timestamp_seconds";
    let first = c.metric(last, &["origin_site=\"site-a\""]).await;
    let now_s = now_ms() as f64 / 1000.0;
    assert!(
        first < now_s + 60.0,
        "the future heartbeat pinned {last}: {first} (now {now_s})"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v = c.metric(last, &["origin_site=\"site-a\""]).await;
        if v > first {
            assert!(v < now_ms() as f64 / 1000.0 + 60.0, "{last} = {v}");
            break;
        }
        assert!(Instant::now() < deadline, "{last} stopped at {first}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Nothing of it reached C's server, and nothing was kept for it but bounded dead letters.
    assert_eq!(at_c().await, before, "C's server changed");
    assert!(!before.contains("6.6.6."), "{before}");
    assert_eq!(
        c.metric("audrey_federation_applied_total", &[]).await,
        2.0,
        "only A's two real changes were applied at C"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_instance_secret_on_the_brokers_disk_nor_in_any_log() {
    // site-c's queue is never consumed: every message stays on the broker's disk.
    let pki = certs::generate(&SITES);
    let mut broker = Broker::start(BrokerOptions {
        sites: &SITES,
        certs: &pki,
    });
    let dir = tempfile::tempdir().unwrap();
    let mut a = launch("site-a", &broker, &pki, dir.path());
    let mut b = launch("site-b", &broker, &pki, dir.path());
    let (i1, i2) = (scenario::i1(), scenario::i2());
    a.register(&i1).await;
    b.register(&i2).await;
    a.report(&i1, "10.0.0.5").await;
    b.report(&i2, "10.0.0.6").await;
    b.sees(&i2, "10.0.0.5").await;
    a.sees(&i1, "10.0.0.6").await;
    let queue = Broker::queue_name("site-c");
    let deadline = Instant::now() + Duration::from_secs(30);
    while broker.queue_messages(&queue) < 4 {
        assert!(
            Instant::now() < deadline,
            "{queue} never held the four changes"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let logs = [a.sidecar.log(), b.sidecar.log()];
    a.stop_and_read_origins(&[]).await;
    b.stop_and_read_origins(&[]).await;
    broker.stop();

    let secrets = [i1.secret.as_str(), i2.secret.as_str()];
    let mut hits = Vec::new();
    let mut files = 0;
    let mut stack = vec![broker.root().to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("read broker dir").flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if let Ok(bytes) = std::fs::read(&path) {
                files += 1;
                for s in secrets {
                    if bytes.windows(s.len()).any(|w| w == s.as_bytes()) {
                        hits.push(format!("{s} in {}", path.display()));
                    }
                }
            }
        }
    }
    assert!(files > 10, "only {files} files under the broker's folder");
    for (site, log) in ["site-a", "site-b"].iter().zip(&logs) {
        for s in secrets {
            if log.contains(s) {
                hits.push(format!("{s} in {site}'s log"));
            }
        }
    }
    assert!(hits.is_empty(), "plaintext secrets: {hits:#?}");
}

/// The broker definitions of docs/security.md ("Broker topic permissions"): each site may
/// write to `amq.topic` only under routing keys that name it.
fn topic_permissions(sites: &[&str]) -> serde_json::Value {
    let perms: Vec<serde_json::Value> = sites
        .iter()
        .map(|s| {
            let escaped = s.replace('.', "\\.");
            serde_json::json!({"user": s, "vhost": "/", "exchange": "amq.topic",
                "write": format!("^audrey\\.federation\\.{escaped}\\."), "read": ".*"})
        })
        .collect();
    serde_json::json!({ "topic_permissions": perms })
}

/// Sends one message with `subject` as `cfg`'s identity: the broker's answer, or the error
/// that ended the link.
async fn try_send_subject(cfg: &AmqpConfig, subject: &str) -> Result<Outcome, String> {
    let tag = format!("topic-perm-{:08x}", rand::random::<u32>());
    let mut conn = audrey_federation::amqp::connect(cfg, &tag)
        .await
        .map_err(|e| e.to_string())?;
    let mut session = Session::begin(&mut conn).await.map_err(|e| e.to_string())?;
    let result = async {
        let mut sender = Sender::attach(&mut session, tag, "/exchange/amq.topic")
            .await
            .map_err(|e| e.to_string())?;
        let mut w = params("site-b", 1, "10.1.1.1");
        w.subject = subject.to_owned();
        let outcome =
            tokio::time::timeout(Duration::from_secs(10), sender.send(codec::to_message(&w)))
                .await
                .map_err(|_| "no answer from the broker".to_string())?
                .map_err(|e| e.to_string());
        support::teardown("detach sender", sender.detach()).await;
        outcome
    }
    .await;
    support::teardown("end session", session.end()).await;
    support::teardown("close connection", conn.close()).await;
    result
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_refuses_a_site_publishing_under_another_sites_routing_key() {
    let sites = ["site-a", "site-b"];
    let pki = certs::generate(&sites);
    let extras = support::broker_layout::LayoutExtras {
        definitions: Some(topic_permissions(&sites)),
        ..Default::default()
    };
    let broker = Broker::start_with(
        BrokerOptions {
            sites: &sites,
            certs: &pki,
        },
        support::broker_layout::pick_ports(),
        &extras,
    );
    let b = sender_cfg(&broker, &pki, "site-b");
    let own = try_send_subject(&b, "audrey.federation.site-b.D1").await;
    assert!(
        matches!(own, Ok(Outcome::Accepted(_))),
        "own routing key: {own:?}"
    );
    let other = try_send_subject(&b, "audrey.federation.site-a.D1").await;
    assert!(
        !matches!(other, Ok(Outcome::Accepted(_))),
        "site-b published under site-a's routing key: {other:?}"
    );
    let log = broker.log_tail();
    assert!(
        log.contains("access_refused")
            || log.contains("ACCESS_REFUSED")
            || log.contains("access to topic"),
        "{log}"
    );

    // The sidecars federate under these permissions with `{site}` in their routing keys.
    let dir = tempfile::tempdir().unwrap();
    let launch_with_site_keys = |name: &str| {
        let amqp = format!(
            "{}routing_key_template = \"audrey.federation.{{site}}.{{deployment}}\"\n",
            site::mtls(&broker.amqps_url(), &pki, name)
        );
        Site::launch(
            name,
            &amqp,
            &dir.path().join(name),
            Site::emulator(),
            None,
            "",
        )
    };
    let a = launch_with_site_keys("site-a");
    let bs = launch_with_site_keys("site-b");
    let i1 = scenario::i1();
    a.register(&i1).await;
    a.report(&i1, "10.0.0.5").await;
    bs.metric_reaches("audrey_federation_applied_total", &[], 2.0)
        .await;
    assert_eq!(
        a.metric("audrey_federation_publish_rejected_total", &[])
            .await,
        0.0
    );
}
