//! The client side of the AMQP 1.0 SASL layer (core spec part 5.3), run on an open byte stream.
//!
//! Owns the SASL header exchange, `sasl-mechanisms`, `sasl-init` and `sasl-outcome` for the two
//! mechanisms the sidecar uses (EXTERNAL, PLAIN). It exists because fe2o3-amqp 0.18.4 sends
//! EXTERNAL's `sasl-init` with *no* initial response, which RabbitMQ 3.10 rejects by dropping the
//! connection; here EXTERNAL sends an *empty* one, as RFC 4422 and RabbitMQ expect (RabbitMQ 4.x
//! and Qpid accept both). Frames are encoded with the crate's own types and `serde_amqp`. It must not interpret TLS errors (the
//! caller classifies I/O failures) and it never logs or returns a password.

use std::fmt;
use std::io;
use std::time::Duration;

use fe2o3_amqp::frames::sasl::Frame;
use fe2o3_amqp::types::primitives::{Binary, Symbol};
use fe2o3_amqp::types::sasl::{SaslCode, SaslInit};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// `AMQP` + protocol id 3 (SASL) + version 1.0.0.
const SASL_HEADER: [u8; 8] = *b"AMQP\x03\x01\x00\x00";
/// Frame type of SASL frames.
const FRAME_TYPE_SASL: u8 = 0x01;
/// SASL frames are small; the spec's minimum max-frame-size is 512. Be lenient, but bounded.
const MAX_SASL_FRAME: usize = 64 * 1024;
/// Empty frames (heartbeats) tolerated before giving up on a peer.
const MAX_EMPTY_FRAMES: usize = 16;
/// How long to look for the peer's reason after a failed write.
const REASON_PROBE: Duration = Duration::from_millis(500);

/// Who we claim to be.
pub(crate) enum Mechanism<'a> {
    /// Identity from the TLS client certificate; the initial response is empty.
    External,
    /// Username and password (RFC 4616), only sensible inside TLS or on loopback.
    Plain {
        username: &'a str,
        password: &'a str,
    },
}

impl Mechanism<'_> {
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Mechanism::External => "EXTERNAL",
            Mechanism::Plain { .. } => "PLAIN",
        }
    }

    /// Always `Some`: an empty response for EXTERNAL is the point of this module.
    fn initial_response(&self) -> Binary {
        match self {
            Mechanism::External => Binary::from(Vec::new()),
            Mechanism::Plain { username, password } => {
                let mut buf = Vec::with_capacity(username.len() + password.len() + 2);
                buf.push(0);
                buf.extend_from_slice(username.as_bytes());
                buf.push(0);
                buf.extend_from_slice(password.as_bytes());
                Binary::from(buf)
            }
        }
    }
}

/// Why the SASL layer did not succeed.
#[derive(Debug)]
pub(crate) enum SaslError {
    /// The stream failed (this is where late TLS alerts surface).
    Io(io::Error),
    /// The peer broke the protocol (wrong header, unexpected frame, undecodable body).
    Protocol(String),
    /// The broker does not offer the mechanism.
    NotOffered {
        mechanism: &'static str,
        offered: Vec<String>,
    },
    /// The broker answered with a non-ok outcome.
    Refused {
        mechanism: &'static str,
        code: SaslCode,
    },
}

impl From<io::Error> for SaslError {
    fn from(e: io::Error) -> Self {
        SaslError::Io(e)
    }
}

/// Human name of an outcome code, as in the spec.
pub(crate) fn code_name(code: &SaslCode) -> &'static str {
    match code {
        SaslCode::Ok => "ok",
        SaslCode::Auth => "auth",
        SaslCode::Sys => "sys",
        SaslCode::SysPerm => "sys-perm",
        SaslCode::SysTemp => "sys-temp",
    }
}

