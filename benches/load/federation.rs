//! The federation section of the load run: sites behind a real RabbitMQ (AMQP 1.0, mutual
//! TLS, SASL EXTERNAL) started with the test harness, guests' `PUT /params` sent to site A
//! (closed loop for the maximum, then open loop at fixed rates), and each change observed
//! when the other sites' emulators answer its replay (`tap`). It measures; `report` judges.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

use super::guest::{self, Pool};
use super::tap::{self, Recorder};
use super::{proc_kib, Options};
use crate::support::broker::{Broker, BrokerOptions};
use crate::support::certs::CertPaths;
use crate::support::client::InstanceXml;
use crate::support::site::{mtls, Site};

const NAMES: [&str; 5] = ["site-a", "site-b", "site-c", "site-d", "site-e"];

/// One measured load phase.
#[derive(Debug, Clone)]
pub struct FedRow {
    pub sites: usize,
    pub deployments: usize,
    pub instances: usize,
    /// `max` (closed loop) or the share of the maximum offered (open loop).
    pub load: String,
    /// Guests' PUTs acknowledged at A per second while sending.
    pub offered: f64,
    /// Changes applied per second at the slowest other site, from the first send to its
    /// last application.
    pub applied: f64,
    pub changes: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

#[derive(Debug, Clone, Default)]
pub struct FedResults {
    /// Sustained changes/s A -> B (two sites), the `max` row's applied rate.
    pub max_rate: f64,
    pub rows: Vec<FedRow>,
    /// Highest VmHWM of a federating sidecar.
    pub peak_rss_kib: u64,
}

/// The sites of one federation, their broker and what observes them.
struct Federation {
    sites: Vec<Site>,
    rec: Arc<Recorder>,
    next_seq: Arc<AtomicU64>,
    _broker: Broker,
    /// The PKI folder lives as long as the sites read it.
    _certs: CertPaths,
}

impl Federation {
    fn start(n: usize, rt: &tokio::runtime::Runtime, dir: &Path) -> anyhow::Result<Federation> {
        let names = &NAMES[..n];
        let certs = crate::support::certs::generate(names);
        let broker = Broker::start(BrokerOptions {
            sites: names,
            certs: &certs,
        });
        let rec = Arc::new(Recorder::default());
        let mut sites = Vec::new();
        for (i, name) in names.iter().enumerate() {
            let emulator = Site::emulator();
            let tap = rt.block_on(tap::start(i, emulator.addr(), rec.clone()))?;
            sites.push(Site::launch(
                name,
                &mtls(&broker.amqps_url(), &certs, name),
                &dir.join(format!("{n}-{name}")),
                emulator,
                Some(tap),
                "",
            ));
        }
        Ok(Federation {
            sites,
            rec,
            next_seq: Arc::new(AtomicU64::new(1)),
            _broker: broker,
            _certs: certs,
        })
    }

