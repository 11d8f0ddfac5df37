//! Shared test harness: real processes of our binaries (sidecar, emulator), a real broker,
//! test certificates, a small HTTP client, a TCP relay. Each test binary uses part of it.
#![allow(dead_code)]

pub mod abort;
pub mod apache;
pub mod broker;
pub mod broker_layout;
pub mod certs;
pub mod checker;
pub mod client;
pub mod emulator;
pub mod fault_proxy;
pub mod federation_links;
pub mod lag;
pub mod logs;
pub mod relay;
pub mod scenario;
pub mod sidecar;
pub mod site;
pub mod upstream;
pub mod workload;

/// Path of one of our binaries: Cargo's `CARGO_BIN_EXE_*` in tests, else (the demo example)
/// the binary beside `target/<profile>/examples/`.
pub fn bin(from_cargo: Option<&'static str>, name: &str) -> std::path::PathBuf {
    if let Some(p) = from_cargo {
        return p.into();
    }
    let exe = std::env::current_exe().expect("current exe");
    let profile_dir = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target/<profile>");
    profile_dir.join(name)
}

/// How long a closing AMQP step (detach, session end, connection close) may take in a test.
pub const TEARDOWN: std::time::Duration = std::time::Duration::from_secs(5);

/// A closing step whose outcome a test does not judge (its messages were already sent or
/// received): bounded by [`TEARDOWN`], a late or failed answer only noted on stderr. RabbitMQ
/// 3.10 sometimes never answers a session's `end` after a receiver's detach (seen about once
/// in a dozen runs of `amqp_connection`); unbounded, that held a test binary for ever.
pub async fn teardown<T, E: std::fmt::Debug>(
    what: &str,
    fut: impl std::future::Future<Output = Result<T, E>>,
) {
    match tokio::time::timeout(TEARDOWN, fut).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => eprintln!("{what}: {e:?} (not judged)"),
        Err(_) => eprintln!("{what}: no answer within {TEARDOWN:?} (not judged)"),
    }
}
