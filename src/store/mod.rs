//! The durable embedded store: one redb file, `<state.dir>/state.redb`, holding the outbox
//! (changes captured here, waiting to be published) and the replay state (what was applied
//! from other sites).
//!
//! Owns the `Store` handle: opening, the read path (read transactions from any thread,
//! never waiting for the writer) and the submission of writes to the group-commit writer
//! thread (`writer.rs`). It must not know about HTTP, AMQP or replay policy; what each
//! write means lives in `outbox.rs` and `replay.rs`, the schema in `tables.rs`.
//!
//! Every write resolves only once fsynced; a write failure answers `StoreError::Write`
//! with the OS reason and the file is reopened on the next write, so a disk that recovers
//! makes writes succeed again.

mod dead;
mod error;
mod outbox;
mod replay;
pub(crate) mod tables;
mod writer;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, PoisonError, RwLock};

use redb::{Database, ReadTransaction, ReadableDatabase, ReadableTable};
use tokio::sync::{mpsc, oneshot};

pub use dead::Requeue;
pub use error::StoreError;
pub use replay::Merge;
pub use tables::{
    InboundDeadLetter, InstanceState, OriginState, OutboundDeadLetter, ParkedEntry, Registered,
    Slot,
};
use writer::{Op, Request, Value};

/// File name of the database inside the state directory.
pub const FILE_NAME: &str = "state.redb";

/// Handle on the store. Cheap to clone; every clone shares one file and one writer thread.
#[derive(Clone)]
pub struct Store {
    shared: Arc<Shared>,
    tx: mpsc::Sender<Request>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("site", &self.shared.site)
            .field("path", &self.shared.path)
            .finish_non_exhaustive()
    }
}

/// Counters for tests and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Write transactions committed (each one fsync).
    pub commits: u64,
    /// Ops applied by those commits.
    pub ops: u64,
    /// Entries waiting in the outbox.
    pub depth: u64,
    /// Outbound dead letters.
    pub outbound_dead: u64,
    /// Parked inbound changes.
    pub parked: u64,
    /// Inbound dead letters.
    pub inbound_dead: u64,
}

pub(crate) struct Shared {
    path: PathBuf,
    dir: PathBuf,
    site: String,
    /// Made when the store was created; a store made again (state lost) gets a new one.
    incarnation: String,
    /// `None` once closed, or while a reopen failed. Readers hold the read side for the
    /// length of one read transaction; only a reopen or close takes the write side.
    db: RwLock<Option<Database>>,
    needs_reopen: AtomicBool,
    closed: AtomicBool,
    stats: Stats,
}

#[derive(Default)]
pub(crate) struct Stats {
    commits: AtomicU64,
    ops: AtomicU64,
    depth: AtomicU64,
    outbox_dead: AtomicU64,
    parked: AtomicU64,
    inbound_dead: AtomicU64,
    /// `u64::MAX` when the outbox is empty.
    oldest_ms: AtomicU64,
}

impl Store {
    /// Open (creating the directory and file if needed) the store of site `site`.
    /// Fails with `StoreError::Open` when the file cannot be created, opened or written.
    pub fn open(dir: &Path, site: &str) -> Result<Store, StoreError> {
        if site.is_empty() {
            return Err(StoreError::open(dir, "site name is empty"));
        }
        std::fs::create_dir_all(dir).map_err(|e| StoreError::open(dir, e))?;
        private(dir, 0o700);
        let path = dir.join(FILE_NAME);
        let db = writer::open_db(&path)?;
        // The store holds instance secrets: readable by this user alone, whatever the umask.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| StoreError::open(&path, format!("cannot make it mode 0600: {e}")))?;
        let (snapshot, incarnation) = create_tables(&db).map_err(|e| StoreError::open(&path, e))?;
        let shared = Arc::new(Shared {
            path,
            dir: dir.to_owned(),
            site: site.to_owned(),
            incarnation,
            db: RwLock::new(Some(db)),
            needs_reopen: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            stats: Stats::default(),
        });
        snapshot.publish(&shared);
        let tx = writer::spawn(shared.clone())?;
        Ok(Store { shared, tx })
    }

    /// The site this store assigns `origin_seq` for.
    pub fn site(&self) -> &str {
        &self.shared.site
    }

    /// This store's incarnation id: every change it assigns carries it, so that other sites
    /// tell a store made again (its sequences restart at 1) from replays of the old one.
    pub fn incarnation(&self) -> &str {
        &self.shared.incarnation
    }

    /// Path of the database file.
    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    /// Commit and op counters, and the table sizes as of the last commit.
    pub fn stats(&self) -> StoreStats {
        let s = &self.shared.stats;
        StoreStats {
            commits: s.commits.load(Relaxed),
            ops: s.ops.load(Relaxed),
            depth: s.depth.load(Relaxed),
            outbound_dead: s.outbox_dead.load(Relaxed),
            parked: s.parked.load(Relaxed),
            inbound_dead: s.inbound_dead.load(Relaxed),
        }
    }

