//! Tests of the wire format: exact encoding, round trips, and every way decoding refuses.

use rand::{Rng, SeedableRng};
use serde_json::json;

use super::*;
use crate::change::Event;

/// A params change with every field set; also used by the AMQP codec tests.
pub(crate) fn params_change() -> Change {
    Change {
        origin_site: "site-a".into(),
        incarnation: "a1a1a1a1a1a1a1a1".into(),
        version_ms: 1_700_000_000_000,
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
    }
}

fn registration_change() -> Change {
    Change {
        origin_seq: 41,
        instance_seq: 1,
        api_version: 1,
        client_addr: None,
        event: Event::Registration {
            instance_config:
                "<instance-config id='I1' name='db' secret='S3cr3t'>\u{e9}</instance-config>".into(),
            secret: "S3cr3t".into(),
        },
        ..params_change()
    }
}

fn deletion_change() -> Change {
    Change {
        origin_seq: 43,
        instance_seq: 0,
        api_version: 1,
        instance: None,
        client_addr: None,
        event: Event::Deletion,
        ..params_change()
    }
}

fn good() -> WireMessage {
    encode(&params_change(), "audrey.federation.D1")
}

/// `msg` with property `name` replaced, added (at the end) or removed.
fn with_prop(mut msg: WireMessage, name: &str, value: Option<WireValue>) -> WireMessage {
    let at = msg.properties.iter().position(|(n, _)| n == name);
    match (at, value) {
        (Some(i), Some(v)) => msg.properties[i].1 = v,
        (Some(i), None) => {
            msg.properties.remove(i);
        }
        (None, Some(v)) => msg.properties.push((name.to_owned(), v)),
        (None, None) => {}
    }
    msg
}

/// `msg` with its body JSON edited.
fn with_body(mut msg: WireMessage, edit: impl FnOnce(&mut serde_json::Value)) -> WireMessage {
    let mut v: serde_json::Value = serde_json::from_slice(&msg.body).expect("good body");
    edit(&mut v);
    msg.body = serde_json::to_vec(&v).expect("json");
    msg
}

fn raw_body(mut msg: WireMessage, body: Vec<u8>) -> WireMessage {
    msg.body = body;
    msg
}

#[test]
fn encodes_the_documented_example() {
    let msg = good();
    assert_eq!(msg.message_id, "site-a:a1a1a1a1a1a1a1a1:42");
    assert_eq!(msg.subject, "audrey.federation.D1");
    assert_eq!(msg.creation_time_ms, 1_700_000_000_000);
    assert_eq!(msg.content_type, "application/json");
    assert!(msg.durable);
    let s = |v: &str| WireValue::Str(v.into());
    let want = vec![
        ("audrey_format", WireValue::U8(2)),
        ("event_kind", s("params")),
        ("origin_site", s("site-a")),
        ("deployment", s("D1")),
        ("instance", s("I1")),
        ("api_version", WireValue::U8(2)),
        ("instance_seq", WireValue::U64(3)),
        ("origin_seq", WireValue::U64(42)),
        ("client_addr", s("10.0.0.5")),
        ("incarnation", s("a1a1a1a1a1a1a1a1")),
        ("version_ms", WireValue::U64(1_700_000_000_000)),
    ];
    let want: Vec<(String, WireValue)> = want.into_iter().map(|(n, v)| (n.to_owned(), v)).collect();
    assert_eq!(msg.properties, want);
    // Byte for byte the body in docs/wire-format.md.
    let body = r#"{"audrey_format":2,"origin_site":"site-a","incarnation":"a1a1a1a1a1a1a1a1","origin_seq":42,"version_ms":1700000000000,"instance_seq":3,"api_version":2,"instance":"I1","deployment":"D1","client_addr":"10.0.0.5","captured_at_ms":1700000000000,"event":{"kind":"params","audrey_data":"|ipaddress&MTAuMC4wLjU=|","values":[["ipaddress","10.0.0.5"]],"return_codes":false}}"#;
    assert_eq!(String::from_utf8(msg.body).expect("utf-8"), body);
}

