//! The layout of `state.redb`: every table definition and every stored record type.
//!
//! Owns the on-disk schema (table names, key and value types, the JSON records) and the
//! decode helpers that turn a bad record into `StoreError::Corrupt`. It must not open
//! transactions or hold policy: `outbox.rs` and `replay.rs` decide what goes where.

use redb::TableDefinition;
use serde::{Deserialize, Serialize};

use super::StoreError;
use std::collections::BTreeMap;

use crate::change::{Change, Version};

pub(crate) const OUTBOX_NAME: &str = "outbox";

/// `origin_seq -> serde_json(Change)`: captured here, waiting to be published.
pub(crate) const OUTBOX: TableDefinition<u64, &[u8]> = TableDefinition::new(OUTBOX_NAME);
/// `origin_seq -> serde_json(OutboundDeadLetter)`: outbox entries the publisher gave up on.
pub(crate) const OUTBOX_DEAD: TableDefinition<u64, &[u8]> = TableDefinition::new("outbox_dead");
/// Named counters: see the `META_*` keys.
pub(crate) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// `instance uuid -> last instance_seq assigned here` (never removed, so never reused).
pub(crate) const INSTANCE_SEQ: TableDefinition<&str, u64> = TableDefinition::new("instance_seq");
/// `instance uuid -> deployment id`, learnt from registrations and the server's storage dir.
pub(crate) const DEPLOYMENTS: TableDefinition<&str, &str> = TableDefinition::new("deployments");
/// `instance uuid -> serde_json(InstanceState)`: what this site's server holds of an instance
/// federated from another site, each part with the version it came with.
pub(crate) const INSTANCE_STATE: TableDefinition<&str, &[u8]> =
    TableDefinition::new("instance_state");
/// `deployment id -> serde_json(Version)`: the newest deletion of the deployment applied here.
pub(crate) const TOMBSTONES: TableDefinition<&str, &[u8]> = TableDefinition::new("tombstones");
/// Named strings: see the `META_TEXT_*` keys.
pub(crate) const META_TEXT: TableDefinition<&str, &str> = TableDefinition::new("meta_text");
/// `origin_site -> serde_json(OriginState)`.
pub(crate) const ORIGINS: TableDefinition<&str, &[u8]> = TableDefinition::new("origins");
/// `message_id -> serde_json(ParkedEntry)`: inbound changes waiting for their instance.
pub(crate) const PARKED: TableDefinition<&str, &[u8]> = TableDefinition::new("parked");
/// `local id -> serde_json(InboundDeadLetter)`: inbound messages that cannot be applied.
pub(crate) const INBOUND_DEAD: TableDefinition<u64, &[u8]> = TableDefinition::new("inbound_dead");
/// `instance uuid -> OAuth consumer secret`, learnt from registrations applied here, so
/// replayed params changes can be signed with the instance's own credentials.
pub(crate) const INSTANCE_SECRETS: TableDefinition<&str, &str> =
    TableDefinition::new("instance_secrets");

/// Next `origin_seq` to assign (starts at 1). Kept apart from the outbox so that delivered
/// (removed) entries never give their number back.
pub(crate) const META_NEXT_ORIGIN_SEQ: &str = "next_origin_seq";
/// Highest `version_ms` given to a change here, so versions never move back with the clock.
pub(crate) const META_LAST_VERSION_MS: &str = "last_version_ms";
/// This store's incarnation id, made once when the store is created.
pub(crate) const META_TEXT_INCARNATION: &str = "incarnation";
/// Next inbound dead-letter id (starts at 1).
pub(crate) const META_NEXT_INBOUND_DEAD: &str = "next_inbound_dead_id";
/// Time of the last readiness probe write.
pub(crate) const META_PROBE_MS: &str = "probe_ms";

/// An outbox entry the publisher gave up on, kept for inspection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboundDeadLetter {
    pub origin_seq: u64,
    pub dead_at_ms: u64,
    pub reason: String,
    /// The outbox record as stored (normally `serde_json(Change)`; kept verbatim even when
    /// it does not decode, which may be why it is here).
    pub record: String,
}

