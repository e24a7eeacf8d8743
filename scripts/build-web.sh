#!/usr/bin/env bash
# Builds the web client's WebAssembly E2EE core (crate satsuma-wasm) into
# client/web/public/pkg/ (gitignored), installing what is missing: the
# wasm32-unknown-unknown target and wasm-bindgen-cli 0.2.130 (the exact
# version of the `wasm-bindgen` crate pinned in client/wasm/Cargo.toml).
# Then stamps the integrity data (scripts/web-manifest.sh): the SHA-256 of
# every module, the stylesheet and the .wasm into index.html's import map, and
# client/web/public/manifest.json (every served file with size and SHA-256,
# reproducible) for `satsuma verify-client`. Run it again after any change to
# the web client: the browser refuses files that do not match index.html.
# Idempotent; does nothing but a no-op cargo check and the hashing when up to date.
#
# Environment: CARGO_TARGET_DIR (default: target/), WEB_PROFILE=release|dev
# (default release: openmls is 10-100x slower unoptimised).
# `--tools-only`: install the target and wasm-bindgen-cli, build nothing (scripts/setup.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
TOOLS_ONLY=0
case "${1:-}" in
  --tools-only) TOOLS_ONLY=1 ;;
  "") ;;
  *) echo "usage: $0 [--tools-only]" >&2; exit 2 ;;
esac

WASM_BINDGEN_VERSION=0.2.130
PROFILE="${WEB_PROFILE:-release}"
TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
OUT_DIR=client/web/public/pkg

# Stamp the integrity hashes first too, so an edit of the JavaScript is loadable even when the
# WASM build below fails (it stamps again after writing pkg/).
if [ "$TOOLS_ONLY" -eq 0 ] && [ -f client/web/public/index.html ]; then
  bash scripts/web-manifest.sh client/web/public
fi

if ! rustup target list --installed | grep -qx wasm32-unknown-unknown; then
  echo "build-web: installing the wasm32-unknown-unknown target"
  rustup target add wasm32-unknown-unknown
fi

if [ "$(wasm-bindgen --version 2>/dev/null || true)" != "wasm-bindgen $WASM_BINDGEN_VERSION" ]; then
  echo "build-web: installing wasm-bindgen-cli $WASM_BINDGEN_VERSION"
  # Not --locked: its lockfile pins a webpki-roots release missing from some
  # registry mirrors (see docs), and the CLI resolves fine without it.
  cargo install wasm-bindgen-cli --version "$WASM_BINDGEN_VERSION"
fi
[ "$TOOLS_ONLY" -eq 0 ] || exit 0

if [ "$PROFILE" = release ]; then
  cargo build -p satsuma-wasm --target wasm32-unknown-unknown --release
  WASM="$TARGET_DIR/wasm32-unknown-unknown/release/satsuma_wasm.wasm"
else
  cargo build -p satsuma-wasm --target wasm32-unknown-unknown
  WASM="$TARGET_DIR/wasm32-unknown-unknown/debug/satsuma_wasm.wasm"
fi

# Re-run wasm-bindgen only when the module changed.
STAMP="$OUT_DIR/.source-stamp"
SOURCE_STAMP="$(stat -c '%s %Y' "$WASM") $PROFILE"
if [ -f "$OUT_DIR/satsuma_wasm_bg.wasm" ] && [ "$(cat "$STAMP" 2>/dev/null)" = "$SOURCE_STAMP" ]; then
  echo "build-web: $OUT_DIR is up to date"
else
  mkdir -p "$OUT_DIR"
  wasm-bindgen --target web --no-typescript --out-dir "$OUT_DIR" "$WASM"
  echo "$SOURCE_STAMP" > "$STAMP"
  echo "build-web: wrote $OUT_DIR ($(stat -c %s "$OUT_DIR/satsuma_wasm_bg.wasm") bytes of wasm)"
fi

# Integrity hashes into index.html, and manifest.json (always: any file may have changed).
bash scripts/web-manifest.sh client/web/public
