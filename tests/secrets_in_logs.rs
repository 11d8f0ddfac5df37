//! Secret hygiene: a full two-site federation (own broker, mutual TLS) with both sidecars
//! logging at `debug` for every crate, then ALL their output (stdout and the log file) is
//! searched for the Conductor secret, each instance secret, any OAuth signature and any PEM
//! private key. A hit names the secret and shows the line.

mod support;

use support::broker::{Broker, BrokerOptions};
use support::client::{InstanceXml, ServiceXml};
use support::site::{Site, CONDUCTOR};

const I1_SECRET: &str = "i1-Hush-5b8e0c2f";
const I2_SECRET: &str = "i2-Hush-77d1a94e";

fn instance(uuid: &str, secret: &str, peer: &str) -> InstanceXml {
    InstanceXml::new(uuid, "D1", secret)
        .provides("ipaddress")
        .service(ServiceXml::new("svc").reference("peer_ip", peer, "ipaddress"))
}

#[tokio::test]
async fn no_secret_in_any_sidecar_output_at_debug() {
    // Every crate at debug (fe2o3-amqp, hyper, rustls included), not only ours.
    // (`SECRETS_TEST_LEVEL=trace` tries a louder level.)
    let level = std::env::var("SECRETS_TEST_LEVEL").unwrap_or_else(|_| "debug".into());
    std::env::set_var("AUDREY_FEDERATION_TEST_LOG", &level);
    let sites = ["site-a", "site-b"];
    let certs = support::certs::generate(&sites);
    let broker = Broker::start(BrokerOptions {
        sites: &sites,
        certs: &certs,
    });
    let dir = tempfile::tempdir().unwrap();
    let mut a = Site::start("site-a", &broker.amqps_url(), &certs, &dir.path().join("a"));
    let mut b = Site::start("site-b", &broker.amqps_url(), &certs, &dir.path().join("b"));

    let i1 = instance("I1", I1_SECRET, "I2");
    let i2 = instance("I2", I2_SECRET, "I1");
    a.register(&i1).await;
    b.register(&i2).await;
    a.report(&i1, "10.0.0.5").await;
    b.report(&i2, "10.1.0.7").await;
    // Replayed both ways: registrations (with their secrets) and signed params PUTs.
    b.sees(&i2, "10.0.0.5").await;
    a.sees(&i1, "10.1.0.7").await;

    let mut output = String::new();
    for site in [&mut a, &mut b] {
        assert!(site.sidecar.terminate().success());
        output.push_str(&site.sidecar.stdout());
        output.push_str(&site.sidecar.log());
    }
    assert!(
        output.contains("DEBUG") && output.contains("audrey_federation::replay"),
        "expected debug output, got:\n{output}"
    );
    let forbidden = [
        ("the Conductor secret", CONDUCTOR.1),
        ("I1's secret", I1_SECRET),
        ("I2's secret", I2_SECRET),
        ("an OAuth signature", "oauth_signature"),
        ("a PEM private key", "PRIVATE KEY"),
    ];
    let mut leaks = Vec::new();
    for (what, needle) in forbidden {
        for line in output.lines().filter(|l| l.contains(needle)) {
            leaks.push(format!("{what}: {}", &line[..line.len().min(400)]));
        }
    }
    assert!(
        leaks.is_empty(),
        "{} leaking lines:\n{}",
        leaks.len(),
        leaks.join("\n")
    );
    drop(broker);
}
