//! The convergence checker's workload: a seeded random stream of what Conductor and guests do
//! at N sites (registrations, params reports, repeated reports, deployment deletions, over
//! many deployments), sent through each site's sidecar, with every attempt and the status its
//! sender was told recorded in a [`History`].
//!
//! Each report carries a unique tag `n` (a provided parameter beside `ipaddress`), so every
//! effect a server applied can be traced to exactly one request. A sender retries (with a new
//! tag) until it is told 2xx, bounded in time, like a guest agent. Deletions only touch
//! "local" deployments (every instance registered at the deleting site): the federation orders
//! changes per origin, not across origins. It must not check anything (`checker.rs` does) nor
//! drive faults.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::client::{audrey_data, Client, InstanceXml, Placement};
use super::site::Site;

/// How long one operation may keep retrying before the workload gives up.
pub const OP_LIMIT: Duration = Duration::from_secs(120);

/// Where each site's sidecar answers now (a restarted sidecar gets new ports), and its `Host`.
#[derive(Debug, Clone)]
pub struct Targets {
    pub proxies: Arc<RwLock<Vec<SocketAddr>>>,
    pub hosts: Vec<String>,
    /// Requests answered so far (any answer), for a fault driver to pace itself on.
    pub progress: Arc<AtomicU64>,
    /// Set once the workload has sent its last operation.
    pub done: Arc<AtomicBool>,
}

