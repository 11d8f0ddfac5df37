//! `audrey-federation check`: the operator's first command. Given a valid configuration it
//! checks, in order, the upstream (reachable and really an Audrey Config Server: `GET /version`
//! answers `<config-server>…<api-version>`), the state directory (writable; a store held by a
//! running sidecar is never opened, a scratch file is written beside it instead), the
//! certificate files (readable, parseable, dates; under [`EXPIRY_WARNING_DAYS`] left is a
//! warning, expired or not yet valid a failure), the key files (readable and holding a key),
//! and, with `[amqp]`, the broker (a real connect + close with the configured identity) and
//! this site's subscribe source (a credit-less receiver attached and detached).
//!
//! Each check is one [`Line`]: `OK …` or `FAIL …` with a precise reason. It must not change
//! anything an operator would notice: no store is created, no message is taken, no lock held
//! from a running sidecar.

use std::io::Write as _;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::amqp::probe;
use crate::config::Config;
use crate::store::{Store, FILE_NAME};

/// A certificate with fewer days left than this is reported with a warning.
pub const EXPIRY_WARNING_DAYS: i64 = 30;
/// Bound on the upstream's `/version` answer.
pub const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(5);

/// One checked thing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub ok: bool,
    /// What was checked, e.g. `upstream http://127.0.0.1:4567`.
    pub what: String,
    /// The finding or the reason.
    pub detail: String,
}

impl std::fmt::Display for Line {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let tag = if self.ok { "OK" } else { "FAIL" };
        write!(f, "{tag} {}: {}", self.what, self.detail)
    }
}

fn line(ok: bool, what: impl Into<String>, detail: impl Into<String>) -> Line {
    Line {
        ok,
        what: what.into(),
        detail: detail.into(),
    }
}

/// The date check `check` makes of one certificate file (`key` names the config key), also
/// used by `run` to warn at start-up about a certificate that is expired or not yet valid.
pub fn certificate(key: &str, path: &std::path::Path) -> Line {
    certs::certificate(key, path)
}

/// Every line of one run of `check`.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub lines: Vec<Line>,
}

impl Report {
    /// True when every line is OK (the exit status of `check`).
    pub fn all_ok(&self) -> bool {
        self.lines.iter().all(|l| l.ok)
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for l in &self.lines {
            writeln!(f, "{l}")?;
        }
        Ok(())
    }
}

/// Runs every check against an already validated `cfg`.
pub async fn run(cfg: &Config) -> Report {
    let mut lines = vec![line(
        true,
        "config",
        format!(
            "site {:?}, proxy {} -> {}",
            cfg.site, cfg.proxy.listen, cfg.proxy.upstream
        ),
    )];
    lines.push(upstream(&cfg.proxy.upstream).await);
    lines.push(state_dir(&cfg.state.dir, &cfg.site).await);
    if let (Some(cert), Some(key)) = (&cfg.proxy.tls_cert, &cfg.proxy.tls_key) {
        lines.push(certs::certificate("proxy.tls_cert", cert));
        lines.push(certs::key("proxy.tls_key", key));
    }
    let Some(amqp) = &cfg.amqp else {
        lines.push(line(
            true,
            "broker",
            "no [amqp] section: capture only, nothing to check",
        ));
        return Report { lines };
    };
    if let Some(ca) = &amqp.ca {
        lines.push(certs::certificate("amqp.ca", ca));
    }
    if let Some(cert) = &amqp.cert {
        lines.push(certs::certificate("amqp.cert", cert));
    }
    if let Some(key) = &amqp.key {
        lines.push(certs::key("amqp.key", key));
    }
    let broker = format!("broker {}", amqp.url);
    match probe::connect_and_close(amqp, &cfg.site).await {
        Ok(()) => {
            lines.push(line(
                true,
                broker,
                "connected with the configured identity and closed",
            ));
            let address = crate::amqp::subscriber::subscribe_address(amqp, &cfg.site)
                .unwrap_or_else(|_| "(none)".into());
            lines.push(match probe::probe_subscribe_source(amqp, &cfg.site).await {
                Ok(a) => line(
                    true,
                    format!("subscribe source {a}"),
                    "present (receiver attached and detached)",
                ),
                Err(e) => line(false, format!("subscribe source {address}"), e.to_string()),
            });
        }
        Err(e) => {
            lines.push(line(false, broker, e.to_string()));
            lines.push(line(
                false,
                "subscribe source",
                "not checked: no broker connection",
            ));
        }
    }
    Report { lines }
}

