#!/usr/bin/env bash
# Stamps the web client's integrity data into a web directory (default
# client/web/public); scripts/build-web.sh runs it after building the WASM.
#
# 1. index.html: rewrites the lines between `<!-- satsuma:integrity` and
#    `<!-- /satsuma:integrity -->`: the stylesheet and the entry module (the
#    bundle app.bundle.js when it was made from these modules, else app.js) with
#    `integrity` attributes, and an import map whose "integrity" section gives
#    the SHA-256 (SRI form) of every .js and .wasm file. The browser refuses any
#    module whose bytes do not match; the page checks the worker and the .wasm
#    against the same hashes. So the one hash of index.html pins every file.
# 2. manifest.json: every served file (path, size, sha256 hex) except
#    manifest.json itself and dot-files, sorted by path, for
#    `satsuma verify-client`.
#
# Reproducible: the output depends only on the files' contents (no times, a
# fixed order). Needs bash and coreutils only.
#
#   scripts/web-manifest.sh [DIR]
set -euo pipefail
export LC_ALL=C

DIR="${1:-$(dirname "$0")/../client/web/public}"
cd "$DIR"

BEGIN='<!-- satsuma:integrity'
END='<!-- /satsuma:integrity -->'
if ! grep -qF "$BEGIN" index.html || ! grep -qF "$END" index.html; then
  echo "web-manifest: $DIR/index.html has no '$BEGIN ... $END' block" >&2
  exit 1
fi

# Every served file: relative paths, sorted bytewise, without manifest.json and dot-files.
files() {
  find . -type f ! -path '*/.*' ! -path './manifest.json' | sed 's|^\./||' | sort
}
for f in $(files); do
  if [[ ! "$f" =~ ^[A-Za-z0-9._+/-]+$ ]]; then
    echo "web-manifest: unsupported file name '$f' (use letters, digits and . _ + - /)" >&2
    exit 1
  fi
done

# SRI value (sha256-<base64>) of a file.
sri() {
  local hex
  hex=$(sha256sum "$1" | cut -d' ' -f1)
  printf 'sha256-%s' "$(printf '%b' "$(sed 's/../\\x&/g' <<<"$hex")" | base64 -w0)"
}

# Bundled or not. scripts/build-web.sh bundles the page's modules into app.bundle.js and the
# E2EE worker with its WebAssembly glue into e2ee-worker.bundle.js (esbuild), and lists in
# .bundle-inputs the SHA-256 of every .js file here it bundled them from. The page loads the
# bundles only when exactly those files are here: after an edit of a module without a new
# bundle (or without esbuild) it loads its modules one by one, never stale code.
bundle_inputs() {
  files | grep -E '\.js$' | grep -vE '\.bundle\.js$'
}
bundled=0
if [ -f app.bundle.js ] && [ -f e2ee-worker.bundle.js ] && [ -f .bundle-inputs ]; then
  if [ "$(cut -d' ' -f3- .bundle-inputs)" = "$(bundle_inputs)" ] \
    && sha256sum --quiet --status -c .bundle-inputs 2>/dev/null; then
    bundled=1
  else
    echo "web-manifest: the bundles in $DIR were made from other modules than these (run scripts/build-web.sh): the page loads its modules unbundled" >&2
  fi
fi

# 1. The integrity block of index.html.
map=""
for f in $(files | grep -E '\.(js|wasm)$'); do
  if [ -n "$map" ]; then map+=","; fi
  map+="\"./$f\":\"$(sri "$f")\""
done
preload=""
if [ "$bundled" = 1 ]; then
  entry=app.bundle.js
  worker_files="e2ee-worker.bundle.js pkg/satsuma_wasm_bg.wasm"
else
  entry=app.js
  worker_files="e2ee-worker.js pkg/satsuma_wasm.js pkg/satsuma_wasm_bg.wasm"
  # The page's modules (not the worker and its glue, which integrity.js fetches)
  # are preloaded at once, so the import graph loads in one round instead of one
  # round per level of imports.
  for f in $(files | grep -E '^[^/]+\.js$' | grep -vE '\.bundle\.js$' | grep -vx 'app.js' | grep -vx 'e2ee-worker.js'); do
    preload+="  <link rel=\"modulepreload\" href=\"$f\" integrity=\"$(sri "$f")\">"$'\n'
  done
fi
# What the page fetches by itself as soon as its modules run (integrity.js:
# the E2EE worker, its glue and the .wasm; client-config.js: the server's
# client config) starts with the HTML instead, one round earlier.
for f in $worker_files; do
  if [ -f "$f" ]; then
    # (No integrity attribute: Chromium ignores it on fetch preloads; the fetch that
    # takes the preloaded bytes carries the hash and checks them.)
    preload+="  <link rel=\"preload\" href=\"$f\" as=\"fetch\" crossorigin=\"anonymous\">"$'\n'
  fi
done
preload+="  <link rel=\"preload\" href=\"client-config.json\" as=\"fetch\" crossorigin=\"anonymous\">"$'\n'
block="$(cat <<EOF
  <link rel="stylesheet" href="app.css" integrity="$(sri app.css)">
  <script type="importmap">{"integrity":{$map}}</script>
${preload}  <script type="module" src="$entry" integrity="$(sri "$entry")"></script>
EOF
)"
tmp=$(mktemp .index.html.XXXXXX)
inside=0
while IFS= read -r line || [ -n "$line" ]; do
  if [ $inside = 0 ]; then
    printf '%s\n' "$line"
    if [[ "$line" == *"$BEGIN"* ]]; then inside=1; fi
  elif [[ "$line" == *"$END"* ]]; then
    printf '%s\n%s\n' "$block" "$line"
    inside=0
  fi
done <index.html >"$tmp"
# Keep index.html's mode (mktemp makes 0600).
chmod --reference=index.html "$tmp"
if cmp -s "$tmp" index.html; then rm -f "$tmp"; else mv "$tmp" index.html; fi

# 2. manifest.json (after index.html, which it covers too).
tmp=$(mktemp .manifest.json.XXXXXX)
{
  echo '{'
  echo '  "version": 1,'
  echo '  "files": ['
  first=1
  for f in $(files); do
    if [ $first = 0 ]; then echo ','; fi
    first=0
    printf '    {"path": "%s", "size": %s, "sha256": "%s"}' "$f" "$(stat -c %s "$f")" "$(sha256sum "$f" | cut -d' ' -f1)"
  done
  echo
  echo '  ]'
  echo '}'
} >"$tmp"
chmod 0644 "$tmp"
mv "$tmp" manifest.json
echo "web-manifest: $(files | wc -l) files in $DIR/manifest.json; page entry $entry; index.html sha256 $(sha256sum index.html | cut -d' ' -f1)"
