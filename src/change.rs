//! The unit of federation: one change captured from the traffic the proxy forwarded.
//!
//! Owns the data model shared by capture, the store, the wire format and replay. It must
//! not know about HTTP, AMQP or storage: it is plain data with serde.

use serde::{Deserialize, Serialize};

/// What happened, with what a replay at another site needs to reproduce it. Its `Debug`
/// never shows a registration's secret or XML (which holds the secret too).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Event {
    /// `PUT /params/:v/:uuid` answered 200 or 202.
    Params {
        /// The raw `audrey_data` form value, exactly as the guest sent it (replayed verbatim).
        audrey_data: String,
        /// Decoded `name -> value` pairs, in the order sent (values lossily decoded as UTF-8).
        /// For a service return-code report (`||svc&code|`) these are `svc -> code`.
        values: Vec<(String, String)>,
        /// True when the report carried service return codes (`||...`) rather than parameters.
        #[serde(default)]
        return_codes: bool,
    },
    /// `POST /configs/:v/:uuid` answered 200.
    Registration {
        /// The instance-config XML (the form field `data`), verbatim.
        instance_config: String,
        /// The instance's OAuth secret (`instance-config/@secret`).
        secret: String,
    },
    /// `DELETE /deployment/:v/:deployment` answered 200.
    Deletion,
}

impl std::fmt::Debug for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Event::Params {
                audrey_data,
                values,
                return_codes,
            } => f
                .debug_struct("Params")
                .field("audrey_data", audrey_data)
                .field("values", values)
                .field("return_codes", return_codes)
                .finish(),
            Event::Registration {
                instance_config, ..
            } => f
                .debug_struct("Registration")
                .field(
                    "instance_config",
                    &format_args!("<{} bytes>", instance_config.len()),
                )
                .field("secret", &format_args!("<redacted>"))
                .finish(),
            Event::Deletion => f.write_str("Deletion"),
        }
    }
}

impl Event {
    /// Short stable name, used in metrics labels, logs and the wire format.
    pub fn kind(&self) -> &'static str {
        match self {
            Event::Params { .. } => "params",
            Event::Registration { .. } => "registration",
            Event::Deletion => "deletion",
        }
    }
}

/// What the proxy captured, before the store gives it its sequence numbers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capture {
    /// API version of the request path (1 or 2).
    pub api_version: u8,
    /// Instance uuid (params, registration); `None` for a deletion.
    pub instance: Option<String>,
    /// Deployment id: from the XML for a registration, the path for a deletion,
    /// `None` for a params change (the store fills it in from what it learnt).
    pub deployment: Option<String>,
    /// The guest's original address (trusted `X-Forwarded-For` hops honoured).
    pub client_addr: Option<String>,
    /// Capture time, milliseconds since the Unix epoch.
    pub captured_at_ms: u64,
    pub event: Event,
}

/// When a change happened at its origin: what a receiving site compares, per parameter
/// name, to decide whether a change is newer than what it holds.
///
/// Ordered by `ms`, then `incarnation`, then `seq` (the derived, lexicographic order). Within
/// one incarnation of an origin's store both `ms` (never moves back: the store keeps it
/// monotonic) and `seq` (`origin_seq`) grow with every change, so the order is the capture
/// order whatever the wall clock did; a new incarnation (the origin's state was lost) starts
/// at its clock's time, after everything the old one wrote. The order is total, so every
/// site picks the same winner whatever order changes arrive in.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Version {
    /// Origin time, milliseconds since the Unix epoch, monotonic within an incarnation.
    pub ms: u64,
    /// The origin store's incarnation id (empty for `audrey_format` 1 messages).
    pub incarnation: String,
    /// `origin_seq` in that incarnation.
    pub seq: u64,
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.incarnation.is_empty() {
            write!(f, "{}/{}", self.ms, self.seq)
        } else {
            write!(f, "{}/{}/{}", self.ms, self.incarnation, self.seq)
        }
    }
}

/// A captured change as stored in the outbox and carried on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// Site that captured it.
    pub origin_site: String,
    /// Incarnation of the origin's store (made when the store was created; a store that was
    /// lost and made again has a new one). Empty for changes of `audrey_format` 1.
    #[serde(default)]
    pub incarnation: String,
    /// Position in the origin site's outbox: strictly increasing per incarnation, never
    /// reused. `origin_site` + `incarnation` + `origin_seq` is the change's identity.
    pub origin_seq: u64,
    /// Origin time of the change's [`Version`]: `captured_at_ms`, raised when needed so that
    /// it never moves back within an incarnation. 0 (absent) reads as `captured_at_ms`.
    #[serde(default)]
    pub version_ms: u64,
    /// Per-instance sequence at the origin (1, 2, ...); 0 for a deletion.
    pub instance_seq: u64,
    pub api_version: u8,
    pub instance: Option<String>,
    pub deployment: Option<String>,
    pub client_addr: Option<String>,
    pub captured_at_ms: u64,
    pub event: Event,
}

impl Change {
    /// Globally unique message id: `<origin_site>:<incarnation>:<origin_seq>`, or
    /// `<origin_site>:<origin_seq>` for a change without an incarnation (`audrey_format` 1).
    pub fn message_id(&self) -> String {
        if self.incarnation.is_empty() {
            format!("{}:{}", self.origin_site, self.origin_seq)
        } else {
            format!(
                "{}:{}:{}",
                self.origin_site, self.incarnation, self.origin_seq
            )
        }
    }

    /// The change's version: what receivers compare to decide what is newer.
    pub fn version(&self) -> Version {
        Version {
            ms: if self.version_ms == 0 {
                self.captured_at_ms
            } else {
                self.version_ms
            },
            incarnation: self.incarnation.clone(),
            seq: self.origin_seq,
        }
    }
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::Event;

    #[test]
    fn debug_never_shows_a_secret() {
        let e = Event::Registration {
            instance_config: "<instance-config secret='S3cr3t'/>".into(),
            secret: "S3cr3t".into(),
        };
        let shown = format!("{e:?} {e:#?}");
        assert!(!shown.contains("S3cr3t"), "{shown}");
        assert!(
            shown.contains("Registration") && shown.contains("<redacted>"),
            "{shown}"
        );
    }
}
