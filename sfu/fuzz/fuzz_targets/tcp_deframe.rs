//! cargo-fuzz target; the body (and what it checks) is in `bodies/tcp_deframe.rs`, which
//! `tests/fuzz_corpus.rs` also runs on every file of `corpus/tcp_deframe/`.
#![no_main]

#[path = "../bodies/tcp_deframe.rs"]
mod body;

libfuzzer_sys::fuzz_target!(|data: &[u8]| body::run(data));
