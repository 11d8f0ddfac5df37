//! audrey-federation: a sidecar that federates unmodified Audrey Config Servers.
//!
//! The library holds every concept; `main.rs` only parses flags, sets up tracing and
//! metrics, binds the listeners and calls [`run`]. See ARCHITECTURE.md for the codemap.
#![forbid(unsafe_code)]

pub mod admin;
pub mod amqp;
pub mod body;
pub mod capture;
pub mod change;
pub mod config;
pub mod learn;
pub mod metrics;
pub mod oauth;
pub mod proxy;
pub mod replay;
pub mod serve;
pub mod store;
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
}

/// Runs the sidecar until `shutdown` fires, then drains within `shutdown.drain_timeout`.
pub async fn run(
    config: Config,
    listeners: Listeners,
    metrics: PrometheusHandle,
    shutdown: CancellationToken,
) -> Result<(), StartError> {
    config.validate()?;
    let store = store::Store::open(&config.state.dir, &config.site)?;
    let tls = match (&config.proxy.tls_cert, &config.proxy.tls_key) {
        (Some(c), Some(k)) => Some(tls::server_acceptor(c, k)?),
        _ => None,
    };
    let wake = Arc::new(tokio::sync::Notify::new());
    let proxy =
        proxy::Proxy::new(&config.proxy, store.clone(), wake.clone()).map_err(|reason| {
            config::ConfigError::Invalid {
                key: "proxy.upstream",
                reason,
            }
        })?;
    let admin = Arc::new(admin::Admin {
        upstream: proxy::upstream::parse_upstream(&config.proxy.upstream).map_err(|reason| {
            config::ConfigError::Invalid {
                key: "proxy.upstream",
                reason,
            }
        })?,
        store: store.clone(),
        metrics,
    });
    if config.amqp.is_none() {
        tracing::warn!(
            "no [amqp] section: running as a capturing proxy only; the outbox keeps every change until federation is enabled"
        );
    }

    let drain = config.shutdown.drain_timeout;
    let tasks = TaskTracker::new();
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
    tasks.spawn(serve::serve(
        "proxy",
        listeners.proxy,
        tls,
        move |req, peer| proxy.clone().handle(req, peer),
        proxy_stop,
        drain,
    ));
    // The admin listener outlives the proxy's drain so probes keep answering.
    let admin_stop = CancellationToken::new();
    let admin_task = tokio::spawn(serve::serve(
        "admin",
        listeners.admin,
        None,
        move |req, _peer| admin.clone().handle(req),
        admin_stop.clone(),
        std::time::Duration::from_secs(1),
    ));
    tasks.close();
    shutdown.cancelled().await;
    tasks.wait().await;
    admin_stop.cancel();
    let _ = admin_task.await;
    tracing::info!("stopped");
    Ok(())
}
