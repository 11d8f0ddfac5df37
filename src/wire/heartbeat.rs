//! The heartbeat: a site's publisher saying "I am here, and my clock reads T" on the same path
//! as its changes, so that a receiving site can tell a quiet origin from a stalled link.
//!
//! Owns the heartbeat's wire shape (properties, body, message id, subject placeholder) and its
//! decoding. A heartbeat is deliberately *not* a [`crate::change::Change`]: it has no outbox
//! position, instance or deployment, must never reach the store, the replay decisions, the
//! high-water marks or the change counters, and a separate type makes every such path refuse it
//! at compile time instead of by a runtime check on an `Event` variant. It must not import a
//! broker client, nor know what a receiver does with a heartbeat.

use serde::{Deserialize, Serialize};

use super::{
    agree, prop, shorten, Props, WireError, WireMessage, WireValue, CONTENT_TYPE, FORMAT_VERSION,
};

/// The `event_kind` of a heartbeat.
pub const HEARTBEAT_KIND: &str = "heartbeat";
/// What replaces `{deployment}` in the routing key template for a heartbeat, e.g.
/// `audrey.federation._heartbeat`: every site bound to `audrey.federation.#` receives it.
/// Conductor's deployment ids are uuids, so this never names a real deployment.
pub const HEARTBEAT_DEPLOYMENT: &str = "_heartbeat";

/// One heartbeat of a site's publisher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heartbeat {
    /// The site that sent it.
    pub origin_site: String,
    /// Its send time at the origin, ms since the Unix epoch (`captured_at_ms` on the wire).
    pub sent_at_ms: u64,
}

impl Heartbeat {
    /// `<origin_site>:hb:<sent_at_ms>`. A change's id is `<origin_site>:<digits>` and a site
    /// id never contains `:`, so the two can never collide.
    pub fn message_id(&self) -> String {
        format!("{}:hb:{}", self.origin_site, self.sent_at_ms)
    }
}

/// Body of a heartbeat (`audrey_format` 1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct HeartbeatV1 {
    audrey_format: u64,
    origin_site: String,
    captured_at_ms: u64,
    event: HeartbeatEventV1,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum HeartbeatEventV1 {
    Heartbeat,
}

/// Encodes a heartbeat: not durable, expiring after `ttl_ms` in the broker. `subject` is
/// `routing_key(template, HEARTBEAT_DEPLOYMENT)`.
pub fn encode_heartbeat(hb: &Heartbeat, subject: &str, ttl_ms: u64) -> WireMessage {
    encode_heartbeat_as(hb, subject, ttl_ms, FORMAT_VERSION)
}

/// [`encode_heartbeat`] in `format` (the heartbeat is the same in 1 and 2).
pub fn encode_heartbeat_as(hb: &Heartbeat, subject: &str, ttl_ms: u64, format: u8) -> WireMessage {
    let format = if format < 2 { 1 } else { FORMAT_VERSION };
    let body = HeartbeatV1 {
        audrey_format: u64::from(format),
        origin_site: hb.origin_site.clone(),
        captured_at_ms: hb.sent_at_ms,
        event: HeartbeatEventV1::Heartbeat,
    };
    WireMessage {
        message_id: hb.message_id(),
        subject: subject.to_owned(),
        creation_time_ms: hb.sent_at_ms,
        content_type: CONTENT_TYPE.to_owned(),
        durable: false,
        ttl_ms: Some(ttl_ms),
        properties: vec![
            (prop::AUDREY_FORMAT.to_owned(), WireValue::U8(format)),
            (
                prop::EVENT_KIND.to_owned(),
                WireValue::Str(HEARTBEAT_KIND.to_owned()),
            ),
            (
                prop::ORIGIN_SITE.to_owned(),
                WireValue::Str(hb.origin_site.clone()),
            ),
        ],
        // Plain strings and integers always serialise.
        body: serde_json::to_vec(&body).expect("the heartbeat body always serialises"),
    }
}

/// The rest of `decode_inbound` once `event_kind` said heartbeat (version and content type
/// already checked). Other properties are ignored.
pub(super) fn decode(
    msg: &WireMessage,
    props: &Props<'_>,
    format: u64,
) -> Result<Heartbeat, WireError> {
    let origin_site = props
        .string(prop::ORIGIN_SITE)?
        .ok_or(WireError::MissingProperty(prop::ORIGIN_SITE))?;
    let body: HeartbeatV1 =
        serde_json::from_slice(&msg.body).map_err(|e| WireError::Body(shorten(&e.to_string())))?;
    agree("audrey_format", &format, &body.audrey_format)?;
    agree("origin_site", &origin_site, &body.origin_site.as_str())?;
    let hb = Heartbeat {
        origin_site: body.origin_site,
        sent_at_ms: body.captured_at_ms,
    };
    agree(
        "message_id",
        &msg.message_id.as_str(),
        &hb.message_id().as_str(),
    )?;
    if hb.origin_site.is_empty() {
        return Err(WireError::Invalid("origin_site is empty".to_owned()));
    }
    Ok(hb)
}
