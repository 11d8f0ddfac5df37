//! The main job, runnable on one machine: `scripts/demo`.
//!
//! Brings up a Config Server emulator with `audrey-federation` in front of it, drives the
//! I1/I2 scenario through the sidecar as Conductor and the guests would, and shows what
//! the server answered and what the sidecar recorded for the federation. Reuses the test
//! harness (`tests/support/`), so the demo and the tests start things the same way.

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::Instant;

use audrey_federation::store::Store;
use support::client::{audrey_data, Client, Creds, InstanceXml, Placement, ServiceXml};
use support::emulator::Emulator;
use support::sidecar::{config, Sidecar};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let conductor = Creds::new("conductor", "c0nduct0r");
    let emu = Emulator::start(&conductor.key, &conductor.secret);
    let dir = tempfile::tempdir()?;
    let mut sc = Sidecar::start(
        dir.path(),
        &config(
            "site-a",
            &format!("http://{}", emu.addr()),
            dir.path(),
            "",
            "",
        ),
    );
    println!(
        "site-a: Config Server emulator on {}, audrey-federation on {} (admin {})",
        emu.addr(),
        sc.proxy,
        sc.admin
    );

    let c = Client::new(sc.proxy).with_host("configserver.site-a.example");
    let i1 = InstanceXml::new("I1", "D1", "s3cret1")
        .provides("ipaddress")
        .service(ServiceXml::new("db_svc").value("port", "3306").reference(
            "peer_ip",
            "I2",
            "ipaddress",
        ));
    let i2 = InstanceXml::new("I2", "D1", "s3cret2")
        .provides("ipaddress")
        .service(ServiceXml::new("web_svc").value("port", "8080").reference(
            "peer_ip",
            "I1",
            "ipaddress",
        ));
    for x in [&i1, &i2] {
        let r = c.register(&conductor, 1, &x.uuid, &x.to_xml()).await?;
        println!("Conductor  POST /configs/1/{} -> {}", x.uuid, r.status);
    }
    let started = Instant::now();
    let r = c
        .put_params(
            2,
            "I1",
            &i1.secret,
            &audrey_data(&[("ipaddress", "10.0.0.5")]),
            Placement::Header,
        )
        .await?;
    println!(
        "guest I1   PUT /params/2/I1 ipaddress=10.0.0.5 -> {} {:?} ({:?})",
        r.status,
        r.text(),
        started.elapsed()
    );
    let r = c
        .get_configs(2, "I2", None, &Creds::new("I2", &i2.secret))
        .await?;
    println!("guest I2   GET /configs/2/I2 -> {} {}", r.status, r.text());

    let status = sc.terminate();
    println!("sidecar stopped with SIGTERM: {status}");
    let store = Store::open(&dir.path().join("state"), "site-a")?;
    println!("outbox (what federation will carry to the other sites):");
    for ch in store.pending(None, 100)? {
        println!(
            "  {}  {:<12} instance={} deployment={} guest={}",
            ch.message_id(),
            ch.event.kind(),
            ch.instance.as_deref().unwrap_or("-"),
            ch.deployment.as_deref().unwrap_or("-"),
            ch.client_addr.as_deref().unwrap_or("-")
        );
    }
    store.close().await?;
    Ok(())
}