/// Runs the SASL exchange; on success the stream is positioned for the AMQP protocol header.
pub(crate) async fn negotiate<Io>(
    io: &mut Io,
    mechanism: &Mechanism<'_>,
    hostname: &str,
) -> Result<(), SaslError>
where
    Io: AsyncRead + AsyncWrite + Unpin,
{
    send(io, &SASL_HEADER).await?;
    let mut header = [0u8; 8];
    io.read_exact(&mut header).await?;
    if header != SASL_HEADER {
        return Err(SaslError::Protocol(format!(
            "expected the SASL protocol header, got {}",
            Hex(&header)
        )));
    }

    let offered = match read_frame(io).await? {
        Frame::Mechanisms(m) => m
            .sasl_server_mechanisms
            .0
            .into_iter()
            .map(Symbol::into_inner)
            .collect::<Vec<_>>(),
        other => return Err(unexpected("sasl-mechanisms", &other)),
    };
    if !offered.iter().any(|m| m == mechanism.name()) {
        return Err(SaslError::NotOffered {
            mechanism: mechanism.name(),
            offered,
        });
    }

    let init = SaslInit {
        mechanism: Symbol::from(mechanism.name()),
        initial_response: Some(mechanism.initial_response()),
        hostname: Some(hostname.to_owned()),
    };
    write_frame(io, &Frame::Init(init)).await?;

    match read_frame(io).await? {
        Frame::Outcome(o) if matches!(o.code, SaslCode::Ok) => Ok(()),
        Frame::Outcome(o) => Err(SaslError::Refused {
            mechanism: mechanism.name(),
            code: o.code,
        }),
        other => Err(unexpected("sasl-outcome", &other)),
    }
}

fn unexpected(wanted: &str, got: &Frame) -> SaslError {
    let name = match got {
        Frame::Mechanisms(_) => "sasl-mechanisms",
        Frame::Init(_) => "sasl-init",
        Frame::Challenge(_) => "sasl-challenge",
        Frame::Response(_) => "sasl-response",
        Frame::Outcome(_) => "sasl-outcome",
    };
    SaslError::Protocol(format!("expected {wanted}, got {name}"))
}

/// Encodes one SASL frame: size, doff = 2, type = 1, channel ignored, body.
pub(crate) fn encode_frame(frame: &Frame) -> Result<Vec<u8>, SaslError> {
    let body = serde_amqp::to_vec(frame)
        .map_err(|e| SaslError::Protocol(format!("cannot encode SASL frame: {e}")))?;
    let size = u32::try_from(body.len() + 8)
        .map_err(|_| SaslError::Protocol("SASL frame too large".into()))?;
    let mut buf = Vec::with_capacity(body.len() + 8);
    buf.extend_from_slice(&size.to_be_bytes());
    buf.extend_from_slice(&[2, FRAME_TYPE_SASL, 0, 0]);
    buf.extend_from_slice(&body);
    Ok(buf)
}

/// Decodes the part of a SASL frame after its 4-byte size; `None` for an empty frame.
pub(crate) fn decode_frame(rest: &[u8]) -> Result<Option<Frame>, SaslError> {
    let [doff, ftype, _, _, ..] = *rest else {
        return Err(SaslError::Protocol(
            "SASL frame shorter than its header".into(),
        ));
    };
    if ftype != FRAME_TYPE_SASL {
        return Err(SaslError::Protocol(format!(
            "expected a SASL frame, got frame type {ftype:#04x}"
        )));
    }
    let body_at = usize::from(doff) * 4;
    if doff < 2 || body_at - 4 > rest.len() {
        return Err(SaslError::Protocol(format!(
            "bad data offset {doff} in SASL frame"
        )));
    }
    let body = &rest[body_at - 4..];
    if body.is_empty() {
        return Ok(None);
    }
    serde_amqp::from_slice::<Frame>(body)
        .map(Some)
        .map_err(|e| SaslError::Protocol(format!("cannot decode SASL frame: {e}")))
}

