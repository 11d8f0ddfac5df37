//! Guests that go away right after sending: a signed `PUT /params` written on a fresh
//! connection, which is then closed with FIN (write side shut, then dropped), with RST
//! (`SO_LINGER` 0, then dropped), or, over HTTP/2 (prior knowledge), whose stream is reset
//! (the response future dropped: `RST_STREAM CANCEL`) while the connection stays open. The
//! caller chooses the moment (`close_when`, e.g. once the server has the request). Plain TCP
//! only; it must not wait for an answer.

use std::future::Future;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;

use super::client::{Client, Creds, Placement, Signed};

/// How the guest leaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Abort {
    /// Shut the write side down (FIN), then drop the socket.
    Fin,
    /// Drop the socket with `SO_LINGER` 0: the kernel sends RST.
    Rst,
    /// HTTP/2: reset the request's stream; the connection stays open until this returns.
    StreamReset,
}

impl Abort {
    pub const ALL: [Abort; 3] = [Abort::Fin, Abort::Rst, Abort::StreamReset];
}

/// What stays of a guest that left: for [`Abort::StreamReset`] the HTTP/2 connection, kept
/// open until this is dropped (so only the stream was reset).
pub struct Left(
    Option<(
        hyper::client::conn::http2::SendRequest<Full<Bytes>>,
        tokio::task::JoinHandle<()>,
    )>,
);

impl Drop for Left {
    fn drop(&mut self) {
        if let Some((_, conn)) = self.0.take() {
            conn.abort();
        }
    }
}

/// Sends `PUT /params/:v/:uuid` with `audrey_data` signed by the instance through `client`,
/// then leaves as `how` says once `close_when` resolves (without reading any answer).
pub async fn put_params_and_leave(
    client: &Client,
    v: u32,
    uuid: &str,
    secret: &str,
    audrey_data: &str,
    how: Abort,
    close_when: impl Future<Output = ()>,
) -> anyhow::Result<Left> {
    let signed = Signed::new(
        "PUT",
        &format!("/params/{v}/{uuid}"),
        &Creds::new(uuid, secret),
    )
    .form("audrey_data", audrey_data)
    .placement(Placement::Header);
    let (method, path, headers, body) = client.sign(signed);
    let stream = TcpStream::connect(client.target()).await?;
    stream.set_nodelay(true)?;
    if how == Abort::StreamReset {
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await?;
        let conn = tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut req = hyper::Request::builder()
            .method(method.as_str())
            .uri(format!("http://{}{path}", client.host()));
        for (k, v) in &headers {
            req = req.header(k.as_str(), v.as_str());
        }
        let mut answer = Box::pin(sender.send_request(req.body(Full::new(body))?));
        // Drive the request out until the moment comes, then drop it: hyper resets the stream.
        tokio::select! {
            _ = &mut answer => anyhow::bail!("answered before the guest left"),
            _ = close_when => {}
        }
        drop(answer);
        return Ok(Left(Some((sender, conn))));
    }
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\n",
        client.host(),
        body.len()
    );
    for (k, v) in &headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let mut stream = stream;
    stream
        .write_all(&[Bytes::from(head), body].concat())
        .await?;
    stream.flush().await?;
    close_when.await;
    match how {
        Abort::Fin => stream.shutdown().await?,
        // Deprecated for blocking on drop with a non-zero linger; 0 sends RST at once.
        #[allow(deprecated)]
        Abort::Rst => stream.set_linger(Some(std::time::Duration::ZERO))?,
        Abort::StreamReset => unreachable!("handled above"),
    }
    drop(stream);
    Ok(Left(None))
}