impl OutboundDeadLetter {
    /// The change, when the record decodes.
    pub fn change(&self) -> Option<Change> {
        serde_json::from_str(&self.record).ok()
    }
}

/// An inbound change parked until its instance is registered locally.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParkedEntry {
    pub change: Change,
    /// When it was first parked.
    pub parked_at_ms: u64,
    /// How many times it was parked (1 on first park; each failed retry re-parks it).
    pub attempts: u32,
    /// Why it was parked the last time.
    pub reason: String,
}

/// An inbound message that cannot be applied, kept for inspection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InboundDeadLetter {
    pub id: u64,
    pub dead_at_ms: u64,
    pub reason: String,
    /// The message body as received (or the JSON of the change).
    #[serde(with = "b64")]
    pub raw: Vec<u8>,
}

/// What this site's server holds of one instance federated from another site: the state-based
/// merge's memory. A change is applied only for the parts whose version is newer than the one
/// held here, so order, duplicates and replays can neither lose nor roll back a value.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceState {
    /// The newest registration applied here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registration: Option<Registered>,
    /// Provided parameters by name: the newest `name&BASE64` piece applied (or to apply).
    #[serde(default)]
    pub params: BTreeMap<String, Slot>,
    /// Service return codes by service name, the same way.
    #[serde(default)]
    pub codes: BTreeMap<String, Slot>,
    /// The guest address the newest `PUT /params` carried (the server records it as the
    /// instance's IP): `piece` holds the address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<Slot>,
    /// A registration was POSTed (which wipes the server's provided values) and the values
    /// newer than it are not yet PUT back.
    #[serde(default)]
    pub reapply: bool,
    /// A deletion older than the registration removed the instance from the server: the
    /// registration must be POSTed again (then its values PUT back).
    #[serde(default)]
    pub repost: bool,
}

/// A registration as applied here.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registered {
    pub version: Version,
    pub deployment: String,
    pub api_version: u8,
    pub instance_config: String,
    pub secret: String,
}

impl std::fmt::Debug for Registered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registered")
            .field("version", &self.version)
            .field("deployment", &self.deployment)
            .field("api_version", &self.api_version)
            .finish_non_exhaustive()
    }
}

/// One versioned part of an instance's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Slot {
    pub version: Version,
    pub piece: String,
}

/// What was applied here from one origin site, for idempotence reports and the lag metric.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OriginState {
    /// Highest `origin_seq` applied (changes of one origin may arrive out of order across
    /// deployment topics, so this is a maximum, not a contiguous mark).
    pub max_origin_seq: u64,
    /// `captured_at_ms` of the most recently applied change (the lag metric's input).
    pub last_captured_at_ms: u64,
    /// When the most recent change was applied here.
    pub last_applied_at_ms: u64,
    /// How many changes were recorded as applied.
    pub applied: u64,
    /// The origin's newest incarnation seen here (empty before the first, or for
    /// `audrey_format` 1 changes).
    #[serde(default)]
    pub incarnation: String,
    /// The version of the newest change applied from it.
    #[serde(default)]
    pub newest: Version,
}

/// Just the capture time of an outbox record, for the oldest-entry gauge.
#[derive(Deserialize)]
pub(crate) struct CapturedAt {
    pub captured_at_ms: u64,
}

/// Decode a JSON record or name it as corrupt.
pub(crate) fn decode<T: for<'de> Deserialize<'de>>(
    table: &'static str,
    key: impl std::fmt::Display,
    bytes: &[u8],
) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::corrupt(table, key, e))
}

/// Encode a record. Our record types only hold strings and integers, so this cannot fail
/// in practice; should it, the operation fails rather than storing garbage.
pub(crate) fn encode<T: Serialize>(table: &'static str, value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(|e| StoreError::corrupt(table, "(new)", e))
}

mod b64 {
    use base64::{engine::general_purpose::STANDARD, Engine};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        STANDARD.decode(text).map_err(serde::de::Error::custom)
    }
}
