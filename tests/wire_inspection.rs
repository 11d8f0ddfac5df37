//! A message the sidecar published, read back with an independent AMQP 1.0 client (Qpid
//! Proton's Python binding, over mutual TLS with SASL EXTERNAL), matches
//! `docs/wire-format.md`: every section, every property with its AMQP type, the JSON body
//! with its fields in the documented order.

mod support;

use std::process::Command;

use serde_json::{json, Value};
use support::broker::{Broker, BrokerOptions};
use support::client::{audrey_data, Placement};
use support::scenario;
use support::site::Site;

/// Reads the next message of `queue` with Proton, as site `as_site`.
fn inspect(
    broker: &Broker,
    certs: &support::certs::CertPaths,
    queue: &str,
    as_site: &str,
) -> Value {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/tools/inspect_message.py"
    );
    let out = Command::new("/usr/bin/python3")
        .arg(script)
        .arg(broker.amqps_url())
        .arg(format!("/amq/queue/{queue}"))
        .arg(&certs.ca)
        .arg(certs.site_cert(as_site))
        .arg(certs.site_key(as_site))
        .arg("30")
        .output()
        .expect("run python3 (python3-qpid-proton is installed by scripts/install-deps)");
    assert!(
        out.status.success(),
        "inspector failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("inspector prints JSON")
}

fn prop(t: &str, v: Value) -> Value {
    json!({"type": t, "value": v})
}

/// The body's top-level keys, in the order they were written.
fn key_order(body: &str) -> Vec<String> {
    let mut keys = Vec::new();
    let mut depth = 0;
    let mut chars = body.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        match c {
            '{' | '[' => depth += 1,
            '}' | ']' => depth -= 1,
            '"' => {
                let start = i + 1;
                let mut end = start;
                while let Some((j, d)) = chars.next() {
                    if d == '\\' {
                        chars.next();
                    } else if d == '"' {
                        end = j;
                        break;
                    }
                }
                if depth == 1 && chars.peek().map(|(_, n)| *n) == Some(':') {
                    keys.push(body[start..end].to_string());
                }
            }
            _ => {}
        }
    }
    keys
}

