//! The transparent reverse proxy.
pub mod forwarded;
pub mod upstream;
