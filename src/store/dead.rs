//! Operator actions on dead letters: put one back where it came from, or drop it.
//!
//! Owns the write halves (each one op in the writer's transaction, so a requeue moves a
//! record atomically) and their `Store` methods. An outbound letter goes back into the
//! outbox under its own `origin_seq` (same message id, same place in order); an inbound one
//! is re-parked so the parked-retry timer applies what in it is still newer. It must not publish, replay or decide
//! who may ask: the admin endpoint and the CLI (`deadletters.rs`) do that.

use redb::{ReadableTable, WriteTransaction};

use super::outbox::flag;
use super::tables::{self, InboundDeadLetter, OutboundDeadLetter};
use super::writer::{Op, Value};
use super::{OrWrite, Store, StoreError};
use crate::change::{Change, Event};

/// What a requeue did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requeue {
    /// Back in the outbox (outbound) or parked again (inbound).
    Done,
    /// No such dead letter.
    Missing,
    /// Left where it is, for this reason (it would only fail again).
    Refused(String),
}

pub(crate) fn requeue_outbound(
    txn: &WriteTransaction,
    origin_seq: u64,
) -> Result<Requeue, StoreError> {
    let mut dead = txn.open_table(tables::OUTBOX_DEAD).wr()?;
    let Some(bytes) = dead.get(origin_seq).wr()?.map(|v| v.value().to_vec()) else {
        return Ok(Requeue::Missing);
    };
    let letter: OutboundDeadLetter = tables::decode("outbox_dead", origin_seq, &bytes)?;
    if let Err(e) = serde_json::from_str::<Change>(&letter.record) {
        return Ok(Requeue::Refused(format!(
            "the stored change does not decode ({e}); the publisher would dead-letter it again"
        )));
    }
    let mut outbox = txn.open_table(tables::OUTBOX).wr()?;
    if outbox.get(origin_seq).wr()?.is_some() {
        return Ok(Requeue::Refused(format!(
            "the outbox already holds origin_seq {origin_seq}"
        )));
    }
    outbox.insert(origin_seq, letter.record.as_bytes()).wr()?;
    dead.remove(origin_seq).wr()?;
    Ok(Requeue::Done)
}

pub(crate) fn requeue_inbound(txn: &WriteTransaction, id: u64) -> Result<Requeue, StoreError> {
    let dead = txn.open_table(tables::INBOUND_DEAD).wr()?;
    let Some(bytes) = dead.get(id).wr()?.map(|v| v.value().to_vec()) else {
        return Ok(Requeue::Missing);
    };
    let letter: InboundDeadLetter = tables::decode("inbound_dead", id, &bytes)?;
    let change = match serde_json::from_slice::<Change>(&letter.raw) {
        Ok(c) => c,
        Err(_) => {
            return Ok(Requeue::Refused(
                "the message does not decode as a change; it cannot be replayed".into(),
            ))
        }
    };
    let usable = match &change.event {
        Event::Deletion => change.deployment.is_some(),
        _ => change.instance.is_some(),
    };
    if !usable {
        return Ok(Requeue::Refused(format!(
            "this {} change lacks its {}; it cannot be replayed",
            change.event.kind(),
            if matches!(change.event, Event::Deletion) {
                "deployment"
            } else {
                "instance"
            }
        )));
    }
    drop(dead);
    super::replay::park(
        txn,
        &change,
        &format!("requeued by an operator from inbound dead letter {id}"),
    )?;
    txn.open_table(tables::INBOUND_DEAD).wr()?.remove(id).wr()?;
    Ok(Requeue::Done)
}

pub(crate) fn drop_outbound(txn: &WriteTransaction, origin_seq: u64) -> Result<bool, StoreError> {
    let mut dead = txn.open_table(tables::OUTBOX_DEAD).wr()?;
    let removed = dead.remove(origin_seq).wr()?.is_some();
    Ok(removed)
}

pub(crate) fn drop_inbound(txn: &WriteTransaction, id: u64) -> Result<bool, StoreError> {
    let mut dead = txn.open_table(tables::INBOUND_DEAD).wr()?;
    let removed = dead.remove(id).wr()?.is_some();
    Ok(removed)
}

impl Store {
    /// Put an outbound dead letter back into the outbox under its own `origin_seq`, so the
    /// publisher sends it again with the same message id and order. Refused when the stored
    /// change does not decode.
    pub async fn requeue_outbound(&self, origin_seq: u64) -> Result<Requeue, StoreError> {
        requeue(self.submit(Op::RequeueOutbound(origin_seq)).await?)
    }

    /// Re-park an inbound dead letter so the parked-retry timer applies it. Refused when it
    /// does not decode as a change, or is not a params change (only those can be parked).
    pub async fn requeue_inbound(&self, id: u64) -> Result<Requeue, StoreError> {
        requeue(self.submit(Op::RequeueInbound(id)).await?)
    }

    /// Remove an outbound dead letter for good. `Ok(false)` when it was not there.
    pub async fn drop_dead_outbound(&self, origin_seq: u64) -> Result<bool, StoreError> {
        flag(self.submit(Op::DropDeadOutbound(origin_seq)).await?)
    }

    /// Remove an inbound dead letter for good. `Ok(false)` when it was not there.
    pub async fn drop_dead_inbound(&self, id: u64) -> Result<bool, StoreError> {
        flag(self.submit(Op::DropDeadInbound(id)).await?)
    }
}

fn requeue(value: Value) -> Result<Requeue, StoreError> {
    match value {
        Value::Requeue(r) => Ok(r),
        _ => Err(StoreError::Closed),
    }
}
