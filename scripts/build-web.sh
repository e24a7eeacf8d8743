#!/usr/bin/env bash
# Builds the web client's WebAssembly E2EE core (crate satsuma-wasm) into
# client/web/public/pkg/ (gitignored), installing what is missing: the
# wasm32-unknown-unknown target and wasm-bindgen-cli 0.2.130 (the exact
# version of the `wasm-bindgen` crate pinned in client/wasm/Cargo.toml).
# Then bundles the page's ES modules into public/app.bundle.js and the E2EE
# worker with its glue into public/e2ee-worker.bundle.js (gitignored) with
# esbuild, the exact version client/web/package.json pins (installed with
# `npm ci` when missing): a first visit loads 3 files instead of ~30. The
# source modules stay as they are (the unit tests import them; without npm, or
# after an edit without a new bundle, the page loads them unbundled).
# Then stamps the integrity data (scripts/web-manifest.sh): the SHA-256 of
# every module, the stylesheet and the .wasm into index.html's import map, and
# client/web/public/manifest.json (every served file with size and SHA-256,
# reproducible) for `satsuma verify-client`. Run it again after any change to
# the web client: the browser refuses files that do not match index.html.
# Idempotent; does nothing but a no-op cargo check and the hashing when up to date.
#
# Environment: CARGO_TARGET_DIR (default: target/), WEB_PROFILE=release|dev
# (default release: openmls is 10-100x slower unoptimised).
# `--tools-only`: install the target, wasm-bindgen-cli and esbuild, build nothing (scripts/setup.sh).
# `--js-only [DIR]`: only the bundles and the stamping (after a JavaScript edit; pkg/ must
# exist), of client/web/public or of a copy of it in DIR (absolute, or relative to the
# repository root; scripts/bench-join-compare.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
TOOLS_ONLY=0
JS_ONLY=0
PUBLIC=client/web/public
case "${1:-}" in
  --tools-only) TOOLS_ONLY=1 ;;
  --js-only) JS_ONLY=1; PUBLIC="${2:-$PUBLIC}" ;;
  "") ;;
  *) echo "usage: $0 [--tools-only|--js-only [DIR]]" >&2; exit 2 ;;
esac

WASM_BINDGEN_VERSION=0.2.130
PROFILE="${WEB_PROFILE:-release}"
TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
OUT_DIR=client/web/public/pkg

# Stamp the integrity hashes first too, so an edit of the JavaScript is loadable even when the
# WASM build below fails (it stamps again after writing pkg/).
if [ "$TOOLS_ONLY" -eq 0 ] && [ "$JS_ONLY" -eq 0 ] && [ -f client/web/public/index.html ]; then
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
# esbuild (npm) at the version client/web/package.json pins; the lock file holds its
# platform binary package, so `npm ci` needs nothing but the npm registry.
ESBUILD=client/web/node_modules/.bin/esbuild
ESBUILD_VERSION=$(sed -n 's/^ *"esbuild": *"\([^"]*\)".*/\1/p' client/web/package.json)
if [ "$("$ESBUILD" --version 2>/dev/null || true)" != "$ESBUILD_VERSION" ]; then
  if command -v npm >/dev/null 2>&1; then
    echo "build-web: installing esbuild $ESBUILD_VERSION (npm ci in client/web)"
    (cd client/web && npm ci --no-audit --no-fund --loglevel=error) \
      || echo "build-web: npm ci failed: the page will load its modules unbundled" >&2
  else
    echo "build-web: no npm: the page will load its modules unbundled (slower first load)" >&2
  fi
fi
[ "$TOOLS_ONLY" -eq 0 ] || exit 0

if [ "$JS_ONLY" -eq 1 ]; then
  [ -f "$PUBLIC/pkg/satsuma_wasm.js" ] || { echo "build-web: --js-only needs $PUBLIC/pkg (run without it first)" >&2; exit 1; }
else
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
fi

# The bundles (always: any module may have changed; esbuild takes ~50 ms). .bundle-inputs
# lists the modules they were made from, hashed before bundling: web-manifest.sh makes the
# page load the bundles only while exactly those files are there.
if [ "$("$ESBUILD" --version 2>/dev/null || true)" = "$ESBUILD_VERSION" ]; then
  inputs=$(cd "$PUBLIC" && LC_ALL=C find . -type f -name '*.js' ! -name '*.bundle.js' ! -path '*/.*' \
    | sed 's|^\./||' | LC_ALL=C sort | xargs sha256sum)
  rm -f "$PUBLIC/.bundle-inputs"
  # Identifiers are kept (readable errors); whitespace and syntax minified. SATSUMA_BUNDLE
  # tells integrity.js to start the worker from its bundle.
  "$ESBUILD" "$PUBLIC/app.js" --bundle --format=esm --charset=utf8 --legal-comments=none \
    --minify-whitespace --minify-syntax --define:SATSUMA_BUNDLE=true \
    --outfile="$PUBLIC/app.bundle.js" --log-level=warning
  "$ESBUILD" "$PUBLIC/e2ee-worker.js" --bundle --format=esm --charset=utf8 --legal-comments=none \
    --minify-whitespace --minify-syntax \
    --outfile="$PUBLIC/e2ee-worker.bundle.js" --log-level=warning
  printf '%s\n' "$inputs" > "$PUBLIC/.bundle-inputs"
  echo "build-web: bundled $(wc -l <<<"$inputs") modules into app.bundle.js ($(stat -c %s "$PUBLIC/app.bundle.js") bytes) and e2ee-worker.bundle.js ($(stat -c %s "$PUBLIC/e2ee-worker.bundle.js") bytes)"
else
  rm -f "$PUBLIC/app.bundle.js" "$PUBLIC/e2ee-worker.bundle.js" "$PUBLIC/.bundle-inputs"
fi

# Integrity hashes into index.html, and manifest.json (always: any file may have changed).
bash scripts/web-manifest.sh "$PUBLIC"
