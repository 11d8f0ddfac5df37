//! Sites that change under the federation: a rolling upgrade (one site still publishing
//! `audrey_format` 1, `amqp.wire_format = 1`, beside one publishing 2) and an origin whose
//! state directory was lost (a new store incarnation: sequences start at 1 again). Real
//! RabbitMQ, real sidecar processes, the emulator as each site's server; every assertion
//! reads what the servers hold.

mod support;

use support::broker::{Broker, BrokerOptions};
use support::scenario;
use support::site::{mtls, Site};

static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A RabbitMQ node (mutual TLS) with the queues of site-a and site-b, and their certificates.
fn two_site_broker() -> (Broker, support::certs::CertPaths) {
    let names = ["site-a", "site-b"];
    let certs = support::certs::generate(&names);
    let broker = Broker::start(BrokerOptions {
        sites: &names,
        certs: &certs,
    });
    (broker, certs)
}

#[tokio::test]
async fn a_format_1_site_and_a_format_2_site_federate_both_ways() {
    let _turn = TURN.lock().await;
    let (broker, certs) = two_site_broker();
    let dir = tempfile::tempdir().unwrap();
    let url = broker.amqps_url();
    // Site A has not switched its writer yet: it publishes format 1.
    let old = format!("{}wire_format = 1\n", mtls(&url, &certs, "site-a"));
    let a = Site::launch(
        "site-a",
        &old,
        &dir.path().join("a"),
        Site::emulator(),
        None,
        "",
    );
    let b = Site::start("site-b", &url, &certs, &dir.path().join("b"));
    let (i1, i2) = (scenario::i1(), scenario::i2());
    a.register(&i1).await;
    b.register(&i2).await;
    a.report(&i1, "10.0.0.5").await;
    b.report(&i2, "10.0.0.6").await;
    b.sees(&i2, "10.0.0.5").await;
    a.sees(&i1, "10.0.0.6").await;
    // A later format 1 value still wins over the earlier one at B (versions from capture
    // time and origin position), and B's format 2 values keep reaching A.
    a.report(&i1, "10.0.0.7").await;
    b.report(&i2, "10.0.0.8").await;
    b.sees(&i2, "10.0.0.7").await;
    a.sees(&i1, "10.0.0.8").await;
}

#[tokio::test]
async fn an_origin_that_lost_its_state_directory_still_reaches_the_others() {
    let _turn = TURN.lock().await;
    let (broker, certs) = two_site_broker();
    let dir = tempfile::tempdir().unwrap();
    let url = broker.amqps_url();
    // A reads its server's storage, as the docs advise, so that it can learn again which
    // deployment each instance is in when its own state is gone.
    let emulator = Site::emulator();
    let storage = format!(
        "upstream_storage_dir = \"{}\"\n",
        emulator.storage_dir().display()
    );
    let mut a = Site::launch(
        "site-a",
        &mtls(&url, &certs, "site-a"),
        &dir.path().join("a"),
        emulator,
        None,
        &storage,
    );
    let b = Site::start("site-b", &url, &certs, &dir.path().join("b"));
    let (i1, i2) = (scenario::i1(), scenario::i2());
    a.register(&i1).await;
    b.register(&i2).await;
    for k in 1..=5 {
        a.report(&i1, &format!("10.0.0.{k}")).await;
    }
    b.sees(&i2, "10.0.0.5").await;

    // A's volume is lost: the sidecar comes back on an empty state directory, in front of
    // the same server (which kept its data). Its sequences start at 1 again.
    a.sidecar.kill();
    std::fs::remove_dir_all(a.dir.join("state")).unwrap();
    a.sidecar = support::sidecar::Sidecar::start_with(&a.dir, a.sidecar.config_path());
    a.report(&i1, "10.9.9.9").await;
    b.sees(&i2, "10.9.9.9").await;
    let text = b.metrics().await;
    assert!(
        support::site::sum_metric(
            &text,
            "audrey_federation_origin_incarnations_total",
            &["origin_site=\"site-a\""]
        ) >= 1.0,
        "the new incarnation is counted:\n{text}"
    );
}
