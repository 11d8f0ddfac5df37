//! `audrey-config-server-emulator`: a faithful stand-in for the legacy Audrey Config Server
//! (Sinatra under thin, app version 0.5.2) for tests, benches and the demo. See
//! `/work/shared/reference/config-server.md` and `routes.rs` for the behaviour.
//!
//! This file owns the command line, the listener, HTTP/1.1 connections (keep-alive with an
//! idle timeout) and the one-request-at-a-time lock; it must not contain route logic.
//! It prints exactly one line to stdout, `listening on <addr>`, once it accepts connections.
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

mod auth;
mod formats;
mod model;
mod reports;
mod routes;
mod store;
mod tarball;
mod web;

/// Largest request body accepted (instance-configs and tarballs are small).
const MAX_BODY: usize = 64 * 1024 * 1024;

#[derive(Debug, Parser)]
#[command(
    version,
    about = "Faithful emulator of the legacy Audrey Config Server"
)]
struct Args {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, env = "AUDREY_EMULATOR_LISTEN", default_value = "127.0.0.1:4567")]
    listen: SocketAddr,
    /// Storage directory (instances/, deployables/, oauth/), created if missing.
    #[arg(long, env = "AUDREY_EMULATOR_STORAGE_DIR")]
    storage_dir: PathBuf,
    /// Conductor's OAuth consumer key; its secret is read from --conductor-secret-file.
    #[arg(
        long,
        env = "AUDREY_EMULATOR_CONDUCTOR_KEY",
        requires = "conductor_secret_file"
    )]
    conductor_key: Option<String>,
    /// File holding Conductor's OAuth secret; copied to STORAGE_DIR/oauth/<key>.
    #[arg(
        long,
        env = "AUDREY_EMULATOR_CONDUCTOR_SECRET_FILE",
        requires = "conductor_key"
    )]
    conductor_secret_file: Option<PathBuf>,
    /// Close a keep-alive connection after this many idle seconds.
    #[arg(long, env = "AUDREY_EMULATOR_IDLE_TIMEOUT_SECS", default_value_t = 30)]
    idle_timeout_secs: u64,
    /// Test aid, not part of the real server: append one JSON line per change the server
    /// accepted (a 2xx answer to POST /configs, PUT /params or DELETE /deployment), in the
    /// order they were applied. Off by default.
    #[arg(long, env = "AUDREY_EMULATOR_REQUEST_LOG")]
    request_log: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let args = Args::parse();
    let store = store::Store::open(&args.storage_dir)
        .with_context(|| format!("opening storage {}", args.storage_dir.display()))?;
    if let (Some(key), Some(file)) = (&args.conductor_key, &args.conductor_secret_file) {
        anyhow::ensure!(
            store::safe_name(key),
            "--conductor-key {key:?} is not a usable file name"
        );
        let secret = std::fs::read_to_string(file)
            .with_context(|| format!("reading --conductor-secret-file {}", file.display()))?;
        store
            .store_consumer(key, &secret)
            .context("writing the conductor consumer")?;
    }
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding --listen {}", args.listen))?;
    let local = listener.local_addr()?;
    let mut stdout = std::io::stdout();
    writeln!(stdout, "listening on {local}")?;
    stdout.flush()?;

    let request_log = match &args.request_log {
        Some(path) => Some(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("opening --request-log {}", path.display()))?,
        ),
        None => None,
    };
    let app = Arc::new(Mutex::new(routes::App { store, request_log }));
    let idle = Duration::from_secs(args.idle_timeout_secs.max(1));
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    continue;
                }
            },
            _ = tokio::signal::ctrl_c() => break,
            _ = sigterm.recv() => break,
        };
        let app = app.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| serve(app.clone(), peer, local, req));
            let result = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(idle)
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(e) = result {
                tracing::debug!(error = %e, %peer, "connection ended");
            }
        });
    }
    Ok(())
}

/// Reads the whole request, then runs the application under the lock on a blocking thread
/// (storage is plain files), one request at a time like thin.
async fn serve(
    app: Arc<Mutex<routes::App>>,
    peer: SocketAddr,
    local: SocketAddr,
    req: hyper::Request<Incoming>,
) -> Result<hyper::Response<Full<Bytes>>, std::convert::Infallible> {
    let (parts, body) = req.into_parts();
    let body = match Limited::new(body, MAX_BODY).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) => {
            tracing::debug!(error = %e, "reading request body failed");
            return Ok(plain(400, "Bad Request"));
        }
    };
    let request = web::Req {
        method: parts.method.as_str().to_string(),
        path: parts.uri.path().to_string(),
        query: parts.uri.query().unwrap_or("").to_string(),
        headers: parts
            .headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body,
        peer: peer.ip(),
        local,
    };
    let resp = tokio::task::spawn_blocking(move || match app.lock() {
        Ok(app) => routes::handle(&app, &request),
        Err(poisoned) => routes::handle(&poisoned.into_inner(), &request),
    })
    .await;
    let resp = match resp {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "request handler failed");
            return Ok(plain(500, "<h1>Internal Server Error</h1>"));
        }
    };
    let mut builder = hyper::Response::builder().status(resp.status);
    for (name, value) in &resp.headers {
        builder = builder.header(*name, value.as_str());
    }
    Ok(builder
        .body(Full::new(Bytes::from(resp.body)))
        .unwrap_or_else(|_| plain(500, "<h1>Internal Server Error</h1>")))
}

fn plain(status: u16, body: &'static str) -> hyper::Response<Full<Bytes>> {
    let mut resp = hyper::Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *resp.status_mut() =
        hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/html;charset=utf-8"),
    );
    resp
}
