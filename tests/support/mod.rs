//! Shared test harness: real processes of our binaries, a real broker, test certificates.
//! Each test binary uses some of these, so unused items are expected.
#![allow(dead_code)]

pub mod broker;
pub mod broker_layout;
pub mod certs;
pub mod sidecar;
pub mod upstream;
