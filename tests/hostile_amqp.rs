//! Hostile inbound messages against a real RabbitMQ 3.10 node over mutual TLS: malformed,
//! oversized, of an unknown format version, and from an origin site this site does not accept
//! (`amqp.accept_origins`). Each must be rejected at the broker with a reason, logged with that
//! reason, counted (`audrey_federation_rejected_total{reason}`), kept as an inbound dead letter,
//! and never handed to the replay; a change from an accepted origin still is.
//!
//! The broker and PKI come from `tests/support`; messages are sent with fe2o3-amqp as any
//! producer holding a site's certificate could. Events are awaited by polling with deadlines.

mod support;

use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use audrey_federation::amqp::{codec, run_subscriber};
use audrey_federation::change::{Change, Event};
use audrey_federation::config::AmqpConfig;
use audrey_federation::store::Store;
use audrey_federation::wire::{self, WireValue};
use fe2o3_amqp::types::messaging::{Message, Outcome};
use fe2o3_amqp::types::primitives::Binary;
use fe2o3_amqp::{Sender, Session};
use metrics_exporter_prometheus::PrometheusHandle;
use support::broker::{self, Broker};
use support::logs::LogBuffer;
use tokio_util::sync::CancellationToken;

const DEADLINE: Duration = Duration::from_secs(30);

fn cfg(b: &Broker, site: &str, extra: &str) -> AmqpConfig {
    let certs = &broker::shared().certs;
    let text = format!(
        "url = {:?}\nca = {:?}\ncert = {:?}\nkey = {:?}\nsasl = \"external\"\n\
         reconnect_initial = 0.05\nreconnect_max = 0.5\n{extra}",
        b.amqps_url(),
        certs.ca.display().to_string(),
        certs.site_cert(site).display().to_string(),
        certs.site_key(site).display().to_string(),
    );
    toml::from_str(&text).unwrap_or_else(|e| panic!("test config: {e}\n{text}"))
}

fn recorder() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        metrics_exporter_prometheus::PrometheusBuilder::new()
            .install_recorder()
            .expect("install recorder")
    })
}

fn rejected(reason: &str) -> f64 {
    let prefix = format!("audrey_federation_rejected_total{{reason=\"{reason}\"}} ");
    recorder()
        .render()
        .lines()
        .find_map(|l| l.strip_prefix(&prefix)?.parse().ok())
        .unwrap_or(0.0)
}

