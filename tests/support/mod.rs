//! Shared test harness: real processes of our binaries (the sidecar, the Config Server
//! emulator), small in-test upstreams and relays, and an HTTP client speaking the server's
//! API. Each test crate uses only part of it, hence the `dead_code` allowance.
#![allow(dead_code)]

pub mod client;
pub mod emulator;
pub mod relay;
pub mod sidecar;
pub mod upstream;
