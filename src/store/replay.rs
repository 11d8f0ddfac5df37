//! Replay state: what this site applied from other sites, what waits, what was given up.
//!
//! Owns the per `(origin, instance)` high-water mark of applied `instance_seq`, the per
//! `(origin, deployment)` mark of applied deletions, per-origin state for the lag metric,
//! parked changes (instance not registered here yet), inbound dead letters and the OAuth
//! secrets of instances registered here by replay. Each write is
//! one atomic op in the writer's transaction. It must not talk to the server or the broker.

use redb::{ReadableTable, WriteTransaction};

use super::outbox::flag;
use super::tables::{self, InboundDeadLetter, OriginState, ParkedEntry};
use super::writer::{Op, Value};
use super::{OrRead, OrWrite, Store, StoreError};
use crate::change::{now_ms, Change, Event};

/// Raise the marks for `change`, update its origin's state, learn its deployment when this
/// site does not know one, and drop it from the parked table. One transaction.
pub(crate) fn record_applied(txn: &WriteTransaction, change: &Change) -> Result<(), StoreError> {
    let origin = change.origin_site.as_str();
    match (
        &change.event,
        change.instance.as_deref(),
        change.deployment.as_deref(),
    ) {
        (Event::Deletion, _, deployment) => {
            raise(
                txn,
                tables::APPLIED_DELETION,
                (origin, deployment.unwrap_or("")),
                change.origin_seq,
            )?;
        }
        (event, Some(instance), deployment) => {
            if let Event::Registration { secret, .. } = event {
                remember_secret(txn, instance, secret)?;
            }
            raise(
                txn,
                tables::APPLIED_INSTANCE,
                (origin, instance),
                change.instance_seq,
            )?;
            if let Some(d) = deployment {
                super::outbox::learn_deployment(txn, instance, d)?;
            }
        }
        (_, None, _) => {}
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
    let bytes = tables::encode("origins", &state)?;
    origins.insert(origin, bytes.as_slice()).wr()?;
    drop(origins);

    txn.open_table(tables::PARKED)
        .wr()?
        .remove(change.message_id().as_str())
        .wr()?;
    Ok(())
}

fn raise(
    txn: &WriteTransaction,
    def: redb::TableDefinition<(&str, &str), u64>,
    key: (&str, &str),
    seq: u64,
) -> Result<(), StoreError> {
    let mut table = txn.open_table(def).wr()?;
    let current = table.get(key).wr()?.map_or(0, |v| v.value());
    if seq > current {
        table.insert(key, seq).wr()?;
    }
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
    /// Highest `instance_seq` of `instance` from `origin` applied here (0: none).
    pub fn applied_seq(&self, origin: &str, instance: &str) -> Result<u64, StoreError> {
        self.read(|txn| {
            let table = txn.open_table(tables::APPLIED_INSTANCE).rd()?;
            let seq = table.get((origin, instance)).rd()?.map_or(0, |v| v.value());
            Ok(seq)
        })
    }

    /// `origin_seq` of the latest deletion of `deployment` from `origin` applied here (0: none).
    pub fn applied_deletion_seq(&self, origin: &str, deployment: &str) -> Result<u64, StoreError> {
        self.read(|txn| {
            let table = txn.open_table(tables::APPLIED_DELETION).rd()?;
            let seq = table
                .get((origin, deployment))
                .rd()?
                .map_or(0, |v| v.value());
            Ok(seq)
        })
    }

    /// Whether `change` (or a later one that supersedes it) was already applied here:
    /// `instance_seq <=` the instance mark, or for a deletion `origin_seq <=` the deletion mark.
    pub fn is_applied(&self, change: &Change) -> Result<bool, StoreError> {
        match (&change.event, change.instance.as_deref()) {
            (Event::Deletion, _) => {
                let deployment = change.deployment.as_deref().unwrap_or("");
                Ok(change.origin_seq
                    <= self.applied_deletion_seq(&change.origin_site, deployment)?)
            }
            (_, Some(instance)) => {
                Ok(change.instance_seq <= self.applied_seq(&change.origin_site, instance)?)
            }
            (_, None) => Ok(false),
        }
    }

    /// Durably record that `change` was applied here (marks, origin state, learnt
    /// deployment, a registration's instance secret, and removal from the parked table, all
    /// in one transaction).
    pub async fn record_applied(&self, change: &Change) -> Result<(), StoreError> {
        self.submit(Op::RecordApplied(Box::new(change.clone())))
            .await
            .map(|_| ())
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
