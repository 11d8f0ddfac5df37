//! The store's error type and the mapping from redb's errors to it.
//!
//! Owns `StoreError`: what a caller of the store can branch on (cannot open, cannot write,
//! cannot read, corrupt record, closed), each carrying a short, precise reason (the OS reason
//! for an I/O failure) fit for an HTTP 503 body. It must not decide retry policy or log.

use std::fmt::Display;

/// Why a store operation failed. Cheap to clone: one failed group commit answers every
/// caller in the batch with the same error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The database file could not be created or opened (permissions, read-only file
    /// system, already open by another process, unreadable file).
    #[error("cannot open store {path}: {reason}")]
    Open { path: String, reason: String },
    /// A write transaction could not be applied or made durable (disk full, read-only,
    /// I/O error). The store reopens its file on the next write, so a later write may succeed.
    #[error("cannot write store: {reason}")]
    Write { reason: String },
    /// A read transaction failed (I/O error, or the file is being reopened after a failure).
    #[error("cannot read store: {reason}")]
    Read { reason: String },
    /// A stored record does not decode. `key` names it within `table`.
    #[error("corrupt record {table}[{key}]: {reason}")]
    Corrupt {
        table: &'static str,
        key: String,
        reason: String,
    },
    /// The store was closed (or its writer thread is gone).
    #[error("store is closed")]
    Closed,
}

impl StoreError {
    /// For a corrupt outbox record, its `origin_seq`, so the publisher can dead-letter it.
    pub fn corrupt_outbox_seq(&self) -> Option<u64> {
        match self {
            StoreError::Corrupt { table, key, .. }
                if *table == crate::store::tables::OUTBOX_NAME =>
            {
                key.parse().ok()
            }
            _ => None,
        }
    }

    /// True when the file is locked by another process (a running sidecar holds it).
    pub fn is_locked(&self) -> bool {
        matches!(self, StoreError::Open { reason, .. } if reason == ALREADY_OPEN)
    }

    /// True when the failure came from the storage layer (I/O), after which redb refuses
    /// every operation until the file is reopened.
    pub(crate) fn needs_reopen(&self) -> bool {
        matches!(self, StoreError::Write { .. } | StoreError::Read { .. })
    }

    pub(crate) fn write(err: impl Into<redb::Error>) -> StoreError {
        StoreError::Write {
            reason: reason(err.into()),
        }
    }

    pub(crate) fn read(err: impl Into<redb::Error>) -> StoreError {
        StoreError::Read {
            reason: reason(err.into()),
        }
    }

    pub(crate) fn open(path: &std::path::Path, why: impl Display) -> StoreError {
        StoreError::Open {
            path: path.display().to_string(),
            reason: why.to_string(),
        }
    }

    pub(crate) fn corrupt(table: &'static str, key: impl Display, why: impl Display) -> StoreError {
        StoreError::Corrupt {
            table,
            key: key.to_string(),
            reason: why.to_string(),
        }
    }
}

/// The reason of an `Open` failure when another process holds the file's lock.
const ALREADY_OPEN: &str = "already open by another process";

/// A short reason: the OS message for I/O errors, redb's own text otherwise.
pub(crate) fn reason(err: redb::Error) -> String {
    match err {
        redb::Error::Io(io) => io.to_string(),
        redb::Error::PreviousIo => {
            "an earlier I/O error; the store reopens on the next write".into()
        }
        redb::Error::DatabaseAlreadyOpen => ALREADY_OPEN.into(),
        redb::Error::Corrupted(what) => format!("database corrupted: {what}"),
        other => other.to_string(),
    }
}

/// Reason for a failed `Database::create`: the OS message when it is an I/O error.
pub(crate) fn open_reason(err: redb::DatabaseError) -> String {
    reason(err.into())
}
