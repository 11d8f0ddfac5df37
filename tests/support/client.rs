//! A small HTTP/1.1 client speaking the Config Server API the way Conductor and the guest
//! agent do (OAuth in the header, the query or the form body), plus builders for
//! instance-config XML and `audrey_data`. The target address and the `Host` header are
//! independent, so the same requests can be aimed at a sidecar while still being signed for
//! the server's URL. Every request is bounded by a timeout.
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use audrey_federation::oauth;
use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;

const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);

/// An OAuth consumer key and secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Creds {
    pub key: String,
    pub secret: String,
}

impl Creds {
    pub fn new(key: &str, secret: &str) -> Creds {
        Creds {
            key: key.to_string(),
            secret: secret.to_string(),
        }
    }
}

/// Where the OAuth parameters travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// `Authorization: OAuth …` (Conductor, older agents).
    Header,
    /// Form body beside the fields (newer python-oauth2).
    Body,
    /// Query string (guest GETs).
    Query,
}

#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Response {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    }
}

/// A request to sign and send with [`Client::signed`].
#[derive(Debug, Clone)]
pub struct Signed {
    pub method: String,
    /// Path without query.
    pub path: String,
    pub query: Vec<(String, String)>,
    pub form: Vec<(String, String)>,
    pub creds: Creds,
    pub placement: Placement,
    /// Sign without the form fields (a legacy client); the body is still sent.
    pub unsigned_body: bool,
    pub headers: Vec<(String, String)>,
}

impl Signed {
    pub fn new(method: &str, path: &str, creds: &Creds) -> Signed {
        Signed {
            method: method.to_string(),
            path: path.to_string(),
            query: Vec::new(),
            form: Vec::new(),
            creds: creds.clone(),
            placement: Placement::Header,
            unsigned_body: false,
            headers: Vec::new(),
        }
    }

    pub fn form(mut self, name: &str, value: &str) -> Signed {
        self.form.push((name.to_string(), value.to_string()));
        self
    }

    pub fn query(mut self, name: &str, value: &str) -> Signed {
        self.query.push((name.to_string(), value.to_string()));
        self
    }

    pub fn placement(mut self, placement: Placement) -> Signed {
        self.placement = placement;
        self
    }

    pub fn header(mut self, name: &str, value: &str) -> Signed {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }
}

/// Sends requests to `target` with `Host: host` (by default the target address).
#[derive(Debug, Clone)]
pub struct Client {
    target: SocketAddr,
    host: String,
    scheme: String,
    headers: Vec<(String, String)>,
    /// TLS to the target (server name `localhost`), or plain TCP.
    tls: Option<std::sync::Arc<rustls::ClientConfig>>,
}

impl Client {
    pub fn new(target: SocketAddr) -> Client {
        Client {
            target,
            host: target.to_string(),
            scheme: "http".into(),
            headers: Vec::new(),
            tls: None,
        }
    }

    /// Speaks TLS to the target (`localhost`, trusting only `ca`) and signs for `https`.
    pub fn with_tls(mut self, ca: &std::path::Path) -> Client {
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls::pki_types::CertificateDer::pem_file_iter(ca).expect("CA file") {
            roots
                .add(c.expect("CA certificate"))
                .expect("CA certificate");
        }
        let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        self.tls = Some(std::sync::Arc::new(cfg));
        self.scheme = "https".into();
        self
    }

    /// The `Host` header to send (and sign for).
    pub fn with_host(mut self, host: &str) -> Client {
        self.host = host.to_string();
        self
    }

    /// The scheme to sign for (e.g. `https` behind a TLS proxy); the transport stays plain.
    pub fn with_scheme(mut self, scheme: &str) -> Client {
        self.scheme = scheme.to_string();
        self
    }