async fn wait_for(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn change(origin: &str, seq: u64) -> Change {
    Change {
        origin_site: origin.to_owned(),
        incarnation: "a1a1a1a1a1a1a1a1".into(),
        version_ms: 0,
        origin_seq: seq,
        instance_seq: seq,
        api_version: 2,
        instance: Some("I1".into()),
        deployment: Some("D1".into()),
        client_addr: Some("10.0.0.5".into()),
        captured_at_ms: 1_700_000_000_000,
        event: Event::Params {
            audrey_data: "|ipaddress&MTAuMC4wLjU=|".into(),
            values: vec![("ipaddress".into(), "10.0.0.5".into())],
            return_codes: false,
        },
    }
}

fn encoded(c: &Change) -> wire::WireMessage {
    wire::encode(c, "audrey.federation.D1")
}

/// Sends each message to `amq.topic` over `cfg`'s identity; returns the broker's outcomes.
async fn try_send(
    cfg: &AmqpConfig,
    messages: Vec<Message<fe2o3_amqp::types::messaging::Data>>,
) -> Result<Vec<Outcome>, String> {
    let tag = format!("hostile-{:08x}", rand::random::<u32>());
    let mut conn = audrey_federation::amqp::connect(cfg, &tag)
        .await
        .map_err(|e| e.to_string())?;
    let mut session = Session::begin(&mut conn).await.map_err(|e| e.to_string())?;
    let mut sender = Sender::attach(&mut session, tag, "/exchange/amq.topic")
        .await
        .map_err(|e| e.to_string())?;
    let mut outcomes = Vec::new();
    for m in messages {
        outcomes.push(sender.send(m).await.map_err(|e| e.to_string())?);
    }
    support::teardown("detach sender", sender.detach()).await;
    support::teardown("end session", session.end()).await;
    support::teardown("close connection", conn.close()).await;
    Ok(outcomes)
}

async fn send(
    cfg: &AmqpConfig,
    messages: Vec<Message<fe2o3_amqp::types::messaging::Data>>,
) -> Vec<Outcome> {
    try_send(cfg, messages).await.expect("send")
}

#[tokio::test]
async fn hostile_inbound_messages_are_rejected_counted_dead_lettered_and_never_applied() {
    recorder();
    let (logs, _guard) = LogBuffer::capture();

    let b = broker::shared().write().await;
    let queue = Broker::queue_name("site-c");
    b.purge_queue(&queue);
    let trusted = format!("friend-{:06x}", rand::random::<u32>() & 0xff_ffff);

    let malformed = {
        let mut w = encoded(&change(&trusted, 1));
        w.body = b"{\"audrey_format\": 1, \"event\": ".to_vec();
        w
    };
    let oversized = {
        let mut w = encoded(&change(&trusted, 2));
        w.body = vec![b' '; wire::MAX_BODY_BYTES + 1];
        w
    };
    let future = {
        let mut w = encoded(&change(&trusted, 3));
        w.properties[0].1 = WireValue::U8(3);
        w
    };
    let rogue = encoded(&change("rogue-site", 1));
    let good = encoded(&change(&trusted, 4));
    let outcomes = send(
        &cfg(&b, "site-a", ""),
        [malformed, oversized, future, rogue, good]
            .iter()
            .map(codec::to_message)
            .collect(),
    )
    .await;
    assert!(
        outcomes.iter().all(|o| matches!(o, Outcome::Accepted(_))),
        "the broker took them all: {outcomes:?}"
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path(), "site-c").expect("store");
    let handled: Arc<Mutex<Vec<Change>>> = Arc::default();
    let record = handled.clone();
    let handler = move |c: Change| {
        let record = record.clone();
        async move {
            record
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(c);
            Ok(())
        }
    };
    let before: Vec<f64> = [
        "bad_body",
        "too_large",
        "unsupported_version",
        "origin_not_accepted",
    ]
    .iter()
    .map(|r| rejected(r))
    .collect();
    let stop = CancellationToken::new();
    // These messages are unsigned on purpose: this test is about the decoder's checks behind
    // the signature (tests/hostile_federation.rs refuses unsigned ones).
    let extra = format!("accept_origins = [{trusted:?}, \"site-a\"]\naccept_unsigned = true");
    let task = tokio::spawn(run_subscriber(
        cfg(&b, "site-c", &extra),
        "site-c".into(),
        store.clone(),
        handler,
        stop.clone(),
    ));
    wait_for("the accepted change to be handled", || {
        !handled
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .is_empty()
    })
    .await;
    wait_for("four dead letters", || {
        store.inbound_dead_letter_count() == 4
    })
    .await;
    let deadline = Instant::now() + DEADLINE;
    while b.queue_messages(&queue) != 0 {
        assert!(Instant::now() < deadline, "{queue} still holds messages");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(15), task)
        .await
        .expect("subscriber stops")
        .expect("no panic")
        .expect("subscriber ran");

    let handled = handled
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    assert_eq!(handled.len(), 1, "{handled:?}");
    assert_eq!(handled[0].origin_site, trusted);
    assert_eq!(handled[0].origin_seq, 4);

    let letters = store.dead_letters_inbound(10).expect("dead letters");
    let reasons: Vec<&str> = letters.iter().map(|l| l.reason.as_str()).collect();
    for expected in [
        "not an audrey_format 1 or 2 JSON document",
        "over the limit of 16777216 bytes",
        "audrey_format 3 is not supported",
        "origin site \"rogue-site\" is not in amqp.accept_origins",
    ] {
        assert!(
            reasons.iter().any(|r| r.contains(expected)),
            "no dead letter says {expected:?}: {reasons:#?}"
        );
    }
    for (i, reason) in [
        "bad_body",
        "too_large",
        "unsupported_version",
        "origin_not_accepted",
    ]
    .iter()
    .enumerate()
    {
        assert_eq!(
            rejected(reason) - before[i],
            1.0,
            "rejected_total{{reason={reason}}}"
        );
    }
    let text = logs.text();
    for label in [
        "bad_body",
        "too_large",
        "unsupported_version",
        "origin_not_accepted",
    ] {
        assert!(
            text.lines()
                .any(|l| l.contains("inbound message rejected and dead-lettered")
                    && l.contains(&format!("label=\"{label}\""))
                    || l.contains(&format!("label={label}"))),
            "no log line for {label}:\n{text}"
        );
    }
}

/// RabbitMQ 3.10 validates the AMQP 1.0 `user-id` property against the sender's authenticated
/// user (the certificate's CN here): a matching one is accepted, a forged one is never accepted
/// nor routed (the broker ends the link; fe2o3 then gets no disposition). docs/security.md notes
/// how this could bind `origin_site` to the sender later; today `amqp.accept_origins` is the check.
#[tokio::test]
async fn rabbitmq_refuses_a_user_id_that_is_not_the_senders_identity() {
    let b = broker::shared().write().await;
    let queue = Broker::queue_name("site-b");
    b.purge_queue(&queue);
    let with_user = |user: &str| {
        let mut m = codec::to_message(&encoded(&change("site-a", 1)));
        if let Some(p) = m.properties.as_mut() {
            p.user_id = Some(Binary::from(user.as_bytes().to_vec()));
        }
        m
    };
    let outcomes = send(&cfg(&b, "site-a", ""), vec![with_user("site-a")]).await;
    assert!(
        matches!(outcomes.first(), Some(Outcome::Accepted(_))),
        "{outcomes:?}"
    );
    let routed = b.queue_messages(&queue);
    assert_eq!(routed, 1);
    let forged = tokio::time::timeout(
        Duration::from_secs(5),
        try_send(&cfg(&b, "site-a", ""), vec![with_user("site-b")]),
    )
    .await;
    assert!(
        !matches!(&forged, Ok(Ok(o)) if matches!(o.first(), Some(Outcome::Accepted(_)))),
        "a forged user-id was accepted: {forged:?}"
    );
    assert_eq!(
        b.queue_messages(&queue),
        routed,
        "a forged user-id was routed"
    );
    for site in broker::SHARED_SITES {
        b.purge_queue(&Broker::queue_name(site));
    }
}
