//! The subscriber: takes this site's inbound changes from the broker, one at a time, in order,
//! and settles each only once its effect is durable here.
//!
//! Owns the subscribe link's life (connect, session, receiver attach with manual settlement and
//! bounded credit, reconnect forever with capped jittered backoff, detach on shutdown) and the
//! settlement policy: an invalid message is kept as an inbound dead letter, then rejected with
//! the reason, and so is a change from an origin site `amqp.accept_origins` does not list (when
//! set); a valid change is handed to the [`ChangeHandler`] and accepted only when it
//! answers `Ok`; an `Err` is retried (same message, backoff) and nothing later overtakes it.
//! A crash before the accept makes the broker redeliver: the handler must be idempotent.
//! Heartbeats are counted, handed to [`ChangeHandler::heartbeat`] and accepted. On shutdown it
//! takes no new delivery but finishes the one in hand (unless its handler keeps failing: then
//! it stays unsettled and the broker offers it again); the credit prefetched beyond it goes
//! back to the queue when the link detaches. It must not apply changes itself (the replay
//! engine does, behind the handler) nor publish anything.

use std::future::Future;
use std::time::{Duration, Instant};

use fe2o3_amqp::link::delivery::Delivery;
use fe2o3_amqp::link::RecvError;
use fe2o3_amqp::types::definitions::{self, AmqpError as AmqpCondition};
use fe2o3_amqp::types::messaging::{Body, Source, TerminusDurability, TerminusExpiryPolicy};
use fe2o3_amqp::types::primitives::Value;
use fe2o3_amqp::{Receiver, Session};
use tokio_util::sync::CancellationToken;

use super::link::{step, Reconnect};
use super::{codec, connect, AmqpError, Backoff};
use crate::change::Change;
use crate::config::{AmqpConfig, SubscribeMode};
use crate::metrics;
use crate::store::{Store, StoreError};
use crate::wire::{self, Heartbeat, Inbound, WireError};

/// `reason` label of a change whose origin site `amqp.accept_origins` does not list.
pub const ORIGIN_NOT_ACCEPTED: &str = "origin_not_accepted";
/// Deliveries the broker may push ahead of the one being handled.
pub const CREDIT: u32 = 16;
/// First and largest pause between two attempts of a failing handler.
pub const HANDLER_RETRY_INITIAL: Duration = Duration::from_millis(100);
pub const HANDLER_RETRY_MAX: Duration = Duration::from_secs(10);

/// What the subscriber hands each valid inbound change to (the replay engine).
///
/// `Ok(())`: the change's effect is durable here, whatever it was (applied, skipped as a
/// duplicate, parked, dead-lettered); the message is then accepted. `Err(reason)`: a transient
/// failure; the same change is offered again later and later ones wait. Implemented by any
/// `Fn(Change) -> impl Future<Output = Result<(), String>>` (which ignores heartbeats).
pub trait ChangeHandler: Send + Sync + 'static {
    fn handle(&self, change: Change) -> impl Future<Output = Result<(), String>> + Send;

    /// A heartbeat of some site's publisher (this site's own included): liveness only, never
    /// a change. The message is accepted whatever happens here. Default: ignored.
    fn heartbeat(&self, heartbeat: Heartbeat) -> impl Future<Output = ()> + Send {
        drop(heartbeat);
        async {}
    }
}

impl<F, Fut> ChangeHandler for F
where
    F: Fn(Change) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), String>> + Send,
{
    fn handle(&self, change: Change) -> impl Future<Output = Result<(), String>> + Send {
        self(change)
    }
}

