//! The convergence checker: N federated sites (emulated server + sidecar each, emulators
//! writing `--request-log`) over a real broker, and the verdict on a [`History`] once the
//! workload is done, measured on the servers only, never on the sidecars' counters or logs:
//!
//! - the servers' state: each site's storage (`instances/<uuid>/state.json`, the provided
//!   parameters and their values), read during the run by a [`Sampler`] and at the end;
//! - what each server applied, in order: its `--request-log` (the emulator's own record).
//!
//! Definitions (per instance whose registration was acknowledged, per provided name):
//! - **lost**: a value the origin server holds at the end (its final state for that instance
//!   and name) that another site's server does not hold at the end (another value, or none);
//!   a registration another site's server never applied is lost too, and so is an
//!   acknowledged deletion another site never applied;
//! - **backwards**: a site's server holding an older value of a name than one it held before
//!   (sampled during the run), or than the origin server's final one at the end; "older" is
//!   the origin server's order (its request log: the value it applied earlier). At the
//!   origin itself the order is its own (a guest that left does not order its next request);
//! - **phantom**: a value at a site's server that its origin's server never held (never
//!   applied, per its request log);
//! - **duplicated**: a change a server applied twice, other than back to back (request log).
//!
//! Owns the federation's construction (optionally with an HTTP fault proxy before one site's
//! server, a TCP relay between one site and the broker, or a wrapper command around one
//! site's sidecar), reading the request logs and the servers' storage, and the one-line
//! summary. It must not generate the workload (`workload.rs`) nor choose faults (the tests).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::broker::{Broker, SHARED_SITES};
use super::certs::CertPaths;
use super::emulator::{Emulator, EmulatorOptions};
use super::fault_proxy::FaultProxy;
use super::relay::Relay;
use super::site::{self, Site, CONDUCTOR};
use super::workload::{History, Targets};

/// How long the sites may take to converge once the workload is done.
pub const CONVERGE_LIMIT: Duration = Duration::from_secs(120);

/// Seed and scale of a run: `AUDREY_CHECK_SEED` replays a seed, `AUDREY_CHECK_SCALE`
/// multiplies the workload (default 1: the CI size).
#[derive(Debug, Clone, Copy)]
pub struct Knobs {
    pub seed: u64,
    pub scale: usize,
}

impl Knobs {
    pub fn from_env() -> Knobs {
        let seed = std::env::var("AUDREY_CHECK_SEED")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or_else(rand::random);
        let scale = std::env::var("AUDREY_CHECK_SCALE")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .filter(|&s: &usize| s > 0)
            .unwrap_or(1);
        Knobs { seed, scale }
    }
}

/// How the federation is wired.
#[derive(Debug, Clone, Default)]
pub struct Wiring {
    /// Put a [`FaultProxy`] between this site's sidecar and its server.
    pub server_proxy: Option<usize>,
    /// Put a [`Relay`] between this site's sidecar and the broker.
    pub broker_relay: Option<usize>,
    /// Run this site's sidecar through a wrapper command (e.g. `faketime`); `{dir}` in it
    /// stands for the site's folder (its state is in `{dir}/state`).
    pub wrapper: Option<(usize, Vec<String>)>,
    /// A second site run through a wrapper.
    pub wrapper2: Option<(usize, Vec<String>)>,
    /// Give every sidecar its server's storage (`proxy.upstream_storage_dir`), so one whose
    /// state directory was wiped learns the deployments of the instances registered before.
    pub learn: bool,
    /// Start a second sidecar for this site (its own state directory, the same server and
    /// broker queue, no guests): the broker hands the site's deliveries to both in turn, so
    /// one instance's changes are applied by two processes in no particular order.
    pub second_consumer: Option<usize>,
}

/// N running sites and what stands between them.
pub struct Federation {
    pub sites: Vec<Site>,
    pub names: Vec<String>,
    pub logs: Vec<PathBuf>,
    pub targets: Targets,
    pub server_proxy: Option<FaultProxy>,
    pub broker_relay: Option<Relay>,
    /// The sidecars of [`Wiring::second_consumer`].
    pub second: Vec<super::sidecar::Sidecar>,
    dir: Option<tempfile::TempDir>,
}

