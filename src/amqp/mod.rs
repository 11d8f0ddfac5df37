//! The AMQP 1.0 boundary: connecting to the broker over mutual TLS, reconnect pacing, the
//! message codec, the publisher (outbox → broker) and the subscriber (broker → handler).
//!
//! Architecture invariant: **only `src/amqp` imports fe2o3-amqp** (and `serde_amqp`); the rest of
//! the crate sees plain Rust types and [`AmqpError`]. Broker addresses are configuration, never
//! hard-coded broker-specific forms. This module must not touch the outbox or the HTTP path.

pub mod backoff;
pub mod codec;
pub mod connection;
pub mod error;
mod link;
pub mod probe;
pub mod publisher;
mod sasl;
pub mod subscriber;
mod tls;

pub use backoff::Backoff;
pub use connection::{connect, Endpoint};
pub use error::AmqpError;
pub use publisher::{run_publisher, run_publisher_with_drain, PublishError};
pub use subscriber::{run_subscriber, ChangeHandler, SubscribeError};
