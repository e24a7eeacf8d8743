//! cargo-fuzz target; the body (and what it checks) is in `bodies/handshake.rs`, which
//! `tests/fuzz_corpus.rs` also runs on every file of `corpus/handshake/`.
#![no_main]

#[path = "../bodies/handshake.rs"]
mod body;

libfuzzer_sys::fuzz_target!(|data: &[u8]| body::run(data));
