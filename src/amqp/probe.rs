//! The broker probes of `audrey-federation check`: a real connect + close with the configured
//! identity, and "is this site's source there": a receiver attached to the subscribe address
//! with no credit, then detached.
//!
//! Owns only these one-shot probes. It must not take messages (the receiver never grants
//! credit, so nothing is delivered, nothing is settled and nothing is redelivered), must not
//! create a durable subscription (in `per_deployment` mode the probe's source is not durable
//! and has its own link name), and must not retry: `check` reports the first answer.

use fe2o3_amqp::link::receiver::CreditMode;
use fe2o3_amqp::types::messaging::Source;
use fe2o3_amqp::{Receiver, Session};

use super::link::step;
use super::subscriber::{subscribe_address, SubscribeError};
use super::{connect, AmqpError};
use crate::config::AmqpConfig;

/// Why a broker probe failed; each variant names what to look at.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("{0}")]
    Connect(#[from] AmqpError),
    #[error("{0}")]
    Address(#[from] SubscribeError),
    #[error("cannot begin an AMQP session: {0}")]
    Session(String),
    #[error("{address:?} is not there: {reason} (declare the site's queue, or set amqp.subscribe_address)")]
    NotFound { address: String, reason: String },
    #[error("cannot attach a receiver to {address:?}: {reason}")]
    Attach { address: String, reason: String },
}

fn container(site: &str) -> String {
    format!("audrey-federation-{site}-check")
}

/// Opens one authenticated connection as the sidecar would, then closes it.
pub async fn connect_and_close(cfg: &AmqpConfig, site: &str) -> Result<(), AmqpError> {
    let mut conn = connect(cfg, &container(site)).await?;
    let _ = step(conn.close()).await;
    Ok(())
}

/// Attaches a credit-less receiver to this site's subscribe address and detaches it.
/// `Ok(address)` when the broker accepted the attach.
pub async fn probe_subscribe_source(cfg: &AmqpConfig, site: &str) -> Result<String, ProbeError> {
    let address = subscribe_address(cfg, site)?;
    let mut conn = connect(cfg, &container(site)).await?;
    let result = async {
        let mut session = step(Session::begin(&mut conn))
            .await
            .map_err(ProbeError::Session)?;
        let attach = Receiver::builder()
            .name(format!("audrey-federation-{site}-check"))
            .source(Source::builder().address(address.clone()).build())
            .credit_mode(CreditMode::Manual)
            .auto_accept(false)
            .attach(&mut session);
        let outcome = match step(attach).await {
            Ok(receiver) => {
                let _ = tokio::time::timeout(super::link::STEP_TIMEOUT, receiver.detach()).await;
                Ok(address.clone())
            }
            Err(reason) => Err(classify(&address, reason)),
        };
        let _ = step(session.end()).await;
        outcome
    }
    .await;
    let _ = step(conn.close()).await;
    result
}

/// RabbitMQ answers a missing `/amq/queue/…` with `amqp:not-found` (it ends the session).
fn classify(address: &str, reason: String) -> ProbeError {
    let lower = reason.to_ascii_lowercase();
    if lower.contains("not-found") || lower.contains("notfound") || lower.contains("not_found") {
        // Keep the broker's own words ("NOT_FOUND - no queue 'x' in vhost '/'") when present.
        let reason = match reason.find("NOT_FOUND - ") {
            Some(at) => reason[at..]
                .split('"')
                .next()
                .unwrap_or(&reason[at..])
                .to_owned(),
            None => reason,
        };
        ProbeError::NotFound {
            address: address.to_owned(),
            reason,
        }
    } else {
        ProbeError::Attach {
            address: address.to_owned(),
            reason,
        }
    }
}