impl Federation {
    /// Starts `n` (≤ 3) of the shared broker's sites, after purging their queues of anything
    /// an earlier test left.
    pub async fn start(broker: &Broker, certs: &CertPaths, n: usize, wiring: &Wiring) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let names: Vec<String> = SHARED_SITES[..n].iter().map(|s| s.to_string()).collect();
        for name in &names {
            broker.purge_queue(&Broker::queue_name(name));
        }
        let (mut sites, mut logs) = (Vec::new(), Vec::new());
        let (mut server_proxy, mut broker_relay) = (None, None);
        for (i, name) in names.iter().enumerate() {
            let sdir = dir.path().join(name);
            std::fs::create_dir_all(&sdir).unwrap();
            let log = sdir.join("requests.jsonl");
            let emulator = Emulator::launch_logged(
                EmulatorOptions {
                    conductor: super::client::Creds::new(CONDUCTOR.0, CONDUCTOR.1),
                    idle_timeout_secs: None,
                    storage_dir: None,
                },
                Some(&log),
            )
            .expect("emulator starts");
            let upstream = if wiring.server_proxy == Some(i) {
                let p = FaultProxy::start(emulator.addr()).await;
                let a = p.addr();
                server_proxy = Some(p);
                Some(a)
            } else {
                None
            };
            let url = if wiring.broker_relay == Some(i) {
                let target = ([127, 0, 0, 1], broker.ports().amqps).into();
                let r = Relay::start(target).await;
                let url = format!("amqps://localhost:{}", r.addr().port());
                broker_relay = Some(r);
                url
            } else {
                broker.amqps_url()
            };
            let wrapper = match [&wiring.wrapper, &wiring.wrapper2]
                .into_iter()
                .flatten()
                .find(|(w, _)| *w == i)
            {
                Some((_, cmd)) => cmd
                    .iter()
                    .map(|a| a.replace("{dir}", &sdir.display().to_string()))
                    .collect(),
                None => Vec::new(),
            };
            let proxy_extra = if wiring.learn {
                format!(
                    "upstream_storage_dir = \"{}\"",
                    emulator.storage_dir().display()
                )
            } else {
                String::new()
            };
            sites.push(Site::launch_wrapped(
                name,
                &site::mtls(&url, certs, name),
                &sdir,
                emulator,
                upstream,
                &proxy_extra,
                &wrapper,
            ));
            logs.push(log);
        }
        let targets = Targets::of(&sites);
        let mut second = Vec::new();
        if let Some(i) = wiring.second_consumer {
            let (from, to) = (
                sites[i].dir.clone(),
                dir.path().join(format!("{}-2", names[i])),
            );
            std::fs::create_dir_all(&to).unwrap();
            let config = std::fs::read_to_string(from.join("config.toml"))
                .unwrap()
                .replace(
                    &from.join("state").display().to_string(),
                    &to.join("state").display().to_string(),
                );
            second.push(super::sidecar::Sidecar::start(&to, &config));
        }
        Federation {
            second,
            sites,
            names,
            logs,
            targets,
            server_proxy,
            broker_relay,
            dir: Some(dir),
        }
    }

    /// Keeps the sites' folders (logs, request logs, state) after the test, for a post-mortem.
    pub fn keep(&mut self) -> Option<PathBuf> {
        self.dir.take().map(|d| d.keep())
    }

    /// SIGKILL site `i`'s sidecar and start it again on its state; guests follow it.
    pub fn kill_and_restart(&mut self, i: usize) {
        self.sites[i].kill_and_restart_sidecar();
        self.targets.update(i, self.sites[i].sidecar.proxy);
    }

    /// SIGKILL site `i`'s sidecar, remove its state directory (a pod rescheduled without its
    /// volume; the server keeps its data) and start it again; guests follow it.
    pub fn wipe_and_restart(&mut self, i: usize) {
        let site = &mut self.sites[i];
        site.sidecar.kill();
        std::fs::remove_dir_all(site.dir.join("state")).expect("remove the state directory");
        site.sidecar = super::sidecar::Sidecar::start_with(&site.dir, site.sidecar.config_path());
        self.targets.update(i, site.sidecar.proxy);
    }
}

/// What one site's server applied, from its request log, in order.
#[derive(Debug, Default)]
struct Applied {
    registrations: HashMap<String, u64>,
    reports: HashMap<String, Vec<u64>>,
    deletions: HashMap<String, u64>,
    /// Every (name, value) a `PUT /params` of each instance set here.
    held: HashMap<String, HashSet<(String, String)>>,
    /// Per (instance, name, value): the position in this server's log of the last
    /// `PUT /params` that set it (the order this server applied values in).
    rank: HashMap<(String, String, String), usize>,
    /// Every position at which the server applied `(instance, name, value)`, in order (a
    /// value may be applied again later: a guest reporting it twice).
    positions: HashMap<(String, String, String), Vec<usize>>,
    total: u64,
}

