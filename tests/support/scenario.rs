//! The federation issue's scenario: instances I1 (db) and I2 (web) of deployment D1, each
//! referencing the other's `ipaddress`. Used by the emulator, conformance and federation
//! tests and by the demo.

use super::client::{Creds, InstanceXml, ServiceXml};
use super::site::Site;

pub fn i1() -> InstanceXml {
    InstanceXml::new("I1", "D1", "s3cret1")
        .provides("ipaddress")
        .service(ServiceXml::new("db_svc").value("port", "3306").reference(
            "peer_ip",
            "I2",
            "ipaddress",
        ))
}

pub fn i2() -> InstanceXml {
    InstanceXml::new("I2", "D1", "s3cret2")
        .provides("ipaddress")
        .service(ServiceXml::new("web_svc").value("port", "8080").reference(
            "peer_ip",
            "I1",
            "ipaddress",
        ))
}

/// An instance's own OAuth credentials (key = uuid, secret from its instance-config).
pub fn own(x: &InstanceXml) -> Creds {
    Creds::new(&x.uuid, &x.secret)
}

/// A stream of changes across `deployments` deployments: deployment k has a provider at site
/// k % n and a consumer at every site; the providers report `reports` rounds, interleaved.
/// Returns what each site captured; every consumer sees its provider's last value.
pub async fn stream(sites: &[Site], deployments: usize, reports: usize) -> Vec<u64> {
    let n = sites.len();
    let mut captured = vec![0u64; n];
    let mut plan = Vec::new();
    for k in 0..deployments {
        let home = k % n;
        let provider = InstanceXml::new(&format!("P{k}"), &format!("D{k}"), &format!("sp{k}"))
            .provides("ipaddress");
        sites[home].register(&provider).await;
        captured[home] += 1;
        let mut consumers = Vec::new();
        for (s, site) in sites.iter().enumerate() {
            let c = InstanceXml::new(&format!("C{k}-{s}"), &format!("D{k}"), &format!("sc{k}{s}"))
                .service(ServiceXml::new("svc").reference("peer_ip", &provider.uuid, "ipaddress"));
            site.register(&c).await;
            captured[s] += 1;
            consumers.push(c);
        }
        plan.push((home, provider, consumers));
    }
    for round in 1..=reports {
        for (k, (home, provider, _)) in plan.iter().enumerate() {
            sites[*home]
                .report(provider, &format!("10.{k}.0.{round}"))
                .await;
            captured[*home] += 1;
        }
    }
    for (k, (_, _, consumers)) in plan.iter().enumerate() {
        for (s, consumer) in consumers.iter().enumerate() {
            sites[s]
                .sees(consumer, &format!("10.{k}.0.{reports}"))
                .await;
        }
    }
    captured
}

/// Stops every site and checks its durable replay state: every change of every other site
/// applied exactly once (a change overtaken by a later one of the same instance would have
/// been skipped, so `applied == captured` also means per-instance order), none of its own.
pub async fn applied_exactly_once(sites: &mut [Site], captured: &[u64]) {
    let names: Vec<String> = sites.iter().map(|s| s.name.clone()).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    for (s, site) in sites.iter_mut().enumerate() {
        let states = site.stop_and_read_origins(&names).await;
        for (o, state) in states.iter().enumerate() {
            if o == s {
                assert!(
                    state.is_none(),
                    "{} applied its own changes: {state:?}",
                    names[s]
                );
                continue;
            }
            let state = state
                .as_ref()
                .unwrap_or_else(|| panic!("{} applied nothing from {}", names[s], names[o]));
            assert_eq!(
                (state.applied, state.max_origin_seq),
                (captured[o], captured[o]),
                "{}: changes from {} (applied, last seq)",
                names[s],
                names[o]
            );
        }
    }
}
