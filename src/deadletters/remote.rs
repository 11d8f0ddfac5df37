//! Client side: the dead-letter operations on a running sidecar's admin listener (the CLI
//! uses it when the store is locked). One HTTP/1.1 request per call, bounded by a timeout,
//! with `Authorization: Bearer` when a token is given (`admin.token_file`); it must not retry
//! a POST.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use serde::Deserialize;

use super::http::to_query;
use super::{DeadLetterError, Direction, Letter, Report, Selector};

/// `GET /dead-letters`.
pub async fn list(
    admin: SocketAddr,
    token: Option<&str>,
    direction: Option<Direction>,
    limit: usize,
) -> Result<Vec<Letter>, DeadLetterError> {
    let sel = Selector {
        direction,
        id: None,
        all: false,
    };
    call(
        admin,
        token,
        Method::GET,
        "/dead-letters",
        &to_query(&sel, Some(limit)),
    )
    .await
}

/// `POST /dead-letters/retry`.
pub async fn retry(
    admin: SocketAddr,
    token: Option<&str>,
    sel: &Selector,
) -> Result<Report, DeadLetterError> {
    call(
        admin,
        token,
        Method::POST,
        "/dead-letters/retry",
        &to_query(sel, None),
    )
    .await
}

/// `POST /dead-letters/drop`.
pub async fn drop(
    admin: SocketAddr,
    token: Option<&str>,
    sel: &Selector,
) -> Result<Report, DeadLetterError> {
    call(
        admin,
        token,
        Method::POST,
        "/dead-letters/drop",
        &to_query(sel, None),
    )
    .await
}

async fn call<T: for<'de> Deserialize<'de>>(
    admin: SocketAddr,
    token: Option<&str>,
    method: Method,
    path: &str,
    query: &str,
) -> Result<T, DeadLetterError> {
    let fail = |reason: String| DeadLetterError::Remote {
        addr: admin,
        reason,
    };
    let exchange = async {
        let stream = tokio::net::TcpStream::connect(admin)
            .await
            .map_err(|e| fail(format!("cannot connect: {e}")))?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| fail(e.to_string()))?;
        tokio::spawn(conn);
        let uri = if query.is_empty() {
            path.to_owned()
        } else {
            format!("{path}?{query}")
        };
        let mut req = Request::builder()
            .method(method)
            .uri(uri)
            .header(http::header::HOST, admin.to_string());
        if let Some(t) = token {
            req = req.header(http::header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let req = req
            .body(Empty::<Bytes>::new())
            .map_err(|e| fail(e.to_string()))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| fail(e.to_string()))?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| fail(e.to_string()))?
            .to_bytes();
        Ok::<_, DeadLetterError>((status, body))
    };
    let (status, body) = tokio::time::timeout(Duration::from_secs(30), exchange)
        .await
        .map_err(|_| fail("no answer within 30s".into()))??;
    let text = String::from_utf8_lossy(&body).trim().to_owned();
    match status {
        StatusCode::OK => {
            serde_json::from_slice(&body).map_err(|e| fail(format!("unexpected answer: {e}")))
        }
        StatusCode::BAD_REQUEST => Err(DeadLetterError::Usage(text)),
        StatusCode::NOT_FOUND if text.starts_with("no ") => Err(fail(text)),
        other => Err(fail(format!("{other}: {text}"))),
    }
}
