//! The outbox: changes captured at this site, waiting to be published.
//!
//! Owns sequence assignment (`origin_seq` per site, `instance_seq` per instance), the
//! learnt `instance -> deployment` map, delivery (removal) and outbound dead letters. The
//! write halves run inside the writer's transaction; the read halves use read transactions.
//! It must not publish, retry or know about AMQP.
//!
//! Deletions forget nothing: a `DELETE /deployment` keeps the instances' sequence counters
//! and their deployment mapping. Counters must never restart for an uuid (another site's
//! merge would take a re-registered instance's new changes for old ones within an incarnation), and a params
//! change racing a deletion still needs its deployment to reach the right topic. The cost is
//! a few bytes per instance ever seen.

use redb::{ReadableTable, WriteTransaction};

use super::tables::{self, OutboundDeadLetter};
use super::writer::{Op, Value};
use super::{OrRead, OrWrite, Store, StoreError};
use crate::change::{now_ms, Capture, Change, Event};

/// Assign sequences, fill the deployment, store the change. Runs in the writer's transaction.
pub(crate) fn append(
    txn: &WriteTransaction,
    site: &str,
    incarnation: &str,
    capture: &Capture,
) -> Result<Change, StoreError> {
    let mut meta = txn.open_table(tables::META).wr()?;
    let origin_seq = meta
        .get(tables::META_NEXT_ORIGIN_SEQ)
        .wr()?
        .map_or(1, |v| v.value());
    meta.insert(tables::META_NEXT_ORIGIN_SEQ, origin_seq + 1)
        .wr()?;
    // The version's time never moves back within this store, whatever the clock does.
    let last_ms = meta
        .get(tables::META_LAST_VERSION_MS)
        .wr()?
        .map_or(0, |v| v.value());
    let version_ms = capture.captured_at_ms.max(last_ms).max(1);
    if version_ms != last_ms {
        meta.insert(tables::META_LAST_VERSION_MS, version_ms).wr()?;
    }

    let mut deployment = capture.deployment.clone();
    let mut instance_seq = 0;
    if let Some(instance) = capture.instance.as_deref() {
        if !matches!(capture.event, Event::Deletion) {
            let mut seqs = txn.open_table(tables::INSTANCE_SEQ).wr()?;
            instance_seq = seqs.get(instance).wr()?.map_or(0, |v| v.value()) + 1;
            seqs.insert(instance, instance_seq).wr()?;
        }
        let mut deployments = txn.open_table(tables::DEPLOYMENTS).wr()?;
        match (&capture.event, deployment.as_deref()) {
            // The registration's XML is authoritative: it records (or corrects) the mapping.
            (Event::Registration { .. }, Some(d)) => {
                deployments.insert(instance, d).wr()?;
            }
            (_, None) => {
                deployment = deployments
                    .get(instance)
                    .wr()?
                    .map(|v| v.value().to_owned())
            }
            _ => {}
        }
    }

    let change = Change {
        origin_site: site.to_owned(),
        incarnation: incarnation.to_owned(),
        origin_seq,
        version_ms,
        instance_seq,
        api_version: capture.api_version,
        instance: capture.instance.clone(),
        deployment,
        client_addr: capture.client_addr.clone(),
        captured_at_ms: capture.captured_at_ms,
        event: capture.event.clone(),
    };
    let record = tables::encode(tables::OUTBOX_NAME, &change)?;
    txn.open_table(tables::OUTBOX)
        .wr()?
        .insert(origin_seq, record.as_slice())
        .wr()?;
    Ok(change)
}

pub(crate) fn mark_delivered(txn: &WriteTransaction, origin_seq: u64) -> Result<bool, StoreError> {
    let mut outbox = txn.open_table(tables::OUTBOX).wr()?;
    let removed = outbox.remove(origin_seq).wr()?.is_some();
    Ok(removed)
}

pub(crate) fn learn_deployment(
    txn: &WriteTransaction,
    instance: &str,
    deployment: &str,
) -> Result<bool, StoreError> {
    let mut deployments = txn.open_table(tables::DEPLOYMENTS).wr()?;
    if deployments.get(instance).wr()?.is_some() {
        return Ok(false);
    }
    deployments.insert(instance, deployment).wr()?;
    Ok(true)
}

pub(crate) fn dead_letter(
    txn: &WriteTransaction,
    origin_seq: u64,
    reason: &str,
) -> Result<bool, StoreError> {
    let mut outbox = txn.open_table(tables::OUTBOX).wr()?;
    let Some(record) = outbox.remove(origin_seq).wr()? else {
        return Ok(false);
    };
    let letter = OutboundDeadLetter {
        origin_seq,
        dead_at_ms: now_ms(),
        reason: reason.to_owned(),
        record: String::from_utf8_lossy(record.value()).into_owned(),
    };
    drop(record);
    let bytes = tables::encode("outbox_dead", &letter)?;
    txn.open_table(tables::OUTBOX_DEAD)
        .wr()?
        .insert(origin_seq, bytes.as_slice())
        .wr()?;
    Ok(true)
}

