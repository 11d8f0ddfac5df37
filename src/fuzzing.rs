//! Entry points of the fuzz targets (`fuzz/`, cargo-fuzz) and of their corpus replay in CI
//! (`tests/fuzz_corpus.rs`): one function per parser that reads hostile input, taking raw bytes.
//!
//! Owns turning fuzzer bytes into the parsers' inputs and the invariants checked on every input.
//! The parsers themselves never panic on bad input; a function here panics only when an
//! invariant breaks (a bug the fuzzer reports, with the input that shows it). It must not do
//! I/O nor hold any logic the sidecar uses: it only calls the public parsers.
//!
//! The inputs are plain bytes so that the committed corpus stays readable:
//! - [`audrey_data`]: the form value of `PUT /params` (lossy UTF-8, as capture reads it);
//! - [`instance_config`]: the instance-config XML of `POST /configs`;
//! - [`route`]: a method byte, the request target up to the first `\n`, then the body;
//! - [`wire_decode`]: a first byte `0` and the AMQP encoding of a message (what the broker
//!   delivers), or else a [`WireMessage`] in the line format of [`wire_message_to_bytes`].

use http::Method;

use crate::amqp::codec;
use crate::capture::{self, audrey_data as bar, instance_config as xml, Route};
use crate::change::{Change, Event};
use crate::wire::{self, Inbound, WireMessage, WireValue};

/// Largest error text a hostile input may produce (hostile text is cut to 64 characters).
const MAX_ERROR_LEN: usize = 1024;

/// `audrey_data` parsing: names unique and free of `|` and `&`; every pair with a value
/// survives encode-then-parse; the form-field reader gives the same value back.
pub fn audrey_data(input: &[u8]) {
    let text = String::from_utf8_lossy(input);
    let parsed = bar::parse(&text);
    let mut names: Vec<&str> = parsed.values.iter().map(|(n, _)| n.as_str()).collect();
    assert!(names.iter().all(|n| !n.contains(['|', '&'])), "{parsed:?}");
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), parsed.values.len(), "names repeat: {parsed:?}");
    // `name&` carries no value in the server's format: an empty value does not round-trip.
    let valued: Vec<(String, String)> = parsed
        .values
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .cloned()
        .collect();
    let again = bar::parse(&bar::encode(&valued, parsed.return_codes));
    assert_eq!(again.values, valued);
    assert_eq!(again.return_codes, parsed.return_codes);
    let form: String = form_urlencoded::byte_serialize(input).collect();
    let body = format!("other=1&audrey_data={form}");
    let field = capture::form::field(body.as_bytes(), "audrey_data");
    assert_eq!(field.as_deref(), Some(text.as_ref()));
}

/// Instance-config reading: an accepted document has a deployment, and capture reads the
/// same document out of a `POST /configs` form body to the same change.
pub fn instance_config(input: &[u8]) {
    let Ok(text) = std::str::from_utf8(input) else {
        let body = form_body("data", input);
        let route = Route::PostConfigs {
            version: 1,
            instance: "I1".into(),
        };
        let refused = capture::capture_from(&route, &body, None, 0);
        assert!(refused.is_err(), "non-UTF-8 instance-config captured");
        return;
    };
    let parsed = xml::parse(text);
    if let Err(e) = &parsed {
        assert!(e.to_string().len() <= MAX_ERROR_LEN, "error too long");
    }
    let route = Route::PostConfigs {
        version: 2,
        instance: "I1".into(),
    };
    let captured = capture::capture_from(&route, &form_body("data", input), None, 7);
    match (&parsed, captured) {
        (Ok(cfg), Ok(capture)) => {
            assert!(!cfg.deployment.is_empty());
            assert_eq!(capture.deployment.as_deref(), Some(cfg.deployment.as_str()));
            match &capture.event {
                Event::Registration {
                    instance_config,
                    secret,
                } => {
                    assert_eq!(instance_config, text);
                    assert_eq!(secret, &cfg.secret);
                }
                other => panic!("a configs capture gave {other:?}"),
            }
            round_trip(&change_of(capture));
        }
        (Err(_), Err(_)) => {}
        (p, c) => panic!("parse and capture disagree: {p:?} vs {c:?}"),
    }
}

/// Route classification and capture of the request's body: a capturing route has a safe id
/// and a version of 1 or 2, a query string changes nothing, and a capture it produces goes on
/// the wire and comes back unchanged.
pub fn route(input: &[u8]) {
    let Some((&m, rest)) = input.split_first() else {
        return;
    };
    let method = match m % 8 {
        0 => Method::GET,
        1 => Method::PUT,
        2 => Method::POST,
        3 => Method::DELETE,
        4 => Method::HEAD,
        5 => Method::OPTIONS,
        6 => Method::PATCH,
        _ => Method::from_bytes(b"PROPFIND").unwrap_or(Method::GET),
    };
    let (target, body) = match rest.iter().position(|&b| b == b'\n') {
        Some(at) => (&rest[..at], &rest[at + 1..]),
        None => (rest, &[][..]),
    };
    let target = String::from_utf8_lossy(target);
    let route = capture::classify(&method, &target);
    let _ = capture::route_class(&target);
    let (version, id) = match &route {
        Route::Other => return,
        Route::PutParams { version, instance } | Route::PostConfigs { version, instance } => {
            (*version, instance)
        }
        Route::DeleteDeployment {
            version,
            deployment,
        } => (*version, deployment),
    };
    assert!((1..=2).contains(&version), "{route:?}");
    assert!(!id.is_empty() && id != "." && id != "..", "{route:?}");
    assert!(!id.contains(['/', '\\', '\0']), "{route:?}");
    if !target.contains(['?', '#']) {
        let with_query = format!("{target}?x=1&y");
        assert_eq!(capture::classify(&method, &with_query), route);
    }
    if let Ok(capture) = capture::capture_from(&route, body, Some("10.0.0.5".into()), 9) {
        round_trip(&change_of(capture));
    }
}