    /// Readiness: a tiny durable write through the writer, then a 4 KiB write and fsync of a
    /// scratch file beside the database (which fails on a full or read-only disk even when
    /// redb could still reuse free pages inside its file).
    pub async fn probe_writable(&self) -> Result<(), StoreError> {
        self.submit(Op::Probe).await.map(|_| ())
    }

    /// Finish queued writes, close the file and stop the writer. Later calls on any clone
    /// fail with `StoreError::Closed`. Resolves once the file is closed, so it can be
    /// reopened at once. (Dropping every handle also closes it, but later, on the writer
    /// thread: a reopen in the same process right after a drop may find it still open.)
    pub async fn close(&self) -> Result<(), StoreError> {
        match self.submit(Op::Close).await {
            Err(StoreError::Closed) => Ok(()),
            other => other.map(|_| ()),
        }
    }

    /// Queue a write and wait for its durable answer.
    async fn submit(&self, op: Op) -> Result<Value, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Request { op, reply })
            .await
            .map_err(|_| StoreError::Closed)?;
        answer.await.unwrap_or(Err(StoreError::Closed))
    }

    /// Run `f` in a read transaction. Never waits for the writer (only for a reopen).
    fn read<T>(
        &self,
        f: impl FnOnce(&ReadTransaction) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let result = {
            let guard = self
                .shared
                .db
                .read()
                .unwrap_or_else(PoisonError::into_inner);
            match guard.as_ref() {
                None if self.shared.closed.load(Relaxed) => return Err(StoreError::Closed),
                None => Err(StoreError::Read {
                    reason: "reopening after a write failure".into(),
                }),
                Some(db) => db.begin_read().rd().and_then(|txn| f(&txn)),
            }
        };
        if let Err(e) = &result {
            if e.needs_reopen() {
                // redb latched an I/O error: ask the writer to reopen without waiting for it.
                self.shared.needs_reopen.store(true, Relaxed);
                let (reply, _) = oneshot::channel();
                let _ = self.tx.try_send(Request { op: Op::Nop, reply });
            }
        }
        result
    }
}

/// Create every table (so readers never meet a missing one), count what is there, and read
/// (or, in a new store, make) the store's incarnation id.
fn create_tables(db: &Database) -> Result<(writer::Snapshot, String), StoreError> {
    let txn = db.begin_write().wr()?;
    txn.open_table(tables::OUTBOX).wr()?;
    txn.open_table(tables::OUTBOX_DEAD).wr()?;
    txn.open_table(tables::META).wr()?;
    txn.open_table(tables::INSTANCE_SEQ).wr()?;
    txn.open_table(tables::DEPLOYMENTS).wr()?;
    txn.open_table(tables::INSTANCE_STATE).wr()?;
    txn.open_table(tables::TOMBSTONES).wr()?;
    txn.open_table(tables::ORIGINS).wr()?;
    txn.open_table(tables::PARKED).wr()?;
    txn.open_table(tables::INBOUND_DEAD).wr()?;
    txn.open_table(tables::INSTANCE_SECRETS).wr()?;
    let incarnation = {
        let mut text = txn.open_table(tables::META_TEXT).wr()?;
        let found = text
            .get(tables::META_TEXT_INCARNATION)
            .wr()?
            .map(|v| v.value().to_owned());
        match found {
            Some(id) => id,
            None => {
                let id = new_incarnation();
                text.insert(tables::META_TEXT_INCARNATION, id.as_str())
                    .wr()?;
                id
            }
        }
    };
    let snapshot = writer::Snapshot::take(&txn)?;
    txn.commit().wr()?;
    Ok((snapshot, incarnation))
}

/// A new incarnation id: 64 random bits, 16 hex digits.
fn new_incarnation() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// Map a redb result into `StoreError::Write`.
pub(crate) trait OrWrite<T> {
    fn wr(self) -> Result<T, StoreError>;
}

/// Map a redb result into `StoreError::Read`.
pub(crate) trait OrRead<T> {
    fn rd(self) -> Result<T, StoreError>;
}

impl<T, E: Into<redb::Error>> OrWrite<T> for Result<T, E> {
    fn wr(self) -> Result<T, StoreError> {
        self.map_err(StoreError::write)
    }
}

impl<T, E: Into<redb::Error>> OrRead<T> for Result<T, E> {
    fn rd(self) -> Result<T, StoreError> {
        self.map_err(StoreError::read)
    }
}

/// Makes the state directory `mode` (0700: only this user may list or open what it holds). A
/// directory this user does not own (a volume root owned by root with an `fsGroup`) cannot be
/// changed: that is logged, and the database file itself stays 0600.
fn private(dir: &Path, mode: u32) {
    if let Err(e) = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode)) {
        tracing::warn!(dir = %dir.display(), error = %e, "cannot make state.dir mode {mode:o}; state.redb stays 0600");
    }
}
