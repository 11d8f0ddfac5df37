//! Typed configuration: one TOML file, unknown keys rejected, validated at start-up.
//!
//! Owns parsing, defaults and validation, and names the offending key in every error.
//! It must not open sockets or files other than the config file itself (reachability
//! belongs to `check`), and it never prints a secret.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// A configuration problem, always naming the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config key `{key}`: {reason}")]
    Invalid { key: &'static str, reason: String },
}

fn invalid(key: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        reason: reason.into(),
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// This site's id: short, stable, unique across the federation.
    pub site: String,
    #[serde(default)]
    pub proxy: ProxyConfig,
    #[serde(default)]
    pub admin: AdminConfig,
    #[serde(default)]
    pub state: StateConfig,
    /// Federation; absent means capture-only (staged rollout).
    pub amqp: Option<AmqpConfig>,
    #[serde(default)]
    pub oauth: OauthConfig,
    #[serde(default)]
    pub replay: ReplayConfig,
    #[serde(default)]
    pub shutdown: ShutdownConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyConfig {
    pub listen: SocketAddr,
    /// `http://host:port` of the Config Server.
    pub upstream: String,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Whole-request timeout towards the upstream (until response headers).
    #[serde(with = "humantime_secs")]
    pub upstream_timeout: Duration,
    /// Idle keep-alive towards the upstream; keep it below the upstream's own.
    #[serde(with = "humantime_secs")]
    pub upstream_idle_timeout: Duration,
    /// Largest body read for a captured route; over it the client gets 413.
    pub capture_body_limit: usize,
    /// Record changes in the outbox (default). `false` makes the sidecar a plain proxy
    /// (benchmarks of the capture cost; nothing is federated from this site).
    pub capture: bool,
    /// Peers (CIDR or address) whose `X-Forwarded-For` is believed when recording a guest's address.
    pub trusted_proxies: Vec<String>,
    /// Read-only mount of the server's `STORAGE_DIR`, to learn uuid -> deployment of old instances.
    pub upstream_storage_dir: Option<PathBuf>,
    /// Time a client has to send a request's headers; then the connection is closed (slow-loris).
    #[serde(with = "humantime_secs")]
    pub header_read_timeout: Duration,
    /// Time a client has to finish the TLS handshake (with `tls_cert`); then it is disconnected.
    #[serde(with = "humantime_secs")]
    pub tls_handshake_timeout: Duration,
    /// Most connections open at once on the proxy listener; beyond it a new one is answered
    /// 503 (plain HTTP) or closed (TLS), and counted.
    pub max_connections: usize,
    /// Optional hardening, off by default: who may call what (docs/security.md).
    pub restrict: RestrictConfig,
}

/// `[proxy.restrict]`: client address ranges (CIDR or address) allowed to make some calls;
/// an empty list (the default) restricts nothing. Refused calls get 403 and are never forwarded.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RestrictConfig {
    /// Who may `DELETE /deployment/:v/:id` (the server leaves it unauthenticated).
    pub delete_deployment_from: Vec<String>,
    /// Who may call the server's OAuth-protected paths without any OAuth parameters.
    pub unsigned_from: Vec<String>,
    /// Peers (CIDR or address) whose `X-Forwarded-For` these checks believe; empty (the
    /// default): they judge the TCP peer. Independent of `proxy.trusted_proxies`.
    pub trusted_hops: Vec<String>,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            listen: "0.0.0.0:8443".parse().unwrap(),
            upstream: "http://127.0.0.1:4567".into(),
            tls_cert: None,
            tls_key: None,
            upstream_timeout: Duration::from_secs(30),
            upstream_idle_timeout: Duration::from_secs(20),
            capture_body_limit: 1024 * 1024,
            capture: true,
            trusted_proxies: crate::proxy::forwarded::RACK_TRUSTED
                .iter()
                .map(|s| s.to_string())
                .collect(),
            upstream_storage_dir: None,
            header_read_timeout: Duration::from_secs(30),
            tls_handshake_timeout: Duration::from_secs(10),
            max_connections: 10_000,
            restrict: RestrictConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    /// `/readyz` answers 503 while a broker link is down (federation only).
    pub ready_requires_broker: bool,
    /// File holding the bearer token every mutating admin call (any method but GET and HEAD)
    /// must send. Unset: such calls are accepted from loopback peers only.
    pub token_file: Option<PathBuf>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: "127.0.0.1:9464".parse().unwrap(),
            ready_requires_broker: false,
            token_file: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StateConfig {
    pub dir: PathBuf,
}

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig {
            dir: PathBuf::from("/var/lib/audrey-federation"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SaslMechanism {
    External,
    Plain,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AmqpConfig {
    /// `amqps://host:port` (or `amqp://` with `allow_insecure`).
    pub url: String,
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    #[serde(default = "default_sasl")]
    pub sasl: SaslMechanism,
    pub username: Option<String>,
    pub password_file: Option<PathBuf>,
    #[serde(default)]
    pub allow_insecure: bool,
    #[serde(default = "default_publish_address")]
    pub publish_address: String,
    #[serde(default = "default_routing_key")]
    pub routing_key_template: String,
    /// Where this site's inbound changes come from (a durable queue by default).
    pub subscribe_address: Option<String>,
    /// `queue` (one durable source) or `per_deployment` (durable subscriptions by link name).
    #[serde(default)]
    pub subscribe_mode: SubscribeMode,
    /// First reconnect delay's ceiling (0.2 s by default); each failure doubles it.
    #[serde(default = "default_backoff_initial", with = "humantime_secs")]
    pub reconnect_initial: Duration,
    /// The cap of the reconnect delay (5 s by default), which bounds how long a link stays
    /// down after its broker is back: the next attempt starts within `reconnect_max` (full
    /// jitter draws each delay from `[0, ceiling]`), plus the connect itself. Measured in
    /// `tests/recipes.rs` (docs/topologies.md, "Broker restart").
    #[serde(default = "default_backoff_max", with = "humantime_secs")]
    pub reconnect_max: Duration,
    /// Seconds between two heartbeats of the publisher (liveness for the other sites' lag).
    #[serde(default = "default_heartbeat_interval", with = "humantime_secs")]
    pub heartbeat_interval: Duration,
    /// Origin sites whose changes this site applies; empty (the default) accepts any.
    #[serde(default)]
    pub accept_origins: Vec<String>,
    /// The `audrey_format` this site publishes: 2 (the default), or 1 while some sites of
    /// the federation still run a build that reads only 1 (docs/wire-format.md, upgrading).
    #[serde(default = "default_wire_format")]
    pub wire_format: u8,
    /// Sign every change and heartbeat published (docs/security.md). Default true; false only
    /// emulates a site of an older build.
    #[serde(default = "default_true")]
    pub sign: bool,
    /// A dedicated signing certificate (chain) and key from the federation CA; default:
    /// `amqp.cert` and `amqp.key`.
    pub signing_cert: Option<PathBuf>,
    pub signing_key: Option<PathBuf>,
    /// Which name of a signer's certificate must be the message's `origin_site`: `cn` (the
    /// subject's common name, the default) or `san` (a DNS subject alternative name).
    #[serde(default)]
    pub signer_identity: SignerIdentity,
    /// Accept unsigned changes and heartbeats (a signed one is still verified): only for a
    /// rolling upgrade from a build that does not sign. Logged loudly and counted.
    #[serde(default)]
    pub accept_unsigned: bool,
    /// Heartbeats and changes stamped further than this in the future are refused (default 300 s).
    #[serde(default = "default_max_clock_skew", with = "humantime_secs")]
    pub max_clock_skew: Duration,
    /// The federation's sealing keys (`id:base64-of-32-bytes` lines; the first seals, all
    /// open): registrations' secrets travel sealed. Absent: they travel in plaintext (warned).
    pub seal_key_file: Option<PathBuf>,
}

fn default_wire_format() -> u8 {
    crate::wire::FORMAT_VERSION
}

/// Which certificate name identifies a signing site.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SignerIdentity {
    #[default]
    Cn,
    San,
}

fn default_true() -> bool {
    true
}

fn default_max_clock_skew() -> Duration {
    Duration::from_secs(300)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SubscribeMode {
    #[default]
    Queue,
    PerDeployment,
}

fn default_sasl() -> SaslMechanism {
    SaslMechanism::External
}
fn default_publish_address() -> String {
    "/exchange/amq.topic".into()
}
fn default_routing_key() -> String {
    "audrey.federation.{deployment}".into()
}
fn default_backoff_initial() -> Duration {
    Duration::from_millis(200)
}
fn default_backoff_max() -> Duration {
    Duration::from_secs(5)
}
fn default_heartbeat_interval() -> Duration {
    Duration::from_secs(10)
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OauthConfig {
    /// Conductor's consumer key at the local server.
    pub conductor_key: Option<String>,
    /// File holding Conductor's consumer secret.
    pub conductor_secret_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReplayConfig {
    /// How long a params change waits for its registration before it is dead-lettered.
    #[serde(with = "humantime_secs")]
    pub park_ttl: Duration,
    /// Longest pause between two tries of an inbound change the local server did not take
    /// yet (the retry backoff's cap: 100 ms doubling up to it).
    #[serde(with = "humantime_secs")]
    pub retry_max: Duration,
    /// A change the local server refuses (5xx) this many times is dead-lettered.
    pub max_attempts: u32,
    /// ... or once it has refused it for this long, whichever comes first.
    #[serde(with = "humantime_secs")]
    pub give_up_after: Duration,
}

impl Default for ReplayConfig {
    fn default() -> Self {
        ReplayConfig {
            park_ttl: Duration::from_secs(3600),
            retry_max: Duration::from_secs(10),
            max_attempts: 20,
            give_up_after: Duration::from_secs(600),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownConfig {
    #[serde(with = "humantime_secs")]
    pub drain_timeout: Duration,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        ShutdownConfig {
            drain_timeout: Duration::from_secs(20),
        }
    }
}

/// Durations are written as seconds (`30`, `0.5`).
mod humantime_secs {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let secs = f64::deserialize(d)?;
        if !secs.is_finite() || secs < 0.0 {
            return Err(serde::de::Error::custom(
                "expected a non-negative number of seconds",
            ));
        }
        Ok(Duration::from_secs_f64(secs))
    }
}

impl Config {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&text, path)
    }

    /// Parses and validates config text; `path` is only used in messages.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string().trim_end().replace('\n', " "),
        })?;
        Ok(cfg)
    }

    /// Checks relations between keys; names the key on failure.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.site.is_empty()
            || !self
                .site
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(invalid(
                "site",
                "must be non-empty ASCII letters, digits, '-' or '_'",
            ));
        }
        crate::proxy::upstream::parse_upstream(&self.proxy.upstream)
            .map_err(|reason| invalid("proxy.upstream", reason))?;
        match (&self.proxy.tls_cert, &self.proxy.tls_key) {
            (Some(_), None) => {
                return Err(invalid(
                    "proxy.tls_key",
                    "required when proxy.tls_cert is set",
                ))
            }
            (None, Some(_)) => {
                return Err(invalid(
                    "proxy.tls_cert",
                    "required when proxy.tls_key is set",
                ))
            }
            _ => {}
        }
        if self.proxy.capture_body_limit == 0 {
            return Err(invalid(
                "proxy.capture_body_limit",
                "must be greater than 0",
            ));
        }
        if self.proxy.upstream_timeout.is_zero() {
            return Err(invalid("proxy.upstream_timeout", "must be greater than 0"));
        }
        if self.proxy.header_read_timeout.is_zero() {
            return Err(invalid(
                "proxy.header_read_timeout",
                "must be greater than 0",
            ));
        }
        if self.proxy.tls_handshake_timeout.is_zero() {
            return Err(invalid(
                "proxy.tls_handshake_timeout",
                "must be greater than 0",
            ));
        }
        if self.proxy.max_connections == 0 {
            return Err(invalid("proxy.max_connections", "must be greater than 0"));
        }
        let ranges = [
            ("proxy.trusted_proxies", &self.proxy.trusted_proxies),
            (
                "proxy.restrict.delete_deployment_from",
                &self.proxy.restrict.delete_deployment_from,
            ),
            (
                "proxy.restrict.unsigned_from",
                &self.proxy.restrict.unsigned_from,
            ),
            (
                "proxy.restrict.trusted_hops",
                &self.proxy.restrict.trusted_hops,
            ),
        ];
        for (key, list) in ranges {
            for p in list {
                crate::proxy::forwarded::parse_cidr(p)
                    .map_err(|reason| invalid(key, format!("{p:?}: {reason}")))?;
            }
        }
        if let Some(a) = &self.amqp {
            a.validate()?;
        }
        match (&self.oauth.conductor_key, &self.oauth.conductor_secret_file) {
            (Some(_), None) => {
                return Err(invalid(
                    "oauth.conductor_secret_file",
                    "required when oauth.conductor_key is set",
                ))
            }
            (None, Some(_)) => {
                return Err(invalid(
                    "oauth.conductor_key",
                    "required when oauth.conductor_secret_file is set",
                ))
            }
            _ => {}
        }
        if self.amqp.is_some() && self.oauth.conductor_key.is_none() {
            return Err(invalid(
                "oauth.conductor_key",
                "required with [amqp]: replayed registrations are signed as Conductor",
            ));
        }
        Ok(())
    }
}

