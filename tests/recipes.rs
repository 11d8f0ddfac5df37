//! Every recipe an operator copies is a file under `docs/recipes/`, and the documents show it
//! byte for byte: a fenced block right after a `<!-- recipe: docs/recipes/… -->` line must be
//! the file (`documents_show_the_recipes_as_they_are`). The RabbitMQ recipes (one
//! `rabbitmq.conf` and `enabled_plugins` for every broker, the definitions of one shared
//! broker, of a pair and of a hub with two spokes) and the sidecar's configuration are then loaded here as they are,
//! with real RabbitMQ nodes and real sidecars, the sidecars on their DEFAULT settings: the
//! sites converge, and a sidecar whose broker restarts is linked again within the bound its
//! default `reconnect_max` guarantees.
//!
//! The one change made to a recipe file is [`localize`]: the addresses and paths it names
//! (`broker-a.example.org:5671`, `/etc/rabbitmq/`, `/etc/audrey-federation/tls/`, the
//! listen addresses, …) become this machine's loopback ports and temporary folders, and, for
//! another site or broker than the one the recipe is written for, its name (what the
//! documents tell the operator to change).

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use support::broker::Broker;
use support::broker_layout::{pick_ports, Ports};
use support::certs::{self, CertPaths};
use support::scenario;
use support::sidecar::Sidecar;
use support::site::Site;

/// One boot of brokers at a time: each test starts several nodes and sidecars.
static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const RABBITMQ_CONF: &str = "docs/recipes/rabbitmq/rabbitmq.conf";
const ENABLED_PLUGINS: &str = "docs/recipes/rabbitmq/enabled_plugins";
const SIDECAR_TOML: &str = "docs/recipes/sidecar/site-b.toml";
/// docs/security.md's optional `[proxy.restrict]`.
const RESTRICT_TOML: &str = "docs/recipes/sidecar/restrict.toml";
/// A pair: each broker's definitions.
const PAIR: [&str; 2] = [
    "docs/recipes/rabbitmq/pair/broker-a.json",
    "docs/recipes/rabbitmq/pair/broker-b.json",
];
/// A hub (b) with two spokes (a, c).
const HUB: [&str; 3] = [
    "docs/recipes/rabbitmq/hub/broker-a.json",
    "docs/recipes/rabbitmq/hub/broker-b.json",
    "docs/recipes/rabbitmq/hub/broker-c.json",
];
/// One broker all sites share.
const SHARED: &str = "docs/recipes/rabbitmq/shared/broker.json";
/// The default `amqp.reconnect_max` the sidecar recipe leaves in place, and the margin for the
/// connect itself (TLS, open, session, attach: well under a second here; each step is bounded
/// by 10 s in `src/amqp/link.rs`).
const RECONNECT_MAX: Duration = Duration::from_secs(5);
const CONNECT_MARGIN: Duration = Duration::from_secs(10);

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Applies `(from, to)` replacements in order; each `from` must occur (a recipe that no
/// longer names an address the test replaces is a recipe the test no longer runs).
fn localize(text: &str, subs: &[(String, String)]) -> String {
    let mut out = text.to_owned();
    for (from, to) in subs {
        assert!(out.contains(from.as_str()), "{from:?} not in:\n{out}");
        out = out.replace(from.as_str(), to);
    }
    out
}

fn sub(from: impl Into<String>, to: impl Into<String>) -> (String, String) {
    (from.into(), to.into())
}

/// One fenced block a document marks as showing a recipe file.
#[derive(Debug)]
struct Shown {
    doc: String,
    line: usize,
    recipe: String,
    text: String,
}

/// Every `<!-- recipe: PATH -->` line of `text` and the fenced block right after it (its
/// lines without the marker's indentation), or an error naming what is malformed.
fn shown_recipes(doc: &str, text: &str) -> Result<Vec<Shown>, String> {
    let lines: Vec<&str> = text.lines().collect();
    let mut found = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let trimmed = lines[i].trim_start();
        let Some(rest) = trimmed.strip_prefix("<!-- recipe:") else {
            i += 1;
            continue;
        };
        let recipe = rest
            .strip_suffix("-->")
            .ok_or_else(|| format!("{doc}:{}: unterminated recipe marker", i + 1))?
            .trim()
            .to_owned();
        let indent = &lines[i][..lines[i].len() - trimmed.len()];
        let fence = lines
            .get(i + 1)
            .and_then(|l| l.strip_prefix(indent))
            .filter(|l| l.starts_with("```"))
            .ok_or_else(|| format!("{doc}:{}: no fenced block after the marker", i + 1))?;
        let _ = fence;
        let mut body = String::new();
        let mut j = i + 2;
        loop {
            let l = lines
                .get(j)
                .ok_or_else(|| format!("{doc}:{}: the block is not closed", i + 2))?;
            if l.trim_end() == format!("{indent}```") {
                break;
            }
            let l = if l.trim().is_empty() {
                ""
            } else {
                l.strip_prefix(indent)
                    .ok_or_else(|| format!("{doc}:{}: line less indented than its block", j + 1))?
            };
            body.push_str(l);
            body.push('\n');
            j += 1;
        }
        found.push(Shown {
            doc: doc.to_owned(),
            line: i + 1,
            recipe,
            text: body,
        });
        i = j + 1;
    }
    Ok(found)
}

