//! cargo-fuzz target; the body (and what it checks) is in `bodies/relay_framing.rs`, which
//! `tests/fuzz_corpus.rs` also runs on every file of `corpus/relay_framing/`.
#![no_main]

#[path = "../bodies/relay_framing.rs"]
mod body;

libfuzzer_sys::fuzz_target!(|data: &[u8]| body::run(data));
