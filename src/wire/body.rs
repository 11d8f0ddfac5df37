//! The JSON body of an `audrey_format` 1 or 2 message (2 adds `incarnation` and
//! `version_ms`; everything else is the same).
//!
//! Owns the body's serde shape, kept separate from `crate::change` on purpose: renaming a
//! field of the in-memory model must not silently change the wire. It must not know about
//! message properties or any broker; `wire/mod.rs` checks the two agree.

use serde::{Deserialize, Serialize};

use crate::change::{Change, Event};

/// Body of an `audrey_format` 1 or 2 message. Unknown fields are ignored (forward
/// compatible).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct BodyV1 {
    pub audrey_format: u64,
    pub origin_site: String,
    /// Format 2: the origin store's incarnation (required there; absent in format 1).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub incarnation: String,
    pub origin_seq: u64,
    /// Format 2: the version's origin time (required there; absent in format 1).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub version_ms: u64,
    pub instance_seq: u64,
    pub api_version: u8,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_addr: Option<String>,
    pub captured_at_ms: u64,
    pub event: EventV1,
}

/// The event, tagged by `kind` (the same value as the `event_kind` property).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(super) enum EventV1 {
    Params {
        audrey_data: String,
        #[serde(default)]
        values: Vec<(String, String)>,
        #[serde(default)]
        return_codes: bool,
    },
    Registration {
        instance_config: String,
        secret: String,
    },
    Deletion,
}

impl EventV1 {
    pub fn kind(&self) -> &'static str {
        match self {
            EventV1::Params { .. } => "params",
            EventV1::Registration { .. } => "registration",
            EventV1::Deletion => "deletion",
        }
    }
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

impl BodyV1 {
    /// The body of `c` in `format` (1 leaves out what format 2 added).
    pub fn of(c: &Change, format: u8) -> Self {
        let mut body = BodyV1::from(c);
        body.audrey_format = u64::from(format);
        if format < 2 {
            body.incarnation.clear();
            body.version_ms = 0;
        }
        body
    }
}

impl From<&Change> for BodyV1 {
    fn from(c: &Change) -> Self {
        let event = match &c.event {
            Event::Params {
                audrey_data,
                values,
                return_codes,
            } => EventV1::Params {
                audrey_data: audrey_data.clone(),
                values: values.clone(),
                return_codes: *return_codes,
            },
            Event::Registration {
                instance_config,
                secret,
            } => EventV1::Registration {
                instance_config: instance_config.clone(),
                secret: secret.clone(),
            },
            Event::Deletion => EventV1::Deletion,
        };
        BodyV1 {
            audrey_format: u64::from(super::FORMAT_VERSION),
            origin_site: c.origin_site.clone(),
            incarnation: c.incarnation.clone(),
            origin_seq: c.origin_seq,
            version_ms: c.version_ms,
            instance_seq: c.instance_seq,
            api_version: c.api_version,
            instance: c.instance.clone(),
            deployment: c.deployment.clone(),
            client_addr: c.client_addr.clone(),
            captured_at_ms: c.captured_at_ms,
            event,
        }
    }
}

impl From<BodyV1> for Change {
    fn from(b: BodyV1) -> Self {
        let event = match b.event {
            EventV1::Params {
                audrey_data,
                values,
                return_codes,
            } => Event::Params {
                audrey_data,
                values,
                return_codes,
            },
            EventV1::Registration {
                instance_config,
                secret,
            } => Event::Registration {
                instance_config,
                secret,
            },
            EventV1::Deletion => Event::Deletion,
        };
        Change {
            origin_site: b.origin_site,
            incarnation: b.incarnation,
            origin_seq: b.origin_seq,
            version_ms: b.version_ms,
            instance_seq: b.instance_seq,
            api_version: b.api_version,
            instance: b.instance,
            deployment: b.deployment,
            client_addr: b.client_addr,
            captured_at_ms: b.captured_at_ms,
            event,
        }
    }
}
