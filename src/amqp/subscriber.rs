//! The subscriber: takes this site's inbound changes from the broker, hands them over in
//! per-instance order, several instances at once, and settles each only once its effect is
//! durable here.
//!
//! Owns the subscribe link's life (connect, session, receiver attach with manual settlement and
//! bounded credit, reconnect forever with capped jittered backoff, detach on shutdown) and the
//! settlement policy: an invalid message is kept as an inbound dead letter, then rejected with
//! the reason, and so is a change from an origin site `amqp.accept_origins` does not list (when
//! set); a valid change is handed to the [`ChangeHandler`] and accepted only when it
//! answers `Ok`; an `Err` is retried (same message, backoff) and no later change of the same
//! instance overtakes it. Changes of different instances are handled concurrently (up to the
//! link credit), so their durable writes share group commits; a deletion or a heartbeat waits
//! for everything before it and runs alone. A crash before the accept makes the broker
//! redeliver: the handler must be idempotent. Heartbeats are counted, handed to
//! [`ChangeHandler::heartbeat`] and accepted. On shutdown it takes no new delivery but
//! finishes the ones in hand (except those whose handler keeps failing: they stay unsettled
//! and the broker offers them again); what was prefetched and not started goes back to the
//! queue when the link detaches. It must not apply changes itself (the replay engine does,
//! behind the handler) nor publish anything.

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fe2o3_amqp::link::delivery::Delivery;
use fe2o3_amqp::link::RecvError;
use fe2o3_amqp::types::definitions::{self, AmqpError as AmqpCondition};
use fe2o3_amqp::types::messaging::{Body, Source, TerminusDurability, TerminusExpiryPolicy};
use fe2o3_amqp::types::primitives::Value;
use fe2o3_amqp::{Receiver, Session};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::link::{step, Reconnect};
use super::{codec, connect, AmqpError, Backoff};
use crate::change::{Change, Event};
use crate::config::{AmqpConfig, SubscribeMode};
use crate::metrics;
use crate::store::{Store, StoreError};
use crate::wire::{self, Heartbeat, Inbound, WireError};