impl AmqpConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let (scheme, _) = self
            .url
            .split_once("://")
            .ok_or_else(|| invalid("amqp.url", "expected amqps://host:port"))?;
        match scheme {
            "amqps" => {}
            "amqp" if self.allow_insecure => {}
            "amqp" => {
                return Err(invalid(
                    "amqp.url",
                    "plain amqp:// is refused; use amqps:// or set amqp.allow_insecure = true",
                ))
            }
            other => return Err(invalid("amqp.url", format!("unknown scheme {other:?}"))),
        }
        if scheme == "amqps" && self.ca.is_none() {
            return Err(invalid("amqp.ca", "required with amqps://"));
        }
        if self.sasl == SaslMechanism::External {
            if self.cert.is_none() {
                return Err(invalid("amqp.cert", "required with sasl = \"external\""));
            }
            if self.key.is_none() {
                return Err(invalid("amqp.key", "required with sasl = \"external\""));
            }
            if scheme != "amqps" {
                return Err(invalid(
                    "amqp.sasl",
                    "external needs amqps:// (identity comes from the certificate)",
                ));
            }
        }
        if self.cert.is_some() != self.key.is_some() {
            return Err(invalid("amqp.key", "amqp.cert and amqp.key go together"));
        }
        if self.signing_cert.is_some() != self.signing_key.is_some() {
            return Err(invalid(
                "amqp.signing_key",
                "amqp.signing_cert and amqp.signing_key go together",
            ));
        }
        if self.sasl == SaslMechanism::Plain
            && (self.username.is_none() || self.password_file.is_none())
        {
            return Err(invalid(
                "amqp.username",
                "sasl = \"plain\" needs amqp.username and amqp.password_file",
            ));
        }
        if !self.routing_key_template.contains("{deployment}") {
            return Err(invalid(
                "amqp.routing_key_template",
                "must contain {deployment}",
            ));
        }
        if self.reconnect_initial.is_zero() || self.reconnect_max < self.reconnect_initial {
            return Err(invalid(
                "amqp.reconnect_max",
                "must be >= amqp.reconnect_initial > 0",
            ));
        }
        if self.heartbeat_interval.is_zero() {
            return Err(invalid("amqp.heartbeat_interval", "must be greater than 0"));
        }
        if !crate::wire::FORMATS.contains(&self.wire_format) {
            return Err(invalid("amqp.wire_format", "must be 1 or 2"));
        }
        if let Some(bad) = self.accept_origins.iter().find(|o| {
            o.is_empty()
                || !o
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        }) {
            return Err(invalid(
                "amqp.accept_origins",
                format!("{bad:?} is not a site id (ASCII letters, digits, '-' or '_')"),
            ));
        }
        Ok(())
    }

    /// The routing key (subject) for a deployment.
    pub fn routing_key(&self, deployment: &str) -> String {
        self.routing_key_template
            .replace("{deployment}", deployment)
    }
}
