//! The two serde_amqp findings of the `wire_decode` fuzz target (`fuzz/findings/`), kept as
//! regression tests of the patched decoder (`vendor/serde_amqp`, see its PATCHES.md):
//!
//! - `wire_decode-serde_amqp-preallocation` declares a binary of ~4 GiB in a 557-byte message;
//!   the published 0.18.0 allocated the declared length before reading it;
//! - `wire_decode-serde_amqp-add-overflow` declares a list count that overflows the field count
//!   (a panic under overflow checks).
//!
//! Each input is decoded both ways the sidecar decodes AMQP: from a slice (the fuzz target,
//! `codec::from_encoded`) and from a reader (fe2o3's receiver decodes every transfer with
//! `decode_message_from_reader`). Each must end in an error, without a panic and without
//! allocating its declared length: the decoding runs in a child process (this test binary,
//! re-run on one test) whose address space is limited to 1 GiB, so an allocation of the
//! declared length aborts it.

use std::path::{Path, PathBuf};
use std::process::Command;

use audrey_federation::amqp::codec;
use fe2o3_amqp::types::messaging::message::__private::Deserializable;
use fe2o3_amqp::types::messaging::{Body, Message};
use fe2o3_amqp::types::primitives::Value;

const FINDINGS: [&str; 2] = [
    "wire_decode-serde_amqp-preallocation",
    "wire_decode-serde_amqp-add-overflow",
];
const CHILD_ENV: &str = "AUDREY_DECODER_FINDING";
/// The child's address-space limit (KiB): far below the 4 GiB the preallocation finding declares.
const LIMIT_KIB: u64 = 1024 * 1024;

fn finding(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/findings")
        .join(name)
}

/// Both decodings of one finding; panics if either succeeds.
fn decode_both_ways(bytes: &[u8]) {
    // The fuzz target's convention: a first byte 0 means "AMQP encoding follows".
    let amqp = bytes.strip_prefix(&[0]).expect("an AMQP-mode finding");
    match codec::from_encoded(amqp) {
        None | Some(Err(_)) => {}
        Some(Ok(w)) => panic!("decoded from a slice: {w:?}"),
    }
    let from_reader: Result<Deserializable<Message<Body<Value>>>, _> =
        serde_amqp::from_reader(std::io::Cursor::new(amqp));
    if let Ok(m) = from_reader {
        panic!("decoded from a reader: {:?}", m.0.properties);
    }
}

/// Runs in the child only (the parent sets the variable); a no-op in a normal test run.
#[test]
fn child_decodes_the_finding_named_in_the_environment() {
    let Ok(name) = std::env::var(CHILD_ENV) else {
        return;
    };
    let bytes = std::fs::read(finding(&name)).expect("read finding");
    decode_both_ways(&bytes);
    println!("DECODED-TO-ERROR {name}");
}

#[test]
fn serde_amqp_findings_decode_to_an_error_without_allocating_their_declared_length() {
    let me = std::env::current_exe().expect("current exe");
    for name in FINDINGS {
        assert!(finding(name).exists(), "{name} missing");
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!("ulimit -v {LIMIT_KIB} && exec \"$0\" \"$@\""))
            .arg(&me)
            .args([
                "--exact",
                "child_decodes_the_finding_named_in_the_environment",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, name)
            .output()
            .expect("run child");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && stdout.contains(&format!("DECODED-TO-ERROR {name}")),
            "{name}: the decoder crashed, aborted or decoded it ({:?}) under a {LIMIT_KIB} KiB address-space limit\nstdout: {stdout}\nstderr: {stderr}",
            out.status
        );
    }
}
