//! A real RabbitMQ 3.10 node (AMQP 1.0 plugin, mutual TLS, SASL EXTERNAL) run as a child process.
//!
//! Owns one temporary folder per node (laid out by `broker_layout`: config, data, logs, Erlang
//! cookie) on free loopback ports, its own `epmd`, and a reaper process that ends the node if the test binary dies without
//! dropping it (a `static` shared broker is never dropped). It must never touch a system-wide
//! RabbitMQ, `/etc/rabbitmq`, or any process it did not start: everything is stopped by pid.
#![allow(dead_code)]

use std::fs;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use std::os::unix::process::CommandExt;

pub use super::broker_layout::LayoutExtras;
pub use super::broker_layout::Ports;
use super::broker_layout::{pick_ports, write_layout_with};
use super::certs::{self, CertPaths};

const SERVER_BIN: &str = "/usr/lib/rabbitmq/bin/rabbitmq-server";
const CTL_BIN: &str = "/usr/lib/rabbitmq/bin/rabbitmqctl";
const READY_DEADLINE: Duration = Duration::from_secs(30);
const STOP_DEADLINE: Duration = Duration::from_secs(20);
/// A `rabbitmqctl` call that has not finished by then fails the test (exit status 124).
const CTL_DEADLINE: Duration = Duration::from_secs(60);

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

/// A running (or stopped) RabbitMQ node; dropping it stops the node and its epmd.
pub struct Broker {
    root: tempfile::TempDir,
    ports: Ports,
    node_name: String,
    node: Option<Child>,
    reaper: Option<Child>,
    epmd: Option<Child>,
    /// Extra folders the reaper removes if the test binary exits without dropping the broker.
    adopted: Vec<PathBuf>,
    /// Whether the node has a plain AMQP listener (a recipe's node may serve AMQPS only).
    plain: bool,
}

impl Broker {
    /// Writes the node's folder and starts it; returns once both AMQP ports accept.
    pub fn start(opts: BrokerOptions<'_>) -> Broker {
        Broker::start_with(opts, pick_ports(), &LayoutExtras::default())
    }