/// `GET /version` must answer 200 with `<config-server>` holding `<api-version>`.
async fn upstream(url: &str) -> Line {
    let what = format!("upstream {url}");
    let uri: http::Uri = match format!("{}/version", url.trim_end_matches('/')).parse() {
        Ok(u) => u,
        Err(e) => return line(false, what, format!("not a URL: {e}")),
    };
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let answer = tokio::time::timeout(UPSTREAM_TIMEOUT, async {
        let resp = client.get(uri).await.map_err(|e| connect_reason(&e))?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("reading the answer: {e}"))?
            .to_bytes();
        Ok::<_, String>((status, body))
    })
    .await;
    let (status, body) = match answer {
        Err(_) => {
            return line(
                false,
                what,
                format!("no answer to GET /version within {UPSTREAM_TIMEOUT:?}"),
            )
        }
        Ok(Err(reason)) => return line(false, what, reason),
        Ok(Ok(a)) => a,
    };
    if !status.is_success() {
        return line(
            false,
            what,
            format!("GET /version answered {status}, not an Audrey Config Server"),
        );
    }
    match api_version(&body) {
        Some(v) => line(true, what, format!("Audrey Config Server, api-version {v}")),
        None => {
            let start: String = String::from_utf8_lossy(&body).chars().take(60).collect();
            line(
                false,
                what,
                format!("GET /version answered {status} but not <config-server><api-version>…: not an Audrey Config Server (body starts {start:?})"),
            )
        }
    }
}

fn connect_reason(e: &hyper_util::client::legacy::Error) -> String {
    use std::error::Error as _;
    let mut source = e.source();
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return match io.kind() {
                std::io::ErrorKind::ConnectionRefused => {
                    "connection refused: is the Config Server (thin) running and is proxy.upstream its address?".into()
                }
                _ => format!("cannot connect: {io}"),
            };
        }
        source = s.source();
    }
    format!("GET /version failed: {e}")
}

/// The `<api-version>` of a `/version` answer, if it is one.
pub fn api_version(body: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(body).ok()?;
    let doc = roxmltree::Document::parse(text).ok()?;
    let root = doc.root_element();
    if root.tag_name().name() != "config-server" {
        return None;
    }
    root.children()
        .find(|n| n.tag_name().name() == "api-version")
        .map(|n| n.text().unwrap_or("").trim().to_owned())
}

/// Writable without taking a running sidecar's lock.
async fn state_dir(dir: &Path, site: &str) -> Line {
    let what = format!("state dir {}", dir.display());
    if !dir.exists() {
        return missing_state_dir(dir, what);
    }
    if !dir.is_dir() {
        return line(
            false,
            what,
            "is not a directory (the sidecar keeps its store in a directory there)",
        );
    }
    if !dir.join(FILE_NAME).exists() {
        return match scratch_write(dir) {
            Ok(()) => line(
                true,
                what,
                format!("writable (no {FILE_NAME} yet: the sidecar creates it)"),
            ),
            Err(e) => line(false, what, format!("not writable: {e}")),
        };
    }
    match Store::open(dir, site) {
        Ok(store) => {
            let probed = store.probe_writable().await;
            let _ = store.close().await;
            match probed {
                Ok(()) => line(true, what, format!("{FILE_NAME} opens and takes a durable write")),
                Err(e) => line(false, what, format!("{FILE_NAME} is not writable: {e}")),
            }
        }
        Err(e) if e.is_locked() => match scratch_write(dir) {
            Ok(()) => line(true, what, format!("{FILE_NAME} is in use by a running sidecar; the directory is writable")),
            Err(e) => line(false, what, format!("{FILE_NAME} is in use by a running sidecar, and the directory is not writable: {e}")),
        },
        Err(e) => line(false, what, e.to_string()),
    }
}

/// A state directory that is not there yet: `run` creates it (and its missing parents) at
/// start, so it is OK when the nearest existing ancestor lets this user create a directory,
/// tried with a scratch directory made and removed there; otherwise the reason `run` would fail.
fn missing_state_dir(dir: &Path, what: String) -> Line {
    let Some(ancestor) = dir.ancestors().skip(1).find(|a| a.exists()) else {
        return line(
            false,
            what,
            "does not exist, and neither does any parent of it",
        );
    };
    let shown = if ancestor.as_os_str().is_empty() {
        Path::new(".")
    } else {
        ancestor
    };
    if !shown.is_dir() {
        return line(
            false,
            what,
            format!(
                "does not exist, and the sidecar cannot create it: {} is not a directory",
                shown.display()
            ),
        );
    }
    let scratch = shown.join(format!(".check-{}", std::process::id()));
    match std::fs::create_dir(&scratch) {
        Ok(()) => {
            let _ = std::fs::remove_dir(&scratch);
            line(
                true,
                what,
                format!(
                    "does not exist yet: the sidecar creates it at start ({} is writable)",
                    shown.display()
                ),
            )
        }
        Err(e) => line(
            false,
            what,
            format!(
                "does not exist, and the sidecar cannot create it: {} is not writable ({e}); \
                 create it, owned by the sidecar's user",
                shown.display()
            ),
        ),
    }
}

/// Writes, fsyncs and removes a 4 KiB scratch file in `dir`.
fn scratch_write(dir: &Path) -> std::io::Result<()> {
    let path = dir.join(format!(".check-{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&path)?;
        f.write_all(&[0u8; 4096])?;
        f.sync_all()
    })();
    let _ = std::fs::remove_file(&path);
    result
}

mod certs;
