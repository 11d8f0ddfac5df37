//! The publisher: drains the outbox to the broker, in `origin_seq` order, at least once.
//!
//! Owns the publish link's life (connect, session, sender attach, reconnect forever with capped
//! jittered backoff, detach on shutdown), the held-entry policy (a change whose deployment is
//! still unknown cannot be routed: it stays in the outbox and is retried every pass) and the
//! outcome policy: an entry leaves the outbox only when the broker settled it `Accepted`;
//! `Rejected` moves it to the outbound dead letters with the broker's reason; `Released`,
//! `Modified` or a link failure keep it for a resend. It also sends this site's heartbeat
//! every `amqp.heartbeat_interval` on the same link, straight from memory (never through the
//! outbox), between two sends or while idle: its outcome is not awaited and a failed send is
//! only logged at debug, so a heartbeat never holds up the outbox. Shutdown has two phases:
//! `drain` (SIGTERM) stops heartbeats and ends the publisher once a pass found nothing left
//! to send; `stop` (the drain deadline) ends it at once, the outbox keeping the rest. It must
//! not touch the HTTP path nor decide anything about inbound changes.

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
use crate::change::{now_ms, Change};
use crate::config::AmqpConfig;
use crate::metrics;
use crate::store::{Store, StoreError};
use crate::wire;

/// How often an idle publisher looks at the outbox without being woken (held entries, missed
/// wake-ups).
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);
/// Replaced by this site's id in `amqp.routing_key_template` (optional).
pub const SITE_PLACEHOLDER: &str = "{site}";
/// Outbox entries read per store call.
const BATCH: usize = 256;
/// Unsettled sends in flight at once.
const WINDOW: usize = 64;
/// Longest wait for link credit or for the broker's verdict on one send. A broker killed
/// outright (no close frames) leaves fe2o3-amqp's send and outcome futures pending for ever:
/// past this the link counts as lost and the outbox is resent on a new connection (receivers
/// drop the duplicates).
pub const SETTLE_TIMEOUT: Duration = Duration::from_secs(15);

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
/// [`POLL_INTERVAL`]. Stops at once on `shutdown` (no drain phase): see
/// [`run_publisher_with_drain`].
pub async fn run_publisher(
    cfg: AmqpConfig,
    site: String,
    store: Store,
    wake: Arc<Notify>,
    shutdown: CancellationToken,
) {
    run_publisher_with_drain(cfg, site, store, wake, shutdown.clone(), shutdown).await
}

/// Like [`run_publisher`], with a drain phase: after `drain` fires it keeps publishing (and
/// reconnecting) until a pass finds nothing left to send, then returns; `stop` ends it at
/// once whatever is left (the outbox keeps it for the next start).
pub async fn run_publisher_with_drain(
    cfg: AmqpConfig,
    site: String,
    store: Store,
    wake: Arc<Notify>,
    drain: CancellationToken,
    stop: CancellationToken,
) {
    let heartbeat_interval = cfg.heartbeat_interval;
    let security = match crate::authn::WireSecurity::load(&cfg) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "publisher cannot start");
            return;
        }
    };
    let mut publisher = Publisher {
        security,
        cfg,
        site,
        store,
        wake,
        drain,
        stop,
        held_logged: HashSet::new(),
        heartbeat_interval,
        next_heartbeat: Instant::now() + heartbeat_interval,
        drained: false,
    };
    let mut reconnect = Reconnect::new(metrics::LINK_PUBLISH, "publishing", &publisher.cfg);
    while !publisher.stop.is_cancelled() && !publisher.drained {
        if publisher.drain.is_cancelled() && publisher.nothing_pending() {
            break;
        }
        let mut up_since = None;
        let result = publisher.connected(&mut up_since).await;
        if publisher.drained {
            break;
        }
        if !reconnect.after(result, up_since, &publisher.stop).await {
            break;
        }
    }
    if publisher.drain.is_cancelled() {
        match publisher.store.pending(None, 1) {
            Ok(left) if left.is_empty() => tracing::info!("publisher drained the outbox"),
            _ => {
                tracing::warn!("publisher stopped at the drain deadline; the outbox keeps the rest")
            }
        }
    }
    tracing::info!("publisher stopped");
}

struct Publisher {
    /// Signs every message; seals registrations' secrets.
    security: crate::authn::WireSecurity,
    cfg: AmqpConfig,
    site: String,
    store: Store,
    wake: Arc<Notify>,
    /// SIGTERM: finish sending what the outbox holds, then stop.
    drain: CancellationToken,
    /// The drain deadline: stop now.
    stop: CancellationToken,
    /// Held entries already logged (logged once each while held).
    held_logged: HashSet<u64>,
    heartbeat_interval: Duration,
    next_heartbeat: Instant,
    /// Set once a pass during the drain found nothing left to send.
    drained: bool,
}

/// How long a heartbeat lives in the broker: a few intervals, at least a minute, so a queue
/// whose consumer is away does not pile them up for ever.
fn heartbeat_ttl(interval: Duration) -> u64 {
    let ms = interval.saturating_mul(3).as_millis();
    u64::try_from(ms).unwrap_or(u64::MAX).max(60_000)
}

/// What one pass over the outbox asks for next.
enum Pass {
    /// Everything sendable was settled: wait for a wake-up.
    Idle,
    /// Something was released or modified by the broker: look again after a pause.
    Retry,
}

/// What ended a wait between two passes.
enum Woke {
    Pass,
    Heartbeat,
}

