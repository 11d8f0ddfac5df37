//! Reading the replication lag a sidecar exports: its `lag_seconds` histogram per origin (as
//! Prometheus text), the difference of two scrapes, and quantiles interpolated within buckets
//! the way Prometheus' `histogram_quantile` does. It must not scrape anything itself.
#![allow(dead_code)]

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