impl Targets {
    pub fn of(sites: &[Site]) -> Targets {
        Targets {
            proxies: Arc::new(RwLock::new(sites.iter().map(|s| s.sidecar.proxy).collect())),
            hosts: sites
                .iter()
                .map(|s| format!("configserver.{}.example", s.name))
                .collect(),
            progress: Arc::new(AtomicU64::new(0)),
            done: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Record site `i`'s new proxy address (after a restart).
    pub fn update(&self, i: usize, addr: SocketAddr) {
        self.proxies.write().unwrap()[i] = addr;
    }

    /// Waits until `more` further requests were answered or the workload is done (bounded by
    /// [`OP_LIMIT`]; a stalled workload fails the test).
    pub async fn after(&self, more: u64) {
        let target = self.progress.load(Ordering::SeqCst) + more;
        let deadline = Instant::now() + OP_LIMIT;
        while self.progress.load(Ordering::SeqCst) < target && !self.done.load(Ordering::SeqCst) {
            assert!(Instant::now() < deadline, "workload stalled");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn client(&self, i: usize) -> Client {
        let addr = self.proxies.read().unwrap()[i];
        Client::new(addr).with_host(&self.hosts[i])
    }
}

/// One request as sent: its tag (reports) and what its sender was told (`None`: no answer).
#[derive(Debug, Clone)]
pub struct Attempt {
    pub n: u64,
    pub status: Option<u16>,
}

impl Attempt {
    pub fn ok(&self) -> bool {
        matches!(self.status, Some(200..=299))
    }
}

/// One instance of the workload.
#[derive(Debug, Clone)]
pub struct Instance {
    pub xml: InstanceXml,
    pub home: usize,
    pub deployment: usize,
    pub registrations: Vec<Attempt>,
    pub reports: Vec<Attempt>,
}

/// One deployment: `home` is `Some` for a local deployment (all instances there; deletable).
#[derive(Debug, Clone)]
pub struct Deployment {
    pub id: String,
    pub home: Option<usize>,
    pub members: Vec<usize>,
    pub deletions: Vec<Attempt>,
}

impl Deployment {
    /// Told 2xx, or 404 to a retry (an earlier, unanswered attempt deleted it).
    pub fn deleted(&self) -> bool {
        self.deletions.iter().any(Attempt::ok)
            || (self.deletions.len() > 1
                && self.deletions.last().and_then(|a| a.status) == Some(404))
    }
}

/// Everything the workload did and was told.
#[derive(Debug, Clone, Default)]
pub struct History {
    pub instances: Vec<Instance>,
    pub deployments: Vec<Deployment>,
    /// Operations whose sender gave up (must stay 0).
    pub gave_up: u64,
}

impl History {
    /// Requests sent (every attempt of every operation).
    pub fn issued(&self) -> u64 {
        let i: usize = self
            .instances
            .iter()
            .map(|x| x.registrations.len() + x.reports.len())
            .sum();
        let d: usize = self.deployments.iter().map(|d| d.deletions.len()).sum();
        (i + d) as u64
    }

    /// Requests answered 2xx.
    pub fn acked(&self) -> u64 {
        let i: usize = self
            .instances
            .iter()
            .map(|x| {
                x.registrations.iter().filter(|a| a.ok()).count()
                    + x.reports.iter().filter(|a| a.ok()).count()
            })
            .sum();
        let d: usize = self
            .deployments
            .iter()
            .map(|d| d.deletions.iter().filter(|a| a.ok()).count())
            .sum();
        (i + d) as u64
    }
}

/// Workload shape.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub seed: u64,
    pub sites: usize,
    /// Operations after the initial registrations.
    pub ops: usize,
    pub deployments: usize,
}

/// The seeded generator and its history.
pub struct Workload {
    rng: StdRng,
    shape: Shape,
    targets: Targets,
    pub history: History,
    /// Distinguishes the uuids of two workloads in one test binary (same seed or not).
    prefix: String,
}

impl Workload {
    pub fn new(shape: Shape, targets: Targets, prefix: &str) -> Workload {
        Workload {
            rng: StdRng::seed_from_u64(shape.seed),
            shape,
            targets,
            history: History::default(),
            prefix: prefix.to_owned(),
        }
    }

    /// Deployments (about a third local to one site, the rest split across sites), two
    /// instances each, registered; then `ops` random operations. Sequential: one sender at a
    /// time, so a run is reproducible from its seed (up to timing).
    pub async fn run(&mut self) {
        for d in 0..self.shape.deployments {
            let home = (self.rng.random_range(0..3) == 0)
                .then(|| self.rng.random_range(0..self.shape.sites));
            self.history.deployments.push(Deployment {
                id: format!("{}-D{d}", self.prefix),
                home,
                members: Vec::new(),
                deletions: Vec::new(),
            });
            for _ in 0..2 {
                self.register(d).await;
            }
        }
        for _ in 0..self.shape.ops {
            self.step().await;
        }
        self.targets.done.store(true, Ordering::SeqCst);
    }

    async fn step(&mut self) {
        let roll = self.rng.random_range(0..100);
        let live: Vec<usize> = (0..self.history.deployments.len())
            .filter(|&d| !self.history.deployments[d].deleted())
            .collect();
        if live.is_empty() {
            return;
        }
        let d = live[self.rng.random_range(0..live.len())];
        if roll < 10 {
            self.register(d).await;
        } else if roll < 13 && self.history.deployments[d].home.is_some() {
            self.delete(d).await;
        } else {
            let members = &self.history.deployments[d].members;
            let x = members[self.rng.random_range(0..members.len())];
            let repeat = self.rng.random_range(0..4) == 0;
            self.report(x, repeat).await;
        }
    }

    async fn register(&mut self, d: usize) {
        let k = self.history.instances.len();
        let dep = &self.history.deployments[d];
        let home = dep
            .home
            .unwrap_or_else(|| self.rng.random_range(0..self.shape.sites));
        let uuid = format!("{}-I{k}", self.prefix);
        let xml = InstanceXml::new(&uuid, &dep.id, &format!("s{k}"))
            .provides("ipaddress")
            .provides("n");
        let conductor = Site::conductor();
        let body = xml.to_xml();
        let targets = self.targets.clone();
        let attempts = retry(&self.targets.progress.clone(), false, |_| {
            let c = targets.client(home);
            let (conductor, uuid, body) = (conductor.clone(), uuid.clone(), body.clone());
            async move {
                c.register(&conductor, 1, &uuid, &body)
                    .await
                    .ok()
                    .map(|r| r.status)
            }
        })
        .await;
        self.history.gave_up += u64::from(!attempts.iter().any(Attempt::ok));
        self.history.deployments[d].members.push(k);
        self.history.instances.push(Instance {
            xml,
            home,
            deployment: d,
            registrations: attempts,
            reports: Vec::new(),
        });
    }

    async fn report(&mut self, x: usize, repeat: bool) {
        let inst = &self.history.instances[x];
        let last = inst.reports.len() as u64;
        // A repeated report sends the last address again (still a new request, new tag).
        let address = if repeat && last > 0 {
            format!("10.{x}.{}.1", last - 1)
        } else {
            format!("10.{x}.{last}.1")
        };
        let (home, uuid, secret) = (inst.home, inst.xml.uuid.clone(), inst.xml.secret.clone());
        let targets = self.targets.clone();
        let first_n = last + 1;
        let mut attempts = retry(&self.targets.progress.clone(), false, |i| {
            let c = targets.client(home);
            let n = (first_n + i).to_string();
            let data = audrey_data(&[("ipaddress", &address), ("n", &n)]);
            let (uuid, secret) = (uuid.clone(), secret.clone());
            async move {
                c.put_params(2, &uuid, &secret, &data, Placement::Header)
                    .await
                    .ok()
                    .map(|r| r.status)
            }
        })
        .await;
        for a in attempts.iter_mut() {
            a.n += first_n;
        }
        self.history.gave_up += u64::from(!attempts.iter().any(Attempt::ok));
        self.history.instances[x].reports.extend(attempts);
    }

    async fn delete(&mut self, d: usize) {
        let dep = &self.history.deployments[d];
        let Some(home) = dep.home else { return };
        let id = dep.id.clone();
        let targets = self.targets.clone();
        let attempts = retry(&self.targets.progress.clone(), true, |_| {
            let c = targets.client(home);
            let id = id.clone();
            async move { c.delete_deployment(1, &id).await.ok().map(|r| r.status) }
        })
        .await;
        self.history.gave_up += u64::from(!attempts.iter().any(Attempt::ok));
        self.history.deployments[d].deletions.extend(attempts);
    }
}

/// Sends attempt 0, 1, ... (numbered `n = i`; the caller renumbers) until one is answered 2xx
/// or, for a deletion (`gone_ok`), a retry is answered 404 (an earlier attempt deleted it), for
/// at most [`OP_LIMIT`].
async fn retry<F, Fut>(progress: &AtomicU64, gone_ok: bool, mut send: F) -> Vec<Attempt>
where
    F: FnMut(u64) -> Fut,
    Fut: std::future::Future<Output = Option<u16>>,
{
    let deadline = Instant::now() + OP_LIMIT;
    let mut attempts: Vec<Attempt> = Vec::new();
    let mut pause = Duration::from_millis(20);
    for i in 0u64.. {
        let status = send(i).await;
        progress.fetch_add(1, Ordering::SeqCst);
        let retried_delete_gone = gone_ok && status == Some(404) && i > 0;
        attempts.push(Attempt { n: i, status });
        if attempts.last().is_some_and(Attempt::ok) || retried_delete_gone {
            break;
        }
        if Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(1));
    }
    attempts
}
