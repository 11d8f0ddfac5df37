//! Shared test harness: builders for the real broker and the development PKI.
#![allow(dead_code)]

pub mod broker;
pub mod broker_layout;
pub mod certs;