/// The documents an operator reads: `README.md` and `docs/*.md`.
fn documents() -> Vec<(String, String)> {
    let mut docs = vec![("README.md".to_owned(), read("README.md"))];
    let mut names: Vec<String> = std::fs::read_dir(repo().join("docs"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".md"))
        .collect();
    names.sort();
    for n in names {
        let path = format!("docs/{n}");
        let text = read(&path);
        docs.push((path, text));
    }
    docs
}

/// Every file under `docs/recipes/`, relative to the repository.
fn recipe_files() -> Vec<String> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else {
                out.push(p);
            }
        }
    }
    let mut files = Vec::new();
    walk(&repo().join("docs/recipes"), &mut files);
    let mut rel: Vec<String> = files
        .iter()
        .map(|p| {
            p.strip_prefix(repo())
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    rel.sort();
    rel
}

/// What [`documents_show_the_recipes_as_they_are`] checks, as a list of mismatches.
fn recipe_mismatches(docs: &[(String, String)]) -> Vec<String> {
    let mut problems = Vec::new();
    let mut shown_files = Vec::new();
    for (doc, text) in docs {
        match shown_recipes(doc, text) {
            Err(e) => problems.push(e),
            Ok(shown) => {
                for s in shown {
                    match std::fs::read_to_string(repo().join(&s.recipe)) {
                        Err(e) => problems.push(format!(
                            "{}:{}: {} cannot be read: {e}",
                            s.doc, s.line, s.recipe
                        )),
                        Ok(file) if file != s.text => {
                            let at = file
                                .lines()
                                .zip(s.text.lines())
                                .position(|(a, b)| a != b)
                                .unwrap_or(file.lines().count().min(s.text.lines().count()));
                            problems.push(format!(
                                "{}:{}: the block differs from {} at its line {}:\n  file:     {:?}\n  document: {:?}",
                                s.doc,
                                s.line,
                                s.recipe,
                                at + 1,
                                file.lines().nth(at).unwrap_or("<end>"),
                                s.text.lines().nth(at).unwrap_or("<end>")
                            ))
                        }
                        Ok(_) => shown_files.push(s.recipe),
                    }
                }
            }
        }
    }
    // Every recipe is shown or at least named by a document, and loaded by a test.
    let tests: String = std::fs::read_dir(repo().join("tests"))
        .unwrap()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "rs"))
        .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
        .collect();
    for f in recipe_files() {
        if !shown_files.contains(&f) && !docs.iter().any(|(_, t)| t.contains(&f)) {
            problems.push(format!("{f}: no document shows or names it"));
        }
        if !tests.contains(&format!("\"{f}\"")) {
            problems.push(format!("{f}: no test under tests/ loads it"));
        }
    }
    problems
}