/// `reason` label of a change whose origin site `amqp.accept_origins` does not list.
pub const ORIGIN_NOT_ACCEPTED: &str = "origin_not_accepted";
/// Link credit: the most deliveries unsettled at once (waiting or being handled), and so the
/// most changes handled concurrently.
pub const CREDIT: u32 = 64;
/// First and largest pause between two attempts of a failing handler.
pub const HANDLER_RETRY_INITIAL: Duration = Duration::from_millis(100);
pub const HANDLER_RETRY_MAX: Duration = Duration::from_secs(10);
/// The receiving link's `max-message-size`: the wire's body limit (`wire::MAX_BODY_BYTES`,
/// 16 MiB) plus 1 MiB for the header, properties and framing. A message between the two is
/// received and refused as `too_large` (dead-lettered); fe2o3 detaches the link on a
/// delivery beyond it before buffering the rest, so memory per delivery stays bounded.
pub const MAX_MESSAGE_SIZE: u64 = (wire::MAX_BODY_BYTES + 1024 * 1024) as u64;

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

    /// The longest pause between two tries of a change `handle` did not take yet.
    /// Default: [`HANDLER_RETRY_MAX`].
    fn retry_max(&self) -> Duration {
        HANDLER_RETRY_MAX
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
    #[error("{0}")]
    Authn(#[from] crate::authn::AuthnError),
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
    let security = crate::authn::WireSecurity::load(&cfg)?;
    let sub = Subscriber {
        security,
        cfg,
        site,
        address,
        store,
        handler: Arc::new(handler),
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
    /// Signature checks, sealed values, the clock-skew bound.
    security: crate::authn::WireSecurity,
    cfg: AmqpConfig,
    site: String,
    address: String,
    store: Store,
    handler: Arc<H>,
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
                .credit_mode(fe2o3_amqp::link::receiver::CreditMode::Manual)
                .auto_accept(false)
                .max_message_size(MAX_MESSAGE_SIZE)
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

    /// Takes deliveries and settles them until shutdown (`Ok`) or a link error. Changes are
    /// handled on their own tasks, several at once; [`Lanes`] keeps each instance's changes
    /// in order and runs deletions and heartbeats alone. Each is accepted when its handler
    /// answers `Ok`, whatever the order of completion.
    async fn consume(&self, receiver: &mut Receiver) -> Result<(), SubscribeError> {
        let mut lanes: Lanes<(InboundDelivery, Work)> = Lanes::default();
        let mut tasks: JoinSet<(u64, Handled)> = JoinSet::new();
        // Started deliveries by task id: what `finished` and the accept need once it ends.
        let mut running: HashMap<u64, (Order, InboundDelivery, Option<&'static str>)> =
            HashMap::new();
        let mut next_id = 0u64;
        let mut stopping = false;
        // Credit is granted again only once all of the last grant has arrived, so no delivery
        // is in flight when the broker reads it: RabbitMQ 3.x counts a new grant from its own
        // delivery count, and a grant sent while deliveries travel let it send more than we
        // allowed (rabbitmq-server issue 2597, fixed in 4.0; fe2o3 then drops the link with
        // "more message transfers than currently allowed"). Unsettled deliveries stay at most
        // CREDIT, and a grant is at least half of it (few flow frames under load).
        let mut credit_left = 0u32;
        loop {
            // A task sees the shutdown as soon as this loop does, and one that gives up its
            // change then frees its instance: nothing may start after that.
            stopping |= self.shutdown.is_cancelled();
            let unsettled = lanes.len() + running.len();
            if credit_left == 0 && !stopping && unsettled <= (CREDIT / 2) as usize {
                let grant = CREDIT - unsettled as u32;
                receiver.set_credit(grant).await.map_err(link)?;
                credit_left = grant;
            }
            if !stopping {
                while let Some((order, (delivery, work))) = lanes.start_next() {
                    let id = next_id;
                    next_id += 1;
                    let kind = work.kind();
                    let handler = Arc::clone(&self.handler);
                    tasks.spawn(handle_work(id, handler, work, self.shutdown.clone()));
                    running.insert(id, (order, delivery, kind));
                }
            }
            if stopping && tasks.is_empty() {
                // What waits unstarted stays unsettled: the detach gives it back to the queue.
                return Ok(());
            }
            tokio::select! {
                biased;
                done = tasks.join_next(), if !tasks.is_empty() => {
                    let (id, handled) = match done {
                        Some(Ok(done)) => done,
                        Some(Err(e)) => return Err(link(format!("inbound change handler failed: {e}"))),
                        None => continue,
                    };
                    let Some((order, delivery, kind)) = running.remove(&id) else { continue };
                    lanes.finished(&order);
                    if handled == Handled::Done {
                        receiver.accept(&delivery).await.map_err(link)?;
                        if let Some(kind) = kind {
                            metrics::received(kind);
                        }
                    }
                }
                r = receiver.recv::<Body<Value>>(), if !stopping => match r {
                    Ok(delivery) => {
                        credit_left = credit_left.saturating_sub(1);
                        if let Some((order, work)) = self.triage(receiver, &delivery).await? {
                            lanes.push(order, (delivery, work));
                        }
                    }
                    Err(RecvError::MessageDecode(e)) => {
                        credit_left = credit_left.saturating_sub(1);
                        let reason =
                            format!("not an AMQP message this client can decode: {}", e.source);
                        self.store.dead_letter_inbound(Vec::new(), &reason).await?;
                        reject(receiver, e.info, &reason).await?;
                        metrics::rejected("undecodable");
                        tracing::warn!(reason = %reason, "inbound message rejected and dead-lettered");
                    }
                    Err(e) => return Err(SubscribeError::Link(e.to_string())),
                },
                _ = self.shutdown.cancelled(), if !stopping => stopping = true,
            }
        }
    }

    /// Decodes one delivery. What is never handed over (invalid, of a refused origin, of an
    /// unknown kind, a heartbeat of a site not federated with) is settled here; the rest is
    /// returned to wait for its turn.
    async fn triage(
        &self,
        receiver: &Receiver,
        delivery: &InboundDelivery,
    ) -> Result<Option<(Order, Work)>, SubscribeError> {
        let message = delivery.message();
        // The signature is checked before the body is even decoded: nothing is kept for an
        // origin (a store row, a map entry, a metric label) before it is verified.
        let decoded = match codec::from_message(message) {
            Ok(w) => match self.security.verify(&w) {
                Ok(()) => wire::decode_inbound(&w).map_err(Into::into),
                Err(refusal) => {
                    self.refuse(receiver, delivery, refusal.to_string(), refusal.label())
                        .await?;
                    return Ok(None);
                }
            },
            Err(e) => Err(e),
        };
        let change = match decoded {
            Ok(Inbound::Change(change)) => change,
            Ok(Inbound::Heartbeat(hb)) if !self.accepts_origin(&hb.origin_site) => {
                // Liveness of a site this one does not federate with: settled, not recorded
                // (not counted as rejected either: it is no change, and it comes every few seconds).
                receiver.accept(delivery).await.map_err(link)?;
                tracing::debug!(origin_site = %hb.origin_site, "heartbeat of a site not in amqp.accept_origins ignored");
                return Ok(None);
            }
            Ok(Inbound::Heartbeat(hb)) => {
                if let Err(reason) = self.security.check_time("heartbeat", hb.sent_at_ms) {
                    // Rejected and counted, not dead-lettered: a skewed clock sends one every
                    // few seconds, and a heartbeat carries nothing to retry.
                    reject(receiver, delivery, &reason).await?;
                    metrics::rejected(crate::authn::FUTURE_TIME);
                    tracing::warn!(origin_site = %hb.origin_site, reason = %reason, label = crate::authn::FUTURE_TIME, "inbound heartbeat rejected");
                    return Ok(None);
                }
                metrics::heartbeat_received(&hb.origin_site);
                tracing::trace!(origin_site = %hb.origin_site, sent_at_ms = hb.sent_at_ms, "heartbeat");
                // Alone, after everything before it: the origin's last-applied time must not
                // pass a change still being applied. So a change stuck in retries holds
                // everything from the next heartbeat on, and the lag metric grows and alerts.
                return Ok(Some((Order::Alone, Work::Heartbeat(hb))));
            }
            Err(codec::CodecError::Wire(WireError::UnknownKind(kind))) => {
                // A newer kind readers may skip (docs/wire-format.md): accept and count it.
                receiver.accept(delivery).await.map_err(link)?;
                metrics::rejected("unknown_kind");
                tracing::warn!(kind = %kind, "inbound change of an unknown kind skipped");
                return Ok(None);
            }
            Err(e) => {
                self.refuse(receiver, delivery, e.to_string(), e.as_str())
                    .await?;
                return Ok(None);
            }
        };
        if let Err(reason) = self.security.check_time("change", change.captured_at_ms) {
            self.refuse(receiver, delivery, reason, crate::authn::FUTURE_TIME)
                .await?;
            return Ok(None);
        }
        let change = match self.security.open(change) {
            Ok(change) => change,
            Err(e) => {
                self.refuse(receiver, delivery, e.to_string(), crate::authn::UNSEALABLE)
                    .await?;
                return Ok(None);
            }
        };
        if !self.accepts_origin(&change.origin_site) {
            let reason = format!(
                "origin site {:?} is not in amqp.accept_origins",
                change.origin_site
            );
            self.refuse(receiver, delivery, reason, ORIGIN_NOT_ACCEPTED)
                .await?;
            return Ok(None);
        }
        Ok(Some((Order::of(&change), Work::Change(change))))
    }
}

/// The task of delivery `id`: hands `work` to `handler` until it answers `Ok` (`Done`) or
/// `shutdown` comes while it is being retried (`Abandoned`: it stays unsettled and the
/// broker offers it again).
async fn handle_work<H: ChangeHandler>(
    id: u64,
    handler: Arc<H>,
    work: Work,
    shutdown: CancellationToken,
) -> (u64, Handled) {
    let change = match work {
        Work::Heartbeat(hb) => {
            handler.heartbeat(hb).await;
            return (id, Handled::Done);
        }
        Work::Change(change) => change,
    };
    let mut backoff = Backoff::new(HANDLER_RETRY_INITIAL, handler.retry_max());
    loop {
        match handler.handle(change.clone()).await {
            Ok(()) => return (id, Handled::Done),
            Err(reason) => {
                let delay = backoff.next_delay();
                metrics::handler_retry();
                tracing::warn!(
                    message_id = %change.message_id(),
                    attempt = backoff.attempts(),
                    retry_in = ?delay,
                    reason = %reason,
                    "inbound change not handled yet; retrying it before any later change of its instance"
                );
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.cancelled() => return (id, Handled::Abandoned),
                }
            }
        }
    }
}

/// A delivery as the receiver hands it over.
type InboundDelivery = Delivery<Body<Value>>;

/// How a task ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Handled {
    /// The handler answered `Ok` (a heartbeat always does): accept the delivery.
    Done,
    /// Shutdown while it was being retried: leave it unsettled.
    Abandoned,
}

/// What a delivery asks of the handler.
#[derive(Debug)]
enum Work {
    Change(Change),
    Heartbeat(Heartbeat),
}

impl Work {
    /// The change's kind, for the received counter; a heartbeat is no change.
    fn kind(&self) -> Option<&'static str> {
        match self {
            Work::Change(c) => Some(c.event.kind()),
            Work::Heartbeat(_) => None,
        }
    }
}

