//! Replay state: what this site's server holds of other sites' instances, what waits, what
//! was given up.
//!
//! Owns the state-based merge's memory (per instance its registration and each provided
//! parameter, service return code and guest address with the version it came with; per
//! deployment the version of its newest deletion), per-origin state for the lag metric,
//! parked changes (instance not registered here yet), inbound dead letters and the OAuth
//! secrets of instances registered here by replay. Each write is one atomic op in the
//! writer's transaction. It must not talk to the server or the broker, nor decide what is
//! newer: `crate::replay` does, this module keeps what it decided.

use redb::{ReadableTable, WriteTransaction};

use super::outbox::flag;
use super::tables::{self, InboundDeadLetter, InstanceState, OriginState, ParkedEntry};
use super::writer::{Op, Value};
use super::{OrRead, OrWrite, Store, StoreError};
use crate::change::{now_ms, Change, Event, Version};

/// One durable step of the merge, in one transaction: instance states to save (`None`:
/// forget the instance), a deletion's tombstone, and the change whose effect they record.
#[derive(Debug, Clone, Default)]
pub struct Merge {
    pub states: Vec<(String, Option<InstanceState>)>,
    /// `(deployment, version)` of a deletion applied here.
    pub tombstone: Option<(String, Version)>,
    /// The change applied (its origin's statistics, its learnt deployment, a registration's
    /// secret, its removal from the parked table); `None` for a step of no one change.
    pub applied: Option<Change>,
}

pub(crate) fn merge(txn: &WriteTransaction, merge: &Merge) -> Result<(), StoreError> {
    if !merge.states.is_empty() {
        let mut states = txn.open_table(tables::INSTANCE_STATE).wr()?;
        for (instance, state) in &merge.states {
            match state {
                Some(state) => {
                    let bytes = tables::encode("instance_state", state)?;
                    states.insert(instance.as_str(), bytes.as_slice()).wr()?;
                }
                None => {
                    states.remove(instance.as_str()).wr()?;
                }
            }
        }
    }
    if let Some((deployment, version)) = &merge.tombstone {
        let bytes = tables::encode("tombstones", version)?;
        txn.open_table(tables::TOMBSTONES)
            .wr()?
            .insert(deployment.as_str(), bytes.as_slice())
            .wr()?;
    }
    if let Some(change) = &merge.applied {
        record_applied(txn, change)?;
    }
    Ok(())
}

/// Update the change's origin state, learn its deployment when this site does not know one,
/// keep a registration's secret, and drop the change from the parked table.
pub(crate) fn record_applied(txn: &WriteTransaction, change: &Change) -> Result<(), StoreError> {
    let origin = change.origin_site.as_str();
    if let Some(instance) = change.instance.as_deref() {
        if let Event::Registration { secret, .. } = &change.event {
            remember_secret(txn, instance, secret)?;
        }
        if let Some(d) = change.deployment.as_deref() {
            super::outbox::learn_deployment(txn, instance, d)?;
        }
    }

    let mut origins = txn.open_table(tables::ORIGINS).wr()?;
    let mut state = match origins.get(origin).wr()? {
        // A corrupt state is only statistics: start it again rather than block replay.
        Some(v) => tables::decode::<OriginState>("origins", origin, v.value()).unwrap_or_default(),
        None => OriginState::default(),
    };
    state.max_origin_seq = state.max_origin_seq.max(change.origin_seq);
    // Changes of different instances may be applied out of origin order: keep the newest.
    state.last_captured_at_ms = state.last_captured_at_ms.max(change.captured_at_ms);
    state.last_applied_at_ms = now_ms();
    state.applied += 1;
    let version = change.version();
    if version > state.newest {
        if !change.incarnation.is_empty() {
            state.incarnation.clone_from(&change.incarnation);
        }
        state.newest = version;
    }
    let bytes = tables::encode("origins", &state)?;
    origins.insert(origin, bytes.as_slice()).wr()?;
    drop(origins);

    txn.open_table(tables::PARKED)
        .wr()?
        .remove(change.message_id().as_str())
        .wr()?;
    Ok(())
}

/// Store (or replace) the OAuth secret of an instance registered at this site's server.
pub(crate) fn remember_secret(
    txn: &WriteTransaction,
    instance: &str,
    secret: &str,
) -> Result<(), StoreError> {
    txn.open_table(tables::INSTANCE_SECRETS)
        .wr()?
        .insert(instance, secret)
        .wr()?;
    Ok(())
}

/// Park (or re-park) a change; answers the number of attempts so far.
pub(crate) fn park(
    txn: &WriteTransaction,
    change: &Change,
    reason: &str,
) -> Result<u64, StoreError> {
    let id = change.message_id();
    let mut parked = txn.open_table(tables::PARKED).wr()?;
    let previous = match parked.get(id.as_str()).wr()? {
        // A corrupt entry is replaced by the change we hold now.
        Some(v) => tables::decode::<ParkedEntry>("parked", &id, v.value()).ok(),
        None => None,
    };
    let entry = ParkedEntry {
        change: change.clone(),
        parked_at_ms: previous.as_ref().map_or_else(now_ms, |p| p.parked_at_ms),
        attempts: previous
            .as_ref()
            .map_or(1, |p| p.attempts.saturating_add(1)),
        reason: reason.to_owned(),
    };
    let bytes = tables::encode("parked", &entry)?;
    parked.insert(id.as_str(), bytes.as_slice()).wr()?;
    Ok(u64::from(entry.attempts))
}

