//! The service manager's side channel: `sd_notify(3)` readiness, reload, stopping and
//! watchdog messages, so the unit can be `Type=notify` with `WatchdogSec=`.
//!
//! Owns what is said and when; the protocol itself (a datagram to `$NOTIFY_SOCKET`) is the
//! `sd-notify` crate's. Without `$NOTIFY_SOCKET` (not under systemd, tests) every call is a
//! no-op. A failed send is logged once per kind and never stops the sidecar: readiness is
//! also `GET /readyz`. It must not decide readiness itself; callers say when they are ready.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;

/// `READY=1` with a one-line status: the listeners accept and the store is open.
pub fn ready(status: &str) {
    send("ready", &[NotifyState::Ready, NotifyState::Status(status)]);
}

/// `RELOADING=1` with the monotonic time systemd wants for `Type=notify-reload`; follow
/// with [`ready`] once the reload is done.
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send("reloading", &[NotifyState::Reloading, now]),
        Err(_) => send("reloading", &[NotifyState::Reloading]),
    }
}

/// `STOPPING=1`: the drain has begun.
pub fn stopping() {
    send(
        "stopping",
        &[
            NotifyState::Stopping,
            NotifyState::Status("draining: finishing requests, flushing the outbox"),
        ],
    );
}

/// The watchdog interval systemd asked for (`WatchdogSec=`), if it is meant for this process.
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.parse::<u32>().ok()? != std::process::id() {
            return None;
        }
    }
    (usec > 0).then(|| Duration::from_micros(usec))
}

/// Pings the watchdog at half its interval until `stop`, from the runtime that serves
/// requests: a wedged runtime stops the pings and systemd restarts the service.
pub async fn watchdog(interval: Duration, stop: CancellationToken) {
    let mut tick = tokio::time::interval(interval / 2);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => send("watchdog", &[NotifyState::Watchdog]),
        }
    }
}

fn send(kind: &'static str, states: &[NotifyState<'_>]) {
    static WARNED: AtomicBool = AtomicBool::new(false);
    if let Err(e) = sd_notify::notify(states) {
        if !WARNED.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                kind,
                "cannot notify the service manager ($NOTIFY_SOCKET): {e}"
            );
        }
    }
}