/// Which earlier deliveries one must wait for.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Order {
    /// A registration or params change: after the earlier ones of the same instance.
    Instance(String),
    /// A deletion (it removes a deployment's instances, whichever they are), a heartbeat,
    /// a change without an instance: after everything earlier, and before anything later.
    Alone,
}

impl Order {
    fn of(change: &Change) -> Order {
        match (&change.event, change.instance.as_deref()) {
            (Event::Params { .. } | Event::Registration { .. }, Some(instance)) => {
                Order::Instance(instance.to_owned())
            }
            _ => Order::Alone,
        }
    }
}

/// The order deliveries may be handled in: in arrival order per instance, several instances
/// at once, [`Order::Alone`] ones with nothing else running. Pure bookkeeping (no I/O); the
/// number waiting is bounded by the link credit, since only settlement renews it.
struct Lanes<T> {
    waiting: VecDeque<(Order, T)>,
    /// Instances with a change being handled.
    busy: HashSet<String>,
    /// An [`Order::Alone`] delivery is being handled (then `busy` is empty).
    alone_running: bool,
}

impl<T> Default for Lanes<T> {
    fn default() -> Self {
        Lanes {
            waiting: VecDeque::new(),
            busy: HashSet::new(),
            alone_running: false,
        }
    }
}

