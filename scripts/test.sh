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

ARTIFACTS="${ARTIFACTS:-$PWD/artifacts}"
export ARTIFACTS
mkdir -p "$ARTIFACTS"

# The Debian and Node packages (downloads, disk) install in the background while the Rust tools,
# the lints and the builds use the CPU; the tests wait for them below. On a fresh machine each
# would otherwise wait for the other.
step "toolchain: Rust tools (the system packages install in the background: artifacts/setup-system.log)"
./scripts/setup.sh --system > "$ARTIFACTS/setup-system.log" 2>&1 &
SETUP_PID=$!
system_ready() {
  local rc=0
  wait "$SETUP_PID" || rc=$?
  echo "== system packages (artifacts/setup-system.log; exit $rc)"
  cat "$ARTIFACTS/setup-system.log"
  [ "$rc" -eq 0 ] || { echo "setup.sh --system FAILED (exit $rc)"; exit 1; }
}
./scripts/setup.sh --rust

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings

# The web client's E2EE core for wasm32 (release, what the browser runs; it builds satsuma-e2ee
# for wasm32 too). The browser suite below finds it up to date. (A separate debug wasm32 build
# of satsuma-e2ee used to run here: a second cold compile of openmls for nothing.)
step "wasm32 build of the E2EE core (scripts/build-web.sh)"
./scripts/build-web.sh

step "cargo test --workspace: build"
cargo test --workspace --no-run

step "system packages"
system_ready

step "cargo test --workspace"
cargo test --workspace

# The deploy check (~40 s warm, ~160 s on a fresh machine that downloads helm and the schema
# validator): the image built with buildah from the debug binaries and smoke-tested with podman,
# incl. the chart's config on a real 3-member etcd (SKIPPED with the reason where the machine
# cannot build or run images); the Helm chart linted, rendered and validated against the
# Kubernetes schemas. docs/deploy.md. It needs the server binaries and satsuma-bot, which the
# browser suite's preparation builds. It runs beside the browser suite (it is mostly waiting on
# processes and I/O), the browser suite in a network namespace of its own (loopback only), so
# nothing the deploy check starts is a network change for its Chromiums. Its output is printed
# when both are done (and kept in artifacts/deploy-check.log). The network suite runs after both,
# alone: its time-to-first-frame bars do not hold with the browser suite beside it (measured: its
# TURN/TCP p95 went to 6.9 s, and an ICE restart under that load broke a churn renegotiation).
# SATSUMA_SERIAL=1, or a machine without `unshare -n`, runs everything one after the other.
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo -n"
if [ "${SATSUMA_SERIAL:-0}" != "1" ] && $SUDO unshare -n true 2>/dev/null; then
  step "browser suite and deploy check, in parallel (the browser suite in its own network namespace)"
  # The shared prerequisites first (Chromium, playwright-core, the web build, the server
  # binaries), so that nothing builds while the other lane runs.
  ./scripts/test-browser.sh --prepare-only
  ./scripts/test-deploy.sh --profile debug --no-build > "$ARTIFACTS/deploy-check.log" 2>&1 &
  DEPLOY_PID=$!
  browser=0
  SATSUMA_PREPARED=1 SATSUMA_BROWSER_NETNS=1 ./scripts/test-browser.sh || browser=$?
  deploy=0
  wait "$DEPLOY_PID" || deploy=$?
  echo; echo "== deploy check output (artifacts/deploy-check.log; exit $deploy)"
  cat "$ARTIFACTS/deploy-check.log"
  [ "$browser" -eq 0 ] || { echo "browser suite FAILED (exit $browser)"; exit 1; }
  [ "$deploy" -eq 0 ] || { echo "deploy check FAILED (exit $deploy)"; exit 1; }
else
  step "browser suite"
  ./scripts/test-browser.sh

  step "deploy: image smoke test and Helm chart validation (scripts/test-deploy.sh)"
  ./scripts/test-deploy.sh --profile debug --no-build
fi

step "network suite (Chromium in network namespaces; SKIPPED with a reason where the kernel refuses them)"
./scripts/test-network.sh

step "all tests passed"
df -h . | tail -1 || true
