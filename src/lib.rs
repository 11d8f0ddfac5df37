//! audrey-federation: a sidecar that federates unmodified Audrey Config Servers.
//!
//! The library holds every concept; `main.rs` only parses flags, sets up tracing and
//! metrics, and calls [`run`]. See ARCHITECTURE.md for the codemap.
#![forbid(unsafe_code)]

pub mod amqp;
pub mod capture;
pub mod change;
pub mod config;
pub mod oauth;
pub mod proxy;
pub mod store;
pub mod wire;
