#!/usr/bin/env bash
# The browser test suite: the web client in headless Chromium against a real
# satsuma-sfu and satsuma-coordinator on 127.0.0.1. Installs what is missing
# (Debian's chromium, playwright-core, the wasm toolchain), builds the WASM
# E2EE core and the two server binaries, then runs client/web/tests/*.test.mjs
# with `node --test`. Screenshots land in artifacts/ (gitignored).
#
#   UPDATE_SCREENSHOT=1 scripts/test-browser.sh   # also refresh docs/screenshot-call.png
#   scripts/test-browser.sh --prepare-only         # install and build, run nothing
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"

if [ ! -x /usr/bin/chromium ]; then
  echo "== installing chromium (Debian package)"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y chromium
fi

echo "== playwright-core"
(
  cd client/web
  if [ ! -d node_modules/playwright-core ]; then
    if [ -f package-lock.json ]; then npm ci --no-audit --no-fund; else npm install --no-audit --no-fund; fi
  fi
)

# SATSUMA_PREPARED=1: a `--prepare-only` run just did the builds (scripts/test.sh, whose other
# lane is then already serving client/web/public: a rebuild would rewrite its index.html under it).
if [ "${SATSUMA_PREPARED:-0}" != "1" ]; then
  echo "== WASM E2EE core"
  ./scripts/build-web.sh

  echo "== server binaries"
  # The same feature set as `cargo test --workspace`, so its binaries are reused.
  cargo build --workspace --bins
fi
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
export SATSUMA_BIN_DIR="$TARGET_DIR/debug"
export ARTIFACTS="${ARTIFACTS:-$ROOT/artifacts}"
mkdir -p "$ARTIFACTS"

[ "${1:-}" = "--prepare-only" ] && exit 0

echo "== browser tests"
cd client/web
# SATSUMA_BROWSER_NETNS=1 (scripts/test.sh sets it when it runs the network suite beside this
# one): the suite runs in a network namespace of its own with only loopback, so the veth pairs
# and namespaces the network suite makes meanwhile are no network change for these Chromiums
# (a change fails their requests in flight with ERR_NETWORK_CHANGED). Everything here talks to
# 127.0.0.1 only.
if [ "${SATSUMA_BROWSER_NETNS:-0}" = "1" ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo -n"
  exec $SUDO unshare -n -- env "PATH=$PATH" "SATSUMA_BIN_DIR=$SATSUMA_BIN_DIR" "ARTIFACTS=$ARTIFACTS" \
    ${CHROMIUM:+"CHROMIUM=$CHROMIUM"} ${UPDATE_SCREENSHOT:+"UPDATE_SCREENSHOT=$UPDATE_SCREENSHOT"} \
    sh -c 'ip link set lo up && exec node --test --test-concurrency=1 tests/*.test.mjs'
fi
node --test --test-concurrency=1 tests/*.test.mjs
