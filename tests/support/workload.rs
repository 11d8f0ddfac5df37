//! The convergence checker's workload: a seeded random stream of what Conductor and guests do
//! at N sites (registrations, params reports, repeated reports, deployment deletions, over
//! many deployments), sent through each site's sidecar, with every attempt and the status its
//! sender was told recorded in a [`History`].
//!
//! Each report carries a unique tag `n` (a provided parameter beside `ipaddress`), so every
//! effect a server applied can be traced to exactly one request; with [`Shape::names`] it
//! also sets one of several further names to its tag, a different one from report to
//! report, and with [`Shape::leave_one_in`] some guests leave right after sending. A sender retries (with a new
//! tag) until it is told 2xx, bounded in time, like a guest agent. The plan is drawn from the
//! seed up front; one sender per site sends its part of it, the sites concurrently. Deletions only touch
//! "local" deployments (every instance registered at the deleting site): the federation orders
//! changes per origin, not across origins. It must not check anything (`checker.rs` does) nor
//! drive faults.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::abort::{put_params_and_leave, Abort};
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
    /// Set by the test once its faults are over: the workload ends after its base share.
    pub stop: Arc<AtomicBool>,
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
            stop: Arc::new(AtomicBool::new(false)),
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
    /// Told 2xx: captured, so carried to every site.
    pub fn acked_deleted(&self) -> bool {
        self.deletions.iter().any(Attempt::ok)
    }

    /// Gone at its home: told 2xx, or 404 to a retry (an earlier attempt deleted it there,
    /// e.g. one answered 503 because the sidecar could not record it: then it is not carried).
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
    /// Operations whose sender gave up (must stay 0), and what they were told last.
    pub gave_up: u64,
    pub gave_up_ops: Vec<String>,
    /// Instances whose registration reached only their home server (see `send`).
    pub abandoned: Vec<String>,
}

impl History {
    /// Counts an operation none of whose `attempts` was acknowledged.
    fn note(&mut self, attempts: &[Attempt], what: impl FnOnce() -> String) {
        if !attempts.iter().any(Attempt::ok) {
            self.gave_up += 1;
            let told: Vec<Option<u16>> = attempts.iter().rev().take(3).map(|a| a.status).collect();
            self.gave_up_ops.push(format!(
                "{}: {} attempts, last told {told:?}",
                what(),
                attempts.len()
            ));
        }
    }

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
    /// Operations after the initial registrations; the workload goes on (up to
    /// [`EXTRA`] times as many, paced) until [`Targets::stop`] is set.
    pub ops: usize,
    pub deployments: usize,
    /// Each report also sets one of [`NAMES`] provided names (`p0`…) to its tag, a different
    /// one from report to report: a lost older change shows as a name missing or stale.
    pub names: bool,
    /// One report in this many (0: none) is sent by a guest that leaves right after sending
    /// (FIN or RST, at random), never told the answer and not retried.
    pub leave_one_in: u32,
}

/// How many extra provided names an instance has with [`Shape::names`].
pub const NAMES: usize = 4;

/// How many times `Shape::ops` the plan holds for a workload that must outlast its faults.
pub const EXTRA: usize = 20;
/// Pause between two operations of one sender beyond the base share.
const PACE: Duration = Duration::from_millis(50);

/// One planned operation.
#[derive(Debug, Clone, Copy)]
enum Op {
    Register(usize),
    /// Report of an instance: the same address again?, the extra name it sets
    /// ([`Shape::names`]), how its guest leaves right after sending (not retried).
    Report(usize, bool, Option<usize>, Option<Abort>),
    Delete(usize),
}

/// The seeded generator and its history.
pub struct Workload {
    rng: StdRng,
    shape: Shape,
    targets: Targets,
    pub history: History,
    /// Distinguishes the uuids of two workloads in one test binary.
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

