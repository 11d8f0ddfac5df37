//! Metric names, help texts, buckets and the small recording helpers the rest of the
//! crate calls.
//!
//! Owns every metric name (one place, Prometheus conventions: base units, `_total`,
//! `_seconds`, no unbounded labels — never an instance or deployment id). It must not
//! render or serve metrics; `admin.rs` does.

use std::time::Duration;

use http::StatusCode;
use metrics::{
    counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Unit,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const PROXY_REQUESTS: &str = "audrey_federation_proxy_requests_total";
pub const PROXY_DURATION: &str = "audrey_federation_proxy_request_duration_seconds";
pub const CAPTURED: &str = "audrey_federation_captured_total";
pub const CAPTURE_SKIPPED: &str = "audrey_federation_capture_skipped_total";
pub const CAPTURE_UNKNOWN_DEPLOYMENT: &str = "audrey_federation_capture_unknown_deployment_total";
pub const OUTBOX_WRITE_ERRORS: &str = "audrey_federation_outbox_write_errors_total";
pub const OUTBOX_PENDING: &str = "audrey_federation_outbox_pending";
pub const OUTBOX_OLDEST_AGE: &str = "audrey_federation_outbox_oldest_age_seconds";
pub const PARKED: &str = "audrey_federation_parked";
pub const DEAD_LETTERS: &str = "audrey_federation_dead_letters";
pub const BUILD_INFO: &str = "audrey_federation_build_info";
pub const BROKER_LINK_UP: &str = "audrey_federation_broker_link_up";
pub const BROKER_CONNECT_FAILURES: &str = "audrey_federation_broker_connect_failures_total";
pub const OUTBOX_HELD: &str = "audrey_federation_outbox_held";
pub const PUBLISHED: &str = "audrey_federation_published_total";
pub const PUBLISH_REJECTED: &str = "audrey_federation_publish_rejected_total";
pub const PUBLISH_RELEASED: &str = "audrey_federation_publish_released_total";
pub const RECEIVED: &str = "audrey_federation_received_total";
pub const REJECTED: &str = "audrey_federation_rejected_total";
pub const HANDLER_RETRIES: &str = "audrey_federation_handler_retries_total";
pub const PROXY_REFUSED: &str = "audrey_federation_proxy_refused_total";
pub const CONNECTIONS_OPEN: &str = "audrey_federation_connections_open";
pub const CONNECTIONS_CLOSED: &str = "audrey_federation_connections_closed_total";
pub const ADMIN_REFUSED: &str = "audrey_federation_admin_refused_total";

/// `link` label values of the broker metrics.
pub const LINK_PUBLISH: &str = "publish";
pub const LINK_SUBSCRIBE: &str = "subscribe";

pub const REPLAY_APPLIED: &str = "audrey_federation_applied_total";
pub const REPLAY_DUPLICATE: &str = "audrey_federation_duplicate_total";
pub const REPLAY_OWN_ORIGIN: &str = "audrey_federation_own_origin_total";
pub const REPLAY_PARKED: &str = "audrey_federation_parked_total";
pub const DEAD_LETTERED: &str = "audrey_federation_dead_lettered_total";
pub const REPLAY_ERRORS: &str = "audrey_federation_replay_errors_total";
pub const REPLAY_LAG: &str = "audrey_federation_lag_seconds";
pub const REPLAY_LAST_APPLIED: &str = "audrey_federation_last_applied_timestamp_seconds";
pub const HEARTBEATS_RECEIVED: &str = "audrey_federation_heartbeats_received_total";
pub const REPLAY_REAPPLIED: &str = "audrey_federation_reapplied_total";
pub const ORIGIN_INCARNATIONS: &str = "audrey_federation_origin_incarnations_total";
pub const UNSIGNED_ACCEPTED: &str = "audrey_federation_unsigned_accepted_total";

/// Latency buckets (seconds) for proxied requests: sub-millisecond to the 30 s timeout.
const REQUEST_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Replication lag buckets (seconds): 10 ms to the default park TTL of one hour.
const LAG_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
    1800.0, 3600.0,
];

