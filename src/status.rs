//! The live state of the two broker links (up or down, since when, the last error) and the
//! publisher's held count, shared between the AMQP tasks that set it and the admin listener
//! that reports it (`/status`, `/readyz`).
//!
//! `run()` creates one [`LinkStates`] and runs the publisher and subscriber inside
//! [`LinkStates::scope`]; the one place that records a link going up or down
//! (`metrics::broker_link_up`) and the reconnect loop's error report then reach it through a
//! task-local, so the AMQP module needs no extra plumbing. Outside such a scope (unit tests,
//! tools) recording is a no-op. It must not know AMQP types, and must never hold secrets: an
//! error text is stored as the link reported it, cut to [`MAX_ERROR_LEN`] bytes.

use std::future::Future;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, PoisonError};

use serde::Serialize;

use crate::change::now_ms;
use crate::metrics::{LINK_PUBLISH, LINK_SUBSCRIBE};

/// Longest error text kept per link.
pub const MAX_ERROR_LEN: usize = 300;

/// `held` before the publisher first looked at the outbox.
const UNKNOWN: u64 = u64::MAX;

tokio::task_local! {
    static CURRENT: LinkStates;
}

/// Handle on the link states. Cheap to clone; clones share one state.
#[derive(Clone, Debug)]
pub struct LinkStates {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    publish: LinkState,
    subscribe: LinkState,
    held: AtomicU64,
}

#[derive(Debug)]
struct LinkState {
    up: AtomicBool,
    since_ms: AtomicU64,
    last_error: Mutex<Option<(String, u64)>>,
}

impl LinkState {
    fn new(now: u64) -> LinkState {
        LinkState {
            up: AtomicBool::new(false),
            since_ms: AtomicU64::new(now),
            last_error: Mutex::new(None),
        }
    }
}

/// One link as reported by `/status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LinkSnapshot {
    pub up: bool,
    /// Unix time (ms) of the last change between up and down (or of start-up).
    pub since_ms: u64,
    /// The last error that ended a connection attempt, if any.
    pub last_error: Option<String>,
    /// Unix time (ms) of that error.
    pub last_error_at_ms: Option<u64>,
}

impl Default for LinkStates {
    fn default() -> Self {
        LinkStates::new()
    }
}

impl LinkStates {
    /// Both links down since now, held count unknown.
    pub fn new() -> LinkStates {
        let now = now_ms();
        LinkStates {
            inner: Arc::new(Inner {
                publish: LinkState::new(now),
                subscribe: LinkState::new(now),
                held: AtomicU64::new(UNKNOWN),
            }),
        }
    }

    /// Runs `fut` with this state as the one the recording functions reach.
    pub fn scope<F: Future>(&self, fut: F) -> impl Future<Output = F::Output> {
        CURRENT.scope(self.clone(), fut)
    }

    fn link(&self, link: &str) -> Option<&LinkState> {
        match link {
            LINK_PUBLISH => Some(&self.inner.publish),
            LINK_SUBSCRIBE => Some(&self.inner.subscribe),
            _ => None,
        }
    }

    /// Link `link` is up or down; `since` moves only when that changes.
    pub fn set_up(&self, link: &str, up: bool) {
        if let Some(s) = self.link(link) {
            if s.up.swap(up, Relaxed) != up {
                s.since_ms.store(now_ms(), Relaxed);
            }
        }
    }

    /// The last error of link `link` (kept until the next one).
    pub fn set_error(&self, link: &str, error: &str) {
        if let Some(s) = self.link(link) {
            let mut text = error.to_owned();
            if text.len() > MAX_ERROR_LEN {
                let mut cut = MAX_ERROR_LEN;
                while !text.is_char_boundary(cut) {
                    cut -= 1;
                }
                text.truncate(cut);
                text.push('…');
            }
            *s.last_error.lock().unwrap_or_else(PoisonError::into_inner) = Some((text, now_ms()));
        }
    }

    /// Outbox entries the publisher holds back (deployment not known yet).
    pub fn set_held(&self, held: usize) {
        self.inner.held.store(held as u64, Relaxed);
    }

    /// `None` until the publisher first counted them.
    pub fn held(&self) -> Option<u64> {
        Some(self.inner.held.load(Relaxed)).filter(|&n| n != UNKNOWN)
    }

    /// Link `link` now; `None` for an unknown link name.
    pub fn snapshot(&self, link: &str) -> Option<LinkSnapshot> {
        let s = self.link(link)?;
        let err = s
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        Some(LinkSnapshot {
            up: s.up.load(Relaxed),
            since_ms: s.since_ms.load(Relaxed),
            last_error_at_ms: err.as_ref().map(|e| e.1),
            last_error: err.map(|e| e.0),
        })
    }

    /// Both links, publish first, with their names.
    pub fn all(&self) -> [(&'static str, LinkSnapshot); 2] {
        [LINK_PUBLISH, LINK_SUBSCRIBE].map(|l| {
            let snap = self.snapshot(l).unwrap_or(LinkSnapshot {
                up: false,
                since_ms: 0,
                last_error: None,
                last_error_at_ms: None,
            });
            (l, snap)
        })
    }
}

/// Records on the scope's state (no-op outside one). Called by `metrics::broker_link_up`.
pub(crate) fn record_up(link: &str, up: bool) {
    let _ = CURRENT.try_with(|s| s.set_up(link, up));
}

/// Records the error that ended a link's connection. Called by the reconnect loop.
pub(crate) fn record_error(link: &str, error: &str) {
    let _ = CURRENT.try_with(|s| s.set_error(link, error));
}

/// Records the publisher's held count. Called by `metrics::outbox_held`.
pub(crate) fn record_held(held: usize) {
    let _ = CURRENT.try_with(|s| s.set_held(held));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn records_only_inside_the_scope_and_since_moves_on_change() {
        let links = LinkStates::new();
        record_up(LINK_PUBLISH, true);
        assert!(!links.snapshot(LINK_PUBLISH).unwrap().up);
        let l = links.clone();
        links
            .scope(async move {
                record_up(LINK_PUBLISH, true);
                let since = l.snapshot(LINK_PUBLISH).unwrap().since_ms;
                record_up(LINK_PUBLISH, true);
                assert_eq!(l.snapshot(LINK_PUBLISH).unwrap().since_ms, since);
                record_error(LINK_SUBSCRIBE, &"é".repeat(400));
                record_held(3);
            })
            .await;
        assert!(links.snapshot(LINK_PUBLISH).unwrap().up);
        let sub = links.snapshot(LINK_SUBSCRIBE).unwrap();
        assert!(!sub.up);
        let err = sub.last_error.unwrap();
        assert!(err.len() <= MAX_ERROR_LEN + '…'.len_utf8(), "{}", err.len());
        assert_eq!(links.held(), Some(3));
        assert!(links.snapshot("other").is_none());
    }
}
