//! One broker per site, joined by RabbitMQ's stock exchange federation: which links each test
//! topology has (a downstream broker pulls from an upstream one, with a hop limit), the
//! definitions that set them up at boot, and a per-binary fixture of three such nodes.
//!
//! Each topology gets its own topic exchange `audrey.<topology>` and, per member site, a
//! durable queue `audrey.<topology>.<site>` bound to it, so the topologies live side by side on
//! the same three nodes without seeing each other's messages. A link is a `federation-upstream`
//! parameter (AMQPS 0-9-1 with mutual TLS and SASL EXTERNAL: the downstream node presents
//! the client certificate `broker-<x>`, a user on the upstream node), gathered per topology into
//! a `federation-upstream-set` that a policy applies to the exchange. Links the tests cut go
//! through a [`Relay`]. It must not run code inside a broker nor set anything the bundled
//! `rabbitmq_federation` plugin does not offer: an operator could load these definitions as
//! they are.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::Path;
use std::sync::OnceLock;

use serde_json::{json, Value};

use super::broker::{Broker, BrokerOptions, LayoutExtras, Ports, BINDING_KEY};
use super::broker_layout::pick_ports;
use super::certs::{self, CertPaths};
use super::relay::Relay;
use super::site::{self, Site};

/// Site `i` runs beside broker `i`.
pub const SITES: [&str; 3] = ["site-a", "site-b", "site-c"];
/// The client certificate (CN, hence broker user) each broker federates with.
pub const BROKER_CNS: [&str; 3] = ["broker-a", "broker-b", "broker-c"];
/// Seconds a federation link waits before reconnecting (the plugin's default is 5).
pub const RECONNECT_DELAY: u32 = 1;
// Every upstream also sets `resource-cleanup-mode: never`: by default a link that shuts down
// normally (its broker stopping included) deletes its queue on the upstream broker, and what
// is published there until it is back is lost to it (seen on 3.10.8 as a flaky stop test).

/// Broker `down` consumes from broker `up` what is published to the topology's exchange there,
/// forwarding messages that crossed fewer than `max_hops` links so far.
#[derive(Debug, Clone, Copy)]
pub struct Link {
    pub down: usize,
    pub up: usize,
    pub max_hops: u32,
    /// Through a relay the test can cut (see [`Federation::relay`]).
    pub relayed: bool,
}

/// A named set of sites (by broker index) and the federation links between their brokers.
#[derive(Debug, Clone)]
pub struct Topology {
    pub name: &'static str,
    pub members: Vec<usize>,
    pub links: Vec<Link>,
}

fn link(down: usize, up: usize, max_hops: u32) -> Link {
    Link {
        down,
        up,
        max_hops,
        relayed: false,
    }
}

/// Two sites, each broker pulling from the other: one hop.
pub fn pair() -> Topology {
    Topology {
        name: "pair",
        members: vec![0, 1],
        links: vec![link(1, 0, 1), link(0, 1, 1)],
    }
}

/// Hub `site-b`, spokes `site-a` and `site-c`: spoke to spoke is two hops, so the spokes'
/// links from the hub allow two; the hub's links from the spokes need one.
pub fn hub() -> Topology {
    Topology {
        name: "hub",
        members: vec![0, 1, 2],
        links: vec![link(1, 0, 1), link(1, 2, 1), link(0, 1, 2), link(2, 1, 2)],
    }
}

/// Every broker pulls from every other one, one hop: a message is never passed on.
pub fn mesh() -> Topology {
    let mut links = Vec::new();
    for down in 0..3 {
        for up in (0..3).filter(|&u| u != down) {
            links.push(link(down, up, 1));
        }
    }
    Topology {
        name: "mesh",
        members: vec![0, 1, 2],
        links,
    }
}

/// Messages flow a → b → c → a; each reaches the two other sites in at most two hops
/// (sites - 1), and the third hop, home, is not taken.
pub fn ring() -> Topology {
    Topology {
        name: "ring",
        members: vec![0, 1, 2],
        links: vec![link(1, 0, 2), link(2, 1, 2), link(0, 2, 2)],
    }
}

/// A pair whose two links (one per direction) go through relays, for the link-cut test.
pub fn cut() -> Topology {
    let relayed = |down, up| Link {
        relayed: true,
        ..link(down, up, 1)
    };
    Topology {
        name: "cut",
        members: vec![0, 1],
        links: vec![relayed(1, 0), relayed(0, 1)],
    }
}

/// Sites b and c pulling from each other directly, for the test that stops broker c.
pub fn stop() -> Topology {
    Topology {
        name: "stop",
        members: vec![1, 2],
        links: vec![link(2, 1, 1), link(1, 2, 1)],
    }
}