async fn write_frame<Io>(io: &mut Io, frame: &Frame) -> Result<(), SaslError>
where
    Io: AsyncRead + AsyncWrite + Unpin,
{
    send(io, &encode_frame(frame)?).await
}

/// Writes and flushes. When the write fails (the peer reset the connection), the peer's reason
/// may already sit in our receive buffer, e.g. the TLS 1.3 alert refusing our client
/// certificate, which arrives after our handshake has completed: one bounded read surfaces it.
async fn send<Io>(io: &mut Io, bytes: &[u8]) -> Result<(), SaslError>
where
    Io: AsyncRead + AsyncWrite + Unpin,
{
    let written = async {
        io.write_all(bytes).await?;
        io.flush().await
    }
    .await;
    let Err(write_error) = written else {
        return Ok(());
    };
    let mut probe = [0u8; 64];
    match tokio::time::timeout(REASON_PROBE, io.read(&mut probe)).await {
        Ok(Err(read_error)) => Err(SaslError::Io(read_error)),
        _ => Err(SaslError::Io(write_error)),
    }
}

async fn read_frame<Io: AsyncRead + Unpin>(io: &mut Io) -> Result<Frame, SaslError> {
    for _ in 0..MAX_EMPTY_FRAMES {
        let mut size = [0u8; 4];
        io.read_exact(&mut size).await?;
        let size = u32::from_be_bytes(size) as usize;
        if !(8..=MAX_SASL_FRAME).contains(&size) {
            return Err(SaslError::Protocol(format!(
                "SASL frame size {size} out of range"
            )));
        }
        let mut rest = vec![0u8; size - 4];
        io.read_exact(&mut rest).await?;
        if let Some(frame) = decode_frame(&rest)? {
            return Ok(frame);
        }
    }
    Err(SaslError::Protocol(
        "too many empty frames during SASL".into(),
    ))
}

struct Hex<'a>(&'a [u8]);

