//! Parked changes: params changes that arrived before their instance's registration, and
//! dead letters an operator put back (of any kind); and the repairs a registration or a
//! deletion left undone.
//!
//! Owns retrying them instance by instance (the merge makes their order irrelevant: each
//! applies only what is still newer), stopping at the first one the server still refuses,
//! dead-lettering those parked longer than `replay.park_ttl`, and the timer that also
//! finishes pending repairs. It must not decide how a single change is applied (`apply.rs`)
//! and holds no state of its own: the parked table and the instance states are the truth.

use std::collections::BTreeSet;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{Outcome, ReplayError, Replayer};
use crate::change::{now_ms, Event};

/// What one pass over the parked changes did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetryReport {
    /// Parked changes now applied.
    pub applied: u64,
    /// Parked changes found applied already (dropped from the parked table).
    pub duplicates: u64,
    /// Parked changes dead-lettered (past the TTL, or refused by the server).
    pub dead_lettered: u64,
    /// Parked changes still waiting after the pass.
    pub still_parked: u64,
}

impl RetryReport {
    fn add(&mut self, outcome: Outcome) {
        match outcome {
            Outcome::Applied => self.applied += 1,
            Outcome::Duplicate => self.duplicates += 1,
            Outcome::DeadLettered => self.dead_lettered += 1,
            Outcome::Parked | Outcome::OwnOrigin => {}
        }
    }
}

impl Replayer {
    /// Dead-letter the parked changes older than the TTL, then retry the others, instance by
    /// instance, in order. Stops at the first transient failure (the caller calls again
    /// later); everything done until then is durable.
    pub async fn retry_parked(&self) -> Result<RetryReport, ReplayError> {
        let mut report = RetryReport::default();
        let result = self.retry_parked_into(&mut report).await;
        if let Err(e) = &result {
            crate::metrics::replay_error(e.reason());
        }
        report.still_parked = self.store.parked()?.len() as u64;
        result.map(|()| report)
    }

    async fn retry_parked_into(&self, report: &mut RetryReport) -> Result<(), ReplayError> {
        self.expire(report).await?;
        let parked = self.store.parked()?;
        // Deletions put back by an operator (they have no instance, and take lanes themselves).
        for entry in parked.iter().filter(|e| e.change.instance.is_none()) {
            let change = &entry.change;
            let outcome = match change.deployment.as_deref() {
                Some(d) if matches!(change.event, Event::Deletion) => {
                    self.deletion(change, d).await?
                }
                _ => {
                    let reason = "a change without an instance that is no deletion";
                    self.dead_letter(change, reason, true).await?
                }
            };
            self.store.unpark(&change.message_id()).await?;
            report.add(outcome);
        }
        let instances: BTreeSet<String> = parked
            .into_iter()
            .filter_map(|e| e.change.instance)
            .collect();
        for uuid in instances {
            let _lane = self.lane(&uuid).lock().await;
            self.drain(&uuid, report).await?;
        }
        Ok(())
    }

    /// Call [`Replayer::retry_parked`] every `period` while anything is parked, until
    /// `shutdown` fires. Failures are logged by the retry itself and tried again next period.
    pub async fn retry_parked_every(&self, period: Duration, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(period) => {}
            }
            if self
                .repairs
                .swap(false, std::sync::atomic::Ordering::Relaxed)
            {
                if let Err(e) = self.repair_all().await {
                    self.repairs_pending();
                    tracing::warn!(
                        reason = e.reason(),
                        error = %e,
                        "finishing pending repairs failed; trying again later"
                    );
                }
            }
            if self.store.parked_count() == 0 {
                continue;
            }
            match self.retry_parked().await {
                Ok(report) => tracing::debug!(?report, "parked changes retried"),
                Err(e) => tracing::warn!(
                    reason = e.reason(),
                    error = %e,
                    "retrying parked changes failed; trying again later"
                ),
            }
        }
    }

    /// Right after a registration of `uuid` was applied (its lane held): its parked changes
    /// go now, in order, even those past the TTL (their instance exists at last). A failure
    /// leaves them parked for the timer; the registration itself stays applied.
    pub(super) async fn after_registration(&self, uuid: &str) {
        let mut report = RetryReport::default();
        if let Err(e) = self.drain(uuid, &mut report).await {
            crate::metrics::replay_error(e.reason());
            tracing::warn!(
                instance = uuid,
                reason = e.reason(),
                error = %e,
                "retrying parked changes after a registration failed; the timer will retry"
            );
        } else if report != RetryReport::default() {
            tracing::info!(
                instance = uuid,
                ?report,
                "parked changes retried after registration"
            );
        }
    }

    /// Finish every repair a registration or deletion left undone (see `Replayer::repair`).
    pub async fn repair_all(&self) -> Result<(), ReplayError> {
        for (uuid, _) in self.store.instances_to_repair()? {
            let _lane = self.lane(&uuid).lock().await;
            // Read again under the lane: a change may have finished it meanwhile.
            if let Some(mut state) = self.store.instance_state(&uuid)? {
                if state.repost || state.reapply {
                    self.repair(&uuid, &mut state).await?;
                }
            }
        }
        Ok(())
    }

    /// Dead-letter every parked change older than the TTL.
    async fn expire(&self, report: &mut RetryReport) -> Result<(), ReplayError> {
        let ttl_ms = u64::try_from(self.park_ttl.as_millis()).unwrap_or(u64::MAX);
        let now = now_ms();
        for entry in self.store.parked()? {
            if now.saturating_sub(entry.parked_at_ms) < ttl_ms {
                continue;
            }
            let reason = format!(
                "parked for longer than {:?} ({} attempts; last: {})",
                self.park_ttl, entry.attempts, entry.reason
            );
            report.add(self.dead_letter(&entry.change, &reason, true).await?);
        }
        Ok(())
    }

    /// Retry the parked changes of one instance (its lane held by the caller), registrations
    /// first, stopping at the first one that stays parked.
    async fn drain(&self, uuid: &str, report: &mut RetryReport) -> Result<(), ReplayError> {
        let mut entries = self.store.parked_for(uuid)?;
        entries.sort_by_key(|e| !matches!(e.change.event, Event::Registration { .. }));
        for entry in entries {
            let change = &entry.change;
            let outcome = match &change.event {
                Event::Params { audrey_data, .. } => {
                    self.params(change, uuid, audrey_data, true).await?
                }
                Event::Registration {
                    instance_config,
                    secret,
                } => {
                    let outcome = self
                        .registration(change, uuid, instance_config, secret)
                        .await?;
                    self.store.unpark(&change.message_id()).await?;
                    outcome
                }
                Event::Deletion => {
                    let reason = "a deletion parked under an instance";
                    self.dead_letter(change, reason, true).await?
                }
            };
            if outcome == Outcome::Duplicate {
                crate::metrics::replay_duplicate(change.event.kind());
            }
            report.add(outcome);
            if outcome == Outcome::Parked {
                break;
            }
        }
        Ok(())
    }
}
