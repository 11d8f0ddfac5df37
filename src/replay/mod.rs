//! The replay engine: merges a change captured at another site into what the LOCAL Config
//! Server holds, so that order, duplicates and replays can neither lose nor roll back a value.
//!
//! Owns the decision for each inbound change (own origin, nothing newer, apply, park, dead
//! letter), the recent message-id cache, the per-instance lanes that serialise one
//! instance's read-modify-write of its state, origin incarnations, the bounded retries of
//! refused changes, and the replay metrics and logs. Every [`Outcome`] is durable in the
//! store before [`Replayer::apply`] returns, so the caller may then settle the AMQP message;
//! a [`ReplayError`] means "nothing settled, retry the same change later".
//!
//! It must not talk to the broker or go through the proxy (replays go straight to the
//! server, so they are never captured again), and it must never re-POST a registration the
//! local server already has unless it is a newer registration of one registered here (the
//! POST wipes reported values; `apply.rs` puts the newer ones back). Requests live in `http.rs`, the
//! per-kind rules in `apply.rs`, parked changes in `parked.rs`.

mod apply;
mod error;
mod http;
mod parked;

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ::http::uri::Authority;
use tokio::sync::Mutex;

use crate::change::{now_ms, Change, Version};
use crate::config::ReplayConfig;
use crate::store::Store;
use crate::wire::Heartbeat;

pub use error::ReplayError;
pub use parked::RetryReport;

/// Default whole-request timeout towards the local server.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Message ids remembered in memory to drop redeliveries without a store read.
const RECENT_IDS: u64 = 100_000;
/// Number of per-instance lanes (instances hash onto them; a lane serialises its instances).
const LANES: usize = 64;
/// Changes whose refusals (5xx) are counted at once; past it the counts start again (a
/// bound on memory, never on correctness: a change then only gets more attempts).
const FAILURES_TRACKED: usize = 10_000;

/// What became of an inbound change. Each is durable in the store when returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The local server accepted it and the store recorded it as applied.
    Applied,
    /// This site captured it: nothing to do (no echo, no loop).
    OwnOrigin,
    /// Nothing in it is newer than what this site holds (applied already, or superseded by
    /// a newer change of the same instance or deployment).
    Duplicate,
    /// Its instance is not registered here yet, or an earlier change of the instance waits:
    /// kept in the store and retried by [`Replayer::retry_parked`].
    Parked,
    /// It can never be applied (invalid, refused by the server, or parked past the TTL):
    /// kept in the store's inbound dead letters, counted and logged.
    DeadLettered,
}

impl Outcome {
    /// Short stable name for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Applied => "applied",
            Outcome::OwnOrigin => "own_origin",
            Outcome::Duplicate => "duplicate",
            Outcome::Parked => "parked",
            Outcome::DeadLettered => "dead_lettered",
        }
    }
}

/// Conductor's OAuth consumer credentials at the local server (`oauth.conductor_key` and
/// the content of `oauth.conductor_secret_file`). `Debug` never shows the secret.
#[derive(Clone)]
pub struct Conductor {
    pub key: String,
    pub secret: String,
}

impl std::fmt::Debug for Conductor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conductor")
            .field("key", &self.key)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// Applies changes from other sites to the local Config Server. Share it behind an `Arc`;
/// every method takes `&self` and may run concurrently.
pub struct Replayer {
    site: String,
    server: http::LocalServer,
    conductor: Conductor,
    store: Store,
    park_ttl: Duration,
    retry_max: Duration,
    max_attempts: u32,
    give_up_after: Duration,
    recent: moka::sync::Cache<String, ()>,
    lanes: Vec<Mutex<()>>,
    /// Newest origin time (ms) seen per origin site, so the last-applied gauge never moves
    /// back (a parked change applied late, a stale heartbeat). One entry per site: bounded.
    newest: std::sync::Mutex<HashMap<String, u64>>,
    /// Per origin site, its newest incarnation seen and that change's version (loaded from
    /// the store on first sight). One entry per site: bounded.
    incarnations: std::sync::Mutex<HashMap<String, (String, Version)>>,
    /// Per message id, how often the local server refused it (5xx) and since when.
    failures: std::sync::Mutex<HashMap<String, (u32, Instant)>>,
    /// Some instance may have a repair left (set at start and after a failed repair).
    repairs: AtomicBool,
}

impl std::fmt::Debug for Replayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replayer")
            .field("site", &self.site)
            .field("conductor", &self.conductor)
            .field("park_ttl", &self.park_ttl)
            .finish_non_exhaustive()
    }
}

