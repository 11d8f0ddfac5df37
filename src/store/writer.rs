//! The group-commit writer: the one thread that owns write transactions on `state.redb`.
//!
//! Callers send an [`Op`] with a tokio oneshot; the writer takes everything queued (up to
//! [`MAX_BATCH`]), applies it in one write transaction, commits with fsync, then answers
//! each caller, so many concurrent writers share one fsync. After an I/O failure redb
//! refuses every operation until the file is reopened; the writer reopens it before the
//! next batch, so a disk that recovers makes writes succeed again. It must not know what
//! the ops mean: `outbox.rs` and `replay.rs` apply them.

use std::path::Path;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, PoisonError};

use redb::{Database, Durability, ReadableTable, ReadableTableMetadata, WriteTransaction};
use tokio::sync::{mpsc, oneshot};

use super::tables::{self, CapturedAt};
use super::{dead, outbox, replay, OrWrite, Shared, StoreError};
use crate::change::{Capture, Change};

/// Most ops applied in one transaction.
pub(crate) const MAX_BATCH: usize = 1024;
/// Requests that may wait for the writer before senders wait (asynchronously) for room.
pub(crate) const QUEUE: usize = 8192;
/// Page cache of the database, bytes. The hot set is small (the outbox's tail and head, the
/// uuid -> deployment map, the instance states being merged); a larger cache only fills with
/// pages of an outbox that grows while the broker is away, and shows as resident memory
/// (BENCHMARKS.md: 32 MiB took the sidecar to 68 MiB under load).
const CACHE_BYTES: usize = 8 * 1024 * 1024;

/// One write, as the writer thread sees it.
pub(crate) enum Op {
    Append(Box<Capture>),
    MarkDelivered(u64),
    /// `(instance, deployment)` pairs.
    LearnDeployments(Vec<(String, String)>),
    DeadLetterOutbound {
        origin_seq: u64,
        reason: String,
    },
    Probe,
    Merge(Box<replay::Merge>),
    Park {
        change: Box<Change>,
        reason: String,
    },
    Unpark(String),
    DeadLetterInbound {
        raw: Vec<u8>,
        reason: String,
    },
    DeadLetterParked {
        message_id: String,
        reason: String,
    },
    RememberSecret {
        instance: String,
        secret: String,
    },
    RequeueOutbound(u64),
    RequeueInbound(u64),
    DropDeadOutbound(u64),
    DropDeadInbound(u64),
    /// Nothing to write: asks the writer to reopen the file after a reader saw an I/O error.
    Nop,
    /// Finish the batch, close the file, stop the thread.
    Close,
}

/// What an op answers once its transaction is durable.
pub(crate) enum Value {
    Change(Box<Change>),
    Flag(bool),
    Count(u64),
    Requeue(dead::Requeue),
    Unit,
}

pub(crate) struct Request {
    pub op: Op,
    pub reply: oneshot::Sender<Result<Value, StoreError>>,
}

/// Open (or create) the database file with the settings the store uses.
pub(crate) fn open_db(path: &Path) -> Result<Database, StoreError> {
    redb::Builder::new()
        .set_cache_size(CACHE_BYTES)
        .create(path)
        .map_err(|e| StoreError::open(path, super::error::open_reason(e)))
}

/// Start the writer thread.
pub(crate) fn spawn(shared: Arc<Shared>) -> Result<mpsc::Sender<Request>, StoreError> {
    let (tx, rx) = mpsc::channel(QUEUE);
    std::thread::Builder::new()
        .name("store-writer".into())
        .spawn(move || run(&shared, rx))
        .map_err(|e| StoreError::Open {
            path: "store-writer thread".into(),
            reason: e.to_string(),
        })?;
    Ok(tx)
}

fn run(shared: &Shared, mut rx: mpsc::Receiver<Request>) {
    let mut batch: Vec<Request> = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(req) => batch.push(req),
                Err(_) => break,
            }
        }
        let (closers, rest): (Vec<Request>, Vec<Request>) =
            batch.drain(..).partition(|r| matches!(r.op, Op::Close));
        process(shared, rest);
        if !closers.is_empty() {
            shared.closed.store(true, Relaxed);
            let db = shared
                .db
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .take();
            let result = match db.map(Database::close) {
                Some(Err(e)) => Err(StoreError::write(e)),
                _ => Ok(()),
            };
            for req in closers {
                let _ = req.reply.send(result.clone().map(|()| Value::Unit));
            }
            // Requests still queued are dropped: their callers see `StoreError::Closed`.
            return;
        }
    }
    // Every handle is gone: close the file.
    shared.closed.store(true, Relaxed);
    drop(
        shared
            .db
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .take(),
    );
}

