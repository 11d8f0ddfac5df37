//! Tiny in-test upstreams for proxy-only behaviour (the Config Server emulator covers
//! the real server): an echo server that reports what it received, and a server that
//! accepts connections and never answers (for 504).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

/// Answers every request with 200 (or the status in `x-echo-status`) and headers describing it: `x-echo-method`,
/// `x-echo-uri`, `x-echo-host`, `x-echo-xff`, `x-echo-xfp`, `x-echo-bytes` (body length,
/// counted while streaming, never buffered), `x-echo-headers` (request header names).
/// The response also carries hop-by-hop headers that a proxy must remove.
pub async fn echo() -> SocketAddr {
    echo_counting().await.0
}

/// [`echo`], also counting the requests it has started to handle, and holding each answer
/// for `x-echo-delay-ms` milliseconds when the request asks (to keep requests in flight).
pub async fn echo_counting() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let started = Arc::new(AtomicUsize::new(0));
    let counter = started.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let counter = counter.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let counter = counter.clone();
                    async move {
                        counter.fetch_add(1, Ordering::SeqCst);
                        let delay: u64 = req
                            .headers()
                            .get("x-echo-delay-ms")
                            .and_then(|v| v.to_str().ok()?.parse().ok())
                            .unwrap_or(0);
                        tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
                        let h = |n: &str| {
                            req.headers()
                                .get_all(n)
                                .iter()
                                .map(|v| v.to_str().unwrap_or("?").to_string())
                                .collect::<Vec<_>>()
                                .join("|")
                        };
                        let names: Vec<String> =
                            req.headers().keys().map(|k| k.to_string()).collect();
                        let status: u16 = req
                            .headers()
                            .get("x-echo-status")
                            .and_then(|v| v.to_str().ok()?.parse().ok())
                            .unwrap_or(200);
                        let mut resp = Response::builder()
                            .status(status)
                            .header("x-echo-method", req.method().as_str())
                            .header("x-echo-uri", req.uri().to_string())
                            .header("x-echo-host", h("host"))
                            .header("x-echo-xff", h("x-forwarded-for"))
                            .header("x-echo-xfp", h("x-forwarded-proto"))
                            .header("x-echo-headers", names.join(","))
                            .header("content-type", "text/html;charset=utf-8")
                            .header("connection", "x-hop")
                            .header("x-hop", "must-not-pass")
                            .header("keep-alive", "timeout=5");
                        let mut body = req.into_body();
                        let mut n: u64 = 0;
                        while let Some(frame) = body.frame().await {
                            if let Ok(data) = frame.map(|f| f.into_data()) {
                                n += data.map(|d| d.len() as u64).unwrap_or(0);
                            }
                        }
                        resp = resp.header("x-echo-bytes", n.to_string());
                        Ok::<_, Infallible>(
                            resp.body(Full::new(Bytes::from_static(b"echo"))).unwrap(),
                        )
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, started)
}

/// Accepts connections and reads from them, never answering.
pub async fn silent() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    addr
}

/// A loopback port with nothing listening on it.
pub fn closed_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}