fn read_log(path: &PathBuf) -> Applied {
    let mut a = Applied::default();
    let text = std::fs::read_to_string(path).unwrap_or_default();
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue; // a line being written
        };
        let path = v["path"].as_str().unwrap_or("");
        let segs: Vec<&str> = path.split('/').collect();
        let Some(last) = segs.last().map(|s| s.to_string()) else {
            continue;
        };
        a.total += 1;
        match (v["method"].as_str(), segs.get(1).copied()) {
            (Some("POST"), Some("configs")) => *a.registrations.entry(last).or_default() += 1,
            (Some("DELETE"), Some("deployment")) => *a.deletions.entry(last).or_default() += 1,
            (Some("PUT"), Some("params")) => {
                let held = a.held.entry(last.clone()).or_default();
                for p in v["values"].as_array().into_iter().flatten() {
                    if let (Some(k), Some(val)) = (p[0].as_str(), p[1].as_str()) {
                        held.insert((k.to_owned(), val.to_owned()));
                        a.rank.insert(
                            (last.clone(), k.to_owned(), val.to_owned()),
                            a.total as usize,
                        );
                        a.positions
                            .entry((last.clone(), k.to_owned(), val.to_owned()))
                            .or_default()
                            .push(a.total as usize);
                    }
                }
                let n = v["values"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|p| p[0] == "n")
                    .and_then(|p| p[1].as_str())
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0);
                a.reports.entry(last).or_default().push(n);
            }
            _ => {}
        }
    }
    a
}

/// What a server holds for an instance (its provided names with a value), from its
/// storage; `None` when the instance is unknown there.
fn read_state(storage: &Path, uuid: &str) -> Option<BTreeMap<String, String>> {
    let path = storage.join("instances").join(uuid).join("state.json");
    let state: serde_json::Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    Some(
        state["provided"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| Some((p[0].as_str()?.to_owned(), p[1].as_str()?.to_owned())))
            .collect(),
    )
}

/// Every instance a server holds, with its values.
fn read_states(storage: &Path) -> HashMap<String, BTreeMap<String, String>> {
    let Ok(dir) = std::fs::read_dir(storage.join("instances")) else {
        return HashMap::new();
    };
    dir.flatten()
        .filter_map(|e| {
            let uuid = e.file_name().to_str()?.to_owned();
            let state = read_state(storage, &uuid)?;
            Some((uuid, state))
        })
        .collect()
}

/// What every site's server held during the run, read every [`Sampler::EVERY`]: per site,
/// instance and name, the values in the order they were seen (repeats folded).
pub struct Sampler {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Seen>,
}

type Seen = HashMap<(usize, String, String), Vec<String>>;

impl Sampler {
    /// How often the servers' storage is read.
    const EVERY: Duration = Duration::from_millis(200);

    pub fn start(fed: &Federation) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let storages: Vec<PathBuf> = fed
            .sites
            .iter()
            .map(|s| s.emulator.storage_dir().to_owned())
            .collect();
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let mut seen = Seen::new();
            // Bounded: the workload and convergence are bounded well below an hour.
            for _ in 0..(3_600_000 / Self::EVERY.as_millis() as u64) {
                if flag.load(Ordering::SeqCst) {
                    break;
                }
                for (s, storage) in storages.iter().enumerate() {
                    let storage = storage.clone();
                    let states = tokio::task::spawn_blocking(move || read_states(&storage))
                        .await
                        .unwrap_or_default();
                    for (uuid, values) in states {
                        for (name, value) in values {
                            let seq = seen.entry((s, uuid.clone(), name)).or_default();
                            if seq.last() != Some(&value) {
                                seq.push(value);
                            }
                        }
                    }
                }
                tokio::time::sleep(Self::EVERY).await;
            }
            seen
        });
        Sampler { stop, task }
    }

    /// Stops sampling and counts, at each site other than an instance's origin, each time its
    /// server went from a value to one its origin's server had applied before that value
    /// (`origin_of`: an instance's origin site; `logs`: each server's request log).
    async fn backwards(
        self,
        origin_of: &HashMap<String, usize>,
        logs: &[Applied],
        names: &[String],
    ) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        let seen = self.task.await.unwrap_or_default();
        let (mut n, mut problems) = (0u64, Vec::new());
        for ((s, uuid, name), values) in &seen {
            let Some(&o) = origin_of.get(uuid) else {
                continue;
            };
            if o == *s {
                continue; // the origin's order is the order
            }
            // Follow the origin's log: each value seen must have been applied by the origin
            // at or after the position of the value seen before it.
            let positions = |v: &String| {
                logs[o]
                    .positions
                    .get(&(uuid.clone(), name.clone(), v.clone()))
            };
            let mut cursor: Option<usize> = None;
            for (i, v) in values.iter().enumerate() {
                let Some(at) = positions(v) else { continue };
                let next = at.iter().copied().find(|&p| cursor.is_none_or(|c| p >= c));
                match next {
                    Some(p) => cursor = Some(p),
                    None => {
                        n += 1;
                        problems.push(format!(
                            "{}: {uuid} {name} moved back from {:?} to {v:?} (sampled)",
                            names[*s],
                            values[i.saturating_sub(1)]
                        ));
                        cursor = at.last().copied();
                    }
                }
            }
        }
        (n, problems)
    }
}

