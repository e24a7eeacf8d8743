#!/usr/bin/env bash
# Join benchmark (not in CI): the time from a joiner's page load to its first
# decrypted and decoded remote video frame, p50/p95 over JOINS (default 20)
# joins in a fresh room, a 4-person room, and a 4-person room where a member
# closed its page just before each join. Uses the release all-in-one `satsuma`
# and headless Chromium; prints one line per room with the per-step timeline
# and writes every sample to artifacts/bench-join-*.json. See client/web/bench/join.mjs.
#
#   scripts/bench-join.sh                     # all three rooms, 20 joins each
#   JOINS=5 ROOMS=churn scripts/bench-join.sh # a quick look at one room
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
./scripts/build-web.sh
cargo build --release -p satsuma
( cd client/web && [ -d node_modules/playwright-core ] || npm ci --no-audit --no-fund )
export SATSUMA_BIN_DIR="${CARGO_TARGET_DIR:-$ROOT/target}/release"
export ARTIFACTS="${ARTIFACTS:-$ROOT/artifacts}"
cd client/web
exec node bench/join.mjs
