#!/usr/bin/env bash
# The full Satsuma test suite (what CI runs via .ci/run). On a fresh Debian
# machine with rustup it installs what the tests need (idempotent): the wasm
# target, wasm-bindgen-cli, Chromium, Node packages. Then: formatting, lints,
# the wasm build of the E2EE core (the web client's), every Rust test of the workspace, the
# browser suite (the web client in headless Chromium against real servers), and
# the network suite (Chromium in network namespaces: ICE-TCP, TURN, ICE restart,
# time to first frame; skipped with a printed reason where namespaces are refused).
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TERM_COLOR=never
# A CI run starts from a clean clone: incremental compilation only costs disk
# and time there.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
START=$(date +%s)
step() { echo; echo "== $* (+$(( $(date +%s) - START ))s)"; }

step "toolchain and test dependencies"
./scripts/setup.sh
./sfu/tests/browser/setup.sh

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings

# The web client's E2EE core for wasm32 (release, what the browser runs; it builds satsuma-e2ee
# for wasm32 too). The browser suite below finds it up to date. (A separate debug wasm32 build
# of satsuma-e2ee used to run here: a second cold compile of openmls for nothing.)
step "wasm32 build of the E2EE core (scripts/build-web.sh)"
./scripts/build-web.sh

step "cargo test --workspace"
cargo test --workspace

step "browser suite"
./scripts/test-browser.sh

step "network suite (Chromium in network namespaces; SKIPPED with a reason where the kernel refuses them)"
./scripts/test-network.sh

step "all tests passed"
df -h . | tail -1 || true