impl<T> Lanes<T> {
    fn push(&mut self, order: Order, item: T) {
        self.waiting.push_back((order, item));
    }

    /// Deliveries waiting to start.
    fn len(&self) -> usize {
        self.waiting.len()
    }

    /// The first waiting delivery that may start now, marked running.
    fn start_next(&mut self) -> Option<(Order, T)> {
        if self.alone_running {
            return None;
        }
        let mut passed: HashSet<&str> = HashSet::new();
        let mut pick = None;
        for (i, (order, _)) in self.waiting.iter().enumerate() {
            match order {
                Order::Alone => {
                    if i == 0 && self.busy.is_empty() {
                        pick = Some(i);
                    }
                    break; // nothing after it may start before it ends
                }
                Order::Instance(k) => {
                    if !self.busy.contains(k.as_str()) && !passed.contains(k.as_str()) {
                        pick = Some(i);
                        break;
                    }
                    passed.insert(k.as_str());
                }
            }
        }
        let w = self.waiting.remove(pick?)?;
        match &w.0 {
            Order::Alone => self.alone_running = true,
            Order::Instance(k) => {
                self.busy.insert(k.clone());
            }
        }
        Some(w)
    }

    /// A delivery started by [`Lanes::start_next`] has been handled (or abandoned).
    fn finished(&mut self, order: &Order) {
        match order {
            Order::Alone => self.alone_running = false,
            Order::Instance(k) => {
                self.busy.remove(k);
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

    /// Keeps a bounded summary of an invalid or refused message as an inbound dead letter
    /// (its first [`DEAD_LETTER_KEEP`] bytes, its length and the reason), then rejects it at
    /// the broker with `reason`, counts it under `label` and logs it. It is never applied.
    async fn refuse(
        &self,
        receiver: &Receiver,
        delivery: &InboundDelivery,
        reason: String,
        label: &'static str,
    ) -> Result<(), SubscribeError> {
        let (kept, reason_kept) = summary(codec::raw_body(delivery.message()), &reason);
        self.store.dead_letter_inbound(kept, &reason_kept).await?;
        reject(receiver, delivery, &reason).await?;
        metrics::rejected(label);
        tracing::warn!(reason = %reason, label, "inbound message rejected and dead-lettered");
        Ok(())
    }
}

/// Most bytes of a refused message's body kept in its inbound dead letter.
pub const DEAD_LETTER_KEEP: usize = 1024;

/// The bounded summary of a refused body: its first [`DEAD_LETTER_KEEP`] bytes, and the reason
/// with the full length when it was cut.
fn summary(mut body: Vec<u8>, reason: &str) -> (Vec<u8>, String) {
    if body.len() <= DEAD_LETTER_KEEP {
        return (body, reason.to_owned());
    }
    let len = body.len();
    body.truncate(DEAD_LETTER_KEEP);
    body.shrink_to_fit();
    (
        body,
        format!("{reason} (body of {len} bytes; the first {DEAD_LETTER_KEEP} kept)"),
    )
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

#[cfg(test)]
mod tests {
    use super::*;

    fn inst(k: &str) -> Order {
        Order::Instance(k.to_owned())
    }

    /// Starts everything that may start, returning the items in start order.
    fn start_all(lanes: &mut Lanes<u32>) -> Vec<u32> {
        std::iter::from_fn(|| lanes.start_next().map(|(_, n)| n)).collect()
    }

    #[test]
    fn different_instances_run_together_one_instance_in_order() {
        let mut lanes = Lanes::default();
        lanes.push(inst("I1"), 1);
        lanes.push(inst("I2"), 2);
        lanes.push(inst("I1"), 3);
        lanes.push(inst("I3"), 4);
        assert_eq!(start_all(&mut lanes), vec![1, 2, 4], "I1's second waits");
        lanes.finished(&inst("I2"));
        assert_eq!(start_all(&mut lanes), Vec::<u32>::new());
        lanes.finished(&inst("I1"));
        assert_eq!(start_all(&mut lanes), vec![3]);
    }

    #[test]
    fn a_later_change_of_a_busy_instance_never_overtakes_a_waiting_one() {
        let mut lanes = Lanes::default();
        lanes.push(inst("I1"), 1);
        assert_eq!(start_all(&mut lanes), vec![1]);
        lanes.push(inst("I1"), 2);
        lanes.push(inst("I1"), 3);
        lanes.finished(&inst("I1"));
        assert_eq!(start_all(&mut lanes), vec![2], "one at a time per instance");
        lanes.finished(&inst("I1"));
        assert_eq!(start_all(&mut lanes), vec![3]);
    }

    #[test]
    fn alone_waits_for_everything_before_and_holds_everything_after() {
        let mut lanes = Lanes::default();
        lanes.push(inst("I1"), 1);
        lanes.push(inst("I2"), 2);
        lanes.push(Order::Alone, 3);
        lanes.push(inst("I3"), 4);
        assert_eq!(
            start_all(&mut lanes),
            vec![1, 2],
            "nothing passes the deletion"
        );
        lanes.finished(&inst("I1"));
        assert_eq!(start_all(&mut lanes), Vec::<u32>::new());
        lanes.finished(&inst("I2"));
        assert_eq!(
            start_all(&mut lanes),
            vec![3],
            "alone once the others ended"
        );
        lanes.push(inst("I1"), 5);
        assert_eq!(
            start_all(&mut lanes),
            Vec::<u32>::new(),
            "nothing beside it"
        );
        lanes.finished(&Order::Alone);
        assert_eq!(start_all(&mut lanes), vec![4, 5]);
    }

    #[test]
    fn a_refused_body_keeps_a_bounded_summary() {
        let (kept, reason) = summary(vec![b'x'; 16 * 1024 * 1024 + 1], "too large");
        assert_eq!(kept.len(), DEAD_LETTER_KEEP);
        assert_eq!(
            reason,
            "too large (body of 16777217 bytes; the first 1024 kept)"
        );
        let (kept, reason) = summary(b"short".to_vec(), "bad");
        assert_eq!((kept.as_slice(), reason.as_str()), (&b"short"[..], "bad"));
    }

    #[test]
    fn order_of_each_kind() {
        let change = |event: Event, instance: Option<&str>| Change {
            origin_site: "a".into(),
            incarnation: "a1a1a1a1a1a1a1a1".into(),
            version_ms: 0,
            origin_seq: 1,
            instance_seq: 1,
            captured_at_ms: 0,
            api_version: 2,
            instance: instance.map(str::to_owned),
            deployment: Some("D".into()),
            client_addr: None,
            event,
        };
        let params = Event::Params {
            audrey_data: "|a&b|".into(),
            values: Vec::new(),
            return_codes: false,
        };
        assert_eq!(Order::of(&change(params.clone(), Some("I1"))), inst("I1"));
        assert_eq!(Order::of(&change(params, None)), Order::Alone);
        assert_eq!(Order::of(&change(Event::Deletion, None)), Order::Alone);
    }
}
