//! Replays the committed fuzz corpus without libFuzzer: every file under `fuzz/corpus/<target>/`
//! goes through the entry point its cargo-fuzz target calls (`audrey_federation::fuzzing`), which
//! checks the invariants (no panic on any input, `decode(encode(x)) == x`, ...). A crash the
//! fuzzer once found stays fixed because its input is kept in the corpus.
//!
//! `write_seed_corpus` (ignored) writes the hand-made seeds (`seed-*`), realistic inputs from the
//! server reference and the test fixtures: `cargo test --test fuzz_corpus -- --ignored`.

use std::fs;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use audrey_federation::amqp::codec;
use audrey_federation::capture::audrey_data;
use audrey_federation::change::{Change, Event};
use audrey_federation::fuzzing;
use audrey_federation::wire::{self, Heartbeat, WireValue};

type Entry = fn(&[u8]);

const TARGETS: [(&str, Entry); 5] = [
    ("audrey_data", fuzzing::audrey_data),
    ("instance_config", fuzzing::instance_config),
    ("route", fuzzing::route),
    ("wire_decode", fuzzing::wire_decode),
    ("wire_message", wire_message),
];

/// `fuzz/fuzz_targets/wire_message.rs`: the line format only.
fn wire_message(input: &[u8]) {
    if input.first() != Some(&0) {
        fuzzing::wire_decode(input);
    }
}

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target)
}

#[test]
fn every_corpus_file_passes_its_target() {
    let mut failures = Vec::new();
    for (target, entry) in TARGETS {
        let dir = corpus_dir(target);
        let mut files: Vec<PathBuf> = fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.expect("dir entry").path())
            .collect();
        files.sort();
        assert!(
            files.len() >= 5,
            "{target}: corpus has {} files",
            files.len()
        );
        for file in files {
            let bytes = fs::read(&file).expect("read corpus file");
            if catch_unwind(AssertUnwindSafe(|| entry(&bytes))).is_err() {
                failures.push(file.display().to_string());
            }
        }
    }
    assert!(
        failures.is_empty(),
        "corpus inputs that fail: {failures:#?}"
    );
}

#[test]
fn the_entry_points_check_what_they_claim() {
    // A valid change in either encoding decodes; empty and junk inputs are refused quietly.
    for change in changes() {
        let w = wire::encode(&change, "audrey.federation.D1");
        fuzzing::wire_decode(&fuzzing::wire_message_to_bytes(&w));
        let mut amqp = vec![0];
        amqp.extend(codec::to_encoded(&w));
        fuzzing::wire_decode(&amqp);
        assert_eq!(
            fuzzing::wire_message_from_bytes(&fuzzing::wire_message_to_bytes(&w)),
            w
        );
    }
    for junk in [
        &b""[..],
        b"\0",
        b"\0\x00\x53\x70",
        b"\n\n\n\n\n\n\n\n",
        b"\xff\xfe",
    ] {
        fuzzing::wire_decode(junk);
        fuzzing::route(junk);
        fuzzing::audrey_data(junk);
        fuzzing::instance_config(junk);
    }
}

fn changes() -> Vec<Change> {
    let params = Change {
        origin_site: "site-a".into(),
        incarnation: "a1a1a1a1a1a1a1a1".into(),
        version_ms: 0,
        origin_seq: 42,
        instance_seq: 3,
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
    };
    let registration = Change {
        origin_seq: 41,
        instance_seq: 1,
        api_version: 1,
        client_addr: None,
        event: Event::Registration {
            instance_config: INSTANCE_CONFIG.into(),
            secret: "S3cr3t".into(),
        },
        ..params.clone()
    };
    let deletion = Change {
        origin_seq: 43,
        instance_seq: 0,
        api_version: 1,
        instance: None,
        client_addr: None,
        event: Event::Deletion,
        ..params.clone()
    };
    vec![params, registration, deletion]
}

