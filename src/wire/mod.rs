//! The versioned wire format of a [`Change`]: what goes on the broker, broker-neutral.
//!
//! Owns [`WireMessage`] (message id, subject, creation time, content type, durability,
//! time to live, application properties, body), [`encode`], [`decode`], the heartbeat
//! ([`Heartbeat`], [`encode_heartbeat`], [`decode_inbound`]) and the routing key / subject
//! template. It must not import fe2o3-amqp or any broker client: the AMQP module converts a
//! [`WireMessage`] to and from an AMQP 1.0 message. `docs/wire-format.md` is the spec; keep
//! the two in step. Decoding never panics, whatever the input.

mod body;

use std::collections::HashMap;

use body::BodyV1;

use crate::change::Change;

pub use heartbeat::{
    encode_heartbeat, encode_heartbeat_as, Heartbeat, HEARTBEAT_DEPLOYMENT, HEARTBEAT_KIND,
};

mod heartbeat;

/// The `audrey_format` this build writes by default (`amqp.wire_format`).
pub const FORMAT_VERSION: u8 = 2;
/// The `audrey_format` versions this build reads (and can write, for a rolling upgrade).
pub const FORMATS: [u8; 2] = [1, 2];
/// Content type of the body.
pub const CONTENT_TYPE: &str = "application/json";
/// Largest body [`decode_inbound`] reads (16 MiB): a change carries at most one request body of
/// `proxy.capture_body_limit` (1 MiB by default), JSON-escaped; anything larger is hostile.
pub const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;
/// Placeholder replaced in the routing key template.
pub const DEPLOYMENT_PLACEHOLDER: &str = "{deployment}";

/// Application property names.
pub mod prop {
    pub const AUDREY_FORMAT: &str = "audrey_format";
    pub const EVENT_KIND: &str = "event_kind";
    pub const ORIGIN_SITE: &str = "origin_site";
    pub const DEPLOYMENT: &str = "deployment";
    pub const INSTANCE: &str = "instance";
    pub const API_VERSION: &str = "api_version";
    pub const INSTANCE_SEQ: &str = "instance_seq";
    pub const ORIGIN_SEQ: &str = "origin_seq";
    pub const INCARNATION: &str = "incarnation";
    pub const VERSION_MS: &str = "version_ms";
    pub const CLIENT_ADDR: &str = "client_addr";
}

/// Change kinds of version 1. `heartbeat` ([`HEARTBEAT_KIND`]) is a skippable liveness kind
/// that carries no change: [`decode`] refuses it as unknown, [`decode_inbound`] reads it.
pub const EVENT_KINDS: [&str; 3] = ["params", "registration", "deletion"];

/// What an inbound message is: a change to replay, or a heartbeat of a site's publisher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound {
    Change(Change),
    Heartbeat(Heartbeat),
}

/// A broker-neutral message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireMessage {
    /// `<origin_site>:<origin_seq>`, unique across the federation.
    pub message_id: String,
    /// The routing key (see [`routing_key`]); consumers may not see it.
    pub subject: String,
    /// Capture time, milliseconds since the Unix epoch (informational).
    pub creation_time_ms: u64,
    pub content_type: String,
    /// True for changes (they must survive a broker restart); false for heartbeats.
    pub durable: bool,
    /// Time to live in the broker, milliseconds: `None` for changes (they never expire), set
    /// for heartbeats (a stale one is worthless).
    pub ttl_ms: Option<u64>,
    /// Application properties, in a stable order; names are unique.
    pub properties: Vec<(String, WireValue)>,
    pub body: Vec<u8>,
}

/// An application property value. AMQP 1.0 types: `string`, `ulong`, `ubyte`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WireValue {
    Str(String),
    U64(u64),
    U8(u8),
    /// A value of a type this format never writes, named by its type (for error messages).
    Unsupported(String),
}

impl WireValue {
    fn type_name(&self) -> String {
        match self {
            WireValue::Str(_) => "string".into(),
            WireValue::U64(_) => "ulong".into(),
            WireValue::U8(_) => "ubyte".into(),
            WireValue::Unsupported(t) => shorten(t),
        }
    }

    fn as_uint(&self) -> Option<u64> {
        match self {
            WireValue::U64(v) => Some(*v),
            WireValue::U8(v) => Some(u64::from(*v)),
            _ => None,
        }
    }
}

