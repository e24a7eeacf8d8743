//! cargo-fuzz target; the body (and what it checks) is in `bodies/api_json.rs`, which
//! `tests/fuzz_corpus.rs` also runs on every file of `corpus/api_json/`.
#![no_main]

#[path = "../bodies/api_json.rs"]
mod body;

libfuzzer_sys::fuzz_target!(|data: &[u8]| body::run(data));