/// Why the subscriber cannot start, or why one attempt ended (then it reconnects).
#[derive(Debug, thiserror::Error)]
pub enum SubscribeError {
    #[error("amqp.subscribe_mode = \"per_deployment\" needs amqp.subscribe_address (e.g. \"amq.topic\")")]
    NoAddress,
    #[error("{0}")]
    Connect(#[from] AmqpError),
    #[error("cannot begin an AMQP session: {0}")]
    Session(String),
    #[error("cannot attach a receiver to {address:?}: {reason}")]
    Attach { address: String, reason: String },
    #[error("subscribe link lost: {0}")]
    Link(String),
    #[error("inbound dead letter: {0}")]
    Store(#[from] StoreError),
}

/// The address the subscriber reads: `amqp.subscribe_address`, or in queue mode
/// `/amq/queue/audrey.federation.<site>` (RabbitMQ's form of a pre-declared durable queue).
pub fn subscribe_address(cfg: &AmqpConfig, site: &str) -> Result<String, SubscribeError> {
    match (&cfg.subscribe_address, cfg.subscribe_mode) {
        (Some(a), _) => Ok(a.clone()),
        (None, SubscribeMode::Queue) => Ok(format!("/amq/queue/audrey.federation.{site}")),
        (None, SubscribeMode::PerDeployment) => Err(SubscribeError::NoAddress),
    }
}

/// Runs until `shutdown`: connects, hands inbound changes to `handler`, reconnects after any
/// failure. Fails only at start, on a configuration it cannot use.
pub async fn run_subscriber<H: ChangeHandler>(
    cfg: AmqpConfig,
    site: String,
    store: Store,
    handler: H,
    shutdown: CancellationToken,
) -> Result<(), SubscribeError> {
    let address = subscribe_address(&cfg, &site)?;
    let sub = Subscriber {
        cfg,
        site,
        address,
        store,
        handler,
        shutdown,
    };
    let mut reconnect = Reconnect::new(metrics::LINK_SUBSCRIBE, "subscribing", &sub.cfg);
    while !sub.shutdown.is_cancelled() {
        let mut up_since = None;
        let result = sub.connected(&mut up_since).await;
        if !reconnect.after(result, up_since, &sub.shutdown).await {
            break;
        }
    }
    tracing::info!("subscriber stopped");
    Ok(())
}

struct Subscriber<H> {
    cfg: AmqpConfig,
    site: String,
    address: String,
    store: Store,
    handler: H,
    shutdown: CancellationToken,
}

impl<H: ChangeHandler> Subscriber<H> {
    /// One connection's life. `Ok(())` on shutdown.
    async fn connected(&self, up_since: &mut Option<Instant>) -> Result<(), SubscribeError> {
        // Stable names: a durable subscription (per_deployment) is found again by them.
        let container = format!("audrey-federation-{}-subscriber", self.site);
        let link_name = format!("audrey-federation-{}", self.site);
        let mut conn = tokio::select! {
            c = connect(&self.cfg, &container) => c?,
            _ = self.shutdown.cancelled() => return Ok(()),
        };
        let result = async {
            let mut session = step(Session::begin(&mut conn))
                .await
                .map_err(SubscribeError::Session)?;
            let source = match self.cfg.subscribe_mode {
                SubscribeMode::Queue => Source::builder().address(self.address.clone()).build(),
                SubscribeMode::PerDeployment => Source::builder()
                    .address(self.address.clone())
                    .durable(TerminusDurability::UnsettledState)
                    .expiry_policy(TerminusExpiryPolicy::Never)
                    .build(),
            };
            let attach = Receiver::builder()
                .name(link_name)
                .source(source)
                .credit_mode(fe2o3_amqp::link::receiver::CreditMode::Auto(CREDIT))
                .auto_accept(false)
                .attach(&mut session);
            let mut receiver = match step(attach).await {
                Ok(r) => r,
                Err(reason) => {
                    let _ = step(session.end()).await;
                    return Err(SubscribeError::Attach {
                        address: self.address.clone(),
                        reason,
                    });
                }
            };
            metrics::broker_link_up(metrics::LINK_SUBSCRIBE, true);
            *up_since = Some(Instant::now());
            tracing::info!(address = %self.address, "subscribe link attached");
            let result = self.consume(&mut receiver).await;
            metrics::broker_link_up(metrics::LINK_SUBSCRIBE, false);
            // Detach (not close): unsettled deliveries go back to the queue, and a durable
            // subscription survives. RabbitMQ 3.10 answers close() with IllegalState anyway.
            let _ = tokio::time::timeout(Duration::from_secs(10), receiver.detach()).await;
            let _ = step(session.end()).await;
            result
        }
        .await;
        let _ = step(conn.close()).await;
        result
    }

    async fn consume(&self, receiver: &mut Receiver) -> Result<(), SubscribeError> {
        loop {
            let received = tokio::select! {
                r = receiver.recv::<Body<Value>>() => r,
                _ = self.shutdown.cancelled() => return Ok(()),
            };
            match received {
                Ok(delivery) => {
                    if !self.process(receiver, delivery).await? {
                        return Ok(());
                    }
                }
                Err(RecvError::MessageDecode(e)) => {
                    let reason =
                        format!("not an AMQP message this client can decode: {}", e.source);
                    self.store.dead_letter_inbound(Vec::new(), &reason).await?;
                    reject(receiver, e.info, &reason).await?;
                    metrics::rejected("undecodable");
                    tracing::warn!(reason = %reason, "inbound message rejected and dead-lettered");
                }
                Err(e) => return Err(SubscribeError::Link(e.to_string())),
            }
        }
    }

    /// Settles one delivery. `Ok(false)`: shutdown while its handler was being retried (it
    /// stays unsettled and the broker offers it again).
    async fn process(
        &self,
        receiver: &Receiver,
        delivery: Delivery<Body<Value>>,
    ) -> Result<bool, SubscribeError> {
        let message = delivery.message();
        let decoded =
            codec::from_message(message).and_then(|w| wire::decode_inbound(&w).map_err(Into::into));
        let change = match decoded {
            Ok(Inbound::Change(change)) => change,
            Ok(Inbound::Heartbeat(hb)) if !self.accepts_origin(&hb.origin_site) => {
                // Liveness of a site this one does not federate with: settled, not recorded
                // (not counted as rejected either: it is no change, and it comes every few seconds).
                receiver.accept(&delivery).await.map_err(link)?;
                tracing::debug!(origin_site = %hb.origin_site, "heartbeat of a site not in amqp.accept_origins ignored");
                return Ok(true);
            }
            Ok(Inbound::Heartbeat(hb)) => {
                metrics::heartbeat_received(&hb.origin_site);
                tracing::trace!(origin_site = %hb.origin_site, sent_at_ms = hb.sent_at_ms, "heartbeat");
                self.handler.heartbeat(hb).await;
                receiver.accept(&delivery).await.map_err(link)?;
                return Ok(true);
            }
            Err(codec::CodecError::Wire(WireError::UnknownKind(kind))) => {
                // A newer kind readers may skip (docs/wire-format.md): accept and count it.
                receiver.accept(&delivery).await.map_err(link)?;
                metrics::rejected("unknown_kind");
                tracing::warn!(kind = %kind, "inbound change of an unknown kind skipped");
                return Ok(true);
            }
            Err(e) => {
                self.refuse(receiver, &delivery, e.to_string(), e.as_str())
                    .await?;
                return Ok(true);
            }
        };
        if !self.accepts_origin(&change.origin_site) {
            let reason = format!(
                "origin site {:?} is not in amqp.accept_origins",
                change.origin_site
            );
            self.refuse(receiver, &delivery, reason, ORIGIN_NOT_ACCEPTED)
                .await?;
            return Ok(true);
        }
        let kind = change.event.kind();
        let mut backoff = Backoff::new(HANDLER_RETRY_INITIAL, HANDLER_RETRY_MAX);
        loop {
            match self.handler.handle(change.clone()).await {
                Ok(()) => {
                    receiver.accept(&delivery).await.map_err(link)?;
                    metrics::received(kind);
                    return Ok(true);
                }
                Err(reason) => {
                    let delay = backoff.next_delay();
                    metrics::handler_retry();
                    tracing::warn!(
                        message_id = %change.message_id(),
                        attempt = backoff.attempts(),
                        retry_in = ?delay,
                        reason = %reason,
                        "inbound change not handled yet; retrying it before any later one"
                    );
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = self.shutdown.cancelled() => return Ok(false),
                    }
                }
            }
        }
    }
}

impl<H> Subscriber<H> {
    /// `amqp.accept_origins` empty (any origin), listing `origin`, or `origin` is this site.
    fn accepts_origin(&self, origin: &str) -> bool {
        let list = &self.cfg.accept_origins;
        list.is_empty() || origin == self.site || list.iter().any(|o| o == origin)
    }

    /// Keeps an invalid or refused message as an inbound dead letter, then rejects it at the
    /// broker with `reason`, counts it under `label` and logs it. It is never applied.
    async fn refuse(
        &self,
        receiver: &Receiver,
        delivery: &Delivery<Body<Value>>,
        reason: String,
        label: &'static str,
    ) -> Result<(), SubscribeError> {
        self.store
            .dead_letter_inbound(codec::raw_body(delivery.message()), &reason)
            .await?;
        reject(receiver, delivery, &reason).await?;
        metrics::rejected(label);
        tracing::warn!(reason = %reason, label, "inbound message rejected and dead-lettered");
        Ok(())
    }
}

async fn reject(
    receiver: &Receiver,
    delivery: impl Into<fe2o3_amqp::link::delivery::DeliveryInfo>,
    reason: &str,
) -> Result<(), SubscribeError> {
    let error = definitions::Error::new(AmqpCondition::DecodeError, Some(reason.to_owned()), None);
    receiver.reject(delivery, error).await.map_err(link)
}

fn link(e: impl std::fmt::Display) -> SubscribeError {
    SubscribeError::Link(e.to_string())
}
