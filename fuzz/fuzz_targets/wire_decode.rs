//! Fuzz target `wire_decode`: feeds libFuzzer's bytes to `audrey_federation::fuzzing::wire_decode`, the
//! entry point tests/fuzz_corpus.rs replays the committed corpus through. No logic here.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| audrey_federation::fuzzing::wire_decode(data));
