//! Capped exponential backoff with full jitter, for reconnecting to the broker.
//!
//! Owns only the arithmetic: the n-th delay is drawn uniformly from `[0, min(max, initial * 2^n)]`
//! ("full jitter"), so many sidecars restarted together do not reconnect in lockstep. It must not
//! sleep or know about connections; callers sleep (with tokio's clock, pausable in tests).

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Backoff state; `R` is injectable for deterministic tests.
#[derive(Debug, Clone)]
pub struct Backoff<R = StdRng> {
    initial: Duration,
    max: Duration,
    attempt: u32,
    rng: R,
}

impl Backoff<StdRng> {
    /// `initial` is the first ceiling, `max` the cap (a `max` below `initial` is raised to it).
    pub fn new(initial: Duration, max: Duration) -> Self {
        Backoff::with_rng(initial, max, StdRng::from_os_rng())
    }
}

impl<R: Rng> Backoff<R> {
    pub fn with_rng(initial: Duration, max: Duration, rng: R) -> Self {
        Backoff {
            initial,
            max: max.max(initial),
            attempt: 0,
            rng,
        }
    }

    /// The upper bound of the next delay: `min(max, initial * 2^attempt)`.
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(31)).unwrap_or(u32::MAX);
        self.initial
            .checked_mul(factor)
            .map_or(self.max, |d| d.min(self.max))
    }

    /// Draws the next delay and moves one step up.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(self.rng.random_range(0..=nanos))
    }

    /// Back to the first step (after a connection has been up for a while).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// Delays drawn since the last reset.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seeded(initial_ms: u64, max_ms: u64) -> Backoff {
        Backoff::with_rng(
            Duration::from_millis(initial_ms),
            Duration::from_millis(max_ms),
            StdRng::seed_from_u64(7),
        )
    }

    #[test]
    fn ceilings_double_then_cap() {
        let mut b = seeded(100, 1000);
        let mut ceilings = Vec::new();
        for _ in 0..7 {
            ceilings.push(b.ceiling().as_millis());
            b.next_delay();
        }
        assert_eq!(ceilings, vec![100, 200, 400, 800, 1000, 1000, 1000]);
    }

    #[test]
    fn every_delay_is_within_its_ceiling_and_jittered() {
        let mut b = seeded(50, 3000);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..500 {
            let ceiling = b.ceiling();
            let d = b.next_delay();
            assert!(d <= ceiling, "{d:?} > {ceiling:?}");
            seen.insert(d);
        }
        assert!(
            seen.len() > 400,
            "delays are not jittered: {} distinct",
            seen.len()
        );
    }

    #[test]
    fn full_jitter_spans_the_whole_range() {
        let mut b = seeded(1000, 1000);
        let draws: Vec<Duration> = (0..1000).map(|_| b.next_delay()).collect();
        assert!(draws.iter().any(|d| *d < Duration::from_millis(100)));
        assert!(draws.iter().any(|d| *d > Duration::from_millis(900)));
    }

    #[test]
    fn reset_starts_over() {
        let mut b = seeded(10, 10_000);
        for _ in 0..5 {
            b.next_delay();
        }
        assert_eq!(b.attempts(), 5);
        assert_eq!(b.ceiling(), Duration::from_millis(320));
        b.reset();
        assert_eq!(b.attempts(), 0);
        assert_eq!(b.ceiling(), Duration::from_millis(10));
        assert!(b.next_delay() <= Duration::from_millis(10));
    }

    #[test]
    fn many_attempts_never_overflow() {
        let mut b = seeded(200, 30_000);
        for _ in 0..10_000 {
            assert!(b.next_delay() <= Duration::from_secs(30));
        }
        assert_eq!(b.ceiling(), Duration::from_secs(30));
        let mut huge = Backoff::with_rng(Duration::MAX, Duration::MAX, StdRng::seed_from_u64(1));
        huge.next_delay();
        assert_eq!(huge.ceiling(), Duration::MAX);
    }

    #[test]
    fn max_below_initial_is_raised() {
        let b = seeded(500, 100);
        assert_eq!(b.ceiling(), Duration::from_millis(500));
    }

    #[test]
    fn default_rng_is_usable() {
        let mut b = Backoff::new(Duration::from_millis(1), Duration::from_millis(2));
        assert!(b.next_delay() <= Duration::from_millis(1));
    }
}
