//! Shared test harness: real processes of our binaries (sidecar, emulator), a real broker,
//! test certificates, a small HTTP client, a TCP relay. Each test binary uses part of it.
#![allow(dead_code)]

pub mod broker;
pub mod broker_layout;
pub mod certs;
pub mod client;
pub mod emulator;
pub mod relay;
pub mod sidecar;
pub mod upstream;
