//! Shared test harness: real processes of our binaries, a real broker, test certificates.
#![allow(dead_code)]

pub mod sidecar;
pub mod upstream;