impl Replayer {
    /// A replayer for site `site` applying to the server at `upstream` (the authority of
    /// `proxy.upstream`, e.g. `127.0.0.1:4567`; it is also the `Host` the requests are
    /// signed for). Requests time out after [`DEFAULT_TIMEOUT`].
    pub fn new(
        site: &str,
        upstream: Authority,
        conductor: Conductor,
        store: Store,
        config: &ReplayConfig,
    ) -> Replayer {
        Replayer {
            site: site.to_owned(),
            server: http::LocalServer::new(upstream, DEFAULT_TIMEOUT),
            conductor,
            store,
            park_ttl: config.park_ttl,
            retry_max: config.retry_max,
            max_attempts: config.max_attempts.max(1),
            give_up_after: config.give_up_after,
            recent: moka::sync::Cache::new(RECENT_IDS),
            lanes: (0..LANES).map(|_| Mutex::new(())).collect(),
            newest: std::sync::Mutex::new(HashMap::new()),
            incarnations: std::sync::Mutex::new(HashMap::new()),
            failures: std::sync::Mutex::new(HashMap::new()),
            repairs: AtomicBool::new(true),
        }
    }

    /// Replace the whole-request timeout towards the local server.
    pub fn with_timeout(mut self, timeout: Duration) -> Replayer {
        self.server.set_timeout(timeout);
        self
    }

    /// The site whose changes this replayer skips as its own.
    pub fn site(&self) -> &str {
        &self.site
    }

    /// `replay.retry_max`: the longest pause between two tries of a change the local server
    /// did not take yet.
    pub fn retry_max(&self) -> Duration {
        self.retry_max
    }

    /// Apply one inbound change. Returns once its outcome is durable; on `Err` nothing was
    /// settled and the caller retries the same change later, keeping order.
    pub async fn apply(&self, change: Change) -> Result<Outcome, ReplayError> {
        let kind = change.event.kind();
        if change.origin_site == self.site {
            crate::metrics::replay_own_origin(kind);
            return Ok(Outcome::OwnOrigin);
        }
        let id = change.message_id();
        if self.recent.contains_key(&id) {
            crate::metrics::replay_duplicate(kind);
            return Ok(Outcome::Duplicate);
        }
        let result = match self.apply_new(&change).await {
            Err(e @ ReplayError::Server { .. }) => self.refused(&change, e).await,
            other => other,
        };
        match &result {
            Ok(Outcome::Duplicate) => crate::metrics::replay_duplicate(kind),
            Ok(_) => {}
            Err(e) => self.transient(&change, e),
        }
        if !matches!(result, Err(ReplayError::Server { .. })) {
            self.lock_failures().remove(&id);
        }
        result
    }

    /// The local server refused `change` (5xx): a transient error until it has refused it
    /// `replay.max_attempts` times or for `replay.give_up_after`, then a dead letter (which
    /// an operator can retry: what in it is still newer is applied then).
    async fn refused(&self, change: &Change, e: ReplayError) -> Result<Outcome, ReplayError> {
        let id = change.message_id();
        let (attempts, since) = {
            let mut failures = self.lock_failures();
            if failures.len() >= FAILURES_TRACKED && !failures.contains_key(&id) {
                failures.clear();
            }
            let entry = failures.entry(id.clone()).or_insert((0, Instant::now()));
            entry.0 += 1;
            *entry
        };
        if attempts < self.max_attempts && since.elapsed() < self.give_up_after {
            return Err(e);
        }
        self.lock_failures().remove(&id);
        let reason = format!(
            "the local server kept refusing it: {e} ({attempts} attempts over {:?})",
            since.elapsed()
        );
        let parked = self
            .store
            .parked_for(change.instance.as_deref().unwrap_or(""))?;
        let from_parked = parked.iter().any(|p| p.change.message_id() == id);
        self.dead_letter(change, &reason, from_parked).await
    }

    fn lock_failures(&self) -> std::sync::MutexGuard<'_, HashMap<String, (u32, Instant)>> {
        self.failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Log and count a change from an incarnation of its origin newer than the one seen so
    /// far: the origin's store was made again, its sequences start again, and its changes
    /// are applied like any other (their versions are newer).
    fn note_incarnation(&self, change: &Change) {
        if change.incarnation.is_empty() {
            return;
        }
        let version = change.version();
        let origin = change.origin_site.as_str();
        let mut known = self
            .incarnations
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !known.contains_key(origin) {
            if let Ok(Some(state)) = self.store.origin_state(origin) {
                if !state.incarnation.is_empty() {
                    known.insert(origin.to_owned(), (state.incarnation, state.newest));
                }
            }
        }
        match known.get_mut(origin) {
            Some((inc, _)) if *inc == change.incarnation => {}
            Some((inc, newest)) if version > *newest => {
                tracing::info!(
                    origin_site = origin,
                    incarnation = %change.incarnation,
                    previous = %inc,
                    "a new incarnation of the origin's store: its state was made again; its changes are applied by version"
                );
                crate::metrics::origin_incarnation(origin);
                *inc = change.incarnation.clone();
                *newest = version;
            }
            Some(_) => {}
            None => {
                known.insert(origin.to_owned(), (change.incarnation.clone(), version));
            }
        }
    }

