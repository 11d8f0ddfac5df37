//! Shared integration-test support: builders that start real processes and a small HTTP
//! client. Each test crate uses only part of it, hence the `dead_code` allowances.
#[allow(dead_code)]
pub mod client;
#[allow(dead_code)]
pub mod emulator;
