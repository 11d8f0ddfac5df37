//! Accept loop shared by the proxy and admin listeners.
//!
//! Owns accepting TCP (optionally TLS) connections, serving each with hyper-util's
//! HTTP/1.1 + HTTP/2 builder, and draining them gracefully when the shutdown token
//! fires. It must not know what a request means: that is the service's job.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::body::ProxyBody;

/// Information about the accepted connection, handed to the service with every request.
#[derive(Debug, Clone, Copy)]
pub struct Peer {
    pub addr: SocketAddr,
    /// True when the listener terminated TLS.
    pub tls: bool,
}

/// Serves `listener` until `shutdown` fires, then waits up to `drain` for in-flight
/// connections to finish. Returns the number of connections still open at the deadline.
///
/// An HTTP/1 client that has not sent a request's whole head `header_read_timeout` after it
/// began (or after the previous response) is disconnected (slow-loris). A head larger than
/// hyper's read buffer (~400 KiB) or with more than 100 header fields is answered 431, a
/// request target over 64 KiB 414, any other malformed head 400, and the connection closed;
/// such a request never reaches the service.
pub async fn serve<S, F>(
    name: &'static str,
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    service: S,
    shutdown: CancellationToken,
    drain: Duration,
    header_read_timeout: Duration,
) -> usize
where
    S: Fn(Request<Incoming>, Peer) -> F + Send + Sync + 'static,
    F: Future<Output = Response<ProxyBody>> + Send + 'static,
{
    let service = Arc::new(service);
    let graceful = GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(header_read_timeout);
    loop {
        let (stream, addr) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: log, back off briefly, keep serving.
                    tracing::warn!(listener = name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let peer = Peer {
            addr,
            tls: tls.is_some(),
        };
        let svc_fn = service.clone();
        let svc = hyper::service::service_fn(move |req| {
            let fut = svc_fn(req, peer);
            async move { Ok::<_, Infallible>(fut.await) }
        });
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let tls = tls.clone();
        tokio::spawn(async move {
            let result = match tls {
                None => {
                    watcher
                        .watch(
                            builder
                                .serve_connection(TokioIo::new(stream), svc)
                                .into_owned(),
                        )
                        .await
                }
                Some(acceptor) => match acceptor.accept(stream).await {
                    Ok(tls_stream) => {
                        watcher
                            .watch(
                                builder
                                    .serve_connection(TokioIo::new(tls_stream), svc)
                                    .into_owned(),
                            )
                            .await
                    }
                    Err(e) => {
                        tracing::debug!(listener = name, peer = %addr, error = %e, "TLS handshake failed");
                        return;
                    }
                },
            };
            if let Err(e) = result {
                tracing::debug!(listener = name, peer = %addr, error = %e, "connection ended with error");
            }
        });
    }
    drop(listener);
    tracing::info!(
        listener = name,
        open = graceful.count(),
        "stopped accepting; draining connections"
    );
    match tokio::time::timeout(drain, graceful.shutdown()).await {
        Ok(()) => 0,
        Err(_) => {
            tracing::warn!(
                listener = name,
                "drain timeout reached with connections still open"
            );
            1
        }
    }
}
