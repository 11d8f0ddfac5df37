//! Criterion benchmarks of the per-request and per-message hot paths: request
//! classification, `audrey_data` parsing, instance-config reading (deployment extraction),
//! the whole parse-before-forward of a `PUT /params` body, wire encoding and decoding, the
//! durable dedup lookup, and OAuth signing.
//! `cargo bench --bench hot_paths`; figures go to BENCHMARKS.md.

use std::hint::black_box;

use audrey_federation::capture::{self, audrey_data, instance_config, route};
use audrey_federation::change::{Change, Event};
use audrey_federation::store::Store;
use audrey_federation::{oauth, wire};
use criterion::{criterion_group, criterion_main, Criterion};

const XML: &str = "<instance-config id='0f3c2d9e-1111-4a4a-9b9b-123456789abc' name='db' secret='S3cr3t'>\
  <deployable name='wordpress' id='7d1e5c3a-2222-4b4b-8c8c-abcdefabcdef'/>\
  <provided-parameters><provided-parameter name='ipaddress'/><provided-parameter name='hostname'/></provided-parameters>\
  <services><service name='db_svc'><executable><contents><![CDATA[#!/bin/sh\necho configure]]></contents></executable>\
  <parameters><parameter name='port'><value><![CDATA[3306]]></value></parameter>\
  <parameter name='peer_ip'><reference assembly='9a8b7c6d-3333-4c4c-8d8d-fedcbafedcba' provided-parameter='ipaddress'/></parameter>\
  </parameters></service></services></instance-config>";

fn change() -> Change {
    Change {
        origin_site: "site-a".into(),
        incarnation: "a1a1a1a1a1a1a1a1".into(),
        version_ms: 0,
        origin_seq: 123_456,
        instance_seq: 42,
        api_version: 2,
        instance: Some("0f3c2d9e-1111-4a4a-9b9b-123456789abc".into()),
        deployment: Some("7d1e5c3a-2222-4b4b-8c8c-abcdefabcdef".into()),
        client_addr: Some("198.51.100.7".into()),
        captured_at_ms: 1_764_000_000_000,
        event: Event::Params {
            audrey_data: "|ipaddress&MTAuMC4wLjU=|hostname&ZGIuZXhhbXBsZS5vcmc=|".into(),
            values: vec![
                ("ipaddress".into(), "10.0.0.5".into()),
                ("hostname".into(), "db.example.org".into()),
            ],
            return_codes: false,
        },
    }
}

fn parsing(c: &mut Criterion) {
    let put = http::Method::PUT;
    c.bench_function("classify PUT /params", |b| {
        b.iter(|| {
            route::classify(
                &put,
                black_box("/params/2/0f3c2d9e-1111-4a4a-9b9b-123456789abc"),
            )
        })
    });
    let get = http::Method::GET;
    c.bench_function("classify GET /configs (not captured)", |b| {
        b.iter(|| {
            route::classify(
                &get,
                black_box("/configs/2/0f3c2d9e-1111-4a4a-9b9b-123456789abc/db_svc"),
            )
        })
    });
    c.bench_function("audrey_data parse (2 pairs)", |b| {
        b.iter(|| {
            audrey_data::parse(black_box(
                "|ipaddress&MTAuMC4wLjU=|hostname&ZGIuZXhhbXBsZS5vcmc=|",
            ))
        })
    });
    c.bench_function("instance-config read (deployment extraction)", |b| {
        b.iter(|| instance_config::parse(black_box(XML)).unwrap())
    });
    let route = route::classify(&put, "/params/2/0f3c2d9e-1111-4a4a-9b9b-123456789abc");
    let body = b"audrey_data=%7Cipaddress%26MTAuMC4wLjU%3D%7Chostname%26ZGIuZXhhbXBsZS5vcmc%3D%7C";
    c.bench_function("capture PUT /params body (form + audrey_data)", |b| {
        b.iter(|| {
            capture::capture_from(
                &route,
                black_box(body),
                Some("198.51.100.7".into()),
                1_764_000_000_000,
            )
            .unwrap()
        })
    });
}

fn messages(c: &mut Criterion) {
    let ch = change();
    let subject = wire::routing_key(
        "audrey.federation.{deployment}",
        "7d1e5c3a-2222-4b4b-8c8c-abcdefabcdef",
    );
    c.bench_function("wire encode", |b| {
        b.iter(|| wire::encode(black_box(&ch), &subject))
    });
    let msg = wire::encode(&ch, &subject);
    c.bench_function("wire decode", |b| {
        b.iter(|| wire::decode(black_box(&msg)).unwrap())
    });
}

fn dedup_and_signing(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), "site-b").unwrap();
    // 1,000 instances of other sites already held, each with one versioned value.
    rt.block_on(async {
        for i in 0..1000u64 {
            let mut ch = change();
            ch.origin_seq = i + 1;
            let mut state = audrey_federation::store::InstanceState::default();
            state.params.insert(
                "ipaddress".into(),
                audrey_federation::store::Slot {
                    version: ch.version(),
                    piece: "ipaddress&MTAuMC4wLjU=".into(),
                },
            );
            let merge = audrey_federation::store::Merge {
                states: vec![(format!("instance-{i}"), Some(state))],
                tombstone: None,
                applied: Some(ch),
            };
            store.merge(merge).await.unwrap();
        }
    });
    c.bench_function("dedup lookup (durable instance state)", |b| {
        b.iter(|| store.instance_state(black_box("instance-500")).unwrap())
    });
    let form = vec![(
        "audrey_data".to_string(),
        "|ipaddress&MTAuMC4wLjU=|".to_string(),
    )];
    c.bench_function("OAuth 1.0a HMAC-SHA1 sign PUT /params", |b| {
        b.iter(|| {
            oauth::authorization_header(
                "PUT",
                black_box("http://127.0.0.1:4567/params/2/0f3c2d9e-1111-4a4a-9b9b-123456789abc"),
                &form,
                "0f3c2d9e-1111-4a4a-9b9b-123456789abc",
                "S3cr3t",
            )
        })
    });
}

criterion_group!(benches, parsing, messages, dedup_and_signing);
criterion_main!(benches);