/// Why a message is not a change this build can replay.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// `None`: no `audrey_format`, or not an unsigned integer.
    #[error("{}", unsupported(.0))]
    UnsupportedVersion(Option<u64>),
    #[error("message property `{0}` is missing")]
    MissingProperty(&'static str),
    #[error("message property `{name}` must be a {expected}, found a {found}")]
    PropertyType {
        name: &'static str,
        expected: &'static str,
        found: String,
    },
    #[error("message property `{0}` appears more than once")]
    DuplicateProperty(String),
    #[error("body of {0} bytes is over the limit of {MAX_BODY_BYTES} bytes")]
    TooLarge(usize),
    #[error("content type is {0:?}, expected \"application/json\"")]
    ContentType(String),
    #[error(
        "unknown event_kind {0:?} (audrey_format 1 and 2 know params, registration, deletion)"
    )]
    UnknownKind(String),
    #[error("body is not an audrey_format 1 or 2 JSON document: {0}")]
    Body(String),
    #[error("`{field}` is {properties} in the message but {body} in the body")]
    Mismatch {
        field: &'static str,
        properties: String,
        body: String,
    },
    #[error("invalid change: {0}")]
    Invalid(String),
}

fn unsupported(v: &Option<u64>) -> String {
    match v {
        None => "message has no usable audrey_format property (an unsigned integer); \
             this build reads audrey_format 1 and 2"
            .to_owned(),
        Some(v) => format!(
            "audrey_format {v} is not supported; this build reads audrey_format 1 and 2 \
             (a newer sidecar wrote it: upgrade this site)"
        ),
    }
}

impl WireError {
    /// Stable label value for metrics.
    pub fn as_str(&self) -> &'static str {
        match self {
            WireError::UnsupportedVersion(_) => "unsupported_version",
            WireError::MissingProperty(_) => "missing_property",
            WireError::PropertyType { .. } => "property_type",
            WireError::DuplicateProperty(_) => "duplicate_property",
            WireError::TooLarge(_) => "too_large",
            WireError::ContentType(_) => "content_type",
            WireError::UnknownKind(_) => "unknown_kind",
            WireError::Body(_) => "bad_body",
            WireError::Mismatch { .. } => "mismatch",
            WireError::Invalid(_) => "invalid",
        }
    }
}

/// The routing key (AMQP `subject`) of a deployment: `template` with every `{deployment}`
/// replaced, e.g. `audrey.federation.{deployment}` gives `audrey.federation.D1`.
pub fn routing_key(template: &str, deployment: &str) -> String {
    template.replace(DEPLOYMENT_PLACEHOLDER, deployment)
}

/// Encodes a change in [`FORMAT_VERSION`]. `subject` is the routing key (see [`routing_key`]).
pub fn encode(change: &Change, subject: &str) -> WireMessage {
    encode_as(change, subject, FORMAT_VERSION)
}

/// Encodes a change in `format` (one of [`FORMATS`]; 1 during a rolling upgrade, while some
/// sites still read only 1: it leaves the incarnation and the version's time out). A change
/// without an incarnation (one read from format 1) is always written as format 1.
pub fn encode_as(change: &Change, subject: &str, format: u8) -> WireMessage {
    let format = if format < 2 || change.incarnation.is_empty() {
        1
    } else {
        FORMAT_VERSION
    };
    let body = BodyV1::of(change, format);
    let kind = body.event.kind();
    let mut properties = vec![
        (prop::AUDREY_FORMAT.to_owned(), WireValue::U8(format)),
        (prop::EVENT_KIND.to_owned(), WireValue::Str(kind.to_owned())),
        (
            prop::ORIGIN_SITE.to_owned(),
            WireValue::Str(change.origin_site.clone()),
        ),
    ];
    let optional = [
        (prop::DEPLOYMENT, &change.deployment),
        (prop::INSTANCE, &change.instance),
    ];
    for (name, value) in optional {
        if let Some(v) = value {
            properties.push((name.to_owned(), WireValue::Str(v.clone())));
        }
    }
    properties.extend([
        (
            prop::API_VERSION.to_owned(),
            WireValue::U8(change.api_version),
        ),
        (
            prop::INSTANCE_SEQ.to_owned(),
            WireValue::U64(change.instance_seq),
        ),
        (
            prop::ORIGIN_SEQ.to_owned(),
            WireValue::U64(change.origin_seq),
        ),
    ]);
    if let Some(addr) = &change.client_addr {
        properties.push((prop::CLIENT_ADDR.to_owned(), WireValue::Str(addr.clone())));
    }
    if format >= 2 {
        properties.push((
            prop::INCARNATION.to_owned(),
            WireValue::Str(body.incarnation.clone()),
        ));
        properties.push((prop::VERSION_MS.to_owned(), WireValue::U64(body.version_ms)));
    }
    let message_id = if format >= 2 {
        change.message_id()
    } else {
        format!("{}:{}", change.origin_site, change.origin_seq)
    };
    WireMessage {
        message_id,
        subject: subject.to_owned(),
        creation_time_ms: change.captured_at_ms,
        content_type: CONTENT_TYPE.to_owned(),
        durable: true,
        ttl_ms: None,
        properties,
        // Serialising plain strings, integers and booleans cannot fail.
        body: serde_json::to_vec(&body).expect("the wire body always serialises"),
    }
}

