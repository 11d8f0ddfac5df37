//! audrey-federation: a sidecar that federates unmodified Audrey Config Servers.
//!
//! The library holds every concept; `main.rs` only parses flags, sets up tracing and
//! metrics, binds the listeners and calls [`run`]. See ARCHITECTURE.md for the codemap.
#![forbid(unsafe_code)]

pub mod admin;
pub mod amqp;
pub mod authn;
pub mod body;
pub mod capture;
pub mod change;
pub mod check;
pub mod config;
pub mod deadletters;
pub mod fuzzing;
pub mod learn;
pub mod metrics;
pub mod oauth;
pub mod proxy;
pub mod replay;
pub mod serve;
pub mod status;
pub mod store;
pub mod systemd;
pub mod tls;
pub mod wire;

use std::sync::Arc;

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use config::Config;

/// Listeners bound by the caller (so tests and `main` choose the ports).
pub struct Listeners {
    pub proxy: TcpListener,
    pub admin: TcpListener,
}

/// Why the sidecar could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Config(#[from] config::ConfigError),
    #[error("state store: {0}")]
    Store(#[from] store::StoreError),
    #[error("listener TLS: {0}")]
    Tls(#[from] tls::TlsError),
    #[error("cannot read oauth.conductor_secret_file {path}: {reason}")]
    ConductorSecret { path: String, reason: String },
    /// `admin.token_file` unreadable or empty (the reason names the file).
    #[error("{0}")]
    AdminToken(String),
    #[error("signing or sealing material: {0}")]
    Authn(#[from] authn::AuthnError),
}

/// The admin listener's limits (fixed: it serves probes, scrapes and operators).
const ADMIN_LIMITS: serve::Limits = serve::Limits {
    header_read_timeout: std::time::Duration::from_secs(30),
    tls_handshake_timeout: std::time::Duration::from_secs(10),
    max_connections: 1024,
};

/// Runs the sidecar until `shutdown` fires, then drains within `shutdown.drain_timeout`.
pub async fn run(
    config: Config,
    listeners: Listeners,
    metrics: PrometheusHandle,
    shutdown: CancellationToken,
) -> Result<(), StartError> {
    config.validate()?;
    let mutate = admin::MutateAuth::from_file(config.admin.token_file.as_deref())
        .map_err(StartError::AdminToken)?;
    let store = store::Store::open(&config.state.dir, &config.site)?;
    let tls = match (&config.proxy.tls_cert, &config.proxy.tls_key) {
        (Some(c), Some(k)) => Some(tls::server_acceptor(c, k)?),
        _ => None,
    };
    warn_about_certificates(&config);
    let upstream = proxy::upstream::parse_upstream(&config.proxy.upstream).map_err(|reason| {
        config::ConfigError::Invalid {
            key: "proxy.upstream",
            reason,
        }
    })?;
    let wake = Arc::new(tokio::sync::Notify::new());
    // Capturing exchanges run on tasks of their own, which no client can cancel.
    let captures = TaskTracker::new();
    let proxy = proxy::Proxy::new(
        &config.proxy,
        upstream.clone(),
        store.clone(),
        wake.clone(),
        captures.clone(),
    );
    let drain = config.shutdown.drain_timeout;
    // Fired at the drain deadline: what is still draining (the publisher) stops there.
    let deadline = CancellationToken::new();
    let tasks = TaskTracker::new();
    // The publisher's drain starts once the proxy has stopped (its connections drained) and
    // every capture in flight is recorded, so those are published before it stops.
    let proxy_done = CancellationToken::new();
    let publish_drain = CancellationToken::new();
    {
        let (shutdown, proxy_done, publish_drain, captures) = (
            shutdown.clone(),
            proxy_done.clone(),
            publish_drain.clone(),
            captures.clone(),
        );
        tasks.spawn(async move {
            shutdown.cancelled().await;
            proxy_done.cancelled().await;
            captures.close();
            captures.wait().await;
            publish_drain.cancel();
        });
    }
    let links = match &config.amqp {
        None => {
            tracing::warn!(
                "no [amqp] section: running as a capturing proxy only; the outbox keeps every change until federation is enabled"
            );
            None
        }
        Some(amqp) => Some(start_federation(
            &config,
            amqp,
            &upstream,
            &store,
            &wake,
            &tasks,
            &shutdown,
            &publish_drain,
            &deadline,
        )?),
    };
    let admin = Arc::new(admin::Admin {
        site: config.site.clone(),
        upstream: upstream.clone(),
        store: store.clone(),
        metrics,
        links,
        ready_requires_broker: config.admin.ready_requires_broker,
        mutate,
    });
    if let Some(dir) = config.proxy.upstream_storage_dir.clone() {
        let every = std::time::Duration::from_secs(30);
        tasks.spawn(learn::run(
            dir,
            store.clone(),
            wake.clone(),
            every,
            shutdown.clone(),
        ));
    }
    let proxy_stop = shutdown.clone();
    let served = serve::serve(
        "proxy",
        listeners.proxy,
        tls,
        move |req, peer| proxy.clone().handle(req, peer),
        proxy_stop,
        drain,
        serve::Limits {
            header_read_timeout: config.proxy.header_read_timeout,
            tls_handshake_timeout: config.proxy.tls_handshake_timeout,
            max_connections: config.proxy.max_connections,
        },
    );
    tasks.spawn(async move {
        served.await;
        proxy_done.cancel();
    });
    // The admin listener outlives the proxy's drain so probes keep answering.
    let admin_stop = CancellationToken::new();
    let admin_task = tokio::spawn(serve::serve(
        "admin",
        listeners.admin,
        None,
        move |req, peer| admin.clone().handle(req, peer),
        admin_stop.clone(),
        std::time::Duration::from_secs(1),
        ADMIN_LIMITS,
    ));
    if let Some(every) = systemd::watchdog_interval() {
        tokio::spawn(systemd::watchdog(every, admin_stop.clone()));
    }
    systemd::ready(&format!(
        "site {}: proxying to {}, {}",
        config.site,
        config.proxy.upstream,
        if config.amqp.is_some() {
            "federating"
        } else {
            "capturing only (no [amqp])"
        }
    ));
    tasks.close();
    shutdown.cancelled().await;
    systemd::stopping();
    if tokio::time::timeout(drain, tasks.wait()).await.is_err() {
        tracing::warn!(drain_timeout = ?drain, "drain deadline reached; stopping what is left");
        deadline.cancel();
        // Closing links is bounded by protocol step timeouts; do not wait past them.
        if tokio::time::timeout(std::time::Duration::from_secs(15), tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("tasks still running 15 s after the drain deadline; exiting anyway");
        }
    }
    // A capture in flight runs through the drain deadline: the server made the change, so
    // it is recorded (bounded by the upstream timeout and the append).
    captures.close();
    let bound = config.proxy.upstream_timeout + std::time::Duration::from_secs(5);
    if tokio::time::timeout(bound, captures.wait()).await.is_err() {
        tracing::warn!(
            in_flight = captures.len(),
            "captures still in flight past proxy.upstream_timeout; exiting anyway"
        );
    }
    admin_stop.cancel();
    let _ = admin_task.await;
    tracing::info!("stopped");
    Ok(())
}

/// Starts the publisher (outbox → broker), the subscriber (broker → replay → local server)
/// and the timer that retries parked changes. On `publish_drain` (after `shutdown`, once the
/// proxy has stopped and its captures are recorded) the publisher drains the outbox until
/// `deadline`; on `shutdown` the others stop taking new work. Answers the links' state, which the
/// publisher and subscriber (run inside its scope) keep current.
#[allow(clippy::too_many_arguments)]
fn start_federation(
    config: &Config,
    amqp: &config::AmqpConfig,
    upstream: &http::uri::Authority,
    store: &store::Store,
    wake: &Arc<tokio::sync::Notify>,
    tasks: &TaskTracker,
    shutdown: &CancellationToken,
    publish_drain: &CancellationToken,
    deadline: &CancellationToken,
) -> Result<status::LinkStates, StartError> {
    // validate() guarantees both are set when [amqp] is.
    let key = config.oauth.conductor_key.clone().unwrap_or_default();
    let secret_path = config
        .oauth
        .conductor_secret_file
        .clone()
        .unwrap_or_default();
    let secret =
        std::fs::read_to_string(&secret_path).map_err(|e| StartError::ConductorSecret {
            path: secret_path.display().to_string(),
            reason: e.to_string(),
        })?;
    let conductor = replay::Conductor {
        key,
        secret: secret.trim_end_matches(['\r', '\n']).to_string(),
    };
    let replayer = Arc::new(replay::Replayer::new(
        &config.site,
        upstream.clone(),
        conductor,
        store.clone(),
        &config.replay,
    ));
    // Fails the start on an unreadable key; the publisher and subscriber load their own copies.
    authn::WireSecurity::load(amqp)?.warn_at_start();
    tracing::info!(site = %config.site, broker = %amqp.url, "federation enabled");
    let links = status::LinkStates::new();

    tasks.spawn(links.scope(amqp::publisher::run_publisher_with_drain(
        amqp.clone(),
        config.site.clone(),
        store.clone(),
        wake.clone(),
        publish_drain.clone(),
        deadline.clone(),
    )));
    let handler = replay::ReplayHandler(replayer.clone());
    let (cfg, site, st, stop) = (
        amqp.clone(),
        config.site.clone(),
        store.clone(),
        shutdown.clone(),
    );
    tasks.spawn(links.scope(async move {
        if let Err(e) = amqp::subscriber::run_subscriber(cfg, site, st, handler, stop).await {
            status::record_error(metrics::LINK_SUBSCRIBE, &e.to_string());
            tracing::error!(error = %e, "subscriber cannot start");
        }
    }));
    let stop = shutdown.clone();
    tasks.spawn(async move {
        replayer
            .retry_parked_every(std::time::Duration::from_secs(5), stop)
            .await
    });
    Ok(links)
}

/// Logs a warning for each configured certificate file `check` would fail (expired, not yet
/// valid, unreadable): the sidecar still starts (a peer refuses the handshake, with its reason).
fn warn_about_certificates(config: &Config) {
    let amqp = config.amqp.as_ref();
    let files = [
        ("proxy.tls_cert", config.proxy.tls_cert.as_ref()),
        ("amqp.cert", amqp.and_then(|a| a.cert.as_ref())),
        ("amqp.ca", amqp.and_then(|a| a.ca.as_ref())),
    ];
    for (key, path) in files {
        let Some(path) = path else { continue };
        let line = check::certificate(key, path);
        if !line.ok {
            tracing::warn!(key, problem = %line.detail, "certificate will be refused by peers: {line}");
        }
    }
}
