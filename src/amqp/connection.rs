//! Opening one AMQP 1.0 connection to the broker: TCP, mutual TLS (rustls), SASL, `open`.
//!
//! Owns URL parsing, the order of the steps, and the bound on their total time; PEM loading and
//! TLS error naming live in `tls.rs`, the error type in [`super::error`]. TLS is established
//! first on the raw socket ("alternative TLS establishment": no AMQP TLS protocol header, which
//! RabbitMQ does not speak), then SASL runs on the TLS stream through `sasl.rs`, and the
//! authenticated stream is handed to fe2o3-amqp's `Connection::builder().open_with_stream` with
//! scheme `amqp` and no SASL profile, so the crate goes straight to the AMQP header.
//!
//! Why not the crate's own SASL: fe2o3-amqp 0.18.4's `SaslProfile::External` sends `sasl-init`
//! with no initial response at all; RabbitMQ 3.10 wants an empty one and drops the connection
//! ("Expecting SASL negotiation"). The upstream fix is one line (`initial_response` returning
//! `Some(Binary::from(vec![]))` for `External`); until it ships, `sasl.rs` performs the exchange
//! with the crate's own frame types, and PLAIN goes the same way for one code path.
//!
//! This module must not retry (callers own backoff) nor open sessions or links, and never prints
//! a password.

use std::io;
use std::time::Duration;

use fe2o3_amqp::connection::ConnectionHandle;
use fe2o3_amqp::Connection;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use super::error::AmqpError;
use super::sasl::{self, Mechanism, SaslError};
use super::tls::{classify_io, tls_connector};
use crate::config::{AmqpConfig, SaslMechanism};

/// Upper bound for TCP + TLS + SASL + open (RabbitMQ delays a failed SASL outcome by 3 s).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
/// Idle timeout announced to the broker: it sends heartbeats at least every half of it, and the
/// connection is declared dead when nothing arrives for this long.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Where to connect, parsed from `amqp.url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub tls: bool,
    /// Host without brackets (an IPv6 literal stays bare).
    pub host: String,
    pub port: u16,
}