    /// A header sent with every request.
    pub fn with_header(mut self, name: &str, value: &str) -> Client {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    /// The URL the server rebuilds for `path_and_query` (what gets signed).
    pub fn url(&self, path_and_query: &str) -> String {
        format!("{}://{}{}", self.scheme, self.host, path_and_query)
    }

    /// Sends one request on a fresh connection and reads the whole answer.
    pub async fn send(
        &self,
        method: &str,
        path_and_query: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> anyhow::Result<Response> {
        tokio::time::timeout(
            REQUEST_TIMEOUT,
            self.send_inner(method, path_and_query, headers, body.into()),
        )
        .await
        .context("request timed out")?
    }

    async fn send_inner(
        &self,
        method: &str,
        path_and_query: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> anyhow::Result<Response> {
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(path_and_query)
            .header(hyper::header::HOST, &self.host);
        for (k, v) in &self.headers {
            req = req.header(k.as_str(), v.as_str());
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Full::new(body))?;
        let (status, headers, body) = match &self.tls {
            None => try_exchange(self.target, req).await?,
            Some(cfg) => {
                let tcp = tokio::net::TcpStream::connect(self.target).await?;
                let name = rustls::pki_types::ServerName::try_from("localhost")?;
                let tls = tokio_rustls::TlsConnector::from(cfg.clone())
                    .connect(name, tcp)
                    .await?;
                exchange_on(tls, req).await?
            }
        };
        Ok(Response {
            status: status.as_u16(),
            headers,
            body,
        })
    }

    /// Signs `req` for this client's URL and sends it.
    pub async fn signed(&self, req: Signed) -> anyhow::Result<Response> {
        let (method, path, headers, body) = self.sign(req);
        let hs: Vec<(&str, &str)> = headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        self.send(&method, &path, &hs, body).await
    }

    /// Signs `req` for this client's URL: method, path and query, the request's headers
    /// (not `Host` nor this client's own), body.
    pub fn sign(&self, req: Signed) -> (String, String, Vec<(String, String)>, Bytes) {
        let mut path = req.path.clone();
        if !req.query.is_empty() {
            path = format!("{path}?{}", encode_pairs(&req.query));
        }
        let signed_form: &[(String, String)] = if req.unsigned_body { &[] } else { &req.form };
        let params = oauth::fresh_params(
            &req.method,
            &self.url(&path),
            signed_form,
            &req.creds.key,
            &req.creds.secret,
        );
        let mut headers: Vec<(String, String)> = req.headers.clone();
        let mut form = req.form.clone();
        match req.placement {
            Placement::Header => {
                headers.push(("Authorization".into(), oauth::header_from_params(&params)))
            }
            Placement::Body => form.extend(params),
            Placement::Query => {
                let sep = if path.contains('?') { '&' } else { '?' };
                path = format!("{path}{sep}{}", encode_pairs(&params));
            }
        }
        let body = if form.is_empty() && req.method == "GET" {
            Bytes::new()
        } else {
            headers.push((
                "Content-Type".into(),
                "application/x-www-form-urlencoded".into(),
            ));
            Bytes::from(encode_pairs(&form))
        };
        (req.method, path, headers, body)
    }

    /// The target address.
    pub fn target(&self) -> SocketAddr {
        self.target
    }

    /// Conductor's `POST /configs/:v/:uuid` with `data=<xml>`.
    pub async fn register(
        &self,
        conductor: &Creds,
        v: u32,
        uuid: &str,
        xml: &str,
    ) -> anyhow::Result<Response> {
        self.signed(
            Signed::new("POST", &format!("/configs/{v}/{uuid}"), conductor).form("data", xml),
        )
        .await
    }

    /// The guest's `PUT /params/:v/:uuid`, signed with its own key (the uuid) and secret.
    pub async fn put_params(
        &self,
        v: u32,
        uuid: &str,
        secret: &str,
        audrey_data: &str,
        placement: Placement,
    ) -> anyhow::Result<Response> {
        let creds = Creds::new(uuid, secret);
        self.signed(
            Signed::new("PUT", &format!("/params/{v}/{uuid}"), &creds)
                .form("audrey_data", audrey_data)
                .placement(placement),
        )
        .await
    }

    pub async fn get_configs(
        &self,
        v: u32,
        uuid: &str,
        service: Option<&str>,
        creds: &Creds,
    ) -> anyhow::Result<Response> {
        let path = match service {
            Some(s) => format!("/configs/{v}/{uuid}/{s}"),
            None => format!("/configs/{v}/{uuid}"),
        };
        self.signed(Signed::new("GET", &path, creds).placement(Placement::Query))
            .await
    }

    pub async fn get_params(&self, v: u32, uuid: &str, creds: &Creds) -> anyhow::Result<Response> {
        self.signed(
            Signed::new("GET", &format!("/params/{v}/{uuid}"), creds).placement(Placement::Query),
        )
        .await
    }

    /// `GET /ip/:v/:uuid` (open).
    pub async fn get_ip(&self, v: u32, uuid: &str) -> anyhow::Result<Response> {
        self.send("GET", &format!("/ip/{v}/{uuid}"), &[], Bytes::new())
            .await
    }

    /// `DELETE /deployment/:v/:deployment` (open on the real server).
    pub async fn delete_deployment(&self, v: u32, deployment: &str) -> anyhow::Result<Response> {
        self.send(
            "DELETE",
            &format!("/deployment/{v}/{deployment}"),
            &[],
            Bytes::new(),
        )
        .await
    }
}

/// One request exactly as given (any body, streamed; headers untouched, `Host` included)
/// over a fresh HTTP/1.1 connection to `addr`; returns status, headers and the whole body.
pub async fn try_exchange<B>(
    addr: SocketAddr,
    req: http::Request<B>,
) -> anyhow::Result<(http::StatusCode, http::HeaderMap, Bytes)>
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    exchange_on(tokio::net::TcpStream::connect(addr).await?, req).await
}

/// One request on an established connection (plain or TLS).
async fn exchange_on<S, B>(
    stream: S,
    req: http::Request<B>,
) -> anyhow::Result<(http::StatusCode, http::HeaderMap, Bytes)>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let (parts, body) = sender.send_request(req).await?.into_parts();
    Ok((
        parts.status,
        parts.headers,
        body.collect().await?.to_bytes(),
    ))
}

/// [`try_exchange`] for tests: panics on a transport error.
pub async fn exchange<B>(
    addr: SocketAddr,
    req: http::Request<B>,
) -> (http::StatusCode, http::HeaderMap, Bytes)
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    try_exchange(addr, req).await.expect("HTTP exchange")
}