/// The checker's verdict.
#[derive(Debug, Clone, Default)]
pub struct Verdict {
    pub issued: u64,
    pub acked: u64,
    /// Changes applied at all sites' servers (each site counts).
    pub applied: u64,
    /// Acknowledged changes missing at some site (counted per site).
    pub lost: u64,
    /// Changes applied more than once at a site (counted per extra application).
    pub duplicated: u64,
    /// The same change applied again right after itself at a site (the server applied it but
    /// its answer was lost, so the sender re-sent it): no observable effect, since a params
    /// report sets the same values again. Counted, not a failure.
    pub reapplied: u64,
    /// Registrations refused with 503 twice, whose third POST the server answered 500: at
    /// their home server only (a server quirk the sidecar cannot undo). Counted, not checked.
    pub abandoned: u64,
    /// Times an instance's value moved back to an older one at a site.
    pub backwards: u64,
    /// Effects at another site of a request its origin's server never applied.
    pub phantom: u64,
    /// What is wrong, for the failure message (the first few).
    pub problems: Vec<String>,
    pub converge_secs: f64,
}

impl Verdict {
    pub fn clean(&self) -> bool {
        self.lost == 0
            && self.duplicated == 0
            && self.backwards == 0
            && self.phantom == 0
            && self.problems.is_empty()
    }

    fn problem(&mut self, p: String) {
        if self.problems.len() < 20 {
            self.problems.push(p);
        } else if self.problems.len() == 20 {
            self.problems.push("…".into());
        }
    }

    /// The one-line summary of a schedule.
    pub fn summary(&self, schedule: &str, knobs: &Knobs, total: Duration) -> String {
        format!(
            "reliability schedule={schedule} seed={} scale={} issued={} acked={} applied={} \
             lost={} duplicated={} reapplied={} abandoned={} backwards={} phantom={} converged_in={:.1}s \
             total={:.1}s",
            knobs.seed,
            knobs.scale,
            self.issued,
            self.acked,
            self.applied,
            self.lost,
            self.duplicated,
            self.reapplied,
            self.abandoned,
            self.backwards,
            self.phantom,
            self.converge_secs,
            total.as_secs_f64()
        )
    }
}