/// Apply one batch: reopen if needed, run every op in one transaction, commit durably,
/// answer. An op failing on its own record (corrupt) is answered alone and the batch is
/// rerun without it; a storage failure fails the whole batch.
fn process(shared: &Shared, mut live: Vec<Request>) {
    if shared.needs_reopen.load(Relaxed) {
        if let Err(e) = reopen(shared) {
            answer_all(live, &e);
            return;
        }
    }
    live.retain(|r| !(matches!(r.op, Op::Nop) && r.reply.is_closed()));
    if live.iter().all(|r| matches!(r.op, Op::Nop)) {
        answer_all_ok(live);
        return;
    }
    let guard = shared.db.read().unwrap_or_else(PoisonError::into_inner);
    let Some(db) = guard.as_ref() else {
        answer_all(live, &StoreError::Closed);
        return;
    };
    // Each round either commits or removes one failed op, so this ends.
    for _ in 0..=live.len() {
        match attempt(db, shared, &live) {
            Ok(values) => {
                shared.stats.commits.fetch_add(1, Relaxed);
                shared.stats.ops.fetch_add(live.len() as u64, Relaxed);
                for (req, value) in live.into_iter().zip(values) {
                    let value = match req.op {
                        Op::Probe => probe_file(&shared.dir).map(|()| value),
                        _ => Ok(value),
                    };
                    let _ = req.reply.send(value);
                }
                return;
            }
            Err(Failure::Op(index, e)) => {
                let req = live.remove(index);
                let _ = req.reply.send(Err(e));
                if live.is_empty() {
                    return;
                }
            }
            Err(Failure::Batch(e)) => {
                tracing::warn!(error = %e, ops = live.len(), "store write failed");
                if e.needs_reopen() {
                    shared.needs_reopen.store(true, Relaxed);
                }
                answer_all(live, &e);
                return;
            }
        }
    }
}

enum Failure {
    /// The op at this index failed on its own record.
    Op(usize, StoreError),
    /// The transaction failed.
    Batch(StoreError),
}

fn attempt(db: &Database, shared: &Shared, live: &[Request]) -> Result<Vec<Value>, Failure> {
    let mut txn = db.begin_write().wr().map_err(Failure::Batch)?;
    txn.set_durability(Durability::Immediate)
        .wr()
        .map_err(Failure::Batch)?;
    let mut values = Vec::with_capacity(live.len());
    for (index, req) in live.iter().enumerate() {
        match apply(&txn, shared, &req.op) {
            Ok(v) => values.push(v),
            Err(e) if e.needs_reopen() || e == StoreError::Closed => return Err(Failure::Batch(e)),
            Err(e) => return Err(Failure::Op(index, e)),
        }
    }
    let snapshot = Snapshot::take(&txn).map_err(Failure::Batch)?;
    txn.commit().wr().map_err(Failure::Batch)?;
    snapshot.publish(shared);
    Ok(values)
}

fn apply(txn: &WriteTransaction, shared: &Shared, op: &Op) -> Result<Value, StoreError> {
    Ok(match op {
        Op::Append(capture) => Value::Change(Box::new(outbox::append(
            txn,
            &shared.site,
            &shared.incarnation,
            capture,
        )?)),
        Op::MarkDelivered(seq) => Value::Flag(outbox::mark_delivered(txn, *seq)?),
        Op::LearnDeployments(pairs) => {
            let mut learnt = 0;
            for (instance, deployment) in pairs {
                learnt += u64::from(outbox::learn_deployment(txn, instance, deployment)?);
            }
            Value::Count(learnt)
        }
        Op::DeadLetterOutbound { origin_seq, reason } => {
            Value::Flag(outbox::dead_letter(txn, *origin_seq, reason)?)
        }
        Op::Probe => {
            let mut meta = txn.open_table(tables::META).wr()?;
            meta.insert(tables::META_PROBE_MS, crate::change::now_ms())
                .wr()?;
            Value::Unit
        }
        Op::Merge(merge) => {
            replay::merge(txn, merge)?;
            Value::Unit
        }
        Op::Park { change, reason } => Value::Count(replay::park(txn, change, reason)?),
        Op::Unpark(message_id) => Value::Flag(replay::unpark(txn, message_id)?),
        Op::DeadLetterInbound { raw, reason } => {
            Value::Count(replay::dead_letter_inbound(txn, raw, reason)?)
        }
        Op::DeadLetterParked { message_id, reason } => {
            Value::Flag(replay::dead_letter_parked(txn, message_id, reason)?)
        }
        Op::RememberSecret { instance, secret } => {
            replay::remember_secret(txn, instance, secret)?;
            Value::Unit
        }
        Op::RequeueOutbound(seq) => Value::Requeue(dead::requeue_outbound(txn, *seq)?),
        Op::RequeueInbound(id) => Value::Requeue(dead::requeue_inbound(txn, *id)?),
        Op::DropDeadOutbound(seq) => Value::Flag(dead::drop_outbound(txn, *seq)?),
        Op::DropDeadInbound(id) => Value::Flag(dead::drop_inbound(txn, *id)?),
        Op::Nop | Op::Close => Value::Unit,
    })
}

