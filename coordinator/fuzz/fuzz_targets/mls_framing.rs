//! cargo-fuzz target; the body (and what it checks) is in `bodies/mls_framing.rs`, which
//! `tests/fuzz_corpus.rs` also runs on every file of `corpus/mls_framing/`.
#![no_main]

#[path = "../bodies/mls_framing.rs"]
mod body;

libfuzzer_sys::fuzz_target!(|data: &[u8]| body::run(data));
