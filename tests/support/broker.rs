//! A real RabbitMQ 3.10 node (AMQP 1.0 plugin, mutual TLS, SASL EXTERNAL) run as a child process.
//!
//! Owns one temporary folder per node (config, data, logs, Erlang cookie), free loopback ports,
//! its own `epmd`, and a reaper process that ends the node if the test binary dies without
//! dropping it (a `static` shared broker is never dropped). It must never touch a system-wide
//! RabbitMQ, `/etc/rabbitmq`, or any process it did not start: everything is stopped by pid.
#![allow(dead_code)]

use std::fs;
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use std::os::unix::process::CommandExt;

use super::certs::{self, CertPaths};

const SERVER_BIN: &str = "/usr/lib/rabbitmq/bin/rabbitmq-server";
const CTL_BIN: &str = "/usr/lib/rabbitmq/bin/rabbitmqctl";
const READY_DEADLINE: Duration = Duration::from_secs(30);
const STOP_DEADLINE: Duration = Duration::from_secs(20);

/// The SASL PLAIN user every node has (for plain-TCP tests).
pub const PLAIN_USER: &str = "audrey-plain";
pub const PLAIN_PASSWORD: &str = "plain-secret-for-tests";
/// Per site, a durable queue `<QUEUE_PREFIX><site>` bound to `amq.topic` with `BINDING_KEY`.
pub const QUEUE_PREFIX: &str = "audrey.federation.";
pub const BINDING_KEY: &str = "audrey.federation.#";

/// What a node is created with.
pub struct BrokerOptions<'a> {
    /// One broker user (for EXTERNAL, named like the certificate CN) and one durable queue each.
    pub sites: &'a [&'a str],
    /// CA and server certificate the TLS listener uses (copied into the node's folder).
    pub certs: &'a CertPaths,
}

/// The loopback ports a node listens on.
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    pub amqp: u16,
    pub amqps: u16,
    pub dist: u16,
    pub epmd: u16,
}

/// A running (or stopped) RabbitMQ node; dropping it stops the node and its epmd.
pub struct Broker {
    root: tempfile::TempDir,
    ports: Ports,
    node_name: String,
    node: Option<Child>,
    reaper: Option<Child>,
    epmd: Option<Child>,
}