    /// Plans the whole run from the seed (deployments, about a third local to one site and
    /// the rest split across sites, two instances each, then `ops` random operations), then
    /// sends it: one sender per site, each in plan order, all at once. An operation's sender
    /// is its instance's (or local deployment's) site, so what depends on what stays ordered.
    pub async fn run(&mut self) {
        let (ops, base) = self.plan();
        let mut lanes: Vec<Vec<(bool, Op)>> = vec![Vec::new(); self.shape.sites];
        for (i, op) in ops.into_iter().enumerate() {
            let site = match op {
                Op::Register(x) | Op::Report(x, ..) => self.history.instances[x].home,
                Op::Delete(d) => self.history.deployments[d].home.unwrap_or(0),
            };
            lanes[site].push((i < base, op));
        }
        let history = Arc::new(tokio::sync::Mutex::new(std::mem::take(&mut self.history)));
        let mut tasks = Vec::new();
        for lane in lanes {
            let (history, targets) = (history.clone(), self.targets.clone());
            tasks.push(tokio::spawn(async move {
                for (in_base, op) in lane {
                    if !in_base {
                        if targets.stop.load(Ordering::SeqCst) {
                            break;
                        }
                        tokio::time::sleep(PACE).await;
                    }
                    send(op, &history, &targets).await;
                }
            }));
        }
        for t in tasks {
            t.await.expect("workload lane");
        }
        self.targets.done.store(true, Ordering::SeqCst);
        self.history = history.lock().await.clone();
    }

    /// The operations, and how many of them make the base share (the rest is extra).
    fn plan(&mut self) -> (Vec<Op>, usize) {
        let mut ops = Vec::new();
        let mut deleted = Vec::new();
        for d in 0..self.shape.deployments {
            let home = (self.rng.random_range(0..3) == 0)
                .then(|| self.rng.random_range(0..self.shape.sites));
            self.history.deployments.push(Deployment {
                id: format!("{}-D{d}", self.prefix),
                home,
                members: Vec::new(),
                deletions: Vec::new(),
            });
            deleted.push(false);
            for _ in 0..2 {
                ops.push(Op::Register(self.new_instance(d)));
            }
        }
        let base = ops.len() + self.shape.ops;
        for _ in 0..self.shape.ops * EXTRA {
            let live: Vec<usize> = (0..deleted.len()).filter(|&d| !deleted[d]).collect();
            if live.is_empty() {
                break;
            }
            let d = live[self.rng.random_range(0..live.len())];
            let roll = self.rng.random_range(0..100);
            if roll < 10 {
                ops.push(Op::Register(self.new_instance(d)));
            } else if roll < 13 && self.history.deployments[d].home.is_some() {
                deleted[d] = true;
                ops.push(Op::Delete(d));
            } else {
                let members = &self.history.deployments[d].members;
                let x = members[self.rng.random_range(0..members.len())];
                let repeat = self.rng.random_range(0..4) == 0;
                let name = self.shape.names.then(|| self.rng.random_range(0..NAMES));
                let leave = (self.shape.leave_one_in > 0
                    && self.rng.random_range(0..self.shape.leave_one_in) == 0)
                    .then(|| {
                        if self.rng.random_bool(0.5) {
                            Abort::Fin
                        } else {
                            Abort::Rst
                        }
                    });
                ops.push(Op::Report(x, repeat, name, leave));
            }
        }
        (ops, base)
    }

    fn new_instance(&mut self, d: usize) -> usize {
        let k = self.history.instances.len();
        let dep = &self.history.deployments[d];
        let home = dep
            .home
            .unwrap_or_else(|| self.rng.random_range(0..self.shape.sites));
        let mut xml = InstanceXml::new(&format!("{}-I{k}", self.prefix), &dep.id, &format!("s{k}"))
            .provides("ipaddress")
            .provides("n");
        if self.shape.names {
            for j in 0..NAMES {
                xml = xml.provides(&format!("p{j}"));
            }
        }
        self.history.deployments[d].members.push(k);
        self.history.instances.push(Instance {
            xml,
            home,
            deployment: d,
            registrations: Vec::new(),
            reports: Vec::new(),
        });
        k
    }
}