    /// Takes a heartbeat of another site's publisher: moves that origin's last-applied gauge
    /// to the heartbeat's send time. Nothing is stored (no high-water mark moves) and no
    /// change counter counts it; a heartbeat of this site is skipped.
    pub fn heartbeat(&self, hb: &Heartbeat) {
        if hb.origin_site != self.site {
            self.origin_seen(&hb.origin_site, hb.sent_at_ms);
        }
    }

    /// Moves the origin's last-applied gauge forward to `at_ms` (never back).
    fn origin_seen(&self, origin: &str, at_ms: u64) {
        let mut newest = match self.newest.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        let entry = newest.entry(origin.to_owned()).or_insert(0);
        if at_ms > *entry {
            *entry = at_ms;
            crate::metrics::origin_time(origin, Duration::from_millis(at_ms));
        }
    }

    /// Remember a settled message id so a redelivery is dropped without a store read.
    fn remember(&self, change: &Change) {
        self.recent.insert(change.message_id(), ());
    }

    /// The lane of an instance: held while one of its changes is being decided.
    fn lane(&self, instance: &str) -> &Mutex<()> {
        &self.lanes[lane_index(instance)]
    }

    /// Count and log a transient failure (one line, with the reason).
    fn transient(&self, change: &Change, e: &ReplayError) {
        crate::metrics::replay_error(e.reason());
        tracing::warn!(
            message_id = %change.message_id(),
            kind = change.event.kind(),
            reason = e.reason(),
            error = %e,
            "replay failed; the change will be retried"
        );
    }

    /// The lanes of several instances at once (a deletion), each lane once, in lane order.
    async fn lanes_of(&self, instances: &[&str]) -> Vec<tokio::sync::MutexGuard<'_, ()>> {
        let mut indexes: Vec<usize> = instances.iter().map(|i| lane_index(i)).collect();
        indexes.sort_unstable();
        indexes.dedup();
        let mut guards = Vec::with_capacity(indexes.len());
        for i in indexes {
            guards.push(self.lanes[i].lock().await);
        }
        guards
    }

    /// Note that some instance has a repair left, for the timer.
    fn repairs_pending(&self) {
        self.repairs.store(true, Relaxed);
    }

    /// Count a change recorded as applied (durably, by the caller) and feed the lag metrics.
    fn applied(&self, change: &Change) -> Result<Outcome, ReplayError> {
        let now = now_ms();
        crate::metrics::replay_applied(
            change.event.kind(),
            &change.origin_site,
            Duration::from_millis(now.saturating_sub(change.captured_at_ms)),
        );
        self.origin_seen(&change.origin_site, change.captured_at_ms);
        self.remember(change);
        tracing::debug!(
            message_id = %change.message_id(),
            kind = change.event.kind(),
            instance = change.instance.as_deref().unwrap_or(""),
            "replayed"
        );
        Ok(Outcome::Applied)
    }
}

/// The subscriber's handler in a running sidecar: changes go to [`Replayer::apply`],
/// heartbeats to [`Replayer::heartbeat`]. A named type rather than a closure because a
/// closure handler only sees changes.
#[derive(Debug, Clone)]
pub struct ReplayHandler(pub Arc<Replayer>);

impl crate::amqp::ChangeHandler for ReplayHandler {
    async fn handle(&self, change: Change) -> Result<(), String> {
        self.0
            .apply(change)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    async fn heartbeat(&self, heartbeat: Heartbeat) {
        self.0.heartbeat(&heartbeat);
    }

    fn retry_max(&self) -> Duration {
        self.0.retry_max()
    }
}

fn lane_index(instance: &str) -> usize {
    let mut h = DefaultHasher::new();
    instance.hash(&mut h);
    (h.finish() % LANES as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conductor_debug_hides_the_secret() {
        let c = Conductor {
            key: "conductor".into(),
            secret: "hunter2".into(),
        };
        let shown = format!("{c:?}");
        assert!(shown.contains("conductor") && !shown.contains("hunter2"));
    }
}
