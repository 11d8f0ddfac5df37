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

/// A captured change as stored in the outbox and carried on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// Site that captured it.
    pub origin_site: String,
    /// Position in the origin site's outbox: strictly increasing per site, never reused.
    /// `origin_site` + `origin_seq` is the change's identity across all sites.
    pub origin_seq: u64,
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
    /// Globally unique message id: `<origin_site>:<origin_seq>`.
    pub fn message_id(&self) -> String {
        format!("{}:{}", self.origin_site, self.origin_seq)
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
