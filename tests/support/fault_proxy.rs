//! An HTTP fault proxy a test puts between a sidecar and its server: it passes requests on
//! (one fresh connection per request), delays each by a set time, holds the server's answer
//! for a set time (the server is busy: it has the request, its caller waits), answers `500`
//! itself without forwarding, or is "down" (connections are accepted and dropped
//! unanswered). The mode can change at any time; a request already forwarded finishes in the
//! mode it started. Like thin, a request it has read whole is carried to the server whatever
//! its caller does meanwhile (in [`Mode::Hold`]).
//! It must not alter what it forwards (headers and `Host` untouched: the server's OAuth
//! signatures cover them) and listens on loopback only.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// What the proxy does with the next request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Pass,
    /// Wait this long, then forward.
    Slow(Duration),
    /// Forward at once (on a task of its own: the server gets the request even if the caller
    /// goes away), then hold the server's answer this long.
    Hold(Duration),
    /// Answer `500 <h1>Internal Server Error</h1>` without forwarding.
    Error500,
    /// Drop every connection without an answer (and close the ones open).
    Down,
}

/// A running proxy; it stops when dropped.
pub struct FaultProxy {
    addr: SocketAddr,
    mode: Arc<watch::Sender<Mode>>,
    task: tokio::task::JoinHandle<()>,
    /// Requests read whole (before they are forwarded or answered).
    received: Arc<AtomicU64>,
}

impl FaultProxy {
    /// Proxy `127.0.0.1:<free port>` to `target`, in [`Mode::Pass`].
    pub async fn start(target: SocketAddr) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = watch::channel(Mode::Pass);
        let received = Arc::new(AtomicU64::new(0));
        let counter = received.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                if *rx.borrow() == Mode::Down {
                    drop(stream);
                    continue;
                }
                let mut watch = rx.clone();
                let modes = rx.clone();
                let counter = counter.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        forward(target, *modes.borrow(), req, counter.clone())
                    });
                    let conn = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service);
                    tokio::select! {
                        _ = conn => {}
                        _ = watch.wait_for(|m| *m == Mode::Down) => {}
                    }
                });
            }
        });
        FaultProxy {
            addr,
            mode: Arc::new(tx),
            task,
            received,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }

    pub fn mode(&self) -> Mode {
        *self.mode.borrow()
    }

    /// Requests read whole so far.
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::SeqCst)
    }

    /// Waits until `n` requests were read whole (at most `limit`; panics past it).
    pub async fn until_received(&self, n: u64, limit: Duration) {
        let deadline = Instant::now() + limit;
        while self.received() < n {
            assert!(
                Instant::now() < deadline,
                "fault proxy: {} of {n} requests after {limit:?}",
                self.received()
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Answer = hyper::Response<Full<Bytes>>;

async fn forward(
    target: SocketAddr,
    mode: Mode,
    req: hyper::Request<Incoming>,
    received: Arc<AtomicU64>,
) -> Result<Answer, String> {
    if let Mode::Hold(d) = mode {
        let (parts, body) = req.into_parts();
        let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
        let req = hyper::Request::from_parts(parts, Full::new(body));
        let sent = tokio::spawn(super::client::try_exchange(target, req));
        received.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(d).await;
        let (status, headers, body) = sent
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        let mut r = hyper::Response::new(Full::new(body));
        *r.status_mut() = status;
        *r.headers_mut() = headers;
        return Ok(r);
    }
    match mode {
        Mode::Down => return Err("down".into()),
        Mode::Error500 => {
            let mut r = hyper::Response::new(Full::new(Bytes::from_static(
                b"<h1>Internal Server Error</h1>",
            )));
            *r.status_mut() = hyper::StatusCode::INTERNAL_SERVER_ERROR;
            return Ok(r);
        }
        Mode::Slow(d) => tokio::time::sleep(d).await,
        Mode::Pass | Mode::Hold(_) => {}
    }
    let (parts, body) = req.into_parts();
    let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
    received.fetch_add(1, Ordering::SeqCst);
    let req = hyper::Request::from_parts(parts, Full::new(body));
    let (status, headers, body) = super::client::try_exchange(target, req)
        .await
        .map_err(|e| e.to_string())?;
    let mut r = hyper::Response::new(Full::new(body));
    *r.status_mut() = status;
    *r.headers_mut() = headers;
    Ok(r)
}
