//! Fuzz target `audrey_data`: feeds libFuzzer's bytes to `audrey_federation::fuzzing::audrey_data`, the
//! entry point tests/fuzz_corpus.rs replays the committed corpus through. No logic here.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| audrey_federation::fuzzing::audrey_data(data));