pub(crate) fn unpark(txn: &WriteTransaction, message_id: &str) -> Result<bool, StoreError> {
    let mut parked = txn.open_table(tables::PARKED).wr()?;
    let removed = parked.remove(message_id).wr()?.is_some();
    Ok(removed)
}

pub(crate) fn dead_letter_inbound(
    txn: &WriteTransaction,
    raw: &[u8],
    reason: &str,
) -> Result<u64, StoreError> {
    let mut meta = txn.open_table(tables::META).wr()?;
    let id = meta
        .get(tables::META_NEXT_INBOUND_DEAD)
        .wr()?
        .map_or(1, |v| v.value());
    meta.insert(tables::META_NEXT_INBOUND_DEAD, id + 1).wr()?;
    let letter = InboundDeadLetter {
        id,
        dead_at_ms: now_ms(),
        reason: reason.to_owned(),
        raw: raw.to_vec(),
    };
    let bytes = tables::encode("inbound_dead", &letter)?;
    txn.open_table(tables::INBOUND_DEAD)
        .wr()?
        .insert(id, bytes.as_slice())
        .wr()?;
    Ok(id)
}

pub(crate) fn dead_letter_parked(
    txn: &WriteTransaction,
    message_id: &str,
    reason: &str,
) -> Result<bool, StoreError> {
    let Some(record) = txn
        .open_table(tables::PARKED)
        .wr()?
        .remove(message_id)
        .wr()?
        .map(|v| v.value().to_vec())
    else {
        return Ok(false);
    };
    // Keep the change itself (not the parking envelope) when it decodes.
    let raw = match tables::decode::<ParkedEntry>("parked", message_id, &record) {
        Ok(entry) => tables::encode("inbound_dead", &entry.change)?,
        Err(_) => record,
    };
    dead_letter_inbound(txn, &raw, reason)?;
    Ok(true)
}

impl Store {
    /// What this site's server holds of `instance`, as far as federation put it there.
    pub fn instance_state(&self, instance: &str) -> Result<Option<InstanceState>, StoreError> {
        self.read(|txn| {
            let table = txn.open_table(tables::INSTANCE_STATE).rd()?;
            let found = table.get(instance).rd()?;
            found
                .map(|v| tables::decode("instance_state", instance, v.value()))
                .transpose()
        })
    }

    /// Every federated instance whose registration here is in `deployment`, with its state.
    /// A scan: deletions are rare.
    pub fn instances_in(
        &self,
        deployment: &str,
    ) -> Result<Vec<(String, InstanceState)>, StoreError> {
        self.instance_states_where(|state| {
            state
                .registration
                .as_ref()
                .is_some_and(|r| r.deployment == deployment)
        })
    }

    /// The federated instances with a repair left to do (a registration to POST again, or
    /// values to PUT back after one).
    pub fn instances_to_repair(&self) -> Result<Vec<(String, InstanceState)>, StoreError> {
        self.instance_states_where(|state| state.repost || state.reapply)
    }

    /// The instance states that `keep` selects, by uuid (one read transaction, a full scan).
    fn instance_states_where(
        &self,
        keep: impl Fn(&InstanceState) -> bool,
    ) -> Result<Vec<(String, InstanceState)>, StoreError> {
        self.read(|txn| {
            let table = txn.open_table(tables::INSTANCE_STATE).rd()?;
            let mut out = Vec::new();
            for entry in table.iter().rd()? {
                let (key, value) = entry.rd()?;
                let state: InstanceState =
                    tables::decode("instance_state", key.value(), value.value())?;
                if keep(&state) {
                    out.push((key.value().to_owned(), state));
                }
            }
            Ok(out)
        })
    }

    /// Version of the newest deletion of `deployment` applied here.
    pub fn tombstone(&self, deployment: &str) -> Result<Option<Version>, StoreError> {
        self.read(|txn| {
            let table = txn.open_table(tables::TOMBSTONES).rd()?;
            let found = table.get(deployment).rd()?;
            found
                .map(|v| tables::decode("tombstones", deployment, v.value()))
                .transpose()
        })
    }

    /// Durably keep one step of the merge (see [`Merge`]).
    pub async fn merge(&self, merge: Merge) -> Result<(), StoreError> {
        self.submit(Op::Merge(Box::new(merge))).await.map(|_| ())
    }

    /// Durably record that `change` was applied here without changing any instance state
    /// (its origin's statistics, learnt deployment, secret, removal from the parked table).
    pub async fn record_applied(&self, change: &Change) -> Result<(), StoreError> {
        self.merge(Merge {
            applied: Some(change.clone()),
            ..Merge::default()
        })
        .await
    }