/// Decodes and checks a change: version first, then properties, body, and their agreement.
/// A heartbeat is refused as [`WireError::UnknownKind`] (it is no change); consumers that
/// want heartbeats call [`decode_inbound`].
pub fn decode(msg: &WireMessage) -> Result<Change, WireError> {
    match decode_inbound(msg)? {
        Inbound::Change(change) => Ok(change),
        Inbound::Heartbeat(_) => Err(WireError::UnknownKind(HEARTBEAT_KIND.to_owned())),
    }
}

/// Decodes and checks a change or a heartbeat, with the checks of [`decode`] in its order.
pub fn decode_inbound(msg: &WireMessage) -> Result<Inbound, WireError> {
    let props = Props::index(&msg.properties)?;
    let format = match props.get(prop::AUDREY_FORMAT).map(WireValue::as_uint) {
        Some(Some(v)) if FORMATS.iter().any(|&f| u64::from(f) == v) => v,
        Some(found) => return Err(WireError::UnsupportedVersion(found)),
        None => return Err(WireError::UnsupportedVersion(None)),
    };
    if msg.body.len() > MAX_BODY_BYTES {
        return Err(WireError::TooLarge(msg.body.len()));
    }
    let media_type = msg
        .content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim();
    if !media_type.eq_ignore_ascii_case(CONTENT_TYPE) {
        return Err(WireError::ContentType(shorten(&msg.content_type)));
    }
    let kind = props
        .string(prop::EVENT_KIND)?
        .ok_or(WireError::MissingProperty(prop::EVENT_KIND))?;
    if kind == HEARTBEAT_KIND {
        return heartbeat::decode(msg, &props, format).map(Inbound::Heartbeat);
    }
    if !EVENT_KINDS.contains(&kind) {
        return Err(WireError::UnknownKind(shorten(kind)));
    }
    let origin_site = props
        .string(prop::ORIGIN_SITE)?
        .ok_or(WireError::MissingProperty(prop::ORIGIN_SITE))?;
    let origin_seq = props.uint(prop::ORIGIN_SEQ)?;
    let instance_seq = props.uint(prop::INSTANCE_SEQ)?;
    let api_version = props.uint(prop::API_VERSION)?;
    let deployment = props.string(prop::DEPLOYMENT)?;
    let instance = props.string(prop::INSTANCE)?;
    let client_addr = props.string(prop::CLIENT_ADDR)?;
    let (incarnation, version_ms) = if format >= 2 {
        let incarnation = props
            .string(prop::INCARNATION)?
            .ok_or(WireError::MissingProperty(prop::INCARNATION))?;
        if incarnation.is_empty() {
            return Err(WireError::Invalid(
                "incarnation is empty (audrey_format 2 needs one)".into(),
            ));
        }
        (incarnation, props.uint(prop::VERSION_MS)?)
    } else {
        ("", 0)
    };

    let body: BodyV1 =
        serde_json::from_slice(&msg.body).map_err(|e| WireError::Body(shorten(&e.to_string())))?;
    agree("audrey_format", &format, &body.audrey_format)?;
    agree("incarnation", &incarnation, &body.incarnation.as_str())?;
    agree("version_ms", &version_ms, &body.version_ms)?;
    agree("event_kind", &kind, &body.event.kind())?;
    agree("origin_site", &origin_site, &body.origin_site.as_str())?;
    agree("origin_seq", &origin_seq, &body.origin_seq)?;
    agree("instance_seq", &instance_seq, &body.instance_seq)?;
    agree("api_version", &api_version, &u64::from(body.api_version))?;
    agree("deployment", &deployment, &body.deployment.as_deref())?;
    agree("instance", &instance, &body.instance.as_deref())?;
    agree("client_addr", &client_addr, &body.client_addr.as_deref())?;
    let change = Change::from(body);
    agree(
        "message_id",
        &msg.message_id.as_str(),
        &change.message_id().as_str(),
    )?;
    validate(&change)?;
    Ok(Inbound::Change(change))
}