/// Every topology the fixture sets up.
pub fn all() -> Vec<Topology> {
    vec![pair(), hub(), mesh(), ring(), cut(), stop()]
}

impl Topology {
    /// The topic exchange the sites of this topology publish to.
    pub fn exchange(&self) -> String {
        format!("audrey.{}", self.name)
    }

    /// The durable queue of `site` (on its own broker).
    pub fn queue(&self, site: usize) -> String {
        format!("audrey.{}.{}", self.name, SITES[site])
    }

    fn upstream_name(&self, up: usize) -> String {
        format!("{}-from-{}", self.name, BROKER_CNS[up])
    }

    /// The `[amqp]` lines that point a site at this topology's exchange and its own queue.
    pub fn amqp_lines(&self, site: usize) -> String {
        format!(
            "publish_address = \"/exchange/{}\"\nsubscribe_address = \"/amq/queue/{}\"\n",
            self.exchange(),
            self.queue(site)
        )
    }

    /// What broker `me` needs for this topology: the exchange and site queue if `me` is a
    /// member, and its links from upstream brokers (parameters, upstream set, policy).
    fn definitions(
        &self,
        me: usize,
        upstream_port: &dyn Fn(&Link) -> u16,
        certs: &CertPaths,
    ) -> Value {
        let mut defs = json!({"exchanges": [], "queues": [], "bindings": [], "parameters": [], "policies": []});
        if !self.members.contains(&me) {
            return defs;
        }
        let exchange = self.exchange();
        let queue = self.queue(me);
        defs["exchanges"] = json!([{"name": exchange, "vhost": "/", "type": "topic",
            "durable": true, "auto_delete": false, "internal": false, "arguments": {}}]);
        defs["queues"] = json!([{"name": queue, "vhost": "/", "durable": true,
            "auto_delete": false, "arguments": {}}]);
        defs["bindings"] = json!([{"source": exchange, "vhost": "/", "destination": queue,
            "destination_type": "queue", "routing_key": BINDING_KEY, "arguments": {}}]);
        let mine: Vec<&Link> = self.links.iter().filter(|l| l.down == me).collect();
        if mine.is_empty() {
            return defs;
        }
        let mut params = Vec::new();
        let mut set = Vec::new();
        for l in mine {
            let name = self.upstream_name(l.up);
            params.push(
                json!({"vhost": "/", "component": "federation-upstream", "name": name,
                "value": {"uri": upstream_uri(upstream_port(l), certs, BROKER_CNS[me]),
                    "max-hops": l.max_hops, "reconnect-delay": RECONNECT_DELAY,
                    "ack-mode": "on-confirm", "resource-cleanup-mode": "never"}}),
            );
            set.push(json!({"upstream": name}));
        }
        params.push(json!({"vhost": "/", "component": "federation-upstream-set",
            "name": self.name, "value": set}));
        defs["parameters"] = Value::Array(params);
        defs["policies"] = json!([{"vhost": "/", "name": format!("federate-{}", self.name),
            "pattern": format!("^{}$", exchange.replace('.', "\\.")), "apply-to": "exchanges",
            "priority": 1, "definition": {"federation-upstream-set": self.name}}]);
        defs
    }
}

/// An upstream URI over AMQPS: verify the upstream's certificate (name `localhost`), present
/// the downstream broker's own client certificate `cn`, log in with SASL EXTERNAL.
pub fn upstream_uri(port: u16, certs: &CertPaths, cn: &str) -> String {
    format!(
        "amqps://localhost:{port}?cacertfile={ca}&certfile={cert}&keyfile={key}\
         &verify=verify_peer&server_name_indication=localhost&auth_mechanism=external",
        ca = certs.ca.display(),
        cert = certs.site_cert(cn).display(),
        key = certs.site_key(cn).display(),
    )
}

/// Everything broker `me` is created with beyond the default layout.
fn extras(
    me: usize,
    topologies: &[Topology],
    port: &dyn Fn(&Link) -> u16,
    certs: &CertPaths,
) -> LayoutExtras {
    let mut defs = json!({"users": [], "permissions": []});
    for cn in BROKER_CNS
        .iter()
        .enumerate()
        .filter(|(p, _)| *p != me)
        .map(|(_, cn)| cn)
    {
        defs["users"]
            .as_array_mut()
            .unwrap()
            .push(json!({"name": cn, "password_hash": "",
            "hashing_algorithm": "rabbit_password_hashing_sha256", "tags": ""}));
        defs["permissions"]
            .as_array_mut()
            .unwrap()
            .push(json!({"user": cn, "vhost": "/",
            "configure": ".*", "write": ".*", "read": ".*"}));
    }
    for t in topologies {
        super::broker_layout::merge_definitions(&mut defs, &t.definitions(me, port, certs));
    }
    LayoutExtras {
        plugins: vec!["rabbitmq_federation".into()],
        // Federation's loop detection records each node's cluster name in `x-received-from`.
        conf: format!("cluster_name = {}\n", BROKER_CNS[me]),
        definitions: Some(defs),
    }
}