/// `k=v&…` with RFC 3986 encoding.
pub fn encode_pairs(pairs: &[(String, String)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", oauth::percent_encode(k), oauth::percent_encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// `|name&BASE64(value)|…|`; no pairs gives the agent's first empty report `|&|`.
pub fn audrey_data(pairs: &[(&str, &str)]) -> String {
    if pairs.is_empty() {
        return "|&|".into();
    }
    let parts: Vec<String> = pairs
        .iter()
        .map(|(k, v)| {
            format!(
                "{k}&{}",
                base64::engine::general_purpose::STANDARD.encode(v)
            )
        })
        .collect();
    format!("|{}|", parts.join("|"))
}

/// One `<parameter>` of a service.
#[derive(Debug, Clone)]
pub enum Param {
    Value {
        name: String,
        value: String,
    },
    /// `<reference assembly='UUID' provided-parameter='name'/>`
    Reference {
        name: String,
        assembly: String,
        parameter: String,
    },
    /// `<reference assembly='UUID' service-parameter='svc'/>`
    ServiceReference {
        name: String,
        assembly: String,
        service: String,
    },
}

#[derive(Debug, Clone)]
pub struct ServiceXml {
    pub name: String,
    pub params: Vec<Param>,
}

impl ServiceXml {
    pub fn new(name: &str) -> ServiceXml {
        ServiceXml {
            name: name.to_string(),
            params: Vec::new(),
        }
    }

    pub fn value(mut self, name: &str, value: &str) -> ServiceXml {
        self.params.push(Param::Value {
            name: name.into(),
            value: value.into(),
        });
        self
    }

    pub fn reference(mut self, name: &str, assembly: &str, parameter: &str) -> ServiceXml {
        self.params.push(Param::Reference {
            name: name.into(),
            assembly: assembly.into(),
            parameter: parameter.into(),
        });
        self
    }

    pub fn service_reference(mut self, name: &str, assembly: &str, service: &str) -> ServiceXml {
        self.params.push(Param::ServiceReference {
            name: name.into(),
            assembly: assembly.into(),
            service: service.into(),
        });
        self
    }
}

/// Builder of Conductor's instance-config document.
#[derive(Debug, Clone)]
pub struct InstanceXml {
    pub uuid: String,
    pub name: String,
    pub secret: String,
    pub deployment: String,
    pub deployment_name: String,
    pub provided: Vec<String>,
    pub services: Vec<ServiceXml>,
}

impl InstanceXml {
    pub fn new(uuid: &str, deployment: &str, secret: &str) -> InstanceXml {
        InstanceXml {
            uuid: uuid.into(),
            name: format!("assembly-{uuid}"),
            secret: secret.into(),
            deployment: deployment.into(),
            deployment_name: "wordpress".into(),
            provided: Vec::new(),
            services: Vec::new(),
        }
    }

    pub fn provides(mut self, name: &str) -> InstanceXml {
        self.provided.push(name.into());
        self
    }

    pub fn service(mut self, service: ServiceXml) -> InstanceXml {
        self.services.push(service);
        self
    }

    pub fn to_xml(&self) -> String {
        let mut x = format!(
            "<instance-config id='{}' name='{}' secret='{}'>\n  <deployable name='{}' id='{}'/>\n",
            esc(&self.uuid),
            esc(&self.name),
            esc(&self.secret),
            esc(&self.deployment_name),
            esc(&self.deployment)
        );
        if !self.provided.is_empty() {
            x += "  <provided-parameters>\n";
            for p in &self.provided {
                x += &format!("    <provided-parameter name='{}'/>\n", esc(p));
            }
            x += "  </provided-parameters>\n";
        }
        if !self.services.is_empty() {
            x += "  <services>\n";
            for s in &self.services {
                x += &format!(
                    "    <service name='{}'>\n      <executable><contents><![CDATA[#!/bin/sh\nexit 0\n]]></contents></executable>\n",
                    esc(&s.name)
                );
                if !s.params.is_empty() {
                    x += "      <parameters>\n";
                    for p in &s.params {
                        x += &match p {
                            Param::Value { name, value } => format!(
                                "        <parameter name='{}'><value><![CDATA[{}]]></value></parameter>\n",
                                esc(name),
                                value
                            ),
                            Param::Reference { name, assembly, parameter } => format!(
                                "        <parameter name='{}'><reference assembly='{}' provided-parameter='{}'/></parameter>\n",
                                esc(name),
                                esc(assembly),
                                esc(parameter)
                            ),
                            Param::ServiceReference { name, assembly, service } => format!(
                                "        <parameter name='{}'><reference assembly='{}' service-parameter='{}'/></parameter>\n",
                                esc(name),
                                esc(assembly),
                                esc(service)
                            ),
                        };
                    }
                    x += "      </parameters>\n";
                }
                x += "    </service>\n";
            }
            x += "  </services>\n";
        }
        x += "</instance-config>\n";
        x
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('\'', "&apos;")
        .replace('"', "&quot;")
}
