//! Accept loop shared by the proxy and admin listeners.
//!
//! Owns accepting TCP (optionally TLS) connections, serving each with hyper-util's
//! HTTP/1.1 + HTTP/2 builder, and draining them gracefully when the shutdown token
//! fires; and the per-listener limits ([`Limits`]): a connection cap, a TLS handshake
//! deadline, a header read deadline. It must not know what a request means: that is the
//! service's job.

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
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
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

/// What one listener allows a client.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Time to send a request's whole head (HTTP/1).
    pub header_read_timeout: Duration,
    /// Time to finish the TLS handshake (TLS listeners only).
    pub tls_handshake_timeout: Duration,
    /// Connections open at once; a new one beyond it is refused.
    pub max_connections: usize,
}

/// The plain-HTTP answer to a connection over `max_connections` (then it is closed).
const BUSY: &[u8] =
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\n\
content-length: 39\r\nconnection: close\r\n\r\ntoo many connections (max_connections)\n";

/// Serves `listener` until `shutdown` fires, then waits up to `drain` for in-flight
/// connections to finish. Returns the number of connections still open at the deadline.
///
/// An HTTP/1 client that has not sent a request's whole head `header_read_timeout` after it
/// began (or after the previous response) is disconnected (slow-loris). A head larger than
/// hyper's read buffer (~400 KiB) or with more than 100 header fields is answered 431, a
/// request target over 64 KiB 414, any other malformed head 400, and the connection closed;
/// such a request never reaches the service. A TLS client that has not finished its handshake
/// within `tls_handshake_timeout` (one that never sends a ClientHello) is disconnected. With
/// `max_connections` open, a new connection is answered 503 (plain HTTP; TLS: closed) at once,
/// never read, and counted.
pub async fn serve<S, F>(
    name: &'static str,
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    service: S,
    shutdown: CancellationToken,
    drain: Duration,
    limits: Limits,
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
        .header_read_timeout(limits.header_read_timeout);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
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
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            refuse_busy(name, stream, tls.is_some(), addr);
            continue;
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
        crate::metrics::connection_opened(name);
        tokio::spawn(async move {
            let _slot = slot;
            let _open = OpenConnection(name);
            let result = match tls {
                None => {
                    if !first_byte_within(&stream, limits.header_read_timeout).await {
                        crate::metrics::connection_closed(name, "header_read_timeout");
                        tracing::debug!(listener = name, peer = %addr, "nothing sent within the header read timeout; disconnected");
                        return;
                    }
                    watcher
                        .watch(
                            builder
                                .serve_connection(TokioIo::new(stream), svc)
                                .into_owned(),
                        )
                        .await
                }
                Some(acceptor) => match tokio::time::timeout(
                    limits.tls_handshake_timeout,
                    acceptor.accept(stream),
                )
                .await
                {
                    Err(_) => {
                        crate::metrics::connection_closed(name, "tls_handshake_timeout");
                        tracing::debug!(listener = name, peer = %addr, "TLS handshake not finished within proxy.tls_handshake_timeout; disconnected");
                        return;
                    }
                    Ok(Ok(tls_stream)) => {
                        watcher
                            .watch(
                                builder
                                    .serve_connection(TokioIo::new(tls_stream), svc)
                                    .into_owned(),
                            )
                            .await
                    }
                    Ok(Err(e)) => {
                        crate::metrics::connection_closed(name, "tls_handshake_failed");
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

/// Waits until the client sends its first byte (or closes), for at most `limit`. hyper starts
/// its header read timer only when a head begins, and hyper-util's HTTP/1-or-2 detection waits
/// for bytes before that: without this, a client that connects and sends nothing would hold
/// its task (and a `max_connections` slot) for ever.
async fn first_byte_within(stream: &TcpStream, limit: Duration) -> bool {
    let mut byte = [0u8; 1];
    tokio::time::timeout(limit, stream.peek(&mut byte))
        .await
        .is_ok()
}

/// Counts a served connection as open until dropped (the task's end, however it ends).
struct OpenConnection(&'static str);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        crate::metrics::connection_ended(self.0);
    }
}

/// A connection over the cap: answered 503 if the listener is plain HTTP (one non-blocking
/// write into the empty socket buffer; nothing is read), then closed; counted and logged.
fn refuse_busy(name: &'static str, stream: TcpStream, tls: bool, addr: SocketAddr) {
    if !tls {
        let _ = stream.try_write(BUSY);
    }
    crate::metrics::connection_closed(name, "max_connections");
    tracing::warn!(listener = name, peer = %addr, "connection refused: max_connections open");
}