impl Endpoint {
    /// Parses `amqps://host[:port][/]` or `amqp://…` (default ports 5671 / 5672). Credentials
    /// in the URL are refused: secrets belong in files.
    pub fn parse(url: &str) -> Result<Endpoint, AmqpError> {
        let bad = |reason: &str| AmqpError::BadUrl {
            url: url.to_owned(),
            reason: reason.to_owned(),
        };
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| bad("expected amqps://host:port"))?;
        let tls = match scheme {
            "amqps" => true,
            "amqp" => false,
            _ => return Err(bad("scheme must be amqps or amqp")),
        };
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.contains(['/', '?', '#']) {
            return Err(bad("must not carry a path, query or fragment"));
        }
        if authority.contains('@') {
            return Err(bad(
                "must not carry credentials; use amqp.username and amqp.password_file",
            ));
        }
        let default_port = if tls { 5671 } else { 5672 };
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (host, after) = v6
                .split_once(']')
                .ok_or_else(|| bad("unclosed '[' in host"))?;
            match after {
                "" => (host, None),
                p => (
                    host,
                    Some(p.strip_prefix(':').ok_or_else(|| bad("junk after ']'"))?),
                ),
            }
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err(bad("missing host"));
        }
        let port = match port {
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| bad("bad port"))?,
            None => default_port,
        };
        Ok(Endpoint {
            tls,
            host: host.to_owned(),
            port,
        })
    }

    fn addr(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// Opens an authenticated AMQP connection as described by `cfg`. Files are read and checked
/// before any network traffic. Cancel-safe: dropping the future drops the half-open socket.
pub async fn connect(
    cfg: &AmqpConfig,
    container_id: &str,
) -> Result<ConnectionHandle<()>, AmqpError> {
    let ep = Endpoint::parse(&cfg.url)?;
    if !ep.tls && !cfg.allow_insecure {
        return Err(AmqpError::InsecureRefused);
    }
    let password = match cfg.sasl {
        SaslMechanism::External => None,
        SaslMechanism::Plain => Some(read_password(cfg)?),
    };
    let mechanism = match (&cfg.sasl, &password) {
        (SaslMechanism::Plain, Some(password)) => {
            let username = cfg.username.as_deref().ok_or(AmqpError::Missing {
                key: "username",
                reason: "sasl = \"plain\"",
            })?;
            Mechanism::Plain { username, password }
        }
        _ => {
            if !ep.tls {
                return Err(AmqpError::Missing {
                    key: "url",
                    reason: "sasl = \"external\" needs amqps://",
                });
            }
            Mechanism::External
        }
    };
    let connector = if ep.tls {
        Some(tls_connector(cfg)?)
    } else {
        None
    };
    let has_cert = cfg.cert.is_some();
    let addr = ep.addr();

    let attempt = async {
        let tcp = tcp_connect(&ep).await?;
        let _ = tcp.set_nodelay(true);
        match connector {
            Some(connector) => {
                let name =
                    ServerName::try_from(ep.host.clone()).map_err(|_| AmqpError::BadUrl {
                        url: cfg.url.clone(),
                        reason: "host is not a valid TLS server name".into(),
                    })?;
                let tls = connector
                    .connect(name, tcp)
                    .await
                    .map_err(|e| classify_io(e, &addr, "TLS handshake", has_cert))?;
                open(tls, &ep, &mechanism, container_id, has_cert).await
            }
            None => open(tcp, &ep, &mechanism, container_id, has_cert).await,
        }
    };
    tokio::time::timeout(CONNECT_TIMEOUT, attempt)
        .await
        .map_err(|_| AmqpError::Timeout {
            addr: ep.addr(),
            after: CONNECT_TIMEOUT,
        })?
}

async fn open<Io>(
    mut io: Io,
    ep: &Endpoint,
    mechanism: &Mechanism<'_>,
    container_id: &str,
    has_cert: bool,
) -> Result<ConnectionHandle<()>, AmqpError>
where
    Io: AsyncRead + AsyncWrite + std::fmt::Debug + Send + Unpin + 'static,
{
    let addr = ep.addr();
    sasl::negotiate(&mut io, mechanism, &ep.host).await.map_err(|e| match e {
        SaslError::Io(e) => classify_io(e, &addr, "SASL", has_cert),
        SaslError::Protocol(reason) => AmqpError::SaslProtocol { addr: addr.clone(), reason },
        SaslError::NotOffered { mechanism, offered } => {
            AmqpError::SaslNotOffered { mechanism, offered: offered.join(", ") }
        }
        SaslError::Refused { mechanism, code } => AmqpError::SaslAuthFailed {
            mechanism,
            code: sasl::code_name(&code),
            hint: match mechanism {
                "EXTERNAL" => "the client certificate's identity (its CN) is not a known, permitted broker user",
                _ => "wrong amqp.username or password, or the user may not connect",
            },
        },
    })?;
    // SASL is done: scheme "amqp" and no profile make the builder go straight to the AMQP header.
    Connection::builder()
        .container_id(container_id)
        .hostname(ep.host.as_str())
        .scheme("amqp")
        .idle_time_out(u32::try_from(IDLE_TIMEOUT.as_millis()).unwrap_or(u32::MAX))
        .open_with_stream(io)
        .await
        .map_err(|source| AmqpError::Open { addr, source })
}

async fn tcp_connect(ep: &Endpoint) -> Result<TcpStream, AmqpError> {
    let addrs: Vec<_> = tokio::net::lookup_host((ep.host.as_str(), ep.port))
        .await
        .map_err(|source| AmqpError::Resolve {
            host: ep.host.clone(),
            source,
        })?
        .collect();
    let mut last = io::Error::new(io::ErrorKind::NotFound, "host resolved to no address");
    for a in addrs {
        match TcpStream::connect(a).await {
            Ok(s) => return Ok(s),
            Err(e) => last = e,
        }
    }
    Err(match last.kind() {
        io::ErrorKind::ConnectionRefused => AmqpError::ConnectionRefused { addr: ep.addr() },
        _ => AmqpError::Unreachable {
            addr: ep.addr(),
            source: last,
        },
    })
}

fn read_password(cfg: &AmqpConfig) -> Result<String, AmqpError> {
    let path = cfg.password_file.as_deref().ok_or(AmqpError::Missing {
        key: "password_file",
        reason: "sasl = \"plain\"",
    })?;
    let text = std::fs::read_to_string(path).map_err(|source| AmqpError::PasswordFile {
        path: path.to_owned(),
        source,
    })?;
    Ok(text.trim_end_matches(['\r', '\n']).to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(url: &str) -> Endpoint {
        Endpoint::parse(url).unwrap_or_else(|e| panic!("{url}: {e}"))
    }

    #[test]
    fn parses_hosts_ports_and_defaults() {
        assert_eq!(
            ep("amqps://localhost:5999"),
            Endpoint {
                tls: true,
                host: "localhost".into(),
                port: 5999
            }
        );
        assert_eq!(
            ep("amqps://broker.example/"),
            Endpoint {
                tls: true,
                host: "broker.example".into(),
                port: 5671
            }
        );
        assert_eq!(
            ep("amqp://127.0.0.1"),
            Endpoint {
                tls: false,
                host: "127.0.0.1".into(),
                port: 5672
            }
        );
        assert_eq!(
            ep("amqps://[::1]:7"),
            Endpoint {
                tls: true,
                host: "::1".into(),
                port: 7
            }
        );
        assert_eq!(
            ep("amqps://[::1]"),
            Endpoint {
                tls: true,
                host: "::1".into(),
                port: 5671
            }
        );
        assert_eq!(ep("amqps://[::1]:7").addr(), "[::1]:7");
    }

    fn config(toml_text: &str) -> AmqpConfig {
        toml::from_str(toml_text).expect("test config")
    }

    #[tokio::test]
    async fn plain_amqp_is_refused_unless_insecure_is_allowed() {
        let cfg = config("url = \"amqp://127.0.0.1:9\"\nsasl = \"external\"\n");
        let err = connect(&cfg, "c").await.expect_err("refused");
        assert!(matches!(err, AmqpError::InsecureRefused), "{err:?}");

        let cfg =
            config("url = \"amqp://127.0.0.1:9\"\nsasl = \"external\"\nallow_insecure = true\n");
        let err = connect(&cfg, "c").await.expect_err("external needs TLS");
        assert!(
            matches!(err, AmqpError::Missing { key: "url", .. }),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn plain_needs_a_readable_password_file() {
        let cfg = config(
            "url = \"amqp://127.0.0.1:9\"\nsasl = \"plain\"\nusername = \"u\"\nallow_insecure = true\n\
             password_file = \"/nonexistent/audrey-password\"\n",
        );
        let err = connect(&cfg, "c").await.expect_err("no password file");
        assert!(matches!(err, AmqpError::PasswordFile { .. }), "{err:?}");
        assert!(
            err.to_string().contains("/nonexistent/audrey-password"),
            "{err}"
        );
    }

    #[test]
    fn rejects_bad_urls_naming_the_reason() {
        for (url, why) in [
            ("localhost:5671", "expected amqps://"),
            ("http://h:1", "scheme"),
            ("amqps://u:p@h:1", "credentials"),
            ("amqps://h:1/vhost", "path"),
            ("amqps://:1", "missing host"),
            ("amqps://h:0", "bad port"),
            ("amqps://h:99999", "bad port"),
            ("amqps://[::1", "unclosed"),
            ("amqps://[::1]x", "junk"),
        ] {
            let err = Endpoint::parse(url).expect_err(url).to_string();
            assert!(err.contains(why), "{url}: {err}");
        }
    }
}
