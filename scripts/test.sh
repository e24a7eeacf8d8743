#!/usr/bin/env bash
# The full Satsuma test suite: installs what the tests need (idempotent), then
# runs formatting, lints and every test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TERM_COLOR=never

echo "== toolchain and test dependencies"
./scripts/setup.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings

echo "== cargo build (wasm32 E2EE core)"
cargo build -p satsuma-e2ee --target wasm32-unknown-unknown

echo "== cargo test"
cargo test --workspace