/// Installs the global Prometheus recorder and describes every metric.
pub fn install() -> Result<PrometheusHandle, metrics_exporter_prometheus::BuildError> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(PROXY_DURATION.into()), REQUEST_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full(REPLAY_LAG.into()), LAG_BUCKETS)?
        .install_recorder()?;
    describe();
    Ok(handle)
}

fn describe() {
    describe_counter!(
        REPLAY_REAPPLIED,
        "Instances whose values newer than their registration were PUT back after the registration's POST wiped them."
    );
    describe_counter!(
        ORIGIN_INCARNATIONS,
        "New incarnations of an origin site's store seen here (its state was lost and made again), by origin site."
    );
    describe_counter!(
        PROXY_REQUESTS,
        "Requests proxied, by route class and status class."
    );
    describe_histogram!(
        PROXY_DURATION,
        Unit::Seconds,
        "Time from request received to response headers sent."
    );
    describe_counter!(
        CAPTURED,
        "Changes recorded durably in the outbox, by event kind."
    );
    describe_counter!(
        PROXY_REFUSED,
        "Requests refused by proxy.restrict (403, never forwarded), by reason."
    );
    describe_gauge!(
        CONNECTIONS_OPEN,
        "Connections being served, by listener (proxy, admin)."
    );
    describe_counter!(
        CONNECTIONS_CLOSED,
        "Connections the sidecar cut before serving them, by listener and reason (max_connections, header_read_timeout: nothing sent, tls_handshake_timeout, tls_handshake_failed)."
    );
    describe_counter!(
        ADMIN_REFUSED,
        "Mutating admin calls refused (401/403), by reason (no_token, bad_token, not_loopback)."
    );
    describe_counter!(
        CAPTURE_SKIPPED,
        "Requests on capturing routes that produced no change, by reason."
    );
    describe_counter!(
        CAPTURE_UNKNOWN_DEPLOYMENT,
        "Params changes captured for an instance whose deployment is unknown."
    );
    describe_counter!(
        OUTBOX_WRITE_ERRORS,
        "Outbox appends that failed (the client got 503)."
    );
    describe_gauge!(
        OUTBOX_PENDING,
        "Changes in the outbox not yet accepted by the broker."
    );
    describe_gauge!(
        OUTBOX_OLDEST_AGE,
        Unit::Seconds,
        "Age of the oldest change waiting in the outbox."
    );
    describe_counter!(
        REPLAY_APPLIED,
        "Changes from other sites applied to the local server, by event kind."
    );
    describe_counter!(
        REPLAY_DUPLICATE,
        "Inbound changes skipped because they (or a later change) were already applied, by event kind."
    );
    describe_counter!(
        REPLAY_OWN_ORIGIN,
        "Inbound changes skipped because this site captured them, by event kind."
    );
    describe_counter!(
        REPLAY_PARKED,
        "Inbound changes parked until their instance is registered here, by event kind."
    );
    describe_counter!(
        DEAD_LETTERED,
        "Changes given up on and kept for inspection, by event kind and direction."
    );
    describe_counter!(
        REPLAY_ERRORS,
        "Replay attempts that failed transiently and will be retried, by reason."
    );
    describe_histogram!(
        REPLAY_LAG,
        Unit::Seconds,
        "Time from capture at the origin site to apply here, by origin site."
    );
    describe_gauge!(
        REPLAY_LAST_APPLIED,
        Unit::Seconds,
        "Origin time (Unix seconds) of the newest change or heartbeat from the origin site processed here; time() minus it is the lag, growing while the link is stalled."
    );
    describe_counter!(
        HEARTBEATS_RECEIVED,
        "Heartbeats received from the broker, by origin site (own site included)."
    );
    describe_gauge!(
        PARKED,
        "Inbound changes waiting for their instance's registration here."
    );
    describe_gauge!(DEAD_LETTERS, "Dead letters kept, by direction (outbound: refused by the broker; inbound: invalid or expired).");
    describe_gauge!(BUILD_INFO, "Always 1; labels carry the version.");
    describe_gauge!(
        BROKER_LINK_UP,
        "1 while the link to the broker is attached, by link (publish, subscribe)."
    );
    describe_counter!(
        BROKER_CONNECT_FAILURES,
        "Failed attempts to connect and attach to the broker, or links lost, by link."
    );
    describe_gauge!(
        OUTBOX_HELD,
        "Outbox entries held back because their deployment is still unknown."
    );
    describe_counter!(
        PUBLISHED,
        "Changes the broker accepted (and that left the outbox), by event kind."
    );
    describe_counter!(
        PUBLISH_REJECTED,
        "Changes the broker rejected; they were moved to the outbound dead letters."
    );
    describe_counter!(
        PUBLISH_RELEASED,
        "Sends the broker released or modified; the change stays in the outbox and is resent."
    );
    describe_counter!(
        RECEIVED,
        "Inbound changes handled and accepted, by event kind."
    );
    describe_counter!(
        REJECTED,
        "Inbound messages rejected as invalid and dead-lettered, by reason."
    );
    describe_counter!(
        HANDLER_RETRIES,
        "Inbound changes whose handler failed transiently and were retried."
    );
    describe_counter!(
        UNSIGNED_ACCEPTED,
        "Unsigned inbound changes and heartbeats accepted because amqp.accept_unsigned = true (rolling upgrade only)."
    );
    gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
}

