//! wasm-bindgen bindings of `satsuma-e2ee` for the web client's E2EE worker.