/// Sends one operation until it is acknowledged (bounded) and records its attempts.
async fn send(op: Op, history: &tokio::sync::Mutex<History>, targets: &Targets) {
    let progress = &targets.progress;
    match op {
        Op::Register(x) => {
            let (home, uuid, body) = {
                let h = history.lock().await;
                let i = &h.instances[x];
                (i.home, i.xml.uuid.clone(), i.xml.to_xml())
            };
            let conductor = Site::conductor();
            let attempts = retry(progress, stuck_registration, |_| {
                let c = targets.client(home);
                let (conductor, uuid, body) = (conductor.clone(), uuid.clone(), body.clone());
                async move {
                    let r = c.register(&conductor, 1, &uuid, &body).await;
                    r.ok().map(|r| r.status)
                }
            })
            .await;
            let mut h = history.lock().await;
            // Refused with 503 twice (the server applied it, the sidecar could not record
            // it), the third POST answers 500: registered there only, never carried. The
            // instance is abandoned (its later reports are not sent).
            let abandoned =
                attempts.len() > 2 && attempts.last().and_then(|a| a.status) == Some(500);
            if abandoned {
                h.abandoned.push(uuid.clone());
            } else {
                h.note(&attempts, || format!("register {uuid} at site {home}"));
            }
            h.instances[x].registrations = attempts;
        }
        Op::Report(x, repeat, name, leave) => {
            let (home, uuid, secret, last) = {
                let h = history.lock().await;
                let i = &h.instances[x];
                if !i.registrations.iter().any(Attempt::ok) {
                    return; // abandoned
                }
                let last = i.reports.len() as u64;
                (i.home, i.xml.uuid.clone(), i.xml.secret.clone(), last)
            };
            // A repeated report sends the last address again (a new request, new tag).
            let address = if repeat && last > 0 {
                format!("10.{x}.{}.1", last - 1)
            } else {
                format!("10.{x}.{last}.1")
            };
            let first_n = last + 1;
            let extra = name.map(|j| format!("p{j}"));
            if let Some(how) = leave {
                let n = first_n.to_string();
                let mut pairs = vec![("ipaddress", address.as_str()), ("n", n.as_str())];
                if let Some(k) = &extra {
                    pairs.push((k.as_str(), n.as_str()));
                }
                let data = audrey_data(&pairs);
                let c = targets.client(home);
                let left =
                    put_params_and_leave(&c, 2, &uuid, &secret, &data, how, std::future::ready(()))
                        .await;
                drop(left);
                progress.fetch_add(1, Ordering::SeqCst);
                history.lock().await.instances[x].reports.push(Attempt {
                    n: first_n,
                    status: None,
                });
                return;
            }
            let mut attempts = retry(
                progress,
                |_, _| false,
                |i| {
                    let c = targets.client(home);
                    let n = (first_n + i).to_string();
                    let mut pairs = vec![("ipaddress", address.as_str()), ("n", n.as_str())];
                    if let Some(k) = &extra {
                        pairs.push((k.as_str(), n.as_str()));
                    }
                    let data = audrey_data(&pairs);
                    let (uuid, secret) = (uuid.clone(), secret.clone());
                    async move {
                        let r = c
                            .put_params(2, &uuid, &secret, &data, Placement::Header)
                            .await;
                        r.ok().map(|r| r.status)
                    }
                },
            )
            .await;
            for a in attempts.iter_mut() {
                a.n += first_n;
            }
            let mut h = history.lock().await;
            h.note(&attempts, || {
                format!("report n={first_n} of {uuid} at site {home}")
            });
            h.instances[x].reports.extend(attempts);
        }
        Op::Delete(d) => {
            let (home, id) = {
                let h = history.lock().await;
                let dep = &h.deployments[d];
                (dep.home.unwrap_or(0), dep.id.clone())
            };
            let attempts = retry(progress, deleted_earlier, |_| {
                let c = targets.client(home);
                let id = id.clone();
                async move { c.delete_deployment(1, &id).await.ok().map(|r| r.status) }
            })
            .await;
            let mut h = history.lock().await;
            let gone = attempts.len() > 1 && attempts.last().and_then(|a| a.status) == Some(404);
            if !gone {
                h.note(&attempts, || format!("delete {id} at site {home}"));
            }
            h.deployments[d].deletions = attempts;
        }
    }
}

/// Sends attempt 0, 1, ... (numbered `n = i`; the caller renumbers) until one is answered 2xx
/// or `settled(earlier attempts, status)` says the answer ends the operation anyway, for at
/// most [`OP_LIMIT`].
async fn retry<F, Fut>(
    progress: &AtomicU64,
    settled: fn(&[Attempt], Option<u16>) -> bool,
    mut send: F,
) -> Vec<Attempt>
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
        let settled_on_retry = settled(&attempts, status);
        attempts.push(Attempt { n: i, status });
        if attempts.last().is_some_and(Attempt::ok) || settled_on_retry {
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

/// A deletion retried after an unanswered or refused attempt answers 404: that attempt
/// deleted it.
fn deleted_earlier(earlier: &[Attempt], status: Option<u16>) -> bool {
    !earlier.is_empty() && status == Some(404)
}

/// A registration the server took twice (both answered 503 by the sidecar, which could not
/// record them) answers 500 to the third POST (a server quirk): no retry can help.
fn stuck_registration(earlier: &[Attempt], status: Option<u16>) -> bool {
    status == Some(500) && earlier.iter().filter(|a| a.status == Some(503)).count() >= 2
}
