//! The AMQP connection layer against a real RabbitMQ 3.10 node: mutual TLS with SASL EXTERNAL,
//! PLAIN over plain TCP, each refusal's distinct error, and durability across a broker restart.
//!
//! Owns only assertions; the broker and PKI come from `tests/support`. Tests that consume a
//! queue each use their own site's queue and match their own nonce, so they can run in parallel
//! on the one shared broker; the restart test takes the broker's write lock.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use audrey_federation::amqp::{connect, AmqpError};
use audrey_federation::config::AmqpConfig;
use fe2o3_amqp::types::messaging::{
    ApplicationProperties, Body, Data, Header, Message, Outcome, Properties,
};
use fe2o3_amqp::types::primitives::{Binary, SimpleValue, Value};
use fe2o3_amqp::{Receiver, Sender, Session};
use support::broker::{self, Broker, PLAIN_PASSWORD, PLAIN_USER};
use support::certs::{self, CertPaths};
use support::teardown;

const RECEIVE_DEADLINE: Duration = Duration::from_secs(10);
/// Bound on every other AMQP step of these helpers: a step the broker never answers fails
/// the test naming that step, instead of hanging the test binary.
const STEP: Duration = Duration::from_secs(20);

/// `fut`, or a panic naming `what` once [`STEP`] has passed.
async fn step<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(STEP, fut)
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer within {STEP:?}"))
}

/// [`step`] for a step that must succeed: its value, or a panic naming `what`.
async fn must<T, E: std::fmt::Debug>(
    what: &str,
    fut: impl std::future::Future<Output = Result<T, E>>,
) -> T {
    step(what, fut).await.expect(what)
}

fn amqp_config(toml_body: &str) -> AmqpConfig {
    toml::from_str(toml_body).unwrap_or_else(|e| panic!("test config: {e}\n{toml_body}"))
}

fn external_config(url: &str, ca: &Path, cert: Option<(&Path, &Path)>) -> AmqpConfig {
    let mut text = format!(
        "url = {url:?}\nca = {:?}\nsasl = \"external\"\n",
        ca.display().to_string()
    );
    if let Some((cert, key)) = cert {
        text.push_str(&format!(
            "cert = {:?}\nkey = {:?}\n",
            cert.display().to_string(),
            key.display().to_string()
        ));
    }
    amqp_config(&text)
}

fn site_config(broker: &Broker, pki: &CertPaths, site: &str) -> AmqpConfig {
    external_config(
        &broker.amqps_url(),
        &pki.ca,
        Some((&pki.site_cert(site), &pki.site_key(site))),
    )
}

fn nonce(tag: &str) -> String {
    format!(
        "{tag}-{}-{:016x}",
        std::process::id(),
        rand::random::<u64>()
    )
}

/// A durable message for deployment `dep1`, routed by its subject, tagged with `nonce`.
fn federation_message(nonce: &str) -> Message<Data> {
    Message::builder()
        .header(Header::builder().durable(true).build())
        .properties(
            Properties::builder()
                .subject("audrey.federation.dep1")
                .message_id(nonce.to_string())
                .build(),
        )
        .application_properties(
            ApplicationProperties::builder()
                .insert("deployment", "dep1")
                .insert("nonce", nonce.to_string())
                .build(),
        )
        .data(Binary::from(
            format!("{{\"nonce\":\"{nonce}\"}}").into_bytes(),
        ))
        .build()
}

async fn publish(cfg: &AmqpConfig, container: &str, nonce: &str) {
    let mut conn = must("connect to publish", connect(cfg, container)).await;
    let mut session = must("begin session", Session::begin(&mut conn)).await;
    let attach = Sender::attach(
        &mut session,
        format!("{container}-sender"),
        "/exchange/amq.topic",
    );
    let mut sender = must("attach sender to /exchange/amq.topic", attach).await;
    let outcome = must("send", sender.send(federation_message(nonce))).await;
    assert!(
        matches!(outcome, Outcome::Accepted(_)),
        "broker did not accept: {outcome:?}"
    );
    teardown("detach sender", sender.detach()).await;
    teardown("end publishing session", session.end()).await;
    teardown("close publishing connection", conn.close()).await;
}

fn app_prop<'a>(m: &'a Message<Body<Value>>, key: &str) -> Option<&'a str> {
    match m.application_properties.as_ref()?.0.get(key)? {
        SimpleValue::String(s) => Some(s.as_str()),
        _ => None,
    }
}