fn status_class(status: StatusCode) -> &'static str {
    match status.as_u16() {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

pub fn proxy_request(route: &'static str, status: StatusCode, elapsed: Duration) {
    counter!(PROXY_REQUESTS, "route" => route, "status_class" => status_class(status)).increment(1);
    histogram!(PROXY_DURATION, "route" => route).record(elapsed.as_secs_f64());
}

pub fn captured(kind: &'static str) {
    counter!(CAPTURED, "kind" => kind).increment(1);
}

pub fn proxy_refused(reason: &'static str) {
    counter!(PROXY_REFUSED, "reason" => reason).increment(1);
}

pub fn connection_opened(listener: &'static str) {
    gauge!(CONNECTIONS_OPEN, "listener" => listener).increment(1.0);
}

pub fn connection_ended(listener: &'static str) {
    gauge!(CONNECTIONS_OPEN, "listener" => listener).decrement(1.0);
}

pub fn connection_closed(listener: &'static str, reason: &'static str) {
    counter!(CONNECTIONS_CLOSED, "listener" => listener, "reason" => reason).increment(1);
}

pub fn admin_refused(reason: &'static str) {
    counter!(ADMIN_REFUSED, "reason" => reason).increment(1);
}

pub fn capture_skipped(reason: &'static str) {
    counter!(CAPTURE_SKIPPED, "reason" => reason).increment(1);
}

pub fn capture_unknown_deployment() {
    counter!(CAPTURE_UNKNOWN_DEPLOYMENT).increment(1);
}

pub fn outbox_write_error() {
    counter!(OUTBOX_WRITE_ERRORS).increment(1);
}

/// Refreshes the outbox gauges (called by the admin listener before each scrape).
pub fn outbox_state(pending: u64, oldest_age: Option<Duration>) {
    gauge!(OUTBOX_PENDING).set(pending as f64);
    gauge!(OUTBOX_OLDEST_AGE).set(oldest_age.map_or(0.0, |d| d.as_secs_f64()));
}

/// Refreshes the parked and dead-letter gauges (before each scrape).
pub fn kept_state(parked: u64, dead_outbound: u64, dead_inbound: u64) {
    gauge!(PARKED).set(parked as f64);
    gauge!(DEAD_LETTERS, "direction" => "outbound").set(dead_outbound as f64);
    gauge!(DEAD_LETTERS, "direction" => "inbound").set(dead_inbound as f64);
}

/// The broker link `link` ([`LINK_PUBLISH`] or [`LINK_SUBSCRIBE`]) went up or down. The one
/// place a link's state is recorded: also updates `/status` (see `crate::status`).
pub fn broker_link_up(link: &'static str, up: bool) {
    gauge!(BROKER_LINK_UP, "link" => link).set(if up { 1.0 } else { 0.0 });
    crate::status::record_up(link, up);
}

pub fn broker_connect_failure(link: &'static str) {
    counter!(BROKER_CONNECT_FAILURES, "link" => link).increment(1);
}

pub fn outbox_held(held: usize) {
    gauge!(OUTBOX_HELD).set(held as f64);
    crate::status::record_held(held);
}

pub fn published(kind: &'static str) {
    counter!(PUBLISHED, "kind" => kind).increment(1);
}

pub fn publish_rejected() {
    counter!(PUBLISH_REJECTED).increment(1);
}

pub fn publish_released() {
    counter!(PUBLISH_RELEASED).increment(1);
}

pub fn received(kind: &'static str) {
    counter!(RECEIVED, "kind" => kind).increment(1);
}

/// `reason` is a stable label (`WireError::as_str` or a codec reason), never message text.
pub fn rejected(reason: &'static str) {
    counter!(REJECTED, "reason" => reason).increment(1);
}

pub fn handler_retry() {
    counter!(HANDLER_RETRIES).increment(1);
}

/// A change from `origin_site` was applied, `lag` after its capture there.
pub fn replay_applied(kind: &'static str, origin_site: &str, lag: Duration) {
    counter!(REPLAY_APPLIED, "kind" => kind).increment(1);
    histogram!(REPLAY_LAG, "origin_site" => origin_site.to_owned()).record(lag.as_secs_f64());
}

/// The newest origin time (since the Unix epoch) of a change or heartbeat from `origin_site`
/// processed here; the caller only ever moves it forward.
pub fn origin_time(origin_site: &str, at: Duration) {
    gauge!(REPLAY_LAST_APPLIED, "origin_site" => origin_site.to_owned()).set(at.as_secs_f64());
}

/// A heartbeat from `origin_site` (a bounded label: the federation's site ids) arrived.
pub fn heartbeat_received(origin_site: &str) {
    counter!(HEARTBEATS_RECEIVED, "origin_site" => origin_site.to_owned()).increment(1);
}

/// Values newer than a registration were PUT back after its POST.
pub fn replay_reapplied() {
    counter!(REPLAY_REAPPLIED).increment(1);
}

/// A new incarnation of `origin_site`'s store was seen (a bounded label: the federation's sites).
pub fn origin_incarnation(origin_site: &str) {
    counter!(ORIGIN_INCARNATIONS, "origin_site" => origin_site.to_owned()).increment(1);
}

pub fn replay_duplicate(kind: &'static str) {
    counter!(REPLAY_DUPLICATE, "kind" => kind).increment(1);
}

pub fn replay_own_origin(kind: &'static str) {
    counter!(REPLAY_OWN_ORIGIN, "kind" => kind).increment(1);
}

pub fn replay_parked(kind: &'static str) {
    counter!(REPLAY_PARKED, "kind" => kind).increment(1);
}

pub fn dead_lettered_inbound(kind: &'static str) {
    counter!(DEAD_LETTERED, "kind" => kind, "direction" => "inbound").increment(1);
}

pub fn replay_error(reason: &'static str) {
    counter!(REPLAY_ERRORS, "reason" => reason).increment(1);
}

pub fn dead_lettered_outbound(kind: &'static str) {
    counter!(DEAD_LETTERED, "kind" => kind, "direction" => "outbound").increment(1);
}

/// An unsigned inbound message let through by `amqp.accept_unsigned`.
pub fn unsigned_accepted() {
    counter!(UNSIGNED_ACCEPTED).increment(1);
}