    /// Registers `xs` at site A and waits until every other site has replayed them.
    fn register(&self, rt: &tokio::runtime::Runtime, xs: &[InstanceXml]) -> anyhow::Result<()> {
        let started = Instant::now();
        let before: Vec<u64> = (0..self.sites.len())
            .map(|i| self.rec.registrations(i))
            .collect();
        let pool = guest::pool();
        rt.block_on(guest::send_all(
            &pool,
            self.sites[0].sidecar.proxy,
            xs.iter().map(guest::register).collect(),
            16,
        ))?;
        let limit = Duration::from_secs(120) + Duration::from_millis(20) * xs.len() as u32;
        for (i, b) in before.iter().enumerate().skip(1) {
            while self.rec.registrations(i) < b + xs.len() as u64 {
                if started.elapsed() > limit {
                    bail!(
                        "{} has {} of {} registrations after {limit:?}",
                        self.sites[i].name,
                        self.rec.registrations(i) - b,
                        xs.len()
                    );
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        eprintln!(
            "  registered {} instances at {} sites in {:.1?}",
            xs.len(),
            self.sites.len(),
            started.elapsed()
        );
        Ok(())
    }

    /// Sends PUTs for `xs` at `rate` per second (open loop; `None`: closed loop with 32
    /// guests), waits until every site applied them, and measures.
    fn phase(
        &self,
        rt: &tokio::runtime::Runtime,
        xs: &Arc<Vec<InstanceXml>>,
        rate: Option<f64>,
        secs: Duration,
        deployments: usize,
        load: &str,
    ) -> anyhow::Result<FedRow> {
        let first = self.next_seq.load(Ordering::SeqCst);
        let t0 = Instant::now();
        let (sent, errors) = rt.block_on(drive(
            guest::pool(),
            self.sites[0].sidecar.proxy,
            xs.clone(),
            self.rec.clone(),
            self.next_seq.clone(),
            rate,
            secs,
        ));
        let send_secs = t0.elapsed().as_secs_f64();
        let end = self.next_seq.load(Ordering::SeqCst);
        let range = first..end;
        let acked = self.rec.acked(range.clone());
        if errors > 0 {
            bail!("{errors} of {sent} PUTs at site A failed");
        }
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut slowest = f64::INFINITY;
        for i in 1..self.sites.len() {
            loop {
                let (n, last) = self.rec.applied_at(i, range.clone());
                if n >= acked {
                    let span = last.map_or(0.0, |l| l.duration_since(t0).as_secs_f64());
                    slowest = slowest.min(if span > 0.0 { n as f64 / span } else { 0.0 });
                    break;
                }
                if Instant::now() > deadline {
                    bail!(
                        "{} applied {n} of {acked} changes 120 s after the load",
                        self.sites[i].name
                    );
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let mut lags = self.rec.lags(0, range);
        lags.sort_by(f64::total_cmp);
        let row = FedRow {
            sites: self.sites.len(),
            deployments,
            instances: xs.len(),
            load: load.to_string(),
            offered: acked as f64 / send_secs,
            applied: slowest,
            changes: acked,
            p50_ms: quantile(&lags, 0.50) * 1e3,
            p99_ms: quantile(&lags, 0.99) * 1e3,
            max_ms: lags.last().copied().unwrap_or(0.0) * 1e3,
        };
        eprintln!(
            "  {} sites, {deployments} deployments, {load}: offered {:.0}/s applied {:.0}/s lag p50 {:.1} ms p99 {:.1} ms",
            row.sites, row.offered, row.applied, row.p50_ms, row.p99_ms
        );
        Ok(row)
    }

    fn peak_rss_kib(&self) -> u64 {
        self.sites
            .iter()
            .map(|s| proc_kib(s.sidecar.pid().as_raw() as u32, "VmHWM:").unwrap_or(0))
            .max()
            .unwrap_or(0)
    }
}

/// The `q` quantile of sorted `v` (nearest rank), 0 when empty.
pub fn quantile(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

/// Guests' PUTs to `addr`: each with a fresh change number as its value, `rate` per second
/// scheduled from the start (open loop, at most 1,024 in flight), or 32 guests back to back.
/// Returns (sent, failed).
async fn drive(
    pool: Pool,
    addr: std::net::SocketAddr,
    xs: Arc<Vec<InstanceXml>>,
    rec: Arc<Recorder>,
    next: Arc<AtomicU64>,
    rate: Option<f64>,
    secs: Duration,
) -> (u64, u64) {
    let failed = Arc::new(AtomicU64::new(0));
    let one = {
        let failed = failed.clone();
        move |seq: u64| {
            let (pool, xs, rec, failed) = (pool.clone(), xs.clone(), rec.clone(), failed.clone());
            async move {
                let x = &xs[(seq as usize) % xs.len()];
                let req = guest::put_params(x, &format!("v{seq}"));
                match guest::send(&pool, addr, &req).await {
                    Ok((s, _)) if (200..300).contains(&s) => rec.ack(seq, Instant::now()),
                    _ => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
    };
    let start = tokio::time::Instant::now();
    let mut set = tokio::task::JoinSet::new();
    let mut sent = 0u64;
    match rate {
        Some(rate) => {
            let n = (rate * secs.as_secs_f64()).round().max(1.0) as u64;
            let sem = Arc::new(tokio::sync::Semaphore::new(1024));
            for i in 0..n {
                tokio::time::sleep_until(start + Duration::from_secs_f64(i as f64 / rate)).await;
                let Ok(permit) = sem.clone().acquire_owned().await else {
                    break;
                };
                let seq = next.fetch_add(1, Ordering::SeqCst);
                let fut = one(seq);
                set.spawn(async move {
                    fut.await;
                    drop(permit);
                });
                sent += 1;
                while set.try_join_next().is_some() {}
            }
        }
        None => {
            let count = Arc::new(AtomicU64::new(0));
            for _ in 0..32 {
                let (one, next, count) = (one.clone(), next.clone(), count.clone());
                set.spawn(async move {
                    while start.elapsed() < secs {
                        one(next.fetch_add(1, Ordering::SeqCst)).await;
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
            while set.join_next().await.is_some() {}
            sent = count.load(Ordering::Relaxed);
        }
    }
    while set.join_next().await.is_some() {}
    (sent, failed.load(Ordering::Relaxed))
}

fn instances(prefix: &str, n: usize, deployments: usize) -> Arc<Vec<InstanceXml>> {
    Arc::new(
        (0..n)
            .map(|i| guest::instance(prefix, i, &format!("dep-{prefix}-{}", i % deployments)))
            .collect(),
    )
}

pub fn run(opts: &Options, rt: &tokio::runtime::Runtime, dir: &Path) -> anyhow::Result<FedResults> {
    let mut res = FedResults::default();
    let secs = opts.fed_cell;
    let n_for = |d: usize| opts.fed_instances.max(d.min(opts.fed_max_instances));

    // Two sites: the maximum, lag at shares of it, and the deployments sweep.
    let fed = Federation::start(2, rt, dir).context("starting two sites")?;
    let main_d = opts.fed_deployments[opts.fed_deployments.len() / 2];
    let main = instances("m", n_for(main_d), main_d);
    fed.register(rt, &main)?;
    if !opts.smoke {
        fed.phase(rt, &main, None, Duration::from_secs(2), main_d, "warm-up")?;
    }
    let max = fed.phase(rt, &main, None, secs, main_d, "max")?;
    res.max_rate = max.applied;
    res.rows.push(max);
    for share in [0.1, 0.5, 0.9] {
        let rate = (res.max_rate * share).max(1.0);
        let row = fed.phase(
            rt,
            &main,
            Some(rate),
            secs,
            main_d,
            &format!("{:.0}%", share * 100.0),
        )?;
        res.rows.push(row);
    }
    let grid_rate = (res.max_rate * 0.5).max(1.0);
    for &d in &opts.fed_deployments {
        if d == main_d {
            continue;
        }
        let xs = instances(&format!("d{d}"), n_for(d), d);
        fed.register(rt, &xs)?;
        res.rows
            .push(fed.phase(rt, &xs, Some(grid_rate), secs, d, "50%")?);
    }
    res.peak_rss_kib = fed.peak_rss_kib();
    drop(fed);

    // More sites, same rate and deployments as the 50% row.
    for &n in opts.fed_sites.iter().filter(|&&n| n > 2) {
        let fed = Federation::start(n, rt, dir).with_context(|| format!("starting {n} sites"))?;
        let xs = instances(&format!("s{n}"), n_for(main_d), main_d);
        fed.register(rt, &xs)?;
        res.rows
            .push(fed.phase(rt, &xs, Some(grid_rate), secs, main_d, "50%")?);
        res.peak_rss_kib = res.peak_rss_kib.max(fed.peak_rss_kib());
    }
    Ok(res)
}