impl fmt::Display for Hex<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fe2o3_amqp::types::primitives::Array;
    use fe2o3_amqp::types::sasl::{SaslMechanisms, SaslOutcome};

    fn server_frame(frame: Frame) -> Vec<u8> {
        encode_frame(&frame).expect("encode")
    }

    /// A scripted broker: checks what the client sends and answers with `outcome`.
    async fn run_against(
        mechanism: Mechanism<'_>,
        offered: &[&str],
        outcome: SaslCode,
    ) -> (Result<(), SaslError>, Vec<u8>) {
        let (mut client, mut server) = tokio::io::duplex(4096);
        let offered: Vec<Symbol> = offered.iter().map(|m| Symbol::from(*m)).collect();
        let server_task = tokio::spawn(async move {
            let mut header = [0u8; 8];
            server.read_exact(&mut header).await.expect("client header");
            assert_eq!(header, SASL_HEADER);
            server.write_all(&SASL_HEADER).await.expect("write");
            let mechs = Frame::Mechanisms(SaslMechanisms {
                sasl_server_mechanisms: Array(offered),
            });
            server.write_all(&server_frame(mechs)).await.expect("write");
            let mut size = [0u8; 4];
            if server.read_exact(&mut size).await.is_err() {
                return Vec::new();
            }
            let mut rest = vec![0u8; u32::from_be_bytes(size) as usize - 4];
            server.read_exact(&mut rest).await.expect("init body");
            let out = Frame::Outcome(SaslOutcome {
                code: outcome,
                additional_data: None,
            });
            server.write_all(&server_frame(out)).await.expect("write");
            rest
        });
        let result = negotiate(&mut client, &mechanism, "localhost").await;
        drop(client);
        let init = server_task.await.expect("server task");
        (result, init)
    }

    fn decoded_init(rest: &[u8]) -> SaslInit {
        match decode_frame(rest).expect("decode").expect("non-empty") {
            Frame::Init(init) => init,
            _ => panic!("expected sasl-init"),
        }
    }

    #[tokio::test]
    async fn external_sends_an_empty_initial_response() {
        let (result, init) =
            run_against(Mechanism::External, &["EXTERNAL", "PLAIN"], SaslCode::Ok).await;
        assert!(result.is_ok(), "{result:?}");
        let init = decoded_init(&init);
        assert_eq!(init.mechanism.as_str(), "EXTERNAL");
        assert_eq!(
            init.initial_response.as_ref().map(|b| b.as_slice()),
            Some(&[][..])
        );
        assert_eq!(init.hostname.as_deref(), Some("localhost"));
    }

    #[tokio::test]
    async fn plain_sends_authzid_user_password() {
        let mech = Mechanism::Plain {
            username: "u",
            password: "p",
        };
        let (result, init) = run_against(mech, &["PLAIN"], SaslCode::Ok).await;
        assert!(result.is_ok(), "{result:?}");
        assert_eq!(
            decoded_init(&init)
                .initial_response
                .as_ref()
                .map(|b| b.as_slice()),
            Some(&b"\0u\0p"[..])
        );
    }

    #[tokio::test]
    async fn refused_outcome_is_reported_with_its_code() {
        let (result, _) = run_against(Mechanism::External, &["EXTERNAL"], SaslCode::Auth).await;
        assert!(
            matches!(
                result,
                Err(SaslError::Refused {
                    mechanism: "EXTERNAL",
                    code: SaslCode::Auth
                })
            ),
            "{result:?}"
        );
    }

    #[tokio::test]
    async fn mechanism_not_offered_lists_the_offer() {
        let (result, _) =
            run_against(Mechanism::External, &["PLAIN", "AMQPLAIN"], SaslCode::Ok).await;
        match result {
            Err(SaslError::NotOffered { mechanism, offered }) => {
                assert_eq!(mechanism, "EXTERNAL");
                assert_eq!(offered, vec!["PLAIN".to_string(), "AMQPLAIN".to_string()]);
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_non_sasl_header_is_a_protocol_error() {
        let (mut client, mut server) = tokio::io::duplex(64);
        tokio::spawn(async move {
            let mut header = [0u8; 8];
            let _ = server.read_exact(&mut header).await;
            let _ = server.write_all(b"AMQP\x00\x01\x00\x00").await;
        });
        let result = negotiate(&mut client, &Mechanism::External, "h").await;
        assert!(
            matches!(&result, Err(SaslError::Protocol(m)) if m.contains("414d515000010000")),
            "{result:?}"
        );
    }

    /// A connection the peer has reset, with the peer's reason still in the receive buffer.
    struct ResetWithReason;

    impl AsyncWrite for ResetWithReason {
        fn poll_write(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            _: &[u8],
        ) -> std::task::Poll<io::Result<usize>> {
            std::task::Poll::Ready(Err(io::ErrorKind::ConnectionReset.into()))
        }
        fn poll_flush(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
        fn poll_shutdown(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
    }

    impl AsyncRead for ResetWithReason {
        fn poll_read(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            _: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<io::Result<()>> {
            std::task::Poll::Ready(Err(io::Error::other("the peer's reason")))
        }
    }

    #[tokio::test]
    async fn a_failed_write_reports_the_reason_waiting_in_the_receive_buffer() {
        let result = negotiate(&mut ResetWithReason, &Mechanism::External, "h").await;
        assert!(
            matches!(&result, Err(SaslError::Io(e)) if e.to_string() == "the peer's reason"),
            "{result:?}"
        );
    }

    #[test]
    fn garbage_frames_are_errors_not_panics() {
        for rest in [
            &[][..],
            &[2, 0, 0, 0][..],
            &[9, 1, 0, 0][..],
            &[2, 1, 0, 0, 0xff, 0x00][..],
            &[0, 1, 0, 0][..],
        ] {
            assert!(decode_frame(rest).is_err(), "{rest:?}");
        }
        assert!(matches!(decode_frame(&[2, 1, 0, 0]), Ok(None)));
    }
}