#[test]
fn format_1_is_written_for_a_rolling_upgrade_and_still_read() {
    let msg = encode_as(&params_change(), "audrey.federation.D1", 1);
    assert_eq!(msg.message_id, "site-a:42");
    assert!(msg
        .properties
        .iter()
        .all(|(n, _)| n != "incarnation" && n != "version_ms"));
    assert_eq!(
        msg.properties.first(),
        Some(&("audrey_format".to_owned(), WireValue::U8(1)))
    );
    // Byte for byte the format 1 body in docs/wire-format.md: what a 1-only reader expects.
    let body = r#"{"audrey_format":1,"origin_site":"site-a","origin_seq":42,"instance_seq":3,"api_version":2,"instance":"I1","deployment":"D1","client_addr":"10.0.0.5","captured_at_ms":1700000000000,"event":{"kind":"params","audrey_data":"|ipaddress&MTAuMC4wLjU=|","values":[["ipaddress","10.0.0.5"]],"return_codes":false}}"#;
    assert_eq!(String::from_utf8(msg.body.clone()).expect("utf-8"), body);
    // Read back: no incarnation, and the version's time is the capture time.
    let back = decode(&msg).expect("format 1 decodes");
    assert_eq!(back.incarnation, "");
    assert_eq!(back.version().ms, 1_700_000_000_000);
    assert_eq!(back.version().seq, 42);
    assert_eq!(back.message_id(), "site-a:42");
    assert_eq!(
        Change {
            incarnation: String::new(),
            version_ms: 0,
            ..params_change()
        },
        back
    );
}

#[test]
fn format_2_needs_an_incarnation() {
    let msg = with_prop(good(), "incarnation", None);
    assert_eq!(
        decode(&msg).expect_err("missing").as_str(),
        "missing_property"
    );
    let msg = with_body(
        with_prop(good(), "incarnation", Some(WireValue::Str(String::new()))),
        |v| drop(v.as_object_mut().map(|o| o.remove("incarnation"))),
    );
    assert_eq!(decode(&msg).expect_err("empty").as_str(), "invalid");
    let msg = with_body(good(), |v| v["version_ms"] = json!(5));
    assert_eq!(decode(&msg).expect_err("disagree").as_str(), "mismatch");
}

#[test]
fn round_trips_every_kind() {
    for change in [params_change(), registration_change(), deletion_change()] {
        let msg = encode(&change, "s");
        let kind = msg
            .properties
            .iter()
            .find(|(n, _)| n == "event_kind")
            .map(|(_, v)| v.clone());
        assert_eq!(kind, Some(WireValue::Str(change.event.kind().into())));
        assert_eq!(decode(&msg), Ok(change));
    }
    let deletion = encode(&deletion_change(), "s");
    assert!(!deletion
        .properties
        .iter()
        .any(|(n, _)| n == "instance" || n == "client_addr"));
}

#[test]
fn accepted_variations() {
    let unknown_field = with_body(good(), |v| v["future_field"] = json!({"x": [1, 2]}));
    let cases = vec![
        (
            "audrey_format as ulong",
            with_prop(good(), "audrey_format", Some(WireValue::U64(2))),
        ),
        (
            "origin_seq as ubyte",
            with_prop(good(), "origin_seq", Some(WireValue::U8(42))),
        ),
        (
            "unknown property",
            with_prop(
                good(),
                "x-future",
                Some(WireValue::Unsupported("map".into())),
            ),
        ),
        (
            "content type parameter",
            WireMessage {
                content_type: "Application/JSON; charset=utf-8".into(),
                ..good()
            },
        ),
        (
            "other subject",
            WireMessage {
                subject: "elsewhere".into(),
                ..good()
            },
        ),
        (
            "other creation time",
            WireMessage {
                creation_time_ms: 0,
                ..good()
            },
        ),
        (
            "not durable",
            WireMessage {
                durable: false,
                ..good()
            },
        ),
        ("unknown body field", unknown_field),
        (
            "values omitted",
            with_body(good(), |v| {
                drop(v["event"].as_object_mut().map(|o| o.remove("values")))
            }),
        ),
    ];
    for (what, msg) in cases {
        let got = decode(&msg).map_err(|e| format!("{what}: {e}"));
        if what == "values omitted" {
            let Ok(Change {
                event: Event::Params { values, .. },
                ..
            }) = &got
            else {
                panic!("{got:?}")
            };
            assert!(values.is_empty());
        } else {
            assert_eq!(got, Ok(params_change()), "{what}");
        }
    }
}