type Inflight = (u64, &'static str, DeliveryFut<Result<Outcome, SendError>>);

impl Publisher {
    /// One connection's life. `Ok(())` on shutdown or a quiet end of the link.
    async fn connected(&mut self, up_since: &mut Option<Instant>) -> Result<(), PublishError> {
        let container = format!("audrey-federation-{}-publisher", self.site);
        let shutdown = self.stop.clone();
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
            self.next_heartbeat = Instant::now() + self.heartbeat_interval;
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

    /// Publishes passes over the outbox until stopped, drained or a link failure; sends the
    /// heartbeats while waiting.
    async fn drain(&mut self, sender: &mut Sender) -> Result<(), PublishError> {
        let stop = self.stop.clone();
        let drain = self.drain.clone();
        let wake = self.wake.clone();
        loop {
            let draining = drain.is_cancelled();
            let pass = tokio::select! {
                p = self.pass(sender) => p?,
                _ = stop.cancelled() => return Ok(()),
            };
            if draining && matches!(pass, Pass::Idle) {
                self.drained = true;
                return Ok(());
            }
            let until = tokio::time::Instant::now()
                + match pass {
                    Pass::Idle => POLL_INTERVAL,
                    Pass::Retry => POLL_INTERVAL / 4,
                };
            loop {
                let next_heartbeat = tokio::time::Instant::from_std(self.next_heartbeat);
                let woke = tokio::select! {
                    _ = wake.notified(), if matches!(pass, Pass::Idle) => Woke::Pass,
                    _ = tokio::time::sleep_until(until) => Woke::Pass,
                    _ = drain.cancelled(), if !draining => Woke::Pass,
                    _ = tokio::time::sleep_until(next_heartbeat), if !draining => Woke::Heartbeat,
                    _ = stop.cancelled() => return Ok(()),
                    e = sender.on_detach() => return Err(PublishError::Link(format!("the broker detached the link: {e}"))),
                };
                match woke {
                    Woke::Pass => break,
                    Woke::Heartbeat => self.heartbeat(sender).await,
                }
            }
        }
    }

    /// Sends a heartbeat if one is due (never while draining). Its outcome is not awaited.
    async fn heartbeat_if_due(&mut self, sender: &mut Sender) {
        if !self.drain.is_cancelled() && Instant::now() >= self.next_heartbeat {
            self.heartbeat(sender).await;
        }
    }

    /// Sends one heartbeat now; a failure is logged at debug and forgotten.
    async fn heartbeat(&mut self, sender: &mut Sender) {
        self.next_heartbeat = Instant::now() + self.heartbeat_interval;
        let hb = wire::Heartbeat {
            origin_site: self.site.clone(),
            sent_at_ms: now_ms(),
        };
        let subject = wire::routing_key(&self.template(), wire::HEARTBEAT_DEPLOYMENT);
        let ttl = heartbeat_ttl(self.heartbeat_interval);
        let message = codec::to_message(&self.security.sign(wire::encode_heartbeat_as(
            &hb,
            &subject,
            ttl,
            self.cfg.wire_format,
        )));
        match tokio::time::timeout(SETTLE_TIMEOUT, sender.send_batchable(message)).await {
            // The broker's verdict is not awaited: dropping it leaves the send as it is.
            Ok(Ok(_outcome)) => tracing::trace!(sent_at_ms = hb.sent_at_ms, "heartbeat sent"),
            Ok(Err(e)) => tracing::debug!(error = %e, "heartbeat not sent; dropped"),
            Err(_) => tracing::debug!("heartbeat not sent (no link credit); dropped"),
        }
    }

    /// `amqp.routing_key_template` with `{site}` replaced by this site (docs/security.md: broker
    /// topic permissions can then limit each site to routing keys naming itself).
    fn template(&self) -> String {
        self.cfg
            .routing_key_template
            .replace(SITE_PLACEHOLDER, &self.site)
    }

    /// True when the outbox has nothing at all (a store error counts as "something").
    fn nothing_pending(&self) -> bool {
        self.store
            .pending(None, 1)
            .map(|p| p.is_empty())
            .unwrap_or(false)
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
                self.heartbeat_if_due(sender).await;
                let subject = wire::routing_key(&self.template(), &deployment);
                let wire_msg = match self.security.encode_change(
                    &change,
                    &subject,
                    self.cfg.wire_format,
                ) {
                    Ok(w) => w,
                    Err(e) => {
                        // Never sent in plaintext: kept in the outbox and tried again.
                        tracing::error!(origin_seq = change.origin_seq, error = %e, "cannot seal a registration; kept in the outbox");
                        held.push(change.origin_seq);
                        continue;
                    }
                };
                let message = codec::to_message(&wire_msg);
                let fut = tokio::time::timeout(SETTLE_TIMEOUT, sender.send_batchable(message))
                    .await
                    .map_err(|_| no_answer("no link credit"))?
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
        let outcome = tokio::time::timeout(SETTLE_TIMEOUT, fut)
            .await
            .map_err(|_| no_answer("no outcome"))?;
        match outcome {
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

/// The link counts as lost: the broker gave `what` within [`SETTLE_TIMEOUT`].
fn no_answer(what: &str) -> PublishError {
    PublishError::Link(format!(
        "{what} from the broker within {SETTLE_TIMEOUT:?}; reconnecting"
    ))
}

/// An error condition as its AMQP symbol when custom, its variant name otherwise.
pub(crate) fn condition_name(c: &fe2o3_amqp::types::definitions::ErrorCondition) -> String {
    match c {
        fe2o3_amqp::types::definitions::ErrorCondition::Custom(sym) => sym.0.clone(),
        other => format!("{other:?}"),
    }
}