    /// [`Broker::start`] on ports chosen by the caller (so other nodes' definitions can name
    /// them before this node exists), with `extras` added to the layout.
    pub fn start_with(opts: BrokerOptions<'_>, ports: Ports, extras: &LayoutExtras) -> Broker {
        assert!(
            Path::new(SERVER_BIN).exists(),
            "{SERVER_BIN} not found: install RabbitMQ 3.10 (apt-get install -y rabbitmq-server)"
        );
        let root = tempfile::Builder::new()
            .prefix("audrey-broker-")
            .tempdir()
            .expect("broker temp dir");
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let node_name = format!(
            "audrey-test-{}-{}@localhost",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        write_layout_with(root.path(), &ports, &opts, extras);
        Broker::boot(root, ports, node_name, true)
    }

    /// A node laid out by the caller from an operator's recipe (`docs/recipes/rabbitmq/`):
    /// `layout` gets the node's `etc/` folder and returns the files to write there
    /// (`rabbitmq.conf`, `enabled_plugins`, `definitions.json`, …) as they are; it may copy
    /// certificates there too. Only the node's environment (folders, ports, node name) is the
    /// harness's. With `plain: false` only the AMQPS port is awaited (`listeners.tcp = none`).
    pub fn start_recipe(
        ports: Ports,
        plain: bool,
        layout: impl FnOnce(&Path) -> Vec<(String, String)>,
    ) -> Broker {
        assert!(
            Path::new(SERVER_BIN).exists(),
            "{SERVER_BIN} not found: install RabbitMQ 3.10 (apt-get install -y rabbitmq-server)"
        );
        let root = tempfile::Builder::new()
            .prefix("audrey-broker-")
            .tempdir()
            .expect("broker temp dir");
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let node_name = format!(
            "audrey-recipe-{}-{}@localhost",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let etc = root.path().join("etc");
        for d in ["etc", "home", "data", "log"] {
            fs::create_dir_all(root.path().join(d)).expect("broker folder");
        }
        for (name, text) in layout(&etc) {
            fs::write(etc.join(&name), text).unwrap_or_else(|e| panic!("write {name}: {e}"));
        }
        for (name, text) in [("rabbitmq-env.conf", ""), ("advanced.config", "[].\n")] {
            if !etc.join(name).exists() {
                fs::write(etc.join(name), text).expect("broker env file");
            }
        }
        Broker::boot(root, ports, node_name, plain)
    }

    fn boot(root: tempfile::TempDir, ports: Ports, node_name: String, plain: bool) -> Broker {
        let mut broker = Broker {
            root,
            ports,
            node_name,
            node: None,
            reaper: None,
            epmd: None,
            adopted: Vec::new(),
            plain,
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
        self.node = Some(node);
        self.spawn_reaper();
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
        self.wait_ports_closed();
    }

    /// SIGKILL the node's whole process group (a crash: nothing is flushed). Returns once its
    /// ports are closed: a killed VM's threads can outlive its main thread for a moment.
    pub fn kill(&mut self) {
        if let Some(mut node) = self.node.take() {
            let _ = killpg(pid(node.id()), Signal::SIGKILL);
            let _ = node.wait();
        }
        self.end_reaper();
        self.wait_ports_closed();
    }

    fn wait_ports_closed(&self) {
        let deadline = Instant::now() + STOP_DEADLINE;
        for port in [self.ports.amqp, self.ports.amqps, self.ports.dist] {
            while TcpStream::connect(("127.0.0.1", port)).is_ok() {
                assert!(
                    Instant::now() < deadline,
                    "port {port} still open {STOP_DEADLINE:?} after the node was stopped"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
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

    /// Runs `rabbitmqctl` against this node; panics with its output on failure, or when it
    /// has not finished within [`CTL_DEADLINE`] (coreutils `timeout` ends it).
    pub fn ctl(&self, args: &[&str]) -> String {
        let mut cmd = Command::new("timeout");
        self.node_env(&mut cmd);
        let out = cmd
            .args([
                "--kill-after=5",
                &CTL_DEADLINE.as_secs().to_string(),
                CTL_BIN,
            ])
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
        let ports = [self.ports.amqp, self.ports.amqps];
        for &port in &ports[usize::from(!self.plain)..] {
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

    /// Also remove `dir` when the test binary exits without dropping this broker (a `static`).
    pub fn adopt_dir(&mut self, dir: &Path) {
        self.adopted.push(dir.to_owned());
        if self.node.is_some() {
            self.end_reaper();
            self.spawn_reaper();
        }
    }

    /// A shell that waits for EOF on its stdin (held here), then ends the node's process group,
    /// epmd and the folders: it runs when the test binary exits without dropping the broker.
    fn spawn_reaper(&mut self) {
        let script = r#"cat >/dev/null
kill -TERM "$1" 2>/dev/null
i=0; while kill -0 "$1" 2>/dev/null && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
kill -KILL -- "-$1" 2>/dev/null
[ -n "$2" ] && kill -TERM "$2" 2>/dev/null
shift 2
rm -rf -- "$@"
"#;
        let node = self
            .node
            .as_ref()
            .map(|c| c.id().to_string())
            .unwrap_or_default();
        let epmd = self
            .epmd
            .as_ref()
            .map(|c| c.id().to_string())
            .unwrap_or_default();
        let reaper = Command::new("sh")
            .args(["-c", script, "reaper", &node, &epmd])
            .arg(self.root.path())
            .args(&self.adopted)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("spawn reaper shell");
        self.reaper = Some(reaper);
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
        let mut broker = Broker::start(BrokerOptions {
            sites: SHARED_SITES,
            certs: &certs,
        });
        broker.adopt_dir(&certs.dir);
        SharedBroker {
            certs,
            broker: tokio::sync::RwLock::new(broker),
        }
    })
}
