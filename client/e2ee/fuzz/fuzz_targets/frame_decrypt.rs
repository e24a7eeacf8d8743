//! cargo-fuzz target; the body (and what it checks) is in `bodies/frame_decrypt.rs`, which
//! `tests/fuzz_corpus.rs` also runs on every file of `corpus/frame_decrypt/`.
#![no_main]

#[path = "../bodies/frame_decrypt.rs"]
mod body;

libfuzzer_sys::fuzz_target!(|data: &[u8]| body::run(data));