const INSTANCE_CONFIG: &str = "<instance-config id='I1' name='db' secret='S3cr3t'>
  <deployable name='wordpress' id='DEPLOYMENT-UUID'/>
  <provided-parameters><provided-parameter name='ipaddress'/></provided-parameters>
  <services><service name='db_svc'>
    <executable><contents><![CDATA[#!/bin/sh ...]]></contents></executable>
    <parameters>
      <parameter name='port'><value><![CDATA[3306]]></value></parameter>
      <parameter name='peer_ip'><reference assembly='I2' provided-parameter='ipaddress'/></parameter>
    </parameters></service></services>
</instance-config>";

fn form(name: &str, value: &str) -> String {
    let v: String = form_urlencoded::byte_serialize(value.as_bytes()).collect();
    format!("{name}={v}")
}

/// Method byte of `fuzzing::route`: 0 GET, 1 PUT, 2 POST, 3 DELETE.
fn request(method: u8, target: &str, body: &str) -> Vec<u8> {
    let mut v = vec![method];
    v.extend_from_slice(target.as_bytes());
    v.push(b'\n');
    v.extend_from_slice(body.as_bytes());
    v
}

#[test]
#[ignore = "writes the seed corpus; run by hand"]
fn write_seed_corpus() {
    let bars = [
        "|ipaddress&MTAuMC4wLjU=|",
        "|&|",
        "||db_svc&MA==|",
        "",
        "|a&QQ==|a&Qg==|b&&x|c&|",
        "ipaddress&MTAuMC4wLjU=",
        "|x&Q Q=*=|y&QUJD\nREVG|",
        &audrey_data::encode(
            &[
                ("ipaddress".into(), "10.0.0.5".into()),
                ("peer_ip".into(), "\u{e9}t\u{e9}".into()),
            ],
            false,
        ),
    ];
    let xmls = [
        INSTANCE_CONFIG,
        "<instance-config id='I1' name='db' secret='S'><deployable name='w' id=''/></instance-config>",
        "<instance-config id='I1' name='db' secret='S'/>",
        "<?xml version='1.0'?><!DOCTYPE x [<!ENTITY a 'aaaa'>]><instance-config id='&a;'/>",
        "<x:instance-config xmlns:x='urn:x' id='I1' name='n' secret='s'><deployable name='w' id='D'/></x:instance-config>",
        "<instance-config id='I1' name='db' secret='S'><deployable name='w' id='D1'/><services><service name='s'><parameters><parameter name='p'><reference assembly='I2' service-parameter='q'/></parameter></parameters></service></services></instance-config>",
        "not xml at all <",
    ];
    let routes = [
        request(
            1,
            "/params/2/I1",
            &form("audrey_data", "|ipaddress&MTAuMC4wLjU=|"),
        ),
        request(
            1,
            "/params/1/I1?oauth_nonce=1",
            &format!(
                "oauth_signature=x&{}",
                form("audrey_data", "||db_svc&MA==|")
            ),
        ),
        request(2, "/configs/1/I1", &form("data", INSTANCE_CONFIG)),
        request(3, "/deployment/1/D1", ""),
        request(1, "/%70arams/02/%49%31", &form("audrey_data", "|&|")),
        request(1, "/params/2/..", "audrey_data=x"),
        request(1, "/params/2/%2e%2E", "audrey_data=x"),
        request(1, "/params/3/I1", "audrey_data=x"),
        request(0, "/configs/2/I1/db_svc", ""),
        request(2, "/configs/+2_0x/I1", "data=%FF%FE"),
        request(1, "/params/2/I1", "audrey=1"),
    ];
    let mut wires = Vec::new();
    for change in changes() {
        let w = wire::encode(&change, "audrey.federation.D1");
        wires.push(fuzzing::wire_message_to_bytes(&w));
        let mut amqp = vec![0];
        amqp.extend(codec::to_encoded(&w));
        wires.push(amqp);
    }
    let hb = wire::encode_heartbeat(
        &Heartbeat {
            origin_site: "site-b".into(),
            sent_at_ms: 1_700_000_000_123,
        },
        "audrey.federation._heartbeat",
        30_000,
    );
    wires.push(fuzzing::wire_message_to_bytes(&hb));
    let mut future = wire::encode(&changes()[0], "s");
    future.properties[0].1 = WireValue::U8(3);
    wires.push(fuzzing::wire_message_to_bytes(&future));
    let seeds: [(&str, Vec<Vec<u8>>); 4] = [
        (
            "audrey_data",
            bars.iter().map(|s| s.as_bytes().to_vec()).collect(),
        ),
        (
            "instance_config",
            xmls.iter().map(|s| s.as_bytes().to_vec()).collect(),
        ),
        ("route", routes.to_vec()),
        ("wire_decode", wires),
    ];
    for (target, inputs) in seeds {
        let dir = corpus_dir(target);
        fs::create_dir_all(&dir).expect("mkdir");
        for (i, input) in inputs.iter().enumerate() {
            fs::write(dir.join(format!("seed-{i:02}")), input).expect("write seed");
        }
    }
}