/// Three federated brokers shared by a test binary, with relays on the links tests cut.
pub struct Federation {
    pub certs: CertPaths,
    brokers: Vec<tokio::sync::Mutex<Broker>>,
    urls: Vec<String>,
    relays: HashMap<(usize, usize), Relay>,
    /// Runs the relays, whatever test runtime uses them.
    _rt: tokio::runtime::Runtime,
}

impl Federation {
    /// `amqps://localhost:<port>` of broker `i` (where site `i` connects).
    pub fn amqps_url(&self, i: usize) -> String {
        self.urls[i].clone()
    }

    /// Broker `i`, to stop, restart or query it (take it only within a test's turn).
    pub async fn broker(&self, i: usize) -> tokio::sync::MutexGuard<'_, Broker> {
        self.brokers[i].lock().await
    }

    /// The relay carrying the relayed link of broker `down` from broker `up`.
    pub fn relay(&self, down: usize, up: usize) -> &Relay {
        self.relays
            .get(&(down, up))
            .unwrap_or_else(|| panic!("no relayed link {down} <- {up}"))
    }

    /// Starts site `i` of `topo` (sidecar + emulated server; state in `dir`), sending a
    /// heartbeat every `heartbeat` seconds.
    pub fn start_site(&self, topo: &Topology, i: usize, dir: &Path, heartbeat: f64) -> Site {
        let amqp = format!(
            "{}{}heartbeat_interval = {heartbeat}\n",
            site::mtls(&self.amqps_url(i), &self.certs, SITES[i]),
            topo.amqp_lines(i),
        );
        Site::launch(SITES[i], &amqp, dir, Site::emulator(), None, "")
    }
}

/// The per-binary fixture: three brokers booted together (about 10 s) with every topology of
/// [`all`] defined; the brokers' reapers end them when the binary exits.
pub fn shared() -> &'static Federation {
    static SHARED: OnceLock<Federation> = OnceLock::new();
    // On a thread of its own: the caller may be inside a test's runtime, the relays' is another.
    SHARED.get_or_init(|| {
        std::thread::spawn(boot)
            .join()
            .expect("federated brokers boot")
    })
}

fn boot() -> Federation {
    let mut names: Vec<&str> = SITES.to_vec();
    names.extend(BROKER_CNS);
    let certs = certs::generate(&names);
    let ports = distinct_ports();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("relay runtime");
    let topologies = all();
    let mut relays = HashMap::new();
    for l in topologies
        .iter()
        .flat_map(|t| t.links.iter())
        .filter(|l| l.relayed)
    {
        let target = ([127, 0, 0, 1], ports[l.up].amqps).into();
        relays.insert((l.down, l.up), rt.block_on(Relay::start(target)));
    }
    let port = |l: &Link| {
        if l.relayed {
            relays[&(l.down, l.up)].addr().port()
        } else {
            ports[l.up].amqps
        }
    };
    let extras: Vec<LayoutExtras> = (0..3)
        .map(|i| extras(i, &topologies, &port, &certs))
        .collect();
    let mut brokers: Vec<Broker> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..3)
            .map(|i| {
                let (certs, extras) = (&certs, &extras[i]);
                s.spawn(move || {
                    let sites = [SITES[i]];
                    Broker::start_with(
                        BrokerOptions {
                            sites: &sites,
                            certs,
                        },
                        ports[i],
                        extras,
                    )
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("broker boot"))
            .collect()
    });
    brokers[0].adopt_dir(&certs.dir);
    let urls = brokers.iter().map(Broker::amqps_url).collect();
    Federation {
        certs,
        brokers: brokers.into_iter().map(tokio::sync::Mutex::new).collect(),
        urls,
        relays,
        _rt: rt,
    }
}

/// Ports for three nodes, no port shared between them.
fn distinct_ports() -> [Ports; 3] {
    for _ in 0..50 {
        let p = [pick_ports(), pick_ports(), pick_ports()];
        let mut all: Vec<u16> = p
            .iter()
            .flat_map(|x| [x.amqp, x.amqps, x.dist, x.epmd, x.dist + 10000])
            .collect();
        all.sort_unstable();
        all.dedup();
        if all.len() == 15 {
            return p;
        }
    }
    panic!("no three distinct port sets")
}
