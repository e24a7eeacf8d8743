//! cargo-fuzz target; the body (and what it checks) is in `bodies/client_json.rs`, which
//! `tests/fuzz_corpus.rs` also runs on every file of `corpus/client_json/`.
#![no_main]

#[path = "../bodies/client_json.rs"]
mod body;

libfuzzer_sys::fuzz_target!(|data: &[u8]| body::run(data));