/// The documents' recipe blocks are the files the tests load, byte for byte.
#[test]
fn documents_show_the_recipes_as_they_are() {
    let docs = documents();
    let shown: usize = docs
        .iter()
        .map(|(d, t)| shown_recipes(d, t).map_or(0, |s| s.len()))
        .sum();
    assert!(shown >= 6, "only {shown} recipe blocks in the documents");
    let problems = recipe_mismatches(&docs);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The check itself catches a block that drifted by one line, and a malformed marker.
#[test]
fn a_changed_line_in_a_document_is_caught() {
    let mut docs = documents();
    let doc = "docs/topologies.md";
    let (_, text) = docs.iter_mut().find(|(d, _)| d == doc).unwrap();
    assert!(text.contains("auth_mechanisms.1 = EXTERNAL\n"));
    *text = text.replacen(
        "auth_mechanisms.1 = EXTERNAL\n",
        "auth_mechanisms.1 = PLAIN\n",
        1,
    );
    let problems = recipe_mismatches(&docs);
    assert!(
        problems.len() == 1
            && problems[0].contains(&format!("{doc}:"))
            && problems[0].contains("docs/recipes/rabbitmq/rabbitmq.conf")
            && problems[0].contains("auth_mechanisms.1 = PLAIN"),
        "{problems:?}"
    );
    let broken = "<!-- recipe: docs/recipes/x -->\nno fence\n";
    assert!(shown_recipes("d.md", broken).is_err());
    let indented = "1. Step:\n\n   <!-- recipe: r -->\n   ```sh\n   a b\n\n     c\n   ```\n";
    let s = shown_recipes("d.md", indented).unwrap();
    assert_eq!(s[0].text, "a b\n\n  c\n");
}

/// The sidecar recipe, with docs/security.md's `[proxy.restrict]` added as the page says, is a
/// configuration the binary accepts (`check` is not run on it: it would look up the
/// recipe's broker name, which is no loopback address).
#[test]
fn sidecar_recipes_are_valid_configurations() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(&path, read(SIDECAR_TOML) + "\n" + &read(RESTRICT_TOML)).unwrap();
    let cfg = audrey_federation::config::Config::load(&path).expect("the recipes parse");
    cfg.validate().expect("the recipes validate");
    assert_eq!(cfg.site, "site-b");
}

/// A broker of a recipe topology: its name (`broker-a`…), site and definitions file.
struct Node {
    broker: &'static str,
    site: &'static str,
    definitions: &'static str,
}

/// Distinct ports for `n` nodes.
fn ports(n: usize) -> Vec<Ports> {
    for _ in 0..50 {
        let p: Vec<Ports> = (0..n).map(|_| pick_ports()).collect();
        let mut all: Vec<u16> = p
            .iter()
            .flat_map(|x| [x.amqp, x.amqps, x.dist, x.epmd, x.dist + 10000])
            .collect();
        all.sort_unstable();
        all.dedup();
        if all.len() == 5 * n {
            return p;
        }
    }
    panic!("no distinct port sets")
}

/// The replacements turning the recipes' names for brokers into this machine's nodes.
fn broker_addresses(nodes: &[Node], ports: &[Ports]) -> Vec<(String, String)> {
    let mut subs = Vec::new();
    for (n, p) in nodes.iter().zip(ports) {
        subs.push(sub(
            format!("{}.example.org:5671", n.broker),
            format!("localhost:{}", p.amqps),
        ));
        subs.push(sub(format!("{}.example.org", n.broker), "localhost"));
    }
    subs
}

