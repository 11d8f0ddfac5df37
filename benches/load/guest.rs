//! The requests the load harness sends: pre-signed guest requests (the realistic mix),
//! Conductor's registrations and tarball uploads, as raw HTTP/1.1 text for `wrk` or as
//! requests for a pooled hyper client. It only builds and sends requests; it measures nothing.
//!
//! Every request carries `Host: configserver.bench.example` and is signed (OAuth 1.0a,
//! header placement) for `http://configserver.bench.example/...`, which is the URL the
//! server rebuilds whether it is reached directly, through the sidecar or through nginx
//! (both keep `Host`). The emulator does not check nonces, so a signed request can be
//! replayed as often as a load generator likes.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use audrey_federation::oauth;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;

use crate::support::client::{audrey_data, encode_pairs, Creds, InstanceXml, ServiceXml};
use crate::support::site::CONDUCTOR;

pub const HOST: &str = "configserver.bench.example";
const TIMEOUT: Duration = Duration::from_secs(30);

/// One request, ready to send.
#[derive(Debug, Clone)]
pub struct Req {
    pub method: &'static str,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Req {
    /// Signs `method path` (with `form` in the body) for `creds`.
    fn signed(method: &'static str, path: String, form: &[(String, String)], creds: &Creds) -> Req {
        let url = format!("http://{HOST}{path}");
        let auth = oauth::authorization_header(method, &url, form, &creds.key, &creds.secret);
        let mut headers = vec![("Authorization".to_string(), auth)];
        let body = if form.is_empty() {
            String::new()
        } else {
            headers.push((
                "Content-Type".into(),
                "application/x-www-form-urlencoded".into(),
            ));
            encode_pairs(form)
        };
        Req {
            method,
            path,
            headers,
            body,
        }
    }

    /// The raw HTTP/1.1 request (keep-alive) for `wrk`.
    pub fn raw(&self) -> String {
        let mut s = format!("{} {} HTTP/1.1\r\nHost: {HOST}\r\n", self.method, self.path);
        for (k, v) in &self.headers {
            s.push_str(&format!("{k}: {v}\r\n"));
        }
        if self.method != "GET" {
            s.push_str(&format!("Content-Length: {}\r\n", self.body.len()));
        }
        s.push_str("\r\n");
        s.push_str(&self.body);
        s
    }
}

/// Instance `i` of `deployment`: provides `ipaddress`, one service with a plain value (so
/// `GET /configs` answers 200 without needing any other instance).
pub fn instance(prefix: &str, i: usize, deployment: &str) -> InstanceXml {
    InstanceXml::new(
        &format!("{prefix}-{i:05}"),
        deployment,
        &format!("secret-{i}"),
    )
    .provides("ipaddress")
    .service(ServiceXml::new("app_svc").value("port", "8080"))
}

pub fn own(x: &InstanceXml) -> Creds {
    Creds::new(&x.uuid, &x.secret)
}

pub fn register(x: &InstanceXml) -> Req {
    let form = vec![("data".to_string(), x.to_xml())];
    let conductor = Creds::new(CONDUCTOR.0, CONDUCTOR.1);
    Req::signed("POST", format!("/configs/1/{}", x.uuid), &form, &conductor)
}

pub fn put_params(x: &InstanceXml, value: &str) -> Req {
    let form = vec![(
        "audrey_data".to_string(),
        audrey_data(&[("ipaddress", value)]),
    )];
    Req::signed("PUT", format!("/params/2/{}", x.uuid), &form, &own(x))
}

pub fn get_params(x: &InstanceXml) -> Req {
    let mut r = Req::signed("GET", format!("/params/2/{}", x.uuid), &[], &own(x));
    r.headers.push(("Accept".into(), "text/plain".into()));
    r
}

pub fn get_configs(x: &InstanceXml) -> Req {
    Req::signed("GET", format!("/configs/2/{}", x.uuid), &[], &own(x))
}

pub fn get_files(x: &InstanceXml) -> Req {
    Req::signed("GET", format!("/files/2/{}", x.uuid), &[], &own(x))
}

/// `PUT /files` with a small tarball (multipart; the fields are not part of the signature).
pub fn put_files(x: &InstanceXml) -> Req {
    let mut r = Req::signed("PUT", format!("/files/1/{}", x.uuid), &[], &own(x));
    let boundary = "AudreyBenchBoundary";
    r.headers.push((
        "Content-Type".into(),
        format!("multipart/form-data; boundary={boundary}"),
    ));
    r.body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x.tgz\"\r\n\
         Content-Type: application/octet-stream\r\n\r\n{}\r\n--{boundary}--\r\n",
        "T".repeat(2048)
    );
    r
}

/// A guest's realistic mix, per instance: 5 `GET /configs` (polling until resolved),
/// 2 `GET /params`, 2 `PUT /params`, 1 `GET /files` (50/20/20/10 %).
pub fn mix(x: &InstanceXml) -> Vec<Req> {
    vec![
        get_params(x),
        get_configs(x),
        put_params(x, "10.0.0.5"),
        get_configs(x),
        get_files(x),
        get_configs(x),
        get_params(x),
        put_params(x, "10.0.0.6"),
        get_configs(x),
        get_configs(x),
    ]
}

/// A pooled keep-alive HTTP/1.1 client.
pub type Pool = Client<HttpConnector, Full<Bytes>>;

pub fn pool() -> Pool {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(1024)
        .build(connector)
}

/// Sends `req` to `addr` and returns the status and body.
pub async fn send(pool: &Pool, addr: SocketAddr, req: &Req) -> anyhow::Result<(u16, Bytes)> {
    let mut b = http::Request::builder()
        .method(req.method)
        .uri(format!("http://{addr}{}", req.path))
        .header(http::header::HOST, HOST);
    for (k, v) in &req.headers {
        b = b.header(k.as_str(), v.as_str());
    }
    let r = b.body(Full::new(Bytes::from(req.body.clone())))?;
    let resp = tokio::time::timeout(TIMEOUT, pool.request(r))
        .await
        .context("request timed out")??;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, body))
}

/// Sends every request in `reqs` (at most `parallel` at a time); each must answer 2xx.
pub async fn send_all(
    pool: &Pool,
    addr: SocketAddr,
    reqs: Vec<Req>,
    parallel: usize,
) -> anyhow::Result<()> {
    let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(parallel.max(1)));
    let mut set = tokio::task::JoinSet::new();
    for req in reqs {
        let permit = sem.clone().acquire_owned().await?;
        let pool = pool.clone();
        set.spawn(async move {
            let _permit = permit;
            let (status, body) = send(&pool, addr, &req).await?;
            anyhow::ensure!(
                (200..300).contains(&status),
                "{} {} -> {status} {}",
                req.method,
                req.path,
                String::from_utf8_lossy(&body)
            );
            Ok(())
        });
    }
    while let Some(r) = set.join_next().await {
        r??;
    }
    Ok(())
}