/// Inbound message decoding, from the AMQP bytes or from a [`WireMessage`]: never a panic, a
/// short error, and a decoded change or heartbeat encodes back to itself.
pub fn wire_decode(input: &[u8]) {
    let msg = match input.split_first() {
        Some((0, amqp)) => match codec::from_encoded(amqp) {
            None => return,
            Some(Err(e)) => {
                assert!(e.to_string().len() <= MAX_ERROR_LEN, "error too long");
                return;
            }
            Some(Ok(w)) => {
                if !w
                    .properties
                    .iter()
                    .any(|(_, v)| matches!(v, WireValue::Unsupported(_)))
                {
                    let again = codec::from_encoded(&codec::to_encoded(&w));
                    assert_eq!(again, Some(Ok(w.clone())), "AMQP mapping is not stable");
                }
                w
            }
        },
        _ => wire_message_from_bytes(input),
    };
    match wire::decode_inbound(&msg) {
        Ok(Inbound::Change(change)) => {
            assert_eq!(change.message_id(), msg.message_id);
            round_trip(&change);
        }
        Ok(Inbound::Heartbeat(hb)) => {
            let w = wire::encode_heartbeat(&hb, &msg.subject, 30_000);
            assert_eq!(wire::decode_inbound(&w), Ok(Inbound::Heartbeat(hb)));
        }
        Err(e) => assert!(e.to_string().len() <= MAX_ERROR_LEN, "error too long: {e}"),
    }
}

/// `decode(encode(c)) == c`, also through the AMQP encoding.
fn round_trip(change: &Change) {
    let w = wire::encode(change, "audrey.federation.fuzz");
    assert_eq!(wire::decode(&w).as_ref(), Ok(change), "wire round trip");
    let amqp = codec::from_encoded(&codec::to_encoded(&w));
    assert_eq!(amqp, Some(Ok(w)), "AMQP round trip");
}

/// The change a capture becomes at an origin site (the store adds these fields).
fn change_of(c: crate::change::Capture) -> Change {
    Change {
        origin_site: "site-a".into(),
        incarnation: "00000000000000a1".into(),
        origin_seq: 1,
        version_ms: c.captured_at_ms.max(1),
        instance_seq: 1,
        api_version: c.api_version,
        instance: c.instance,
        deployment: c.deployment,
        client_addr: c.client_addr,
        captured_at_ms: c.captured_at_ms,
        event: c.event,
    }
}

fn form_body(name: &str, value: &[u8]) -> Vec<u8> {
    let encoded: String = form_urlencoded::byte_serialize(value).collect();
    format!("{name}={encoded}").into_bytes()
}

/// A [`WireMessage`] as lines: message id, subject, creation time, content type, durable
/// (`1`), ttl (empty: none), then one `name<TAB>type<TAB>value` line per property (type `s`
/// string, `l` ulong, `b` ubyte, anything else an unsupported type), an empty line, the body.
pub fn wire_message_to_bytes(w: &WireMessage) -> Vec<u8> {
    let mut out = format!(
        "{}\n{}\n{}\n{}\n{}\n{}\n",
        w.message_id,
        w.subject,
        w.creation_time_ms,
        w.content_type,
        u8::from(w.durable),
        w.ttl_ms.map(|t| t.to_string()).unwrap_or_default()
    );
    for (name, value) in &w.properties {
        let (t, v) = match value {
            WireValue::Str(s) => ("s", s.clone()),
            WireValue::U64(n) => ("l", n.to_string()),
            WireValue::U8(n) => ("b", n.to_string()),
            WireValue::Unsupported(t) => (t.as_str(), String::new()),
        };
        out.push_str(&format!("{name}\t{t}\t{v}\n"));
    }
    out.push('\n');
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(&w.body);
    bytes
}

/// Reads the format of [`wire_message_to_bytes`] leniently: whatever the bytes, a message.
pub fn wire_message_from_bytes(input: &[u8]) -> WireMessage {
    let mut rest = input;
    let mut line = || -> String {
        let (l, r) = match rest.iter().position(|&b| b == b'\n') {
            Some(at) => (&rest[..at], &rest[at + 1..]),
            None => (rest, &[][..]),
        };
        rest = r;
        String::from_utf8_lossy(l).into_owned()
    };
    let message_id = line();
    let subject = line();
    let creation_time_ms = line().parse().unwrap_or(0);
    let content_type = line();
    let durable = line() == "1";
    let ttl_ms = line().parse().ok();
    let mut properties = Vec::new();
    loop {
        let l = line();
        if l.is_empty() {
            break;
        }
        let mut parts = l.splitn(3, '\t');
        let name = parts.next().unwrap_or_default().to_owned();
        let t = parts.next().unwrap_or_default();
        let v = parts.next().unwrap_or_default();
        let value = match t {
            "s" => WireValue::Str(v.to_owned()),
            "l" => v
                .parse()
                .map_or_else(|_| WireValue::Unsupported(t.into()), WireValue::U64),
            "b" => v
                .parse()
                .map_or_else(|_| WireValue::Unsupported(t.into()), WireValue::U8),
            other => WireValue::Unsupported(other.to_owned()),
        };
        properties.push((name, value));
    }
    WireMessage {
        message_id,
        subject,
        creation_time_ms,
        content_type,
        durable,
        ttl_ms,
        properties,
        body: rest.to_vec(),
    }
}