#[test]
fn refusals_have_labels_and_messages() {
    let nested = format!("{}1{}", "{\"x\":".repeat(100_000), "}".repeat(100_000));
    let cases: Vec<(&str, WireMessage, &str, &str)> = vec![
        (
            "no version",
            with_prop(good(), "audrey_format", None),
            "unsupported_version",
            "no usable audrey_format",
        ),
        (
            "version 3",
            with_prop(good(), "audrey_format", Some(WireValue::U8(3))),
            "unsupported_version",
            "audrey_format 3 is not supported; this build reads audrey_format 1 and 2",
        ),
        (
            "version 0",
            with_prop(good(), "audrey_format", Some(WireValue::U64(0))),
            "unsupported_version",
            "audrey_format 0",
        ),
        (
            "version as string",
            with_prop(good(), "audrey_format", Some(WireValue::Str("1".into()))),
            "unsupported_version",
            "no usable audrey_format",
        ),
        (
            "version first",
            WireMessage {
                content_type: "x".into(),
                ..with_prop(good(), "audrey_format", None)
            },
            "unsupported_version",
            "",
        ),
        (
            "content type",
            WireMessage {
                content_type: "text/plain".into(),
                ..good()
            },
            "content_type",
            "\"text/plain\"",
        ),
        (
            "empty content type",
            WireMessage {
                content_type: String::new(),
                ..good()
            },
            "content_type",
            "expected",
        ),
        (
            "no kind",
            with_prop(good(), "event_kind", None),
            "missing_property",
            "`event_kind` is missing",
        ),
        (
            "a change labelled heartbeat",
            with_prop(
                good(),
                "event_kind",
                Some(WireValue::Str("heartbeat".into())),
            ),
            "bad_body",
            "expected `heartbeat`",
        ),
        (
            "kind type",
            with_prop(good(), "event_kind", Some(WireValue::U8(1))),
            "property_type",
            "`event_kind` must be a string, found a ubyte",
        ),
        (
            "foreign type",
            with_prop(
                good(),
                "origin_site",
                Some(WireValue::Unsupported("symbol".into())),
            ),
            "property_type",
            "found a symbol",
        ),
        (
            "no origin",
            with_prop(good(), "origin_site", None),
            "missing_property",
            "origin_site",
        ),
        (
            "no seq",
            with_prop(good(), "origin_seq", None),
            "missing_property",
            "`origin_seq` is missing",
        ),
        (
            "seq type",
            with_prop(good(), "origin_seq", Some(WireValue::Str("42".into()))),
            "property_type",
            "must be a ulong or ubyte, found a string",
        ),
        (
            "no instance_seq",
            with_prop(good(), "instance_seq", None),
            "missing_property",
            "instance_seq",
        ),
        (
            "no api_version",
            with_prop(good(), "api_version", None),
            "missing_property",
            "api_version",
        ),
        (
            "duplicate",
            {
                let mut m = good();
                m.properties.push(("origin_seq".into(), WireValue::U64(42)));
                m
            },
            "duplicate_property",
            "`origin_seq` appears more than once",
        ),
        (
            "seq differs",
            with_prop(good(), "origin_seq", Some(WireValue::U64(7))),
            "mismatch",
            "`origin_seq` is 7 in the message but 42 in the body",
        ),
        (
            "deployment absent",
            with_prop(good(), "deployment", None),
            "mismatch",
            "`deployment` is absent in the message but \"D1\" in the body",
        ),
        (
            "client_addr added",
            with_prop(
                encode(&registration_change(), "s"),
                "client_addr",
                Some(WireValue::Str("1.2.3.4".into())),
            ),
            "mismatch",
            "client_addr",
        ),
        (
            "site differs",
            with_prop(good(), "origin_site", Some(WireValue::Str("site-b".into()))),
            "mismatch",
            "origin_site",
        ),
        (
            "kind differs",
            with_prop(
                good(),
                "event_kind",
                Some(WireValue::Str("deletion".into())),
            ),
            "mismatch",
            "event_kind",
        ),
        (
            "api differs",
            with_prop(good(), "api_version", Some(WireValue::U8(1))),
            "mismatch",
            "api_version",
        ),
        (
            "message id",
            WireMessage {
                message_id: "site-a:41".into(),
                ..good()
            },
            "mismatch",
            "`message_id` is \"site-a:41\" in the message but \"site-a:a1a1a1a1a1a1a1a1:42\" in the body",
        ),
        (
            "body format",
            with_body(good(), |v| v["audrey_format"] = json!(1)),
            "mismatch",
            "audrey_format",
        ),
        ("empty body", raw_body(good(), vec![]), "bad_body", "EOF"),
        (
            "truncated body",
            {
                let m = good();
                let half = m.body.len() / 2;
                raw_body(m.clone(), m.body[..half].to_vec())
            },
            "bad_body",
            "not an audrey_format 1 or 2 JSON document",
        ),
        (
            "not utf-8",
            raw_body(good(), vec![b'"', 0xFF, b'"']),
            "bad_body",
            "",
        ),
        (
            "nested",
            raw_body(good(), nested.into_bytes()),
            "bad_body",
            "missing field `audrey_format`",
        ),
        (
            "huge garbage",
            raw_body(good(), vec![b'x'; 5_000_000]),
            "bad_body",
            "",
        ),
        (
            "body kind unknown",
            with_body(good(), |v| v["event"]["kind"] = json!("heartbeat")),
            "bad_body",
            "unknown variant",
        ),
        (
            "body api 300",
            with_body(good(), |v| v["api_version"] = json!(300)),
            "bad_body",
            "",
        ),
        (
            "negative seq",
            with_body(good(), |v| v["origin_seq"] = json!(-1)),
            "bad_body",
            "",
        ),
        (
            "api 3",
            with_body(
                with_prop(good(), "api_version", Some(WireValue::U8(3))),
                |v| v["api_version"] = json!(3),
            ),
            "invalid",
            "api_version 3 is not 1 or 2",
        ),
        (
            "params without instance",
            with_body(with_prop(good(), "instance", None), |v| {
                drop(v.as_object_mut().map(|o| o.remove("instance")))
            }),
            "invalid",
            "a params change needs an instance",
        ),
        (
            "deletion without deployment",
            {
                let m = with_prop(encode(&deletion_change(), "s"), "deployment", None);
                with_body(m, |v| {
                    drop(v.as_object_mut().map(|o| o.remove("deployment")))
                })
            },
            "invalid",
            "a deletion change needs a deployment",
        ),
        (
            "empty origin",
            {
                let m = WireMessage {
                    message_id: ":a1a1a1a1a1a1a1a1:42".into(),
                    ..with_prop(good(), "origin_site", Some(WireValue::Str(String::new())))
                };
                with_body(m, |v| v["origin_site"] = json!(""))
            },
            "invalid",
            "origin_site is empty",
        ),
    ];
    for (what, msg, label, message) in cases {
        let err = decode(&msg).expect_err(what);
        assert_eq!(err.as_str(), label, "{what}: {err}");
        let text = err.to_string();
        assert!(text.contains(message), "{what}: {text}");
        assert!(text.len() < 300, "{what}: message too long: {text:.400}");
    }
}

