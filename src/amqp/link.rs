//! What the publish and subscribe links share: reconnecting forever with capped jittered
//! backoff (reset once a link stayed up a while), the link-up gauge, and bounded protocol
//! steps. It must not know what a link carries: publisher and subscriber own that.

use std::fmt::Display;
use std::future::Future;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::Backoff;
use crate::config::AmqpConfig;
use crate::metrics;

/// Bound on session begin, link attach and each detach step.
pub(crate) const STEP_TIMEOUT: Duration = Duration::from_secs(10);
/// A link that stayed up this long resets the reconnect backoff.
const STABLE_AFTER: Duration = Duration::from_secs(10);

/// Runs one protocol step with [`STEP_TIMEOUT`], its error as text.
pub(crate) async fn step<T, E: Display>(
    fut: impl Future<Output = Result<T, E>>,
) -> Result<T, String> {
    match tokio::time::timeout(STEP_TIMEOUT, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer from the broker within {STEP_TIMEOUT:?}")),
    }
}

/// Pacing between one connection's life and the next. Each delay is at most
/// `amqp.reconnect_max`, so a link whose broker is back is attempted again within that cap (5 s
/// by default; measured in `tests/recipes.rs`). The caller loops
/// `while !shutdown { let r = connected().await; if !reconnect.after(r, up_since, &shutdown).await { break } }`.
pub(crate) struct Reconnect {
    /// Metric label: [`metrics::LINK_PUBLISH`] or [`metrics::LINK_SUBSCRIBE`].
    link: &'static str,
    /// Verb of the failure log line ("publishing", "subscribing").
    doing: &'static str,
    backoff: Backoff,
    attempt: u64,
}

impl Reconnect {
    pub(crate) fn new(link: &'static str, doing: &'static str, cfg: &AmqpConfig) -> Reconnect {
        metrics::broker_link_up(link, false);
        Reconnect {
            link,
            doing,
            backoff: Backoff::new(cfg.reconnect_initial, cfg.reconnect_max),
            attempt: 0,
        }
    }

    /// Records how one connection ended (`up_since`: when its link came up, if it did), logs
    /// it, and sleeps the backoff delay. `false` when shutdown came first: stop looping.
    pub(crate) async fn after<E: Display>(
        &mut self,
        result: Result<(), E>,
        up_since: Option<Instant>,
        shutdown: &CancellationToken,
    ) -> bool {
        self.attempt += 1;
        metrics::broker_link_up(self.link, false);
        if shutdown.is_cancelled() {
            return false;
        }
        if up_since.is_some_and(|t| t.elapsed() >= STABLE_AFTER) {
            self.backoff.reset();
        }
        let delay = self.backoff.next_delay();
        metrics::broker_connect_failure(self.link);
        let (link, doing, attempt) = (self.link, self.doing, self.attempt);
        match result {
            Ok(()) => tracing::warn!(attempt, retry_in = ?delay, "{link} link ended; reconnecting"),
            Err(e) => {
                crate::status::record_error(link, &e.to_string());
                tracing::warn!(attempt, retry_in = ?delay, error = %e, "{doing} to the broker failed")
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => true,
            _ = shutdown.cancelled() => false,
        }
    }
}
