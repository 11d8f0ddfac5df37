//! Fuzz target `wire_message`: `audrey_federation::fuzzing::wire_decode` on the line format only
//! (inputs starting with byte 0, the AMQP-encoded branch, are skipped). The AMQP branch stops
//! on serde_amqp findings of its own (fuzz/findings/, docs/security.md); this target keeps
//! fuzzing what this crate owns. tests/fuzz_corpus.rs replays its corpus the same way.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.first() != Some(&0) {
        audrey_federation::fuzzing::wire_decode(data)
    }
});