impl Broker {
    /// Writes the node's folder and starts it; returns once both AMQP ports accept.
    pub fn start(opts: BrokerOptions<'_>) -> Broker {
        assert!(
            Path::new(SERVER_BIN).exists(),
            "{SERVER_BIN} not found: install RabbitMQ 3.10 (apt-get install -y rabbitmq-server)"
        );
        let root = tempfile::Builder::new()
            .prefix("audrey-broker-")
            .tempdir()
            .expect("broker temp dir");
        let ports = pick_ports();
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let node_name = format!(
            "audrey-test-{}-{}@localhost",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        write_layout(root.path(), &ports, &opts);
        let mut broker = Broker {
            root,
            ports,
            node_name,
            node: None,
            reaper: None,
            epmd: None,
        };
        broker.spawn_epmd();
        broker.start_again();
        broker
    }

    /// `amqps://localhost:<tls port>` (host name, so the TLS server name matches the certificate).
    pub fn amqps_url(&self) -> String {
        format!("amqps://localhost:{}", self.ports.amqps)
    }

    /// `amqp://localhost:<plain port>`.
    pub fn amqp_url(&self) -> String {
        format!("amqp://localhost:{}", self.ports.amqp)
    }

    pub fn ports(&self) -> Ports {
        self.ports
    }

    /// The node's folder (`etc/`, `data/`, `log/`).
    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// The durable queue of `site`.
    pub fn queue_name(site: &str) -> String {
        format!("{QUEUE_PREFIX}{site}")
    }

    /// True while the node process has not exited.
    pub fn is_running(&mut self) -> bool {
        match self.node.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Starts the node on the same folder and ports (durable queues and messages survive).
    pub fn start_again(&mut self) {
        assert!(self.node.is_none(), "node already running");
        let root = self.root.path();
        let stdout = fs::File::create(root.join("log/stdout.log")).expect("node stdout log");
        let stderr = stdout.try_clone().expect("clone log handle");
        let mut cmd = Command::new(SERVER_BIN);
        self.node_env(&mut cmd);
        cmd.stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .process_group(0);
        let node = cmd.spawn().expect("spawn rabbitmq-server");
        self.reaper = Some(spawn_reaper(
            node.id(),
            self.epmd.as_ref().map(Child::id),
            root,
        ));
        self.node = Some(node);
        self.wait_ready();
    }

    /// SIGTERM (graceful: queues are synced to disk) and wait for the node to exit.
    pub fn stop(&mut self) {
        if let Some(node) = self.node.as_mut() {
            let _ = kill(pid(node.id()), Signal::SIGTERM);
            if !wait_exit(node, STOP_DEADLINE) {
                let _ = killpg(pid(node.id()), Signal::SIGKILL);
                let _ = node.wait();
            }
        }
        self.node = None;
        self.end_reaper();
    }

    /// SIGKILL the node's whole process group (a crash: nothing is flushed).
    pub fn kill(&mut self) {
        if let Some(mut node) = self.node.take() {
            let _ = killpg(pid(node.id()), Signal::SIGKILL);
            let _ = node.wait();
        }
        self.end_reaper();
    }

    /// Messages ready in `queue`, as the broker counts them (via `rabbitmqctl`, ~1 s).
    pub fn queue_messages(&self, queue: &str) -> u64 {
        let out = self.ctl(&[
            "list_queues",
            "--quiet",
            "--no-table-headers",
            "name",
            "messages",
        ]);
        out.lines()
            .filter_map(|l| {
                let mut cols = l.split_whitespace();
                Some((cols.next()?, cols.next()?.parse::<u64>().ok()?))
            })
            .find(|(name, _)| *name == queue)
            .map(|(_, n)| n)
            .unwrap_or_else(|| panic!("queue {queue} not found in:\n{out}"))
    }

    /// Drops every message in `queue`.
    pub fn purge_queue(&self, queue: &str) {
        self.ctl(&["purge_queue", "--quiet", queue]);
    }

    /// Runs `rabbitmqctl` against this node; panics with its output on failure.
    pub fn ctl(&self, args: &[&str]) -> String {
        let mut cmd = Command::new(CTL_BIN);
        self.node_env(&mut cmd);
        let out = cmd
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run rabbitmqctl");
        assert!(
            out.status.success(),
            "rabbitmqctl {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The last lines of the node's logs, for failure messages.
    pub fn log_tail(&self) -> String {
        let mut text = String::new();
        for entry in fs::read_dir(self.root.path().join("log"))
            .into_iter()
            .flatten()
            .flatten()
        {
            if let Ok(s) = fs::read_to_string(entry.path()) {
                let lines: Vec<&str> = s.lines().collect();
                let from = lines.len().saturating_sub(30);
                text.push_str(&format!(
                    "--- {}\n{}\n",
                    entry.path().display(),
                    lines[from..].join("\n")
                ));
            }
        }
        text
    }

    fn node_env(&self, cmd: &mut Command) {
        let r = self.root.path();
        let etc = r.join("etc");
        cmd.env_clear()
            .env(
                "PATH",
                std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into()),
            )
            .env("LANG", "C.UTF-8")
            .env("LC_ALL", "C.UTF-8")
            .env("HOME", r.join("home"))
            .env("RABBITMQ_CONF_ENV_FILE", etc.join("rabbitmq-env.conf"))
            .env("RABBITMQ_CONFIG_FILE", etc.join("rabbitmq.conf"))
            .env("RABBITMQ_ADVANCED_CONFIG_FILE", etc.join("advanced.config"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", etc.join("enabled_plugins"))
            .env("RABBITMQ_MNESIA_BASE", r.join("data"))
            .env("RABBITMQ_LOG_BASE", r.join("log"))
            .env("RABBITMQ_PID_FILE", r.join("rabbit.pid"))
            .env("RABBITMQ_NODENAME", &self.node_name)
            .env("RABBITMQ_DIST_PORT", self.ports.dist.to_string())
            .env("ERL_EPMD_ADDRESS", "127.0.0.1")
            .env("ERL_EPMD_PORT", self.ports.epmd.to_string())
            .env(
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS",
                "-kernel inet_dist_use_interface {127,0,0,1}",
            );
    }

    /// Our own epmd on its own port, so it can be ended by pid (the node would daemonize one).
    fn spawn_epmd(&mut self) {
        let log = fs::File::create(self.root.path().join("log/epmd.log")).expect("epmd log");
        let child = Command::new("epmd")
            .args([
                "-address",
                "127.0.0.1",
                "-port",
                &self.ports.epmd.to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log)
            .process_group(0)
            .spawn()
            .expect("spawn epmd (Erlang's port mapper)");
        self.epmd = Some(child);
        poll_port(self.ports.epmd, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("epmd did not listen: {e}"));
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + READY_DEADLINE;
        for port in [self.ports.amqp, self.ports.amqps] {
            loop {
                if TcpStream::connect_timeout(
                    &([127, 0, 0, 1], port).into(),
                    Duration::from_millis(200),
                )
                .is_ok()
                {
                    break;
                }
                if !self.is_running() {
                    panic!("rabbitmq-server exited during boot:\n{}", self.log_tail());
                }
                if Instant::now() >= deadline {
                    panic!(
                        "rabbitmq-server not ready after {READY_DEADLINE:?}:\n{}",
                        self.log_tail()
                    );
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }

    fn end_reaper(&mut self) {
        if let Some(mut reaper) = self.reaper.take() {
            let _ = reaper.kill();
            let _ = reaper.wait();
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop();
        if let Some(mut epmd) = self.epmd.take() {
            let _ = epmd.kill();
            let _ = epmd.wait();
        }
    }
}

fn pid(id: u32) -> Pid {
    Pid::from_raw(i32::try_from(id).unwrap_or(i32::MAX))
}

/// Polls until `child` exits, up to `limit`.
fn wait_exit(child: &mut Child, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

fn poll_port(port: u16, limit: Duration) -> Result<(), String> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(format!("port {port} closed after {limit:?}"))
}

/// A shell that waits for EOF on its stdin (held by the `Broker`), then ends the node group,
/// epmd and the folder: this runs when the test process exits without dropping the broker.
fn spawn_reaper(node: u32, epmd: Option<u32>, root: &Path) -> Child {
    let script = r#"cat >/dev/null
kill -TERM "$1" 2>/dev/null
i=0; while kill -0 "$1" 2>/dev/null && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
kill -KILL -- "-$1" 2>/dev/null
[ -n "$2" ] && kill -TERM "$2" 2>/dev/null
rm -rf -- "$3"
"#;
    Command::new("sh")
        .args([
            "-c",
            script,
            "reaper",
            &node.to_string(),
            &epmd.map(|p| p.to_string()).unwrap_or_default(),
        ])
        .arg(root)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .expect("spawn reaper shell")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

fn port_is_free(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// Four distinct free ports; the CLI's port (dist + 10000) is free and distinct too.
fn pick_ports() -> Ports {
    for _ in 0..200 {
        let dist = free_port();
        let cli = u32::from(dist) + 10000;
        let Ok(cli) = u16::try_from(cli) else {
            continue;
        };
        if !port_is_free(cli) {
            continue;
        }
        let (amqp, amqps, epmd) = (free_port(), free_port(), free_port());
        let all = [amqp, amqps, dist, epmd, cli];
        let distinct = all
            .iter()
            .enumerate()
            .all(|(i, p)| !all[i + 1..].contains(p));
        if distinct {
            return Ports {
                amqp,
                amqps,
                dist,
                epmd,
            };
        }
    }
    panic!("could not find free loopback ports for the broker")
}

fn write_file(path: &Path, text: &str) {
    let mut f = fs::File::create(path).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    f.write_all(text.as_bytes()).expect("write broker file");
}

fn write_layout(root: &Path, ports: &Ports, opts: &BrokerOptions<'_>) {
    let etc = root.join("etc");
    for d in ["etc", "home", "data", "log"] {
        fs::create_dir_all(root.join(d)).expect("broker folder");
    }
    let copy = |from: &PathBuf, name: &str| {
        fs::copy(from, etc.join(name)).unwrap_or_else(|e| panic!("copy {}: {e}", from.display()));
    };
    copy(&opts.certs.ca, "ca.pem");
    copy(&opts.certs.server_cert, "server.pem");
    copy(&opts.certs.server_key, "server.key");
    write_file(&etc.join("rabbitmq-env.conf"), "");
    write_file(&etc.join("advanced.config"), "[].\n");
    write_file(
        &etc.join("enabled_plugins"),
        "[rabbitmq_amqp1_0,rabbitmq_auth_mechanism_ssl].\n",
    );
    let e = etc.display();
    let conf = format!(
        "listeners.tcp.1 = 127.0.0.1:{amqp}
listeners.ssl.1 = 127.0.0.1:{amqps}
ssl_options.cacertfile = {e}/ca.pem
ssl_options.certfile = {e}/server.pem
ssl_options.keyfile = {e}/server.key
ssl_options.verify = verify_peer
ssl_options.fail_if_no_peer_cert = true
auth_mechanisms.1 = EXTERNAL
auth_mechanisms.2 = PLAIN
ssl_cert_login_from = common_name
loopback_users = none
amqp1_0.default_user = none
load_definitions = {e}/definitions.json
log.file.level = info
log.console = false
",
        amqp = ports.amqp,
        amqps = ports.amqps,
    );
    write_file(&etc.join("rabbitmq.conf"), &conf);
    write_file(
        &etc.join("definitions.json"),
        &definitions(opts.sites).to_string(),
    );
}

/// Users (one per site with an empty hash for EXTERNAL, one PLAIN), permissions, queues, bindings.
pub fn definitions(sites: &[&str]) -> serde_json::Value {
    use serde_json::json;
    let perm = |user: &str| json!({"user": user, "vhost": "/", "configure": ".*", "write": ".*", "read": ".*"});
    let mut users = vec![json!({"name": PLAIN_USER, "password": PLAIN_PASSWORD, "tags": ""})];
    let mut permissions = vec![perm(PLAIN_USER)];
    let mut queues = Vec::new();
    let mut bindings = Vec::new();
    for site in sites {
        users.push(json!({"name": site, "password_hash": "", "hashing_algorithm": "rabbit_password_hashing_sha256", "tags": ""}));
        permissions.push(perm(site));
        let queue = Broker::queue_name(site);
        queues.push(json!({"name": queue, "vhost": "/", "durable": true, "auto_delete": false, "arguments": {}}));
        bindings.push(
            json!({"source": "amq.topic", "vhost": "/", "destination": queue,
            "destination_type": "queue", "routing_key": BINDING_KEY, "arguments": {}}),
        );
    }
    json!({"vhosts": [{"name": "/"}], "users": users, "permissions": permissions,
        "queues": queues, "exchanges": [], "bindings": bindings})
}

/// Sites the shared broker knows (each has a user, a client certificate and a durable queue).
pub const SHARED_SITES: &[&str] = &["site-a", "site-b", "site-c"];

/// One broker per test binary (boot takes ~6 s). Take `read()` for ordinary use and
/// `write()` to stop or restart it; the reaper ends it when the test binary exits.
pub struct SharedBroker {
    pub certs: CertPaths,
    broker: tokio::sync::RwLock<Broker>,
}

impl SharedBroker {
    pub async fn read(&self) -> tokio::sync::RwLockReadGuard<'_, Broker> {
        self.broker.read().await
    }

    pub async fn write(&self) -> tokio::sync::RwLockWriteGuard<'_, Broker> {
        self.broker.write().await
    }
}

/// The per-binary broker with `SHARED_SITES`, started on first use (blocks the caller meanwhile).
pub fn shared() -> &'static SharedBroker {
    static SHARED: OnceLock<SharedBroker> = OnceLock::new();
    SHARED.get_or_init(|| {
        let certs = certs::generate(SHARED_SITES);
        let broker = Broker::start(BrokerOptions {
            sites: SHARED_SITES,
            certs: &certs,
        });
        SharedBroker {
            certs,
            broker: tokio::sync::RwLock::new(broker),
        }
    })
}