    /// Durably remember the OAuth secret of `instance` at this site's server (replacing any).
    pub async fn remember_secret(&self, instance: &str, secret: &str) -> Result<(), StoreError> {
        self.submit(Op::RememberSecret {
            instance: instance.to_owned(),
            secret: secret.to_owned(),
        })
        .await
        .map(|_| ())
    }

    /// The OAuth secret of `instance` at this site's server, when known here.
    pub fn instance_secret(&self, instance: &str) -> Result<Option<String>, StoreError> {
        self.read(|txn| {
            let table = txn.open_table(tables::INSTANCE_SECRETS).rd()?;
            let found = table.get(instance).rd()?;
            Ok(found.map(|v| v.value().to_owned()))
        })
    }

    /// State of one origin site, if anything from it was applied.
    pub fn origin_state(&self, origin: &str) -> Result<Option<OriginState>, StoreError> {
        self.read(|txn| {
            let table = txn.open_table(tables::ORIGINS).rd()?;
            let found = table.get(origin).rd()?;
            found
                .map(|v| tables::decode("origins", origin, v.value()))
                .transpose()
        })
    }

    /// Every origin site applied from, with its state (for the lag metric).
    pub fn origins(&self) -> Result<Vec<(String, OriginState)>, StoreError> {
        self.read(|txn| {
            let table = txn.open_table(tables::ORIGINS).rd()?;
            let mut out = Vec::new();
            for entry in table.iter().rd()? {
                let (key, value) = entry.rd()?;
                out.push((
                    key.value().to_owned(),
                    tables::decode("origins", key.value(), value.value())?,
                ));
            }
            Ok(out)
        })
    }

    /// Park a change whose instance is not registered here yet (or re-park it after a failed
    /// retry). Answers the number of attempts so far.
    pub async fn park(&self, change: Change, reason: &str) -> Result<u64, StoreError> {
        match self
            .submit(Op::Park {
                change: Box::new(change),
                reason: reason.to_owned(),
            })
            .await?
        {
            Value::Count(n) => Ok(n),
            _ => Err(StoreError::Closed),
        }
    }

    /// Every parked change, ordered by instance, origin, `instance_seq`.
    pub fn parked(&self) -> Result<Vec<ParkedEntry>, StoreError> {
        let mut out = self.read(|txn| {
            let table = txn.open_table(tables::PARKED).rd()?;
            let mut out: Vec<ParkedEntry> = Vec::new();
            for entry in table.iter().rd()? {
                let (key, value) = entry.rd()?;
                out.push(tables::decode("parked", key.value(), value.value())?);
            }
            Ok(out)
        })?;
        out.sort_by(|a, b| {
            let key = |e: &ParkedEntry| {
                (
                    e.change.instance.clone(),
                    e.change.origin_site.clone(),
                    e.change.instance_seq,
                )
            };
            key(a).cmp(&key(b))
        });
        Ok(out)
    }

    /// The parked changes of one instance, ordered by origin, `instance_seq`.
    pub fn parked_for(&self, instance: &str) -> Result<Vec<ParkedEntry>, StoreError> {
        let mut all = self.parked()?;
        all.retain(|e| e.change.instance.as_deref() == Some(instance));
        Ok(all)
    }

    /// Drop a parked change (`Ok(false)` when it was not parked). `record_applied` already
    /// unparks the change it records.
    pub async fn unpark(&self, message_id: &str) -> Result<bool, StoreError> {
        flag(self.submit(Op::Unpark(message_id.to_owned())).await?)
    }

    /// Number of parked changes (as of the last commit).
    pub fn parked_count(&self) -> u64 {
        self.shared
            .stats
            .parked
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Keep an inbound message that cannot be applied (the raw body, or the change's JSON).
    /// Answers its dead-letter id.
    pub async fn dead_letter_inbound(&self, raw: Vec<u8>, reason: &str) -> Result<u64, StoreError> {
        match self
            .submit(Op::DeadLetterInbound {
                raw,
                reason: reason.to_owned(),
            })
            .await?
        {
            Value::Count(id) => Ok(id),
            _ => Err(StoreError::Closed),
        }
    }

    /// Move a parked change to the inbound dead letters, atomically. `Ok(false)` when it was
    /// not parked.
    pub async fn dead_letter_parked(
        &self,
        message_id: &str,
        reason: &str,
    ) -> Result<bool, StoreError> {
        let op = Op::DeadLetterParked {
            message_id: message_id.to_owned(),
            reason: reason.to_owned(),
        };
        flag(self.submit(op).await?)
    }

    /// Number of inbound dead letters (as of the last commit).
    pub fn inbound_dead_letter_count(&self) -> u64 {
        self.shared
            .stats
            .inbound_dead
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Up to `limit` inbound dead letters, oldest first.
    pub fn dead_letters_inbound(&self, limit: usize) -> Result<Vec<InboundDeadLetter>, StoreError> {
        self.read(|txn| {
            let table = txn.open_table(tables::INBOUND_DEAD).rd()?;
            let mut out = Vec::new();
            for entry in table.iter().rd()?.take(limit) {
                let (key, value) = entry.rd()?;
                out.push(tables::decode("inbound_dead", key.value(), value.value())?);
            }
            Ok(out)
        })
    }
}