#[tokio::test]
async fn published_messages_match_the_documented_wire_format() {
    let certs = support::certs::generate(&["site-a", "site-b"]);
    let broker = Broker::start(BrokerOptions {
        sites: &["site-a", "site-b"],
        certs: &certs,
    });
    let dir = tempfile::tempdir().unwrap();
    let a = Site::start("site-a", &broker.amqps_url(), &certs, &dir.path().join("a"));
    let i1 = scenario::i1();
    let c = a.client().with_header("X-Forwarded-For", "198.51.100.7");
    assert_eq!(
        c.register(&Site::conductor(), 1, "I1", &i1.to_xml())
            .await
            .unwrap()
            .status,
        200
    );
    let r = c
        .put_params(
            2,
            "I1",
            &i1.secret,
            &audrey_data(&[("ipaddress", "10.0.0.5")]),
            Placement::Header,
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200, "I1 has nothing left to provide");

    // site-b's durable queue receives everything published under audrey.federation.#.
    let reg = inspect(&broker, &certs, "audrey.federation.site-b", "site-b");
    let params = inspect(&broker, &certs, "audrey.federation.site-b", "site-b");

    for (m, seq, kind, v) in [
        (&reg, 1u64, "registration", 1u64),
        (&params, 2, "params", 2),
    ] {
        assert_eq!(m["durable"], true, "{m}");
        // `site-a:<incarnation>:<seq>`, the incarnation 16 hex digits.
        let id = m["id"]["value"].as_str().unwrap_or_default();
        let incarnation = id
            .strip_prefix("site-a:")
            .and_then(|rest| rest.strip_suffix(&format!(":{seq}")))
            .unwrap_or_else(|| panic!("message id {id:?}: {m}"));
        assert!(
            incarnation.len() == 16 && incarnation.chars().all(|c| c.is_ascii_hexdigit()),
            "{id}"
        );
        assert_eq!(m["id"]["type"], "string", "{m}");
        assert_eq!(
            m["subject"],
            prop("string", json!("audrey.federation.D1")),
            "{m}"
        );
        assert_eq!(
            m["content_type"],
            prop("symbol", json!("application/json")),
            "{m}"
        );
        assert_eq!(m["body_type"], "bytes", "exactly one data section: {m}");
        let mut props = m["properties"].clone();
        // Signed (docs/wire-format.md "Signatures"): the signature and the signer's chain.
        for p in ["audrey_sig", "audrey_signer"] {
            let v = props
                .as_object_mut()
                .and_then(|o| o.remove(p))
                .unwrap_or_else(|| panic!("no {p}: {m}"));
            assert_eq!(v["type"], "string", "{p}: {v}");
        }
        // The version (format 2): the incarnation of the message id, and a time.
        let inc = props
            .as_object_mut()
            .and_then(|o| o.remove("incarnation"))
            .unwrap_or_else(|| panic!("no incarnation: {m}"));
        assert_eq!(inc, prop("string", json!(incarnation)));
        let version_ms = props
            .as_object_mut()
            .and_then(|o| o.remove("version_ms"))
            .unwrap_or_else(|| panic!("no version_ms: {m}"));
        assert_eq!(version_ms["type"], "ulong", "{version_ms}");
        let props = &props;
        let want = json!({
            "audrey_format": prop("ubyte", json!(2)),
            "event_kind": prop("string", json!(kind)),
            "origin_site": prop("string", json!("site-a")),
            "deployment": prop("string", json!("D1")),
            "instance": prop("string", json!("I1")),
            "api_version": prop("ubyte", json!(v)),
            "instance_seq": prop("ulong", json!(seq)),
            "origin_seq": prop("ulong", json!(seq)),
            "client_addr": prop("string", json!("198.51.100.7")),
        });
        assert_eq!(props, &want, "application properties");

        let text = m["body"].as_str().unwrap();
        assert_eq!(
            key_order(text),
            [
                "audrey_format",
                "origin_site",
                "incarnation",
                "origin_seq",
                "version_ms",
                "instance_seq",
                "api_version",
                "instance",
                "deployment",
                "client_addr",
                "captured_at_ms",
                "event"
            ],
            "body fields in the documented order: {text}"
        );
        let body: Value = serde_json::from_str(text).unwrap();
        assert_eq!(body["audrey_format"], 2);
        assert_eq!(body["incarnation"], incarnation);
        assert_eq!(
            (body["origin_seq"].as_u64(), body["instance_seq"].as_u64()),
            (Some(seq), Some(seq))
        );
        assert_eq!(body["event"]["kind"], kind);
        let captured = body["captured_at_ms"].as_u64().unwrap() as f64 / 1000.0;
        let created = m["creation_time"].as_f64().unwrap();
        assert!(
            (created - captured).abs() < 0.002,
            "creation-time {created} is the capture time {captured}"
        );
    }
    // Sealed (docs/wire-format.md "Sealed secrets"): neither the secret nor the XML that
    // holds it crosses the broker in plaintext.
    let reg_body = reg["body"].as_str().unwrap();
    assert!(
        !reg_body.contains("s3cret1"),
        "plaintext secret: {reg_body}"
    );
    let event: Value = serde_json::from_str::<Value>(reg_body).unwrap()["event"].clone();
    for field in ["secret", "instance_config"] {
        let v = event[field].as_str().unwrap_or_default();
        assert!(v.starts_with("sealed:v1:"), "{field}: {v}");
    }
    let event: Value = serde_json::from_str(params["body"].as_str().unwrap()).unwrap();
    assert_eq!(
        event["event"],
        json!({"kind": "params", "audrey_data": "|ipaddress&MTAuMC4wLjU=|", "values": [["ipaddress", "10.0.0.5"]], "return_codes": false})
    );
}
