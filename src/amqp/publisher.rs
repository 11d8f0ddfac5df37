//! The publisher: drains the outbox to the broker, in `origin_seq` order, at least once.
//!
//! Owns the publish link's life (connect, session, sender attach, reconnect forever with capped
//! jittered backoff, detach on shutdown), the held-entry policy (a change whose deployment is
//! still unknown cannot be routed: it stays in the outbox and is retried every pass) and the
//! outcome policy: an entry leaves the outbox only when the broker settled it `Accepted`;
//! `Rejected` moves it to the outbound dead letters with the broker's reason; `Released`,
//! `Modified` or a link failure keep it for a resend. It must not touch the HTTP path nor
//! decide anything about inbound changes.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fe2o3_amqp::link::delivery::DeliveryFut;
use fe2o3_amqp::link::SendError;
use fe2o3_amqp::types::messaging::Outcome;
use fe2o3_amqp::{Sender, Session};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::link::{step, Reconnect, STEP_TIMEOUT};
use super::{codec, connect, AmqpError};
use crate::change::Change;
use crate::config::AmqpConfig;
use crate::metrics;
use crate::store::{Store, StoreError};
use crate::wire;

/// How often an idle publisher looks at the outbox without being woken (held entries, missed
/// wake-ups).
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);
/// Outbox entries read per store call.
const BATCH: usize = 256;
/// Unsettled sends in flight at once.
const WINDOW: usize = 64;