/// Counts read inside the committing transaction, published once it is durable.
pub(crate) struct Snapshot {
    depth: u64,
    outbox_dead: u64,
    parked: u64,
    inbound_dead: u64,
    oldest_ms: Option<u64>,
}

impl Snapshot {
    pub(crate) fn take(txn: &WriteTransaction) -> Result<Snapshot, StoreError> {
        let outbox = txn.open_table(tables::OUTBOX).wr()?;
        let oldest_ms = match outbox.first().wr()? {
            Some((_, v)) => serde_json::from_slice::<CapturedAt>(v.value())
                .ok()
                .map(|c| c.captured_at_ms),
            None => None,
        };
        Ok(Snapshot {
            depth: outbox.len().wr()?,
            outbox_dead: txn.open_table(tables::OUTBOX_DEAD).wr()?.len().wr()?,
            parked: txn.open_table(tables::PARKED).wr()?.len().wr()?,
            inbound_dead: txn.open_table(tables::INBOUND_DEAD).wr()?.len().wr()?,
            oldest_ms,
        })
    }

    pub(crate) fn publish(&self, shared: &Shared) {
        let s = &shared.stats;
        s.depth.store(self.depth, Relaxed);
        s.outbox_dead.store(self.outbox_dead, Relaxed);
        s.parked.store(self.parked, Relaxed);
        s.inbound_dead.store(self.inbound_dead, Relaxed);
        s.oldest_ms
            .store(self.oldest_ms.unwrap_or(u64::MAX), Relaxed);
    }
}

/// Close the failed handle and open the file again (redb latches an I/O error until then).
/// Readers hold the lock's read side for the length of a read, so none is in flight.
fn reopen(shared: &Shared) -> Result<(), StoreError> {
    let mut slot = shared.db.write().unwrap_or_else(PoisonError::into_inner);
    drop(slot.take());
    let db = open_db(&shared.path).map_err(|e| match e {
        StoreError::Open { reason, .. } => StoreError::Write { reason },
        other => other,
    })?;
    // Tables exist already; refresh the counts from what is really on disk.
    let txn = db.begin_write().wr()?;
    let snapshot = Snapshot::take(&txn)?;
    txn.abort().wr()?;
    snapshot.publish(shared);
    *slot = Some(db);
    shared.needs_reopen.store(false, Relaxed);
    tracing::info!(path = %shared.path.display(), "store reopened after a write failure");
    Ok(())
}

/// Write and fsync a small file beside the database: a full or read-only disk fails here
/// even when redb could still reuse free pages inside its file.
fn probe_file(dir: &Path) -> Result<(), StoreError> {
    use std::io::Write;
    let path = dir.join(".write-probe");
    let result = std::fs::File::create(&path)
        .and_then(|mut f| f.write_all(&[0u8; 4096]).and_then(|()| f.sync_data()));
    let _ = std::fs::remove_file(&path);
    result.map_err(|e| StoreError::Write {
        reason: e.to_string(),
    })
}

fn answer_all(live: Vec<Request>, e: &StoreError) {
    for req in live {
        let _ = req.reply.send(Err(e.clone()));
    }
}

fn answer_all_ok(live: Vec<Request>) {
    for req in live {
        let _ = req.reply.send(Ok(Value::Unit));
    }
}
