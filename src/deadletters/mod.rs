//! Dead letters made operable: list them, put them back (retry), or drop them, on a stopped
//! sidecar's store directly or on a running one through its admin listener
//! (`GET /dead-letters`, `POST /dead-letters/retry`, `POST /dead-letters/drop`).
//!
//! Owns the operator's redacted view of a dead letter ([`Letter`]: never an instance secret,
//! never instance-config XML, never a raw body), the selection rules ([`Selector`]), the
//! admin handlers, the small HTTP client the CLI uses against a running sidecar, and the
//! table rendering (`http.rs`: the admin routes; `remote.rs`: the client; `table.rs`: the
//! table). It must not decide what a requeue means in storage (`store/dead.rs`)
//! and must not publish or replay anything itself.

mod http;
pub mod remote;
mod table;

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

pub use self::http::handle;
pub use self::table::render_table;
use crate::change::{Change, Event};
use crate::store::{InboundDeadLetter, OutboundDeadLetter, Requeue, Store, StoreError};

/// Most dead letters listed at once.
pub const DEFAULT_LIMIT: usize = 10_000;
const REDACTED: &str = "<redacted>";

/// Which way a dead letter was going.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Captured here; the publisher gave up. Its id is its `origin_seq`.
    Outbound,
    /// From another site; replay gave up. Its id is a local counter.
    Inbound,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Outbound => "outbound",
            Direction::Inbound => "inbound",
        }
    }

    pub fn parse(s: &str) -> Option<Direction> {
        match s {
            "outbound" => Some(Direction::Outbound),
            "inbound" => Some(Direction::Inbound),
            _ => None,
        }
    }
}

/// A dead letter as an operator sees it. Built only from redacted fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Letter {
    pub direction: Direction,
    /// `origin_seq` (outbound) or the local dead-letter id (inbound).
    pub id: u64,
    pub dead_at_ms: u64,
    /// Why it was dead-lettered, with the change's secret and XML cut out.
    pub reason: String,
    /// Whether the stored change decodes (the fields below are empty when not).
    pub decodes: bool,
    pub kind: Option<String>,
    pub message_id: Option<String>,
    pub instance: Option<String>,
    pub deployment: Option<String>,
}

impl Letter {
    fn new(
        direction: Direction,
        id: u64,
        dead_at_ms: u64,
        reason: &str,
        change: Option<Change>,
    ) -> Letter {
        let mut reason = reason.to_owned();
        if let Some(Event::Registration {
            instance_config,
            secret,
        }) = change.as_ref().map(|c| &c.event)
        {
            for hidden in [instance_config, secret] {
                if !hidden.is_empty() {
                    reason = reason.replace(hidden.as_str(), REDACTED);
                }
            }
        }
        Letter {
            direction,
            id,
            dead_at_ms,
            reason,
            decodes: change.is_some(),
            kind: change.as_ref().map(|c| c.event.kind().to_owned()),
            message_id: change.as_ref().map(Change::message_id),
            instance: change.as_ref().and_then(|c| c.instance.clone()),
            deployment: change.and_then(|c| c.deployment),
        }
    }

    fn outbound(l: &OutboundDeadLetter) -> Letter {
        Letter::new(
            Direction::Outbound,
            l.origin_seq,
            l.dead_at_ms,
            &l.reason,
            l.change(),
        )
    }

    fn inbound(l: &InboundDeadLetter) -> Letter {
        let change = serde_json::from_slice(&l.raw).ok();
        Letter::new(Direction::Inbound, l.id, l.dead_at_ms, &l.reason, change)
    }
}

/// Which dead letters a retry or drop acts on: one (`id`, with its direction) or all (of
/// one direction, or of both).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Selector {
    pub direction: Option<Direction>,
    pub id: Option<u64>,
    pub all: bool,
}

impl Selector {
    /// Exactly one of `--id` and `--all`; an id needs its direction (the id spaces overlap).
    pub fn validate(&self) -> Result<(), String> {
        match (self.id, self.all, self.direction) {
            (Some(_), true, _) => Err("give either an id or all, not both".into()),
            (None, false, _) => Err("give an id (with its direction) or all".into()),
            (Some(_), false, None) => {
                Err("an id needs a direction (outbound or inbound): the id spaces overlap".into())
            }
            _ => Ok(()),
        }
    }