#[test]
fn hostile_strings_are_shortened_in_messages() {
    let long = "\u{1F600}".repeat(100_000);
    let msg = with_prop(good(), "event_kind", Some(WireValue::Str(long.clone())));
    assert!(decode(&msg).expect_err("unknown").to_string().len() < 400);
    let msg = WireMessage {
        content_type: long.clone(),
        ..good()
    };
    assert!(decode(&msg).expect_err("content type").to_string().len() < 400);
    let msg = with_prop(good(), "origin_site", Some(WireValue::Str(long)));
    assert!(decode(&msg).expect_err("mismatch").to_string().len() < 400);
}

#[test]
fn random_corruption_never_panics() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let originals = [
        good(),
        encode(&registration_change(), "s"),
        encode(&deletion_change(), "s"),
    ];
    for i in 0..3_000 {
        let mut msg = originals[i % originals.len()].clone();
        let flips = rng.random_range(1..8);
        for _ in 0..flips {
            let at = rng.random_range(0..msg.body.len());
            msg.body[at] = rng.random();
        }
        if rng.random_bool(0.3) {
            let cut = rng.random_range(0..msg.body.len());
            msg.body.truncate(cut);
        }
        // Either a change equal to the original (a harmless flip) or an error; never a panic.
        if let Ok(change) = decode(&msg) {
            assert_eq!(change.message_id(), msg.message_id);
        }
    }
}

#[test]
fn routing_keys() {
    let cases = [
        (
            "audrey.federation.{deployment}",
            "D1",
            "audrey.federation.D1",
        ),
        ("audrey.federation.{deployment}", "", "audrey.federation."),
        ("{deployment}.{deployment}", "x", "x.x"),
        ("fixed", "D1", "fixed"),
        ("a.{deployment}", "b.c", "a.b.c"),
        ("a.{deployment}", "\u{e9}", "a.\u{e9}"),
    ];
    for (template, deployment, want) in cases {
        assert_eq!(routing_key(template, deployment), want);
    }
}

