//! The load harness behind `scripts/bench` (`cargo bench --bench load`) and its CI smoke
//! run (`tests/bench_smoke.rs`): in one run on one machine it measures the proxy overhead
//! against the emulator and a fixed upstream (direct, sidecar, nginx), the capture cost,
//! federation throughput and lag through a real RabbitMQ with mutual TLS, and the
//! footprint, then renders the BENCHMARKS table (`report`). It drives real processes
//! started with the test harness (`tests/support/`); it never asserts on speed.

pub mod federation;
pub mod fixed;
pub mod footprint;
pub mod guest;
pub mod nginx;
pub mod proxy;
pub mod report;
pub mod tap;
pub mod wrk;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// What to run and for how long.
#[derive(Debug, Clone)]
pub struct Options {
    pub smoke: bool,
    /// Seconds of `wrk` per proxy cell.
    pub cell: Duration,
    pub rounds: usize,
    /// Connection counts of the proxy-overhead rows.
    pub conns: Vec<usize>,
    /// Concurrent guests of the capture-cost rows.
    pub capture_conns: Vec<usize>,
    /// Instances whose requests make up the guest mix.
    pub proxy_guests: usize,
    /// Seconds of load per federation phase.
    pub fed_cell: Duration,
    pub fed_sites: Vec<usize>,
    pub fed_deployments: Vec<usize>,
    /// Fewest instances a federation phase spreads its changes over.
    pub fed_instances: usize,
    /// Most instances registered for one phase (one per deployment up to this).
    pub fed_max_instances: usize,
    /// Sidecar starts timed for the footprint.
    pub starts: usize,
    /// Run only this section (`footprint`, `proxy`, `federation`); all when `None`.
    pub only: Option<String>,
}

impl Options {
    /// The documented full run (about 12 minutes on 2 cores).
    pub fn full() -> Options {
        Options {
            smoke: false,
            cell: Duration::from_secs(5),
            rounds: 3,
            conns: vec![1, 64],
            capture_conns: vec![1, 16, 256],
            proxy_guests: 64,
            fed_cell: Duration::from_secs(10),
            fed_sites: vec![2, 3, 5],
            fed_deployments: vec![1, 100, 10_000],
            fed_instances: 100,
            fed_max_instances: 10_000,
            starts: 5,
            only: None,
        }
    }

    /// CI's check that every part runs and the table is complete: 1 s per cell, one
    /// round, a tiny two-site federation. Its figures mean nothing.
    pub fn smoke() -> Options {
        Options {
            smoke: true,
            cell: Duration::from_secs(1),
            rounds: 1,
            conns: vec![1, 64],
            capture_conns: vec![1, 16, 256],
            proxy_guests: 8,
            fed_cell: Duration::from_secs(1),
            fed_sites: vec![2],
            fed_deployments: vec![1, 10],
            fed_instances: 5,
            fed_max_instances: 20,
            starts: 2,
            only: None,
        }
    }
}

/// Everything one run measured.
#[derive(Debug, Clone)]
pub struct Results {
    pub opts: Options,
    pub proxy: proxy::ProxyResults,
    pub federation: federation::FedResults,
    pub footprint: footprint::Footprint,
    pub elapsed: Duration,
}

/// Runs every section in order; the first failure stops the run.
pub fn run(opts: Options) -> anyhow::Result<Results> {
    let started = Instant::now();
    // The sidecars' per-request debug logs would be measured too.
    if std::env::var_os("AUDREY_FEDERATION_TEST_LOG").is_none() {
        std::env::set_var("AUDREY_FEDERATION_TEST_LOG", "warn");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let tmp = tempfile::Builder::new().prefix("audrey-bench-").tempdir()?;
    // `AUDREY_BENCH_KEEP=1` keeps the processes' folders and logs for a look afterwards.
    let (dir, _tmp) = if std::env::var_os("AUDREY_BENCH_KEEP").is_some() {
        let kept = tmp.keep();
        eprintln!("keeping {}", kept.display());
        (kept, None)
    } else {
        (tmp.path().to_owned(), Some(tmp))
    };
    let runs = |section: &str| opts.only.as_deref().is_none_or(|o| o == section);
    let mut footprint = footprint::Footprint::default();
    if runs("footprint") {
        eprintln!("footprint ...");
        footprint = footprint::run(&rt, &dir.join("footprint"), opts.starts)?;
    }
    let mut proxy = proxy::ProxyResults::default();
    if runs("proxy") {
        eprintln!("proxy overhead and capture cost ...");
        proxy = proxy::run(&opts, &rt, &dir.join("proxy"))?;
    }
    let mut federation = federation::FedResults::default();
    if runs("federation") {
        eprintln!("federation ...");
        federation = federation::run(&opts, &rt, &dir.join("federation"))?;
    }
    Ok(Results {
        opts,
        proxy,
        federation,
        footprint,
        elapsed: started.elapsed(),
    })
}

/// A `kB` field of `/proc/<pid>/status` (`VmRSS:`, `VmHWM:`).
pub fn proc_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Sum of a metric's samples on a sidecar's admin listener.
pub async fn metric(admin: SocketAddr, name: &str, labels: &[&str]) -> anyhow::Result<f64> {
    let req = http::Request::get("/metrics").body(String::new())?;
    let (_, _, body) = crate::support::client::try_exchange(admin, req).await?;
    Ok(crate::support::site::sum_metric(
        &String::from_utf8_lossy(&body),
        name,
        labels,
    ))
}