    fn includes(&self, d: Direction) -> bool {
        self.direction.is_none_or(|x| x == d)
    }
}

/// What a retry or drop did to each selected dead letter.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    pub items: Vec<Item>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Item {
    pub letter: Letter,
    /// `requeued`, `reparked`, `dropped`, `refused` or `gone` (removed meanwhile).
    pub outcome: String,
    /// For `refused`: why.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

impl Report {
    /// True when every selected letter was acted on.
    pub fn all_done(&self) -> bool {
        self.items
            .iter()
            .all(|i| i.outcome != "refused" && i.outcome != "gone")
    }
}

/// Why an operation could not run.
#[derive(Debug, thiserror::Error)]
pub enum DeadLetterError {
    #[error("{0}")]
    Usage(String),
    #[error("no {direction} dead letter with id {id}")]
    NotFound { direction: &'static str, id: u64 },
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("admin endpoint {addr}: {reason}")]
    Remote { addr: SocketAddr, reason: String },
}

/// Dead letters of `direction` (both when `None`), outbound first, oldest first.
pub fn list(
    store: &Store,
    direction: Option<Direction>,
    limit: usize,
) -> Result<Vec<Letter>, StoreError> {
    let mut out = Vec::new();
    if direction.is_none_or(|d| d == Direction::Outbound) {
        out.extend(
            store
                .dead_letters_outbound(limit)?
                .iter()
                .map(Letter::outbound),
        );
    }
    if direction.is_none_or(|d| d == Direction::Inbound) {
        out.extend(
            store
                .dead_letters_inbound(limit)?
                .iter()
                .map(Letter::inbound),
        );
    }
    out.truncate(limit);
    Ok(out)
}

/// The selected letters (or `NotFound` for a missing id).
fn select(store: &Store, sel: &Selector) -> Result<Vec<Letter>, DeadLetterError> {
    sel.validate().map_err(DeadLetterError::Usage)?;
    let mut letters = Vec::new();
    for d in [Direction::Outbound, Direction::Inbound] {
        if sel.includes(d) {
            letters.extend(list(store, Some(d), usize::MAX)?);
        }
    }
    if let (Some(id), Some(direction)) = (sel.id, sel.direction) {
        letters.retain(|l| l.id == id);
        if letters.is_empty() {
            return Err(DeadLetterError::NotFound {
                direction: direction.as_str(),
                id,
            });
        }
    }
    Ok(letters)
}

/// Put the selected letters back: outbound into the outbox (same `origin_seq`), inbound
/// re-parked for the parked-retry timer.
pub async fn retry(store: &Store, sel: &Selector) -> Result<Report, DeadLetterError> {
    let mut report = Report::default();
    for letter in select(store, sel)? {
        let (done, requeue) = match letter.direction {
            Direction::Outbound => ("requeued", store.requeue_outbound(letter.id).await?),
            Direction::Inbound => ("reparked", store.requeue_inbound(letter.id).await?),
        };
        let (outcome, detail) = match requeue {
            Requeue::Done => (done, String::new()),
            Requeue::Missing => ("gone", String::new()),
            Requeue::Refused(why) => ("refused", why),
        };
        report.items.push(Item {
            letter,
            outcome: outcome.into(),
            detail,
        });
    }
    Ok(report)
}

/// Remove the selected letters for good.
pub async fn drop(store: &Store, sel: &Selector) -> Result<Report, DeadLetterError> {
    let mut report = Report::default();
    for letter in select(store, sel)? {
        let removed = match letter.direction {
            Direction::Outbound => store.drop_dead_outbound(letter.id).await?,
            Direction::Inbound => store.drop_dead_inbound(letter.id).await?,
        };
        let outcome = if removed { "dropped" } else { "gone" };
        report.items.push(Item {
            letter,
            outcome: outcome.into(),
            detail: String::new(),
        });
    }
    Ok(report)
}