fn heartbeat() -> Heartbeat {
    Heartbeat {
        origin_site: "site-a".into(),
        sent_at_ms: 1_700_000_000_500,
    }
}

#[test]
fn encodes_a_heartbeat_as_documented() {
    let subject = routing_key("audrey.federation.{deployment}", HEARTBEAT_DEPLOYMENT);
    assert_eq!(subject, "audrey.federation._heartbeat");
    let msg = encode_heartbeat(&heartbeat(), &subject, 30_000);
    assert_eq!(msg.message_id, "site-a:hb:1700000000500");
    assert_eq!(msg.creation_time_ms, 1_700_000_000_500);
    assert!(!msg.durable);
    assert_eq!(msg.ttl_ms, Some(30_000));
    assert_eq!(
        msg.properties,
        vec![
            ("audrey_format".to_owned(), WireValue::U8(2)),
            ("event_kind".to_owned(), WireValue::Str("heartbeat".into())),
            ("origin_site".to_owned(), WireValue::Str("site-a".into())),
        ]
    );
    assert_eq!(
        String::from_utf8(msg.body.clone()).expect("utf-8"),
        r#"{"audrey_format":2,"origin_site":"site-a","captured_at_ms":1700000000500,"event":{"kind":"heartbeat"}}"#
    );
    assert_eq!(
        decode_inbound(&msg).expect("decodes"),
        Inbound::Heartbeat(heartbeat())
    );
    // A change decoder skips it like any kind it does not know.
    assert_eq!(
        decode(&msg).expect_err("not a change").as_str(),
        "unknown_kind"
    );
    // A heartbeat id never equals a change id.
    assert_ne!(msg.message_id, params_change().message_id());
}

#[test]
fn changes_still_decode_through_decode_inbound() {
    assert_eq!(
        decode_inbound(&good()).expect("decodes"),
        Inbound::Change(params_change())
    );
}

#[test]
fn a_bad_heartbeat_is_refused() {
    let good_hb = || encode_heartbeat(&heartbeat(), "s", 1000);
    let cases: Vec<(&str, WireMessage, &str)> = vec![
        (
            "wrong id",
            WireMessage {
                message_id: "site-a:7".into(),
                ..good_hb()
            },
            "mismatch",
        ),
        (
            "origin disagrees",
            with_prop(
                good_hb(),
                "origin_site",
                Some(WireValue::Str("site-b".into())),
            ),
            "mismatch",
        ),
        (
            "no origin",
            with_prop(good_hb(), "origin_site", None),
            "missing_property",
        ),
        (
            "body of a change",
            WireMessage {
                body: good().body,
                ..good_hb()
            },
            "bad_body",
        ),
        (
            "no time",
            with_body(good_hb(), |v| {
                drop(v.as_object_mut().map(|o| o.remove("captured_at_ms")))
            }),
            "bad_body",
        ),
        (
            "version 3",
            with_prop(good_hb(), "audrey_format", Some(WireValue::U8(3))),
            "unsupported_version",
        ),
        (
            "empty origin",
            with_body(
                WireMessage {
                    message_id: ":hb:1700000000500".into(),
                    ..with_prop(
                        good_hb(),
                        "origin_site",
                        Some(WireValue::Str(String::new())),
                    )
                },
                |v| v["origin_site"] = json!(""),
            ),
            "invalid",
        ),
    ];
    for (what, msg, label) in cases {
        let err = decode_inbound(&msg).expect_err(what);
        assert_eq!(err.as_str(), label, "{what}: {err}");
    }
}

#[test]
fn an_unknown_kind_is_still_refused() {
    for kind in ["ping", "Heartbeat", "heartbeats", ""] {
        let msg = with_prop(good(), "event_kind", Some(WireValue::Str(kind.into())));
        let err = decode_inbound(&msg).expect_err(kind);
        assert_eq!(err, WireError::UnknownKind(kind.to_owned()));
    }
}

#[test]
fn a_body_over_the_limit_is_refused_after_the_version() {
    let mut msg = good();
    msg.body = vec![b' '; MAX_BODY_BYTES + 1];
    let err = decode(&msg).expect_err("too large");
    assert_eq!(err.as_str(), "too_large", "{err}");
    msg.properties[0].1 = WireValue::U8(9);
    assert_eq!(
        decode(&msg).expect_err("version").as_str(),
        "unsupported_version"
    );
}