/// Receives from `queue` (accepting everything) until the message tagged `nonce` arrives.
async fn receive_nonce(
    cfg: &AmqpConfig,
    container: &str,
    queue: &str,
    nonce: &str,
) -> Message<Body<Value>> {
    let mut conn = must("connect to receive", connect(cfg, container)).await;
    let mut session = must("begin session", Session::begin(&mut conn)).await;
    let address = format!("/amq/queue/{queue}");
    let attach = Receiver::attach(
        &mut session,
        format!("{container}-receiver"),
        address.as_str(),
    );
    let mut receiver = must("attach receiver", attach).await;
    let deadline = Instant::now() + RECEIVE_DEADLINE;
    let found = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let delivery = tokio::time::timeout(left, receiver.recv::<Body<Value>>())
            .await
            .unwrap_or_else(|_| {
                panic!("message {nonce} not received from {address} within {RECEIVE_DEADLINE:?}")
            })
            .expect("recv");
        must("accept", receiver.accept(&delivery)).await;
        if app_prop(delivery.message(), "nonce") == Some(nonce) {
            break delivery.into_message();
        }
    };
    teardown("detach receiver", receiver.detach()).await;
    teardown("end receiving session", session.end()).await;
    teardown("close receiving connection", conn.close()).await;
    found
}

#[tokio::test]
async fn external_over_mtls_delivers_a_durable_message_to_the_site_queue() {
    let shared = broker::shared();
    let broker = shared.read().await;
    let cfg = site_config(&broker, &shared.certs, "site-a");
    let n = nonce("mtls");
    publish(&cfg, "site-a-pub", &n).await;
    let m = receive_nonce(&cfg, "site-a-sub", &Broker::queue_name("site-a"), &n).await;
    assert_eq!(app_prop(&m, "deployment"), Some("dep1"));
    let props = m.properties.as_ref().expect("properties survive");
    assert_eq!(props.subject.as_deref(), Some("audrey.federation.dep1"));
    assert!(
        m.header.as_ref().is_some_and(|h| h.durable),
        "durable header survives: {:?}",
        m.header
    );
    let body: Vec<u8> = m
        .body
        .try_as_data()
        .expect("data body")
        .flat_map(|b| b.to_vec())
        .collect();
    assert_eq!(body, format!("{{\"nonce\":\"{n}\"}}").into_bytes());
}

