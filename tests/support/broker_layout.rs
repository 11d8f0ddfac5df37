//! The on-disk layout of a test RabbitMQ node: free ports, `rabbitmq.conf`, plugins, definitions.
//!
//! Owns what the broker reference prescribes for an isolated node (loopback listeners, mutual
//! TLS with `verify_peer` + `fail_if_no_peer_cert`, EXTERNAL then PLAIN, CN as user name, users,
//! permissions, durable site queues bound to `amq.topic`). It must not start processes.
#![allow(dead_code)]

use std::fs;
use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};

use super::broker::{Broker, BrokerOptions, BINDING_KEY, PLAIN_PASSWORD, PLAIN_USER};

/// The loopback ports a node listens on.
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    pub amqp: u16,
    pub amqps: u16,
    pub dist: u16,
    pub epmd: u16,
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

pub fn port_is_free(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// Four distinct free ports; the CLI's port (dist + 10000) is free and distinct too.
pub fn pick_ports() -> Ports {
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

pub fn write_file(path: &Path, text: &str) {
    let mut f = fs::File::create(path).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    f.write_all(text.as_bytes()).expect("write broker file");
}

/// Additions to a node's layout, for nodes that do more than the default (e.g. federation):
/// more plugins, more `rabbitmq.conf` lines, and definitions whose arrays are appended to the
/// default ones. Empty by default.
#[derive(Debug, Clone, Default)]
pub struct LayoutExtras {
    /// Plugin names enabled beside `rabbitmq_amqp1_0` and `rabbitmq_auth_mechanism_ssl`.
    pub plugins: Vec<String>,
    /// Lines appended to `rabbitmq.conf`.
    pub conf: String,
    /// A JSON object of definition arrays (`users`, `exchanges`, `parameters`, `policies`…).
    pub definitions: Option<serde_json::Value>,
}

pub fn write_layout(root: &Path, ports: &Ports, opts: &BrokerOptions<'_>) {
    write_layout_with(root, ports, opts, &LayoutExtras::default());
}

/// [`write_layout`] plus `extras`.
pub fn write_layout_with(
    root: &Path,
    ports: &Ports,
    opts: &BrokerOptions<'_>,
    extras: &LayoutExtras,
) {
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
    let mut plugins = vec!["rabbitmq_amqp1_0", "rabbitmq_auth_mechanism_ssl"];
    plugins.extend(extras.plugins.iter().map(String::as_str));
    write_file(
        &etc.join("enabled_plugins"),
        &format!("[{}].\n", plugins.join(",")),
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
    write_file(&etc.join("rabbitmq.conf"), &(conf + &extras.conf));
    let mut defs = definitions(opts.sites);
    if let Some(more) = &extras.definitions {
        merge_definitions(&mut defs, more);
    }
    write_file(&etc.join("definitions.json"), &defs.to_string());
}

/// Appends each array of the object `more` to the same-named array of `defs` (created if absent).
pub fn merge_definitions(defs: &mut serde_json::Value, more: &serde_json::Value) {
    let (Some(defs), Some(more)) = (defs.as_object_mut(), more.as_object()) else {
        panic!("definitions must be JSON objects");
    };
    for (key, items) in more {
        let items = items
            .as_array()
            .unwrap_or_else(|| panic!("definitions.{key} must be an array"));
        let into = defs
            .entry(key.clone())
            .or_insert_with(|| serde_json::Value::Array(Vec::new()));
        into.as_array_mut()
            .unwrap_or_else(|| panic!("definitions.{key} is not an array"))
            .extend(items.iter().cloned());
    }
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
        "queues": queues, "exchanges": [], "bindings": bindings, "topic_permissions": []})
}
