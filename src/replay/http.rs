//! The local Config Server as replay talks to it: four requests, built the way Conductor and
//! the guest agent build them, sent straight to the server (never through the proxy).
//!
//! Owns request construction (paths with percent-encoded ids, urlencoded forms, the OAuth
//! signature over the exact URL the server rebuilds from `Host`, `X-Forwarded-For` carrying
//! the guest's address), the per-request timeout, and mapping transport failures and 5xx
//! answers to `ReplayError`. It must not decide what an answer means for a change, touch the
//! store, or retry: a retried `POST /configs` wipes reported values on the real server.

use std::net::IpAddr;
use std::time::Duration;

use http::header::{AUTHORIZATION, CONTENT_TYPE, HOST};
use http::uri::Authority;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

use super::ReplayError;
use crate::body::{self, ProxyBody};

/// Path-segment encoding: everything but RFC 3986 unreserved characters.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Largest answer body read (only to free the connection for reuse; it is not used).
const ANSWER_LIMIT: usize = 64 * 1024;

/// Idle keep-alive towards the local server (below thin's own idle timeout).
const IDLE: Duration = Duration::from_secs(15);

/// OAuth consumer credentials to sign a request with.
#[derive(Clone, Copy)]
pub(crate) struct Signer<'a> {
    pub key: &'a str,
    pub secret: &'a str,
}

/// The local Config Server.
pub(crate) struct LocalServer {
    client: Client<HttpConnector, ProxyBody>,
    authority: Authority,
    timeout: Duration,
}

impl LocalServer {
    pub(crate) fn new(authority: Authority, timeout: Duration) -> LocalServer {
        LocalServer {
            client: crate::proxy::upstream::client(IDLE),
            authority,
            timeout,
        }
    }

    pub(crate) fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// `GET /ip/:v/:uuid`, unsigned and side-effect free: whether the server knows the
    /// instance (200) or not (404).
    pub(crate) async fn knows(&self, version: u8, uuid: &str) -> Result<bool, ReplayError> {
        let path = format!("/ip/{version}/{}", segment(uuid));
        match self.send(Method::GET, path.clone(), None, None).await? {
            StatusCode::OK => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            other => Err(ReplayError::Server {
                status: other.as_u16(),
                method: "GET",
                path,
            }),
        }
    }

    /// `POST /configs/:v/:uuid` with form field `data`, signed by `signer`.
    pub(crate) async fn register(
        &self,
        version: u8,
        uuid: &str,
        xml: &str,
        signer: Signer<'_>,
    ) -> Result<StatusCode, ReplayError> {
        let path = format!("/configs/{version}/{}", segment(uuid));
        let form = vec![("data".to_owned(), xml.to_owned())];
        self.send(Method::POST, path, Some((form, signer)), None)
            .await
    }

    /// `PUT /params/:v/:uuid` with form field `audrey_data`, signed by `signer`, with
    /// `X-Forwarded-For: <guest>` so the server records the guest's address.
    pub(crate) async fn put_params(
        &self,
        version: u8,
        uuid: &str,
        audrey_data: &str,
        guest: Option<IpAddr>,
        signer: Signer<'_>,
    ) -> Result<StatusCode, ReplayError> {
        let path = format!("/params/{version}/{}", segment(uuid));
        let form = vec![("audrey_data".to_owned(), audrey_data.to_owned())];
        self.send(Method::PUT, path, Some((form, signer)), guest)
            .await
    }

    /// `DELETE /deployment/:v/:deployment`, unsigned (as Conductor sends it).
    pub(crate) async fn delete_deployment(
        &self,
        version: u8,
        deployment: &str,
    ) -> Result<StatusCode, ReplayError> {
        let path = format!("/deployment/{version}/{}", segment(deployment));
        self.send(Method::DELETE, path, None, None).await
    }

    /// Send one request and read its answer. Transport failures, timeouts and 5xx answers
    /// are `ReplayError`s; any other status is returned for the caller to judge.
    async fn send(
        &self,
        method: Method,
        path: String,
        form: Option<(Vec<(String, String)>, Signer<'_>)>,
        guest: Option<IpAddr>,
    ) -> Result<StatusCode, ReplayError> {
        let name = method_name(&method);
        // The server rebuilds `http://<Host><path>` and verifies signatures over it; the
        // client sends the path in origin form.
        let url = format!("http://{}{path}", self.authority);
        let mut builder = Request::builder()
            .method(method)
            .uri(&url)
            .header(HOST, self.authority.as_str());
        if let Some(addr) = guest {
            builder = builder.header("x-forwarded-for", addr.to_string());
        }
        let body = match form {
            Some((fields, signer)) => {
                let auth = crate::oauth::authorization_header(
                    name,
                    &url,
                    &fields,
                    signer.key,
                    signer.secret,
                );
                builder = builder
                    .header(AUTHORIZATION, auth)
                    .header(CONTENT_TYPE, "application/x-www-form-urlencoded");
                let encoded = form_urlencoded::Serializer::new(String::new())
                    .extend_pairs(&fields)
                    .finish();
                body::full(encoded)
            }
            None => body::empty(),
        };
        let request = builder.body(body).map_err(|e| ReplayError::Server {
            status: 0,
            method: name,
            path: format!("{path} (request not buildable: {e})"),
        })?;
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| ReplayError::Unreachable(chain(&e)))?;
            let status = response.status();
            // Drain (bounded) so the connection goes back to the pool; the status is the answer.
            let _ = Limited::new(response.into_body(), ANSWER_LIMIT)
                .collect()
                .await;
            Ok::<_, ReplayError>(status)
        };
        let status = tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| ReplayError::Timeout {
                method: name,
                path: path.clone(),
                timeout: self.timeout,
            })??;
        if status.is_server_error() {
            return Err(ReplayError::Server {
                status: status.as_u16(),
                method: name,
                path,
            });
        }
        Ok(status)
    }
}

fn segment(id: &str) -> String {
    utf8_percent_encode(id, SEGMENT).to_string()
}

fn method_name(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        _ => "OTHER",
    }
}

/// An error with its sources, `a: b: c`, for one-line logs.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_encoded() {
        assert_eq!(segment("9f1c-AB_x.y~z"), "9f1c-AB_x.y~z");
        assert_eq!(segment("a/b?c d"), "a%2Fb%3Fc%20d");
    }

    #[test]
    fn error_chain_is_one_line() {
        let inner = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert_eq!(chain(&inner), "refused");
    }
}