#[tokio::test]
async fn plain_over_tcp_works_when_insecure_is_allowed() {
    let shared = broker::shared();
    let broker = shared.read().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let password_file = dir.path().join("password");
    std::fs::write(&password_file, format!("{PLAIN_PASSWORD}\n")).expect("write password file");
    let cfg = amqp_config(&format!(
        "url = {:?}\nsasl = \"plain\"\nusername = {PLAIN_USER:?}\npassword_file = {:?}\nallow_insecure = true\n",
        broker.amqp_url(),
        password_file.display().to_string()
    ));
    let n = nonce("plain");
    publish(&cfg, "plain-pub", &n).await;
    let m = receive_nonce(&cfg, "plain-sub", &Broker::queue_name("site-c"), &n).await;
    assert_eq!(app_prop(&m, "deployment"), Some("dep1"));

    std::fs::write(&password_file, "wrong\n").expect("write password file");
    let err = connect(&cfg, "plain-wrong")
        .await
        .expect_err("wrong password must fail");
    assert!(
        matches!(
            err,
            AmqpError::SaslAuthFailed {
                mechanism: "PLAIN",
                ..
            }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn no_client_certificate_is_refused_as_certificate_required() {
    let shared = broker::shared();
    let broker = shared.read().await;
    let cfg = external_config(&broker.amqps_url(), &shared.certs.ca, None);
    let err = connect(&cfg, "no-cert").await.expect_err("must be refused");
    assert!(
        matches!(err, AmqpError::ClientCertificateRequired { .. }),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("requires a client certificate"),
        "{err}"
    );
}

#[tokio::test]
async fn certificate_from_another_ca_is_refused_as_unknown_ca() {
    let shared = broker::shared();
    let broker = shared.read().await;
    let other = certs::generate(&["site-a"]);
    let cfg = external_config(
        &broker.amqps_url(),
        &shared.certs.ca,
        Some((&other.site_cert("site-a"), &other.site_key("site-a"))),
    );
    let err = connect(&cfg, "other-ca")
        .await
        .expect_err("must be refused");
    assert!(
        matches!(&err, AmqpError::ClientCertificateRejected { alert } if alert == "UnknownCA"),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .contains("does not trust our client certificate"),
        "{err}"
    );

    // The other way round: we do not trust the broker's certificate.
    let cfg = external_config(
        &broker.amqps_url(),
        &other.ca,
        Some((&other.site_cert("site-a"), &other.site_key("site-a"))),
    );
    let err = connect(&cfg, "other-ca-server")
        .await
        .expect_err("must be refused");
    assert!(
        matches!(err, AmqpError::ServerCertificateRejected { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("UnknownIssuer"), "{err}");
}

#[tokio::test]
async fn valid_certificate_without_broker_user_fails_sasl() {
    let shared = broker::shared();
    let broker = shared.read().await;
    let pki = certs::generate_into(&shared.certs.dir, &["stranger"]);
    let err = connect(&site_config(&broker, &pki, "stranger"), "stranger")
        .await
        .expect_err("must be refused");
    assert!(
        matches!(
            err,
            AmqpError::SaslAuthFailed {
                mechanism: "EXTERNAL",
                code: "auth",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .contains("not a known, permitted broker user"),
        "{err}"
    );
}

#[tokio::test]
async fn nothing_listening_is_connection_refused() {
    let pki = certs::generate(&["site-a"]);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let url = format!("amqps://127.0.0.1:{port}");
    let cfg = external_config(
        &url,
        &pki.ca,
        Some((&pki.site_cert("site-a"), &pki.site_key("site-a"))),
    );
    let err = connect(&cfg, "refused").await.expect_err("nothing listens");
    assert!(
        matches!(err, AmqpError::ConnectionRefused { .. }),
        "{err:?}"
    );
    assert!(err.is_transient());
    assert!(
        err.to_string().contains(&format!("127.0.0.1:{port}")),
        "{err}"
    );
}

#[tokio::test]
async fn bad_pem_files_are_named_before_any_network_traffic() {
    let pki = certs::generate(&["site-a"]);
    let junk = pki.dir.join("junk.pem");
    std::fs::write(&junk, "not a pem file\n").expect("write junk");
    let missing = pki.dir.join("missing.pem");
    // Port 9 (discard) on loopback: never reached, because the files are checked first.
    let url = "amqps://127.0.0.1:9";
    let cases = [
        (
            external_config(
                url,
                &junk,
                Some((&pki.site_cert("site-a"), &pki.site_key("site-a"))),
            ),
            &junk,
        ),
        (
            external_config(
                url,
                &missing,
                Some((&pki.site_cert("site-a"), &pki.site_key("site-a"))),
            ),
            &missing,
        ),
        (
            external_config(url, &pki.ca, Some((&junk, &pki.site_key("site-a")))),
            &junk,
        ),
        (
            external_config(url, &pki.ca, Some((&pki.site_cert("site-a"), &junk))),
            &junk,
        ),
        (
            external_config(url, &pki.ca, Some((&pki.site_cert("site-a"), &pki.ca))),
            &pki.ca,
        ),
    ];
    for (cfg, named) in cases {
        let err = connect(&cfg, "pem").await.expect_err("bad PEM must fail");
        assert!(matches!(err, AmqpError::BadPem { .. }), "{err:?}");
        assert!(
            err.to_string().contains(&named.display().to_string()),
            "{err}"
        );
        assert!(!err.is_transient());
    }
    // A certificate with someone else's key is caught before connecting too.
    let other = certs::generate(&["site-a"]);
    let cfg = external_config(
        url,
        &pki.ca,
        Some((&pki.site_cert("site-a"), &other.site_key("site-a"))),
    );
    let err = connect(&cfg, "pem")
        .await
        .expect_err("mismatched key must fail");
    assert!(matches!(err, AmqpError::BadIdentity { .. }), "{err:?}");
}

#[tokio::test]
async fn durable_message_survives_a_broker_restart() {
    let shared = broker::shared();
    let mut broker = shared.write().await;
    let queue = Broker::queue_name("site-b");
    let cfg = site_config(&broker, &shared.certs, "site-b");
    let n = nonce("restart");
    publish(&cfg, "site-b-pub", &n).await;

    broker.stop();
    let refused = connect(&cfg, "while-down")
        .await
        .expect_err("broker is down");
    assert!(
        matches!(refused, AmqpError::ConnectionRefused { .. }),
        "{refused:?}"
    );
    broker.start_again();

    assert!(
        broker.queue_messages(&queue) >= 1,
        "queue {queue} lost its messages across the restart"
    );
    let m = receive_nonce(&cfg, "site-b-sub", &queue, &n).await;
    assert_eq!(app_prop(&m, "deployment"), Some("dep1"));
}
