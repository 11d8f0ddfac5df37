//! Mapping between the broker-neutral [`WireMessage`] and an AMQP 1.0 message of fe2o3-amqp.
//!
//! Owns the section layout `docs/wire-format.md` prescribes: `header.durable` and `ttl`, `message-id`
//! (string), `subject`, `content-type` (symbol), `creation-time` (timestamp, ms), the
//! application properties (`ubyte`/`ulong`/`string` ↔ [`WireValue`]) and exactly one `data`
//! section as the body. It must not judge a message's content (that is `wire::decode`), nor
//! send, receive or settle anything.

use fe2o3_amqp::types::messaging::{
    ApplicationProperties, Body, Data, Header, Message, MessageId, Properties,
};
use fe2o3_amqp::types::primitives::{Binary, SimpleValue, Timestamp, Value};

use crate::wire::{self, WireError, WireMessage, WireValue};

/// Why a received AMQP message is not a [`WireMessage`] (before `wire::decode` looks at it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("the body must be exactly one data section, found {0}")]
    BodyShape(String),
    #[error("{0}")]
    Wire(#[from] WireError),
}

impl CodecError {
    /// Stable metric label.
    pub fn as_str(&self) -> &'static str {
        match self {
            CodecError::BodyShape(_) => "body_sections",
            CodecError::Wire(e) => e.as_str(),
        }
    }
}

/// The AMQP message for `w`: durable, body in one data section.
pub fn to_message(w: &WireMessage) -> Message<Data> {
    let mut props = ApplicationProperties::builder();
    for (name, value) in &w.properties {
        props = match value {
            WireValue::Str(s) => props.insert(name.clone(), s.clone()),
            WireValue::U64(v) => props.insert(name.clone(), *v),
            WireValue::U8(v) => props.insert(name.clone(), *v),
            // Never written by `wire::encode`; an unknown type has no AMQP value to send.
            WireValue::Unsupported(_) => props,
        };
    }
    let created = i64::try_from(w.creation_time_ms).unwrap_or(i64::MAX);
    Message::builder()
        .header(
            Header::builder()
                .durable(w.durable)
                .ttl(w.ttl_ms.map(|t| u32::try_from(t).unwrap_or(u32::MAX)))
                .build(),
        )
        .properties(
            Properties::builder()
                .message_id(w.message_id.clone())
                .subject(w.subject.clone())
                .content_type(w.content_type.clone())
                .creation_time(Timestamp::from_milliseconds(created))
                .build(),
        )
        .application_properties(props.build())
        .data(Binary::from(w.body.clone()))
        .build()
}

/// The [`WireMessage`] carried by a received message. A message whose body is not exactly one
/// data section is refused, but a wrong `audrey_format` is still reported first, as the spec says.
pub fn from_message(m: &Message<Body<Value>>) -> Result<WireMessage, CodecError> {
    let props = m.properties.as_ref();
    let mut wire_msg = WireMessage {
        message_id: match props.and_then(|p| p.message_id.as_ref()) {
            Some(MessageId::String(s)) => s.clone(),
            Some(other) => format!("{other:?}"),
            None => String::new(),
        },
        subject: props.and_then(|p| p.subject.clone()).unwrap_or_default(),
        creation_time_ms: props
            .and_then(|p| p.creation_time.as_ref())
            .map_or(0, |t| u64::try_from(t.milliseconds()).unwrap_or(0)),
        content_type: props
            .and_then(|p| p.content_type.as_ref())
            .map(|s| s.0.clone())
            .unwrap_or_default(),
        durable: m.header.as_ref().is_some_and(|h| h.durable),
        ttl_ms: m.header.as_ref().and_then(|h| h.ttl).map(u64::from),
        properties: m
            .application_properties
            .as_ref()
            .map(|ap| {
                ap.0.iter()
                    .map(|(k, v)| (k.clone(), wire_value(v)))
                    .collect()
            })
            .unwrap_or_default(),
        body: Vec::new(),
    };
    match single_data(&m.body) {
        Ok(bytes) => {
            wire_msg.body = bytes.to_vec();
            Ok(wire_msg)
        }
        Err(shape) => match wire::decode(&wire_msg) {
            Err(e @ WireError::UnsupportedVersion(_)) => Err(e.into()),
            _ => Err(CodecError::BodyShape(shape)),
        },
    }
}

/// Decodes the bytes of a bare AMQP message the way the receiver does, then maps it as
/// [`from_message`] does. `None`: the bytes are no AMQP message (the receiver then fails the
/// delivery with a decode error, which the subscriber dead-letters). For the fuzzer and its
/// corpus test (`crate::fuzzing`); never panics, whatever the bytes.
pub fn from_encoded(bytes: &[u8]) -> Option<Result<WireMessage, CodecError>> {
    use fe2o3_amqp::types::messaging::message::__private::Deserializable;
    let message: Deserializable<Message<Body<Value>>> = serde_amqp::from_slice(bytes).ok()?;
    Some(from_message(&message.0))
}

/// The bytes a sender puts on the wire for `w` (what [`from_encoded`] reads back).
pub fn to_encoded(w: &WireMessage) -> Vec<u8> {
    use fe2o3_amqp::types::messaging::message::__private::Serializable;
    // Strings, integers and binaries always encode.
    serde_amqp::to_vec(&Serializable(to_message(w))).unwrap_or_default()
}

