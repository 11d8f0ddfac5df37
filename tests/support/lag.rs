//! Reading the replication lag a sidecar exports: its `lag_seconds` histogram per origin (as
//! Prometheus text), the difference of two scrapes, quantiles interpolated within buckets the
//! way Prometheus' `histogram_quantile` does, and the lag of a window of a test. It only reads
//! a site's metrics; it must not drive a site.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use super::site::Site;

/// How long [`lag_once`] waits for the expected number of changes.
pub const WAIT_LIMIT: Duration = Duration::from_secs(60);

/// The name of the lag histogram (see docs/metrics.md).
pub const LAG: &str = "audrey_federation_lag_seconds";

/// Cumulative bucket counts `(le, count)` in increasing `le`, the last one `+Inf`, and the
/// sum of the observations.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Histogram {
    pub buckets: Vec<(f64, f64)>,
    pub sum: f64,
}

impl Histogram {
    /// The lag histogram for changes from `origin` in a scrape (empty if none arrived yet).
    pub fn lag(metrics: &str, origin: &str) -> Histogram {
        let prefix = format!("{LAG}_bucket{{");
        let want = format!("origin_site=\"{origin}\"");
        let mut buckets: Vec<(f64, f64)> = metrics
            .lines()
            .filter(|l| l.starts_with(&prefix) && l.contains(&want))
            .filter_map(|l| {
                let (series, value) = l.rsplit_once(' ')?;
                let le = series.split("le=\"").nth(1)?.split('"').next()?;
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().ok()?
                };
                Some((le, value.parse().ok()?))
            })
            .collect();
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        let sum_prefix = format!("{LAG}_sum{{");
        let sum = metrics
            .lines()
            .filter(|l| l.starts_with(&sum_prefix) && l.contains(&want))
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum();
        Histogram { buckets, sum }
    }

    /// Mean of the observations; `None` if empty.
    pub fn mean(&self) -> Option<f64> {
        (self.count() > 0.0).then(|| self.sum / self.count())
    }

    /// Number of observations.
    pub fn count(&self) -> f64 {
        self.buckets.last().map_or(0.0, |b| b.1)
    }

    /// The observations made after `earlier` (a scrape of the same series).
    pub fn since(&self, earlier: &Histogram) -> Histogram {
        let before = |le: f64| {
            earlier
                .buckets
                .iter()
                .find(|b| b.0 == le)
                .map_or(0.0, |b| b.1)
        };
        Histogram {
            buckets: self
                .buckets
                .iter()
                .map(|&(le, n)| (le, n - before(le)))
                .collect(),
            sum: self.sum - earlier.sum,
        }
    }

    /// The `q` quantile (0..=1), linearly interpolated within its bucket; `None` if empty.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.count();
        if total <= 0.0 {
            return None;
        }
        let rank = q * total;
        let (mut lower, mut below) = (0.0, 0.0);
        for &(le, n) in &self.buckets {
            if n >= rank {
                if le.is_infinite() {
                    return Some(lower);
                }
                let share = if n > below {
                    (rank - below) / (n - below)
                } else {
                    1.0
                };
                return Some(lower + (le - lower) * share);
            }
            (lower, below) = (le, n);
        }
        Some(lower)
    }
}

/// The lag of the changes one site applied from another in a window of a test.
pub struct Lag {
    pub count: f64,
    pub p50: f64,
    pub p99: f64,
    pub mean: f64,
}

impl std::fmt::Display for Lag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} changes, p50 {:.3} s, p99 {:.3} s, mean {:.3} s",
            self.count, self.p50, self.p99, self.mean
        )
    }
}

/// `site`'s lag histogram for `origin` once it holds `applied` changes: a change is visible
/// at the server a moment before the sidecar records it.
pub async fn lag_once(site: &Site, origin: &str, applied: u32) -> Histogram {
    let deadline = Instant::now() + WAIT_LIMIT;
    loop {
        let h = Histogram::lag(&site.metrics().await, origin);
        if h.count() >= f64::from(applied) {
            return h;
        }
        assert!(
            Instant::now() < deadline,
            "{}: lag recorded for {} changes from {origin}, want {applied}",
            site.name,
            h.count()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The lag of the changes `site` applied from `origin` since `before`, once it applied
/// `applied` in all, and the new scrape.
pub async fn lag_since(
    site: &Site,
    origin: &str,
    applied: u32,
    before: &Histogram,
) -> (Histogram, Lag) {
    let now = lag_once(site, origin, applied).await;
    let delta = now.since(before);
    let q = |p| delta.quantile(p).unwrap_or(f64::NAN);
    let lag = Lag {
        count: delta.count(),
        p50: q(0.5),
        p99: q(0.99),
        mean: delta.mean().unwrap_or(f64::NAN),
    };
    (now, lag)
}
