#!/usr/bin/env bash
# The quick start: from a fresh clone on a Debian machine with only rustup and the package
# registries, build the web client and run the all-in-one `satsuma` server (coordinator + SFU +
# web client in one process) in dev mode (--dev: open dev tokens). Open the URL it prints.
#
# Idempotent: it installs only what is missing (the wasm32 target and wasm-bindgen-cli, through
# scripts/build-web.sh), and cargo and the web build are incremental. Every argument is passed to
# `satsuma` (try `scripts/run.sh --help`).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null 2>&1; then
  if [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
  else
    echo "run.sh: cargo not found; install Rust with rustup first (https://rustup.rs)" >&2
    exit 1
  fi
fi

if ! rustup target list --installed 2>/dev/null | grep -q '^wasm32-unknown-unknown$'; then
  echo "== installing the wasm32-unknown-unknown target"
  rustup target add wasm32-unknown-unknown
fi

# The web client: builds client/wasm into client/web/public/pkg/ (installing wasm-bindgen-cli at
# the pinned version when it is missing) and whatever else the web app needs.
if [ -x scripts/build-web.sh ]; then
  echo "== building the web client (scripts/build-web.sh)"
  ./scripts/build-web.sh
elif [ -f scripts/build-web.sh ]; then
  echo "== building the web client (scripts/build-web.sh)"
  bash scripts/build-web.sh
else
  echo "run.sh: scripts/build-web.sh is missing; starting without a freshly built web client" >&2
fi

echo "== building and starting satsuma"
# The web client's files live in the checkout; point the server at them explicitly so the
# command also works when started from another directory.
export SATSUMA_WEB_DIR="${SATSUMA_WEB_DIR:-$PWD/client/web/public}"
# The quick start runs in dev mode: POST /token hands anyone who can reach the web port a join
# token for any room (host rights included), so the lobby's Join button just works. Never run a
# real deployment like this: without --dev, people join with a token (`satsuma token create`,
# POST /api/v1/tokens) or a host's invite link (docs/operations.md, "Tokens and access").
echo "== dev mode (--dev): open dev tokens for anyone who reaches the web port; not for production"
exec cargo run --release -p satsuma -- --dev "$@"
