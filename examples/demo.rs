//! The main job, runnable on one machine: `scripts/demo`.
//!
//! Brings up a real RabbitMQ (AMQP 1.0, mutual TLS, SASL EXTERNAL), two emulated Config
//! Servers and two `audrey-federation` sidecars (site-a, site-b), drives the I1/I2 scenario
//! (I1 registers and reports at A, I2 at B, each references the other), and shows each
//! value arriving at the other site and how long it took. Reuses the test harness
//! (`tests/support/`), so the demo and the tests start things the same way; everything
//! runs in temporary folders and is stopped on exit.

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use support::broker::{Broker, BrokerOptions};
use support::client::{audrey_data, Creds, Placement};
use support::scenario;
use support::site::Site;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let sites = ["site-a", "site-b"];
    let certs = support::certs::generate(&sites);
    println!("starting RabbitMQ (AMQP 1.0 over mutual TLS) ...");
    let broker = Broker::start(BrokerOptions {
        sites: &sites,
        certs: &certs,
    });
    let dir = tempfile::tempdir()?;
    let a = Site::start("site-a", &broker.amqps_url(), &certs, &dir.path().join("a"));
    let b = Site::start("site-b", &broker.amqps_url(), &certs, &dir.path().join("b"));
    println!("broker {}", broker.amqps_url());
    for s in [&a, &b] {
        println!(
            "{}: Config Server on {}, audrey-federation on {}",
            s.name,
            s.emulator.addr(),
            s.sidecar.proxy
        );
    }

    let (i1, i2) = (scenario::i1(), scenario::i2());
    let (ca, cb) = (a.client(), b.client());
    println!(
        "Conductor  POST /configs/1/I1 at A -> {}",
        ca.register(&Site::conductor(), 1, "I1", &i1.to_xml())
            .await?
            .status
    );
    println!(
        "Conductor  POST /configs/1/I2 at B -> {}",
        cb.register(&Site::conductor(), 1, "I2", &i2.to_xml())
            .await?
            .status
    );

    let started = Instant::now();
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
        .await?;
    println!(
        "guest I1   PUT /params/2/I1 ipaddress=10.0.0.5 at A -> {}",
        r.status
    );
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
        .await?;
    println!(
        "guest I2   PUT /params/2/I2 ipaddress=10.1.0.7 at B -> {}",
        r.status
    );

    let deadline = started + Duration::from_secs(60);
    for (site, client, uuid, secret) in [("B", &cb, "I2", &i2.secret), ("A", &ca, "I1", &i1.secret)]
    {
        loop {
            let r = client
                .get_configs(2, uuid, None, &Creds::new(uuid, secret))
                .await?;
            if r.status == 200 {
                println!(
                    "guest {uuid}   GET /configs/2/{uuid} at {site} -> 200 {}   ({:?} after the reports)",
                    r.text(),
                    started.elapsed()
                );
                break;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "{uuid} at {site}: still {} after 60s",
                r.status
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    println!(
        "site-b's server recorded I1's address as {}",
        b.server().get_ip(2, "I1").await?.text()
    );
    println!(
        "site-a's server recorded I2's address as {}",
        a.server().get_ip(2, "I2").await?.text()
    );
    Ok(())
}
