//! The federation run's observation point: a small HTTP/1.1 relay between a receiving
//! site's sidecar and its emulator that forwards every request unchanged and notes when
//! the emulator has answered a replayed `PUT /params` with a 2xx (the value is applied at
//! that site) and which change it was (`ipaddress` = `v<seq>`), and counts registrations.
//! It also holds the times at which the origin site acknowledged each guest's PUT, so the
//! lag is measured from one clock. It forwards only; it never alters a request.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

use super::guest::{self, Pool};

/// Acknowledgements at the origin and applications at every tapped site.
#[derive(Default)]
pub struct Recorder {
    acks: Mutex<HashMap<u64, Instant>>,
    /// (site index, change seq, when the emulator answered it).
    applied: Mutex<Vec<(usize, u64, Instant)>>,
    registrations: Mutex<HashMap<usize, u64>>,
    pub forwarded: AtomicU64,
}

impl Recorder {
    pub fn ack(&self, seq: u64, at: Instant) {
        if let Ok(mut m) = self.acks.lock() {
            m.insert(seq, at);
        }
    }

    pub fn registrations(&self, site: usize) -> u64 {
        self.registrations
            .lock()
            .map(|m| m.get(&site).copied().unwrap_or(0))
            .unwrap_or(0)
    }

    /// Distinct changes with seq in `range` applied at `site`, and the last time one was.
    pub fn applied_at(&self, site: usize, range: std::ops::Range<u64>) -> (u64, Option<Instant>) {
        let Ok(v) = self.applied.lock() else {
            return (0, None);
        };
        let mut seen = HashSet::new();
        let mut last = None;
        for &(s, seq, at) in v.iter() {
            if s == site && range.contains(&seq) && seen.insert(seq) {
                last = Some(last.map_or(at, |l: Instant| l.max(at)));
            }
        }
        (seen.len() as u64, last)
    }

    /// Acknowledged changes with seq in `range`.
    pub fn acked(&self, range: std::ops::Range<u64>) -> u64 {
        self.acks
            .lock()
            .map(|m| m.keys().filter(|k| range.contains(k)).count() as u64)
            .unwrap_or(0)
    }

    /// Lags (seconds, ack at the origin to applied at a site) of the changes in `range`, at
    /// every site except `origin`: the first application of each change per site.
    pub fn lags(&self, origin: usize, range: std::ops::Range<u64>) -> Vec<f64> {
        let (Ok(acks), Ok(applied)) = (self.acks.lock(), self.applied.lock()) else {
            return Vec::new();
        };
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for &(site, seq, at) in applied.iter() {
            if site == origin || !range.contains(&seq) || !seen.insert((site, seq)) {
                continue;
            }
            if let Some(ack) = acks.get(&seq) {
                out.push(at.saturating_duration_since(*ack).as_secs_f64());
            }
        }
        out
    }
}

/// `v<seq>` from a form body's `audrey_data=|ipaddress&BASE64|`.
fn seq_of(body: &[u8]) -> Option<u64> {
    let data = form_urlencoded::parse(body)
        .find(|(k, _)| k == "audrey_data")
        .map(|(_, v)| v.into_owned())?;
    let b64 = data.trim_matches('|').split_once('&')?.1;
    let value = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
    std::str::from_utf8(&value)
        .ok()?
        .strip_prefix('v')?
        .parse()
        .ok()
}

/// Starts a tap for site `site` in front of `upstream` on the current runtime.
pub async fn start(
    site: usize,
    upstream: SocketAddr,
    rec: Arc<Recorder>,
) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let pool = guest::pool();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let _ = stream.set_nodelay(true);
            let (pool, rec) = (pool.clone(), rec.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let (pool, rec) = (pool.clone(), rec.clone());
                    async move { Ok::<_, Infallible>(forward(&pool, upstream, site, &rec, req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok(addr)
}

async fn forward(
    pool: &Pool,
    upstream: SocketAddr,
    site: usize,
    rec: &Recorder,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let (mut parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let pq = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    let Ok(uri) = format!("http://{upstream}{pq}").parse() else {
        return status(400);
    };
    parts.uri = uri;
    let is_put_params = parts.method == http::Method::PUT && pq.starts_with("/params/");
    let is_register = parts.method == http::Method::POST && pq.starts_with("/configs/");
    let seq = if is_put_params { seq_of(&body) } else { None };
    let resp = match pool
        .request(Request::from_parts(parts, Full::new(body)))
        .await
    {
        Ok(r) => r,
        Err(_) => return status(502),
    };
    let (parts, body) = resp.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    rec.forwarded.fetch_add(1, Ordering::Relaxed);
    if parts.status.is_success() {
        let now = Instant::now();
        if let Some(seq) = seq {
            if let Ok(mut v) = rec.applied.lock() {
                v.push((site, seq, now));
            }
        } else if is_register {
            if let Ok(mut m) = rec.registrations.lock() {
                *m.entry(site).or_insert(0) += 1;
            }
        }
    }
    Response::from_parts(parts, Full::new(body))
}

fn status(code: u16) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = http::StatusCode::from_u16(code).unwrap_or(http::StatusCode::BAD_GATEWAY);
    r
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_the_change_number() {
        let body = b"audrey_data=%7Cipaddress%26djQy%7C";
        assert_eq!(super::seq_of(body), Some(42));
        assert_eq!(super::seq_of(b"audrey_data=%7C%26%7C"), None);
    }
}