/// What a replay relies on, beyond agreement.
fn validate(c: &Change) -> Result<(), WireError> {
    use crate::change::Event;
    let invalid = |m: &str| Err(WireError::Invalid(m.to_owned()));
    if c.origin_site.is_empty() {
        return invalid("origin_site is empty");
    }
    if c.incarnation.contains(':') {
        return invalid("incarnation contains ':'");
    }
    if !(1..=2).contains(&c.api_version) {
        return Err(WireError::Invalid(format!(
            "api_version {} is not 1 or 2",
            c.api_version
        )));
    }
    let needs_instance = !matches!(c.event, Event::Deletion);
    let needs_deployment = !matches!(c.event, Event::Params { .. });
    if needs_instance && c.instance.as_deref().is_none_or(str::is_empty) {
        return Err(WireError::Invalid(format!(
            "a {} change needs an instance",
            c.event.kind()
        )));
    }
    if needs_deployment && c.deployment.as_deref().is_none_or(str::is_empty) {
        return Err(WireError::Invalid(format!(
            "a {} change needs a deployment",
            c.event.kind()
        )));
    }
    Ok(())
}

fn agree<T: PartialEq + Shown>(field: &'static str, props: &T, body: &T) -> Result<(), WireError> {
    if props == body {
        return Ok(());
    }
    Err(WireError::Mismatch {
        field,
        properties: props.shown(),
        body: body.shown(),
    })
}

/// How a value reads in a mismatch message.
trait Shown {
    fn shown(&self) -> String;
}

impl Shown for u64 {
    fn shown(&self) -> String {
        self.to_string()
    }
}

impl Shown for &str {
    fn shown(&self) -> String {
        format!("{:?}", shorten(self))
    }
}

impl Shown for Option<&str> {
    fn shown(&self) -> String {
        self.map_or_else(|| "absent".to_owned(), |s| s.shown())
    }
}

/// Application properties by name, duplicates refused.
struct Props<'a>(HashMap<&'a str, &'a WireValue>);

impl<'a> Props<'a> {
    fn index(list: &'a [(String, WireValue)]) -> Result<Self, WireError> {
        let mut map = HashMap::with_capacity(list.len());
        for (name, value) in list {
            if map.insert(name.as_str(), value).is_some() {
                return Err(WireError::DuplicateProperty(shorten(name)));
            }
        }
        Ok(Props(map))
    }

    fn get(&self, name: &str) -> Option<&'a WireValue> {
        self.0.get(name).copied()
    }

    fn string(&self, name: &'static str) -> Result<Option<&'a str>, WireError> {
        match self.get(name) {
            None => Ok(None),
            Some(WireValue::Str(s)) => Ok(Some(s.as_str())),
            Some(other) => Err(WireError::PropertyType {
                name,
                expected: "string",
                found: other.type_name(),
            }),
        }
    }

    fn uint(&self, name: &'static str) -> Result<u64, WireError> {
        let value = self.get(name).ok_or(WireError::MissingProperty(name))?;
        value.as_uint().ok_or_else(|| WireError::PropertyType {
            name,
            expected: "ulong or ubyte",
            found: value.type_name(),
        })
    }
}

/// At most 64 characters of hostile text in an error message.
fn shorten(s: &str) -> String {
    match s.char_indices().nth(64) {
        Some((cut, _)) => format!("{}...", &s[..cut]),
        None => s.to_owned(),
    }
}

#[cfg(test)]
pub(crate) mod tests;
