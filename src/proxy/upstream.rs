//! The upstream Config Server: its address and the pooled HTTP/1.1 client to it.
//!
//! Owns connection reuse towards the upstream. It must not retry requests (a retried
//! `POST /configs` wipes reported values on the real server).

use std::time::Duration;

use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::body::ProxyBody;

/// Parses `http://host:port` into its authority; only plain http is supported towards
/// the local server (it sits on loopback or in the same pod).
pub fn parse_upstream(url: &str) -> Result<http::uri::Authority, String> {
    let uri: http::Uri = url.parse().map_err(|e| format!("not a URL: {e}"))?;
    if uri.scheme_str() != Some("http") {
        return Err("must be http://host:port (the local Config Server)".into());
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err("must not carry a path or query".into());
    }
    uri.authority()
        .cloned()
        .ok_or_else(|| "missing host".into())
}

/// A keep-alive HTTP/1.1 client. `idle` must stay below the upstream's own idle timeout
/// so we never reuse a connection the server is closing. `set_host(false)`: the client's
/// `Host` goes through untouched.
pub fn client(idle: Duration) -> Client<HttpConnector, ProxyBody> {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(Duration::from_secs(5)));
    Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(idle)
        .pool_max_idle_per_host(256)
        .set_host(false)
        .http1_preserve_header_case(true)
        .build(connector)
}