/// Boots every node from the recipe files (in parallel), each with its certificates laid
/// where `rabbitmq.conf` and the definitions name them.
fn boot(nodes: &[Node], certs: &CertPaths) -> (Vec<Broker>, Vec<Ports>) {
    let ports = ports(nodes.len());
    let conf = read(RABBITMQ_CONF);
    let plugins = read(ENABLED_PLUGINS);
    let brokers = std::thread::scope(|s| {
        let handles: Vec<_> = nodes
            .iter()
            .zip(&ports)
            .map(|(n, p)| {
                let defs = read(n.definitions);
                let (conf, plugins, nodes, ports) = (&conf, &plugins, nodes, &ports);
                s.spawn(move || {
                    Broker::start_recipe(*p, false, |etc| {
                        for (from, name) in [
                            (certs.ca.clone(), "ca.pem".to_owned()),
                            (certs.server_cert.clone(), "server.pem".to_owned()),
                            (certs.server_key.clone(), "server.key".to_owned()),
                            (
                                certs.site_cert(n.broker),
                                format!("{}-client.pem", n.broker),
                            ),
                            (certs.site_key(n.broker), format!("{}-client.key", n.broker)),
                        ] {
                            std::fs::copy(&from, etc.join(name)).unwrap();
                        }
                        let etc_dir = format!("{}/", etc.display());
                        let conf = localize(
                            conf,
                            &[
                                sub(
                                    "listeners.ssl.1 = 5671",
                                    format!("listeners.ssl.1 = 127.0.0.1:{}", p.amqps),
                                ),
                                sub(
                                    "cluster_name = broker-b",
                                    format!("cluster_name = {}", n.broker),
                                ),
                                sub("/etc/rabbitmq/", etc_dir.clone()),
                            ],
                        );
                        let mut subs = broker_addresses(nodes, ports);
                        subs.retain(|(from, _)| defs.contains(from.as_str()));
                        if defs.contains("/etc/rabbitmq/") {
                            subs.push(sub("/etc/rabbitmq/", etc_dir));
                        }
                        vec![
                            ("rabbitmq.conf".into(), conf),
                            ("enabled_plugins".into(), plugins.clone()),
                            ("definitions.json".into(), localize(&defs, &subs)),
                        ]
                    })
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("broker boot"))
            .collect()
    });
    (brokers, ports)
}

/// The sidecar recipe (written for site b) at `node`'s site, against its own broker.
fn start_site(node: &Node, port: &Ports, certs: &CertPaths, dir: &Path) -> Site {
    std::fs::create_dir_all(dir).unwrap();
    let secret = dir.join("conductor.secret");
    std::fs::write(&secret, support::site::CONDUCTOR.1).unwrap();
    let emulator = Site::emulator();
    let mut subs = vec![
        sub("127.0.0.1:8443", "127.0.0.1:0"),
        sub("127.0.0.1:9464", "127.0.0.1:0"),
        sub(
            "http://127.0.0.1:4567",
            format!("http://{}", emulator.addr()),
        ),
        sub(
            "\"/var/lib/audrey-federation\"",
            format!("\"{}\"", dir.join("state").display()),
        ),
        sub(
            "/etc/audrey-federation/conductor.secret",
            secret.display().to_string(),
        ),
        sub(
            "/etc/audrey-federation/tls/",
            format!("{}/", certs.dir.display()),
        ),
        sub(
            "amqps://broker-b.example.org:5671",
            format!("amqps://localhost:{}", port.amqps),
        ),
    ];
    if node.site != "site-b" {
        subs.insert(0, sub("site-b", node.site));
    }
    let toml = localize(&read(SIDECAR_TOML), &subs);
    assert!(
        !toml.contains("reconnect_initial =") && !toml.contains("\nreconnect_max ="),
        "the recipe runs on the default reconnect settings"
    );
    let sidecar = Sidecar::start(dir, &toml);
    Site {
        name: node.site.to_owned(),
        emulator,
        sidecar,
        dir: dir.to_owned(),
    }
}

/// Every site hears every other one's heartbeat (every federation path is up and bound).
async fn all_hear_each_other(sites: &[Site]) {
    for s in sites {
        for o in sites.iter().filter(|o| o.name != s.name) {
            let label = format!("origin_site=\"{}\"", o.name);
            s.metric_reaches(
                "audrey_federation_heartbeats_received_total",
                &[&label],
                1.0,
            )
            .await;
        }
    }
}

fn nodes(files: &[&'static str]) -> Vec<Node> {
    const NAMES: [(&str, &str); 3] = [
        ("broker-a", "site-a"),
        ("broker-b", "site-b"),
        ("broker-c", "site-c"),
    ];
    files
        .iter()
        .zip(NAMES)
        .map(|(d, (broker, site))| Node {
            broker,
            site,
            definitions: d,
        })
        .collect()
}

/// The sites of `files`' brokers converge: I1 at the first and I2 at the last resolve each
/// other, then a stream over several deployments; every change applied exactly once, no
/// duplicate. Before stopping them, `meanwhile` runs on the running sites and brokers and
/// says how many changes it made at each site.
async fn recipe_converges<F, Fut>(files: &[&'static str], meanwhile: F)
where
    F: FnOnce(Vec<Site>, Vec<Broker>) -> Fut,
    Fut: std::future::Future<Output = (Vec<Site>, Vec<Broker>, Vec<u64>)>,
{
    let nodes = nodes(files);
    let mut names: Vec<&str> = nodes.iter().map(|n| n.site).collect();
    names.extend(nodes.iter().map(|n| n.broker));
    let certs = certs::generate(&names);
    let (brokers, ports) = boot(&nodes, &certs);
    let dir = tempfile::tempdir().unwrap();
    let sites: Vec<Site> = nodes
        .iter()
        .zip(&ports)
        .map(|(n, p)| start_site(n, p, &certs, &dir.path().join(n.site)))
        .collect();
    let t0 = Instant::now();
    all_hear_each_other(&sites).await;
    let last = sites.len() - 1;
    let (i1, i2) = (scenario::i1(), scenario::i2());
    sites[0].register(&i1).await;
    sites[last].register(&i2).await;
    sites[0].report(&i1, "10.0.0.5").await;
    sites[last].report(&i2, "10.1.0.7").await;
    sites[last].sees(&i2, "10.0.0.5").await;
    sites[0].sees(&i1, "10.1.0.7").await;
    let mut captured = scenario::stream(&sites, 2 * sites.len(), 2).await;
    captured[0] += 2;
    captured[last] += 2;
    eprintln!(
        "recipe {}: {} changes converged at {} sites in {:?} (default sidecar settings)",
        files.join(" "),
        captured.iter().sum::<u64>(),
        sites.len(),
        t0.elapsed()
    );
    // Before any broker restarts: a redelivery after one is a duplicate, dropped by design.
    for site in &sites {
        assert_eq!(
            site.metric("audrey_federation_duplicate_total", &[]).await,
            0.0,
            "{}: a change arrived twice",
            site.name
        );
    }
    let (mut sites, _brokers, more) = meanwhile(sites, brokers).await;
    for (c, m) in captured.iter_mut().zip(more) {
        *c += m;
    }
    scenario::applied_exactly_once(&mut sites, &captured).await;
    drop(certs);
}

const LINK_UP: &str = "audrey_federation_broker_link_up";

/// Both links of `site` up (`want` = 1) or down (0), polled until `limit`.
async fn links_are(site: &Site, want: f64, limit: Duration) -> Result<Duration, String> {
    let t = Instant::now();
    loop {
        let publish = site.metric(LINK_UP, &["link=\"publish\""]).await;
        let subscribe = site.metric(LINK_UP, &["link=\"subscribe\""]).await;
        if publish == want && subscribe == want {
            return Ok(t.elapsed());
        }
        if t.elapsed() > limit {
            return Err(format!(
                "{}: links publish={publish} subscribe={subscribe} after {limit:?}",
                site.name
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The pair's recipe converges; then broker b restarts after an outage long enough for
/// sidecar b's backoff to reach its cap, and sidecar b, on the default settings, is linked
/// again within `reconnect_max` plus the connect; a change made at b meanwhile reaches a.
#[tokio::test(flavor = "multi_thread")]
async fn pair_recipe_converges_and_relinks_within_the_default_bound() {
    let _turn = TURN.lock().await;
    recipe_converges(&PAIR, |sites, mut brokers| async move {
        let (a, b) = (&sites[0], &sites[1]);
        let x = support::client::InstanceXml::new("X", "DX", "sx").provides("ipaddress");
        b.register(&x).await;
        let y = support::client::InstanceXml::new("Y", "DX", "sy").service(
            support::client::ServiceXml::new("svc").reference("peer_ip", &x.uuid, "ipaddress"),
        );
        a.register(&y).await;
        brokers[1].stop();
        links_are(b, 0.0, Duration::from_secs(30)).await.unwrap();
        // Long enough for the backoff's ceiling to reach the cap: 0.2 s doubled 5 times.
        let failures = "audrey_federation_broker_connect_failures_total";
        let before = b.metric(failures, &["link=\"publish\""]).await;
        let outage = Instant::now();
        while b.metric(failures, &["link=\"publish\""]).await < before + 7.0 {
            assert!(
                outage.elapsed() < Duration::from_secs(120),
                "no reconnect attempts"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        b.report(&x, "10.9.9.9").await;
        let down_for = outage.elapsed();
        brokers[1].start_again();
        // The broker accepts AMQPS again; from now on the bound runs.
        let bound = RECONNECT_MAX + CONNECT_MARGIN;
        let relinked = links_are(b, 1.0, bound).await.unwrap_or_else(|e| {
            panic!("not linked again within reconnect_max + {CONNECT_MARGIN:?}: {e}")
        });
        let t = Instant::now();
        a.sees(&y, "10.9.9.9").await;
        eprintln!(
            "broker b restarted after {down_for:?} down: sidecar b linked again {relinked:?} after \
             the broker accepted AMQPS (default reconnect_initial 0.2 s, reconnect_max 5 s), \
             the change made meanwhile applied at a {:?} later",
            t.elapsed()
        );
        (sites, brokers, vec![1, 2])
    })
    .await;
}

/// The hub's recipe (b the hub; a and c spokes, two hops between them) converges.
#[tokio::test(flavor = "multi_thread")]
async fn hub_recipe_converges() {
    let _turn = TURN.lock().await;
    recipe_converges(&HUB, |sites, brokers| async move {
        (sites, brokers, vec![0, 0, 0])
    })
    .await;
}

/// One shared broker from the recipe (its `rabbitmq.conf`, `enabled_plugins` and
/// definitions), the sidecar recipe at sites a and b both pointed at it: they converge.
#[tokio::test(flavor = "multi_thread")]
async fn shared_broker_recipe_converges() {
    let _turn = TURN.lock().await;
    let node = Node {
        broker: "broker-b",
        site: "site-b",
        definitions: SHARED,
    };
    let certs = certs::generate(&["site-a", "site-b", "broker-b"]);
    let (_brokers, ports) = boot(std::slice::from_ref(&node), &certs);
    let dir = tempfile::tempdir().unwrap();
    let site_a = Node {
        site: "site-a",
        ..node
    };
    let mut sites = vec![
        start_site(&site_a, &ports[0], &certs, &dir.path().join("site-a")),
        start_site(&node, &ports[0], &certs, &dir.path().join("site-b")),
    ];
    all_hear_each_other(&sites).await;
    let (i1, i2) = (scenario::i1(), scenario::i2());
    sites[0].register(&i1).await;
    sites[1].register(&i2).await;
    sites[0].report(&i1, "10.0.0.5").await;
    sites[1].report(&i2, "10.1.0.7").await;
    sites[1].sees(&i2, "10.0.0.5").await;
    sites[0].sees(&i1, "10.1.0.7").await;
    let mut captured = scenario::stream(&sites, 4, 2).await;
    captured[0] += 2;
    captured[1] += 2;
    for site in &sites {
        assert_eq!(
            site.metric("audrey_federation_duplicate_total", &[]).await,
            0.0,
            "{}",
            site.name
        );
    }
    scenario::applied_exactly_once(&mut sites, &captured).await;
}
