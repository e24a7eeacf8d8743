//! cargo-fuzz target; the body (and what it checks) is in `bodies/frame_trailer.rs`, which
//! `tests/fuzz_corpus.rs` also runs on every file of `corpus/frame_trailer/`.
#![no_main]

#[path = "../bodies/frame_trailer.rs"]
mod body;

libfuzzer_sys::fuzz_target!(|data: &[u8]| body::run(data));