/// The body bytes as received, for an inbound dead letter: the data sections concatenated,
/// or the AMQP encoding of any other body.
pub fn raw_body(m: &Message<Body<Value>>) -> Vec<u8> {
    match &m.body {
        Body::Data(batch) => batch.iter().flat_map(|d| d.0.iter().copied()).collect(),
        Body::Empty => Vec::new(),
        Body::Value(v) => serde_amqp::to_vec(&v.0).unwrap_or_default(),
        Body::Sequence(batch) => batch
            .iter()
            .flat_map(|s| serde_amqp::to_vec(&s.0).unwrap_or_default())
            .collect(),
    }
}

fn single_data(body: &Body<Value>) -> Result<&[u8], String> {
    match body {
        Body::Data(batch) if batch.len() == 1 => batch
            .iter()
            .next()
            .map(|d| d.0.as_slice())
            .ok_or_else(|| "no data section".into()),
        Body::Data(batch) => Err(format!("{} data sections", batch.len())),
        Body::Value(_) => Err("an amqp-value section".into()),
        Body::Sequence(_) => Err("amqp-sequence sections".into()),
        Body::Empty => Err("no body section".into()),
    }
}

fn wire_value(v: &SimpleValue) -> WireValue {
    let name = match v {
        SimpleValue::String(s) => return WireValue::Str(s.clone()),
        SimpleValue::Ulong(n) => return WireValue::U64(*n),
        SimpleValue::Ubyte(n) => return WireValue::U8(*n),
        SimpleValue::Null => "null",
        SimpleValue::Bool(_) => "boolean",
        SimpleValue::Ushort(_) => "ushort",
        SimpleValue::Uint(_) => "uint",
        SimpleValue::Byte(_) => "byte",
        SimpleValue::Short(_) => "short",
        SimpleValue::Int(_) => "int",
        SimpleValue::Long(_) => "long",
        SimpleValue::Float(_) => "float",
        SimpleValue::Double(_) => "double",
        SimpleValue::Timestamp(_) => "timestamp",
        SimpleValue::Uuid(_) => "uuid",
        SimpleValue::Binary(_) => "binary",
        SimpleValue::Symbol(_) => "symbol",
        _ => "other",
    };
    WireValue::Unsupported(name.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::tests::params_change as change;

    /// Serialises as a sender would and reads back as a receiver would.
    fn over_the_wire(m: Message<Data>) -> Message<Body<Value>> {
        use fe2o3_amqp::types::messaging::message::__private::Serializable;
        let bytes = serde_amqp::to_vec(&Serializable(m)).expect("encode");
        let back: fe2o3_amqp::types::messaging::message::__private::Deserializable<
            Message<Body<Value>>,
        > = serde_amqp::from_slice(&bytes).expect("decode");
        back.0
    }

    #[test]
    fn round_trips_through_amqp_encoding() {
        let c = change();
        let w = wire::encode(&c, "audrey.federation.D1");
        let m = to_message(&w);
        assert!(m.header.as_ref().is_some_and(|h| h.durable));
        let back = from_message(&over_the_wire(m)).expect("codec");
        assert_eq!(back, w);
        assert_eq!(wire::decode(&back).expect("decode"), c);
    }

    #[test]
    fn a_heartbeat_round_trips_with_its_ttl() {
        let hb = wire::Heartbeat {
            origin_site: "site-a".into(),
            sent_at_ms: 1_700_000_000_123,
        };
        let w = wire::encode_heartbeat(&hb, "audrey.federation._heartbeat", 30_000);
        let m = to_message(&w);
        let header = m.header.as_ref().expect("header");
        assert!(!header.durable);
        assert_eq!(header.ttl, Some(30_000));
        let back = from_message(&over_the_wire(m)).expect("codec");
        assert_eq!(back, w);
        assert_eq!(
            wire::decode_inbound(&back).expect("decode"),
            wire::Inbound::Heartbeat(hb)
        );
    }

    #[test]
    fn ubyte_and_ulong_keep_their_types() {
        let m = to_message(&wire::encode(&change(), "s"));
        let ap = &m.application_properties.as_ref().expect("app props").0;
        assert_eq!(ap.get("audrey_format"), Some(&SimpleValue::Ubyte(2)));
        assert_eq!(ap.get("origin_seq"), Some(&SimpleValue::Ulong(42)));
        assert_eq!(
            ap.get("event_kind"),
            Some(&SimpleValue::String("params".into()))
        );
    }

    #[test]
    fn a_value_body_is_refused_but_the_version_comes_first() {
        let junk: Message<Body<Value>> = over_the_wire_value("junk");
        assert_eq!(
            from_message(&junk).unwrap_err().as_str(),
            "unsupported_version"
        );
        let mut w = wire::encode(&change(), "s");
        w.body.clear();
        let mut m = over_the_wire(to_message(&w));
        m.body = Body::Value(fe2o3_amqp::types::messaging::AmqpValue(Value::String(
            "x".into(),
        )));
        let err = from_message(&m).unwrap_err();
        assert_eq!(err.as_str(), "body_sections", "{err}");
        assert_eq!(
            raw_body(&m),
            serde_amqp::to_vec(&Value::String("x".into())).expect("enc")
        );
    }

    fn over_the_wire_value(s: &str) -> Message<Body<Value>> {
        Message::builder()
            .body(Body::Value(fe2o3_amqp::types::messaging::AmqpValue(
                Value::String(s.into()),
            )))
            .build()
    }
}