impl Store {
    /// Capture a change: assign its sequences and store it durably. Resolves once the
    /// change is fsynced; the returned `Change` is what will be published.
    ///
    /// Cancel safety: dropping the future after the request was queued does not withdraw
    /// it; the change may still be stored (and published) without the caller knowing.
    pub async fn append(&self, capture: Capture) -> Result<Change, StoreError> {
        match self.submit(Op::Append(Box::new(capture))).await? {
            Value::Change(change) => Ok(*change),
            _ => Err(StoreError::Closed),
        }
    }

    /// Up to `limit` outbox entries with `origin_seq > after_seq`, in `origin_seq` order.
    /// Stops before a record that does not decode; when that record is the first one, fails
    /// with `StoreError::Corrupt` (see [`StoreError::corrupt_outbox_seq`]) so the publisher
    /// can dead-letter it.
    pub fn pending(&self, after_seq: Option<u64>, limit: usize) -> Result<Vec<Change>, StoreError> {
        self.read(|txn| {
            let outbox = txn.open_table(tables::OUTBOX).rd()?;
            let start = after_seq.map_or(0, |s| s.saturating_add(1));
            if after_seq == Some(u64::MAX) {
                return Ok(Vec::new());
            }
            let mut out = Vec::with_capacity(limit.min(1024));
            for entry in outbox.range(start..).rd()?.take(limit) {
                let (key, value) = entry.rd()?;
                match tables::decode::<Change>(tables::OUTBOX_NAME, key.value(), value.value()) {
                    Ok(change) => out.push(change),
                    Err(e) if out.is_empty() => return Err(e),
                    Err(_) => break,
                }
            }
            Ok(out)
        })
    }

    /// Remove a published entry. `Ok(false)` when it was not there (already delivered).
    pub async fn mark_delivered(&self, origin_seq: u64) -> Result<bool, StoreError> {
        flag(self.submit(Op::MarkDelivered(origin_seq)).await?)
    }

    /// Number of entries waiting in the outbox (as of the last commit).
    pub fn depth(&self) -> u64 {
        self.shared
            .stats
            .depth
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Capture time of the oldest waiting entry (as of the last commit).
    pub fn oldest_captured_ms(&self) -> Option<u64> {
        match self
            .shared
            .stats
            .oldest_ms
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            u64::MAX => None,
            ms => Some(ms),
        }
    }

    /// The deployment an instance belongs to, when learnt.
    pub fn deployment_of(&self, instance: &str) -> Result<Option<String>, StoreError> {
        self.read(|txn| {
            let table = txn.open_table(tables::DEPLOYMENTS).rd()?;
            let found = table.get(instance).rd()?.map(|v| v.value().to_owned());
            Ok(found)
        })
    }

    /// Record `instance -> deployment` learnt outside the traffic (the server's storage dir).
    /// Never overwrites a known mapping; `Ok(true)` when it was new.
    pub async fn learn_deployment(
        &self,
        instance: &str,
        deployment: &str,
    ) -> Result<bool, StoreError> {
        let pair = (instance.to_owned(), deployment.to_owned());
        Ok(self.learn_deployments(vec![pair]).await? == 1)
    }

    /// Many `(instance, deployment)` pairs in one durable write (the start-up scan of the
    /// server's storage dir). Never overwrites; answers how many were new.
    pub async fn learn_deployments(&self, pairs: Vec<(String, String)>) -> Result<u64, StoreError> {
        match self.submit(Op::LearnDeployments(pairs)).await? {
            Value::Count(n) => Ok(n),
            _ => Err(StoreError::Closed),
        }
    }

    /// Move an outbox entry to the outbound dead-letter table (kept, counted).
    /// `Ok(false)` when it was not in the outbox.
    pub async fn dead_letter_outbound(
        &self,
        origin_seq: u64,
        reason: &str,
    ) -> Result<bool, StoreError> {
        flag(
            self.submit(Op::DeadLetterOutbound {
                origin_seq,
                reason: reason.to_owned(),
            })
            .await?,
        )
    }

    /// Number of outbound dead letters (as of the last commit).
    pub fn dead_letter_count(&self) -> u64 {
        self.shared
            .stats
            .outbox_dead
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Up to `limit` outbound dead letters, oldest `origin_seq` first.
    pub fn dead_letters_outbound(
        &self,
        limit: usize,
    ) -> Result<Vec<OutboundDeadLetter>, StoreError> {
        self.read(|txn| {
            let table = txn.open_table(tables::OUTBOX_DEAD).rd()?;
            let mut out = Vec::new();
            for entry in table.iter().rd()?.take(limit) {
                let (key, value) = entry.rd()?;
                out.push(tables::decode("outbox_dead", key.value(), value.value())?);
            }
            Ok(out)
        })
    }
}

pub(crate) fn flag(value: Value) -> Result<bool, StoreError> {
    match value {
        Value::Flag(f) => Ok(f),
        _ => Err(StoreError::Closed),
    }
}
