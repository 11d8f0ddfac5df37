//! The convergence checker: N federated sites (emulated server + sidecar each, emulators
//! writing `--request-log`) over a real broker, and the verdict on a [`History`] once the
//! workload is done: at every site every registered instance is known, every last reported
//! value is there, each instance's values were applied in order (never backwards), every
//! acknowledged change was applied exactly once (none lost, none twice), nothing came back
//! to its origin (the durable replay state, read once each sidecar is stopped).
//!
//! Owns the federation's construction (optionally with an HTTP fault proxy before one site's
//! server, a TCP relay between one site and the broker, or a wrapper command around one
//! site's sidecar), reading the request logs and the servers' storage, and the one-line
//! summary. It must not generate the workload (`workload.rs`) nor choose faults (the tests).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
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
}

/// N running sites and what stands between them.
pub struct Federation {
    pub sites: Vec<Site>,
    pub names: Vec<String>,
    pub logs: Vec<PathBuf>,
    pub targets: Targets,
    pub server_proxy: Option<FaultProxy>,
    pub broker_relay: Option<Relay>,
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
            sites.push(Site::launch_wrapped(
                name,
                &site::mtls(&url, certs, name),
                &sdir,
                emulator,
                upstream,
                "",
                &wrapper,
            ));
            logs.push(log);
        }
        let targets = Targets::of(&sites);
        Federation {
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
}

/// What one site's server applied, from its request log, in order.
#[derive(Debug, Default)]
struct Applied {
    registrations: HashMap<String, u64>,
    reports: HashMap<String, Vec<u64>>,
    deletions: HashMap<String, u64>,
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

/// The `n` an instance's server state holds, `None` when the instance is unknown there.
fn stored_n(emulator: &Emulator, uuid: &str) -> Option<Option<u64>> {
    let path = emulator
        .storage_dir()
        .join("instances")
        .join(uuid)
        .join("state.json");
    let state: serde_json::Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    Some(
        state["provided"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p[0] == "n")
            .and_then(|p| p[1].as_str())
            .and_then(|n| n.parse().ok()),
    )
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
    for x in &h.instances {
        let uuid = &x.xml.uuid;
        if !x.registrations.iter().any(|a| a.ok()) {
            continue;
        }
        let dep = &h.deployments[x.deployment];
        let acked: Vec<u64> = x.reports.iter().filter(|a| a.ok()).map(|a| a.n).collect();
        let home_ns = applied[x.home]
            .reports
            .get(uuid)
            .cloned()
            .unwrap_or_default();
        for (s, at) in applied.iter().enumerate() {
            let name = &fed.names[s];
            let home = s == x.home;
            let deleted = if home {
                dep.deleted()
            } else {
                dep.acked_deleted()
            };
            // Registrations: the origin's server got one per attempt that reached it; every
            // other site's exactly one (a registration is replayed only when unknown).
            let regs = at.registrations.get(uuid).copied().unwrap_or(0);
            let most = if home {
                x.registrations.len() as u64
            } else {
                1
            };
            if regs == 0 {
                v.lost += 1;
                v.problem(format!("{name}: registration of {uuid} never applied"));
            } else if regs > most {
                v.duplicated += regs - most;
                v.problem(format!(
                    "{name}: registration of {uuid} applied {regs} times"
                ));
            }
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
                if !home && !home_ns.contains(n) {
                    v.phantom += 1;
                    v.problem(format!("{name}: {uuid} n={n} applied, never at its origin"));
                }
            }
            for w in ns.windows(2) {
                if w[1] < w[0] {
                    v.backwards += 1;
                    v.problem(format!(
                        "{name}: {uuid} moved back from n={} to n={}",
                        w[0], w[1]
                    ));
                }
            }
            for n in &acked {
                if !counts.contains_key(n) {
                    v.lost += 1;
                    v.problem(format!("{name}: {uuid} acknowledged report n={n} missing"));
                }
            }
            match (stored_n(&fed.sites[s].emulator, uuid), deleted) {
                (Some(_), true) => v.problem(format!(
                    "{name}: {uuid} still known after its deployment was deleted"
                )),
                (None, false) => v.problem(format!("{name}: {uuid} unknown")),
                (Some(held), false) => {
                    if let Some(last) = acked.last() {
                        if held != Some(*last) {
                            v.problem(format!("{name}: {uuid} holds n={held:?}, last is {last}"));
                        }
                    }
                }
                (None, true) => {}
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

/// Waits (at most [`CONVERGE_LIMIT`]) for a clean verdict, then stops every sidecar and
/// checks the durable replay state: nothing of a site's own applied there (no echo), and
/// per origin every change applied once (`applied == max_origin_seq`), the same everywhere.
pub async fn verify(fed: &mut Federation, h: &History) -> Verdict {
    let start = Instant::now();
    let mut v = judge(fed, h);
    while !v.clean() && start.elapsed() < CONVERGE_LIMIT {
        tokio::time::sleep(Duration::from_millis(250)).await;
        v = judge(fed, h);
    }
    v.converge_secs = start.elapsed().as_secs_f64();
    let names: Vec<&str> = fed.names.iter().map(String::as_str).collect();
    let mut states = Vec::new();
    for s in fed.sites.iter_mut() {
        states.push(s.stop_and_read_origins(&names).await);
    }
    for (o, origin) in names.iter().enumerate() {
        let mut seen = None;
        for (s, per_origin) in states.iter().enumerate() {
            match (&per_origin[o], s == o) {
                (Some(st), true) => {
                    v.duplicated += st.applied;
                    v.problem(format!(
                        "{origin} applied {} of its own changes",
                        st.applied
                    ));
                }
                (Some(st), false) => {
                    if st.applied != st.max_origin_seq {
                        v.problem(format!(
                            "{}: from {origin} applied {} of {} changes",
                            names[s], st.applied, st.max_origin_seq
                        ));
                    }
                    if *seen.get_or_insert(st.max_origin_seq) != st.max_origin_seq {
                        v.problem(format!("{}: last change from {origin} differs", names[s]));
                    }
                }
                (None, _) => {}
            }
        }
    }
    v
}