/// Why one publishing attempt ended (the publisher then backs off and reconnects).
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("{0}")]
    Connect(#[from] AmqpError),
    #[error("cannot begin an AMQP session: {0}")]
    Session(String),
    #[error("cannot attach a sender to {address:?}: {reason}")]
    Attach { address: String, reason: String },
    #[error("publish link lost: {0}")]
    Link(String),
    #[error("outbox: {0}")]
    Store(#[from] StoreError),
}

/// Runs until `shutdown`: connects, publishes the outbox, reconnects after any failure.
/// `wake` is notified after each append; without it the outbox is still polled every
/// [`POLL_INTERVAL`].
pub async fn run_publisher(
    cfg: AmqpConfig,
    site: String,
    store: Store,
    wake: Arc<Notify>,
    shutdown: CancellationToken,
) {
    let mut publisher = Publisher {
        cfg,
        site,
        store,
        wake,
        shutdown,
        held_logged: HashSet::new(),
    };
    let mut reconnect = Reconnect::new(metrics::LINK_PUBLISH, "publishing", &publisher.cfg);
    while !publisher.shutdown.is_cancelled() {
        let mut up_since = None;
        let result = publisher.connected(&mut up_since).await;
        if !reconnect.after(result, up_since, &publisher.shutdown).await {
            break;
        }
    }
    tracing::info!("publisher stopped");
}

struct Publisher {
    cfg: AmqpConfig,
    site: String,
    store: Store,
    wake: Arc<Notify>,
    shutdown: CancellationToken,
    /// Held entries already logged (logged once each while held).
    held_logged: HashSet<u64>,
}

/// What one pass over the outbox asks for next.
enum Pass {
    /// Everything sendable was settled: wait for a wake-up.
    Idle,
    /// Something was released or modified by the broker: look again after a pause.
    Retry,
}

type Inflight = (u64, &'static str, DeliveryFut<Result<Outcome, SendError>>);

impl Publisher {
    /// One connection's life. `Ok(())` on shutdown or a quiet end of the link.
    async fn connected(&mut self, up_since: &mut Option<Instant>) -> Result<(), PublishError> {
        let container = format!("audrey-federation-{}-publisher", self.site);
        let shutdown = self.shutdown.clone();
        let mut conn = tokio::select! {
            c = connect(&self.cfg, &container) => c?,
            _ = shutdown.cancelled() => return Ok(()),
        };
        let result = async {
            let mut session = step(Session::begin(&mut conn))
                .await
                .map_err(PublishError::Session)?;
            let address = self.cfg.publish_address.clone();
            let link_name = format!("audrey-federation-{}-publish", self.site);
            let attached = step(Sender::attach(&mut session, link_name, address.as_str())).await;
            let mut sender = match attached {
                Ok(s) => s,
                Err(reason) => {
                    let _ = step(session.end()).await;
                    return Err(PublishError::Attach { address, reason });
                }
            };
            metrics::broker_link_up(metrics::LINK_PUBLISH, true);
            *up_since = Some(Instant::now());
            tracing::info!(address = %address, "publish link attached");
            let result = self.drain(&mut sender).await;
            metrics::broker_link_up(metrics::LINK_PUBLISH, false);
            // RabbitMQ 3.10 answers close() with IllegalState: detach instead.
            let _ = tokio::time::timeout(STEP_TIMEOUT, sender.detach()).await;
            let _ = step(session.end()).await;
            result
        }
        .await;
        let _ = step(conn.close()).await;
        result
    }

    /// Publishes passes over the outbox until shutdown or a link failure.
    async fn drain(&mut self, sender: &mut Sender) -> Result<(), PublishError> {
        let shutdown = self.shutdown.clone();
        let wake = self.wake.clone();
        loop {
            let pass = tokio::select! {
                p = self.pass(sender) => p?,
                _ = shutdown.cancelled() => return Ok(()),
            };
            let pause = match pass {
                Pass::Idle => POLL_INTERVAL,
                Pass::Retry => POLL_INTERVAL / 4,
            };
            tokio::select! {
                _ = wake.notified(), if matches!(pass, Pass::Idle) => {}
                _ = tokio::time::sleep(pause) => {}
                _ = shutdown.cancelled() => return Ok(()),
                e = sender.on_detach() => return Err(PublishError::Link(format!("the broker detached the link: {e}"))),
            }
        }
    }

    /// One pass over the whole outbox in `origin_seq` order. Cancel-safe: an entry leaves the
    /// outbox only after its `Accepted` was recorded.
    async fn pass(&mut self, sender: &mut Sender) -> Result<Pass, PublishError> {
        let mut after = None;
        let mut held = Vec::new();
        let mut retry = false;
        loop {
            let batch = match self.store.pending(after, BATCH) {
                Ok(batch) => batch,
                Err(e) => match e.corrupt_outbox_seq() {
                    Some(seq) => {
                        tracing::error!(origin_seq = seq, error = %e, "corrupt outbox entry moved to the dead letters");
                        self.store.dead_letter_outbound(seq, &e.to_string()).await?;
                        after = Some(seq);
                        continue;
                    }
                    None => return Err(e.into()),
                },
            };
            let Some(last) = batch.last() else { break };
            after = Some(last.origin_seq);
            let mut inflight: VecDeque<Inflight> = VecDeque::new();
            for mut change in batch {
                let Some(deployment) = self.deployment(&mut change)? else {
                    held.push(change.origin_seq);
                    self.log_held(&change);
                    continue;
                };
                let subject = wire::routing_key(&self.cfg.routing_key_template, &deployment);
                let message = codec::to_message(&wire::encode(&change, &subject));
                let fut = sender
                    .send_batchable(message)
                    .await
                    .map_err(|e| PublishError::Link(e.to_string()))?;
                inflight.push_back((change.origin_seq, change.event.kind(), fut));
                if inflight.len() >= WINDOW {
                    if let Some(entry) = inflight.pop_front() {
                        retry |= self.settle(entry).await?;
                    }
                }
            }
            while let Some(entry) = inflight.pop_front() {
                retry |= self.settle(entry).await?;
            }
        }
        self.held_logged.retain(|seq| held.contains(seq));
        metrics::outbox_held(held.len());
        Ok(if retry { Pass::Retry } else { Pass::Idle })
    }

    /// Applies the broker's verdict on one send. `Ok(true)`: keep it and resend later.
    async fn settle(&mut self, (seq, kind, fut): Inflight) -> Result<bool, PublishError> {
        match fut.await {
            Ok(Outcome::Accepted(_)) => {
                self.store.mark_delivered(seq).await?;
                metrics::published(kind);
                Ok(false)
            }
            Ok(Outcome::Rejected(rejected)) => {
                let reason = match rejected.error {
                    Some(e) => format!(
                        "rejected by the broker: {}{}",
                        condition_name(&e.condition),
                        e.description.map(|d| format!(": {d}")).unwrap_or_default()
                    ),
                    None => "rejected by the broker (no reason given)".to_owned(),
                };
                tracing::error!(origin_seq = seq, kind, reason = %reason, "change moved to the outbound dead letters");
                self.store.dead_letter_outbound(seq, &reason).await?;
                metrics::publish_rejected();
                metrics::dead_lettered_outbound(kind);
                Ok(false)
            }
            Ok(other) => {
                tracing::warn!(origin_seq = seq, kind, outcome = ?other, "broker did not take the change; it will be resent");
                metrics::publish_released();
                Ok(true)
            }
            Err(e) => Err(PublishError::Link(e.to_string())),
        }
    }

    /// The deployment to route `change` by, filled in from the store when learnt since capture.
    fn deployment(&self, change: &mut Change) -> Result<Option<String>, StoreError> {
        if let Some(d) = change.deployment.as_ref().filter(|d| !d.is_empty()) {
            return Ok(Some(d.clone()));
        }
        let Some(instance) = change.instance.as_deref() else {
            return Ok(None);
        };
        let found = self.store.deployment_of(instance)?;
        change.deployment.clone_from(&found);
        Ok(found)
    }

    fn log_held(&mut self, change: &Change) {
        if self.held_logged.insert(change.origin_seq) {
            tracing::warn!(
                origin_seq = change.origin_seq,
                kind = change.event.kind(),
                instance = change.instance.as_deref().unwrap_or(""),
                "change held in the outbox: its deployment is not known yet"
            );
        }
    }
}

/// An error condition as its AMQP symbol when custom, its variant name otherwise.
pub(crate) fn condition_name(c: &fe2o3_amqp::types::definitions::ErrorCondition) -> String {
    match c {
        fe2o3_amqp::types::definitions::ErrorCondition::Custom(sym) => sym.0.clone(),
        other => format!("{other:?}"),
    }
}