/// Compares the history with what every site's server applied and holds now.
fn judge(fed: &Federation, h: &History) -> Verdict {
    let applied: Vec<Applied> = fed.logs.iter().map(read_log).collect();
    let states: Vec<HashMap<String, BTreeMap<String, String>>> = fed
        .sites
        .iter()
        .map(|s| read_states(s.emulator.storage_dir()))
        .collect();
    let mut v = Verdict {
        issued: h.issued(),
        acked: h.acked(),
        applied: applied.iter().map(|a| a.total).sum(),
        abandoned: h.abandoned.len() as u64,
        ..Verdict::default()
    };
    if h.gave_up > 0 {
        v.problem(format!(
            "{} operations never got a 2xx answer: {:?}",
            h.gave_up, h.gave_up_ops
        ));
    }
    let empty = HashSet::new();
    for x in &h.instances {
        let uuid = &x.xml.uuid;
        if !x.registrations.iter().any(|a| a.ok()) {
            continue;
        }
        let dep = &h.deployments[x.deployment];
        let origin = states[x.home].get(uuid);
        let ever_held = applied[x.home].held.get(uuid).unwrap_or(&empty);
        for (s, at) in applied.iter().enumerate() {
            let name = &fed.names[s];
            let home = s == x.home;
            let deleted = if home {
                dep.deleted()
            } else {
                dep.acked_deleted()
            };
            // Registrations: the origin's server got one per attempt that reached it; every
            // other site's at most as many (a re-registration is replayed to every site, once).
            let regs = at.registrations.get(uuid).copied().unwrap_or(0);
            let most = x.registrations.len() as u64;
            if regs == 0 {
                v.lost += 1;
                v.problem(format!("{name}: registration of {uuid} never applied"));
            } else if regs > most {
                v.duplicated += regs - most;
                v.problem(format!(
                    "{name}: registration of {uuid} applied {regs} times"
                ));
            }
            // Duplicates, from the server's own log of what it applied: a report (unique tag
            // `n`) applied twice other than back to back.
            let mut ns = at.reports.get(uuid).cloned().unwrap_or_default();
            if !home {
                // At the origin every attempt has its own tag: a repeat there is a duplicate.
                let before = ns.len();
                ns.dedup();
                v.reapplied += (before - ns.len()) as u64;
            }
            let mut counts: BTreeMap<u64, u64> = BTreeMap::new();
            for n in &ns {
                *counts.entry(*n).or_default() += 1;
            }
            for (n, c) in &counts {
                if *c > 1 {
                    v.duplicated += c - 1;
                    v.problem(format!("{name}: {uuid} report n={n} applied {c} times"));
                }
            }
            // The servers' final state.
            let held = states[s].get(uuid);
            match (held, deleted) {
                (Some(_), true) => v.problem(format!(
                    "{name}: {uuid} still known after its deployment was deleted"
                )),
                (None, false) => v.problem(format!("{name}: {uuid} unknown")),
                _ => {}
            }
            if home || deleted {
                continue;
            }
            let held = held.cloned().unwrap_or_default();
            for (k, want) in origin.into_iter().flatten() {
                let got = held.get(k);
                if got == Some(want) {
                    continue;
                }
                v.lost += 1;
                v.problem(format!(
                    "{name}: {uuid} {k} is {got:?}, its origin's server holds {want:?}"
                ));
                let rank = |val: &String| {
                    applied[x.home]
                        .rank
                        .get(&(uuid.clone(), k.clone(), val.clone()))
                };
                if let (Some(g), Some(w)) = (got.and_then(rank), rank(want)) {
                    if g < w {
                        v.backwards += 1;
                    }
                }
            }
            for (k, val) in &held {
                if !ever_held.contains(&(k.clone(), val.clone())) {
                    v.phantom += 1;
                    v.problem(format!(
                        "{name}: {uuid} {k}={val:?}, never held at its origin's server"
                    ));
                }
            }
        }
    }
    for d in &h.deployments {
        let Some(home) = d.home else { continue };
        if d.deletions.is_empty() {
            continue;
        }
        for (s, at) in applied.iter().enumerate() {
            let c = at.deletions.get(&d.id).copied().unwrap_or(0);
            let most = if s == home {
                d.deletions.len() as u64
            } else {
                1
            };
            if c > most {
                v.duplicated += c - most;
                v.problem(format!(
                    "{}: deletion of {} applied {c} times",
                    fed.names[s], d.id
                ));
            }
            if d.acked_deleted() && c == 0 && s != home {
                v.lost += 1;
                v.problem(format!(
                    "{}: deletion of {} never applied",
                    fed.names[s], d.id
                ));
            }
        }
    }
    v
}

/// Waits (at most [`CONVERGE_LIMIT`]) for a clean verdict, adds what `sampler` saw going
/// backwards during the run, then stops every sidecar (SIGTERM must exit 0). Nothing here
/// reads a sidecar's own state or counters.
pub async fn verify(fed: &mut Federation, h: &History, sampler: Sampler) -> Verdict {
    let start = Instant::now();
    let mut v = judge(fed, h);
    while !v.clean() && start.elapsed() < CONVERGE_LIMIT {
        tokio::time::sleep(Duration::from_millis(250)).await;
        v = judge(fed, h);
    }
    v.converge_secs = start.elapsed().as_secs_f64();
    let origin_of: HashMap<String, usize> = h
        .instances
        .iter()
        .map(|x| (x.xml.uuid.clone(), x.home))
        .collect();
    let logs: Vec<Applied> = fed.logs.iter().map(read_log).collect();
    let (backwards, problems) = sampler.backwards(&origin_of, &logs, &fed.names).await;
    v.backwards += backwards;
    for p in problems {
        v.problem(p);
    }
    for s in fed.sites.iter_mut() {
        let status = tokio::task::block_in_place(|| s.sidecar.terminate());
        if !status.success() {
            v.problem(format!("{}: SIGTERM exit {status:?}", s.name));
        }
    }
    for s in fed.second.iter_mut() {
        let status = tokio::task::block_in_place(|| s.terminate());
        if !status.success() {
            v.problem(format!("second consumer: SIGTERM exit {status:?}"));
        }
    }
    v
}
