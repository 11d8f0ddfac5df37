//! The fast fixed-response upstream for the pure-overhead rows: a tiny hyper HTTP/1.1
//! server on its own two-thread runtime that reads each request body and answers 200 with
//! the emulator's headers and a two-byte body (`||`, what `PUT /params` answers). It
//! stands in for the Config Server so that the upstream is never the bottleneck of a
//! proxy measurement; it knows no routes and checks no signatures.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

/// A running fixed upstream; its runtime (and so the server) stops on drop.
pub struct Fixed {
    pub addr: SocketAddr,
    _rt: tokio::runtime::Runtime,
}

impl Fixed {
    pub fn start() -> anyhow::Result<Fixed> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("fixed-upstream")
            .enable_all()
            .build()?;
        let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
        let addr = listener.local_addr()?;
        rt.spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let _ = stream.set_nodelay(true);
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(|req: Request<Incoming>| async move {
                        let _ = req.into_body().collect().await;
                        let resp = Response::builder()
                            .header("content-type", "text/html;charset=utf-8")
                            .body(Full::new(Bytes::from_static(b"||")))
                            .unwrap_or_default();
                        Ok::<_, Infallible>(resp)
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Ok(Fixed { addr, _rt: rt })
    }
}
