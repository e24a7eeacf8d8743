#!/usr/bin/env bash
# Join-time comparison of web client versions (issue 18; not in CI), interleaved so that a
# shared, noisy machine weighs on each version alike: each REV's web client is put in a
# directory of its own (its client/web/public as of REV, or of the working tree for `tree`,
# with the working tree's pkg/ .wasm), bundled when REV's scripts/build-web.sh bundles
# (esbuild), and ROUNDS rounds each run client/web/bench/join.mjs once per REV with JOINS
# joins in ROOM (default fresh) against one release `satsuma` (the working tree's, built
# here, or SATSUMA_BIN_DIR). Prints p50/p95 and the per-step p50 of each REV over all its
# joins, with the load average at the start of each run; samples in ARTIFACTS/compare-*/.
#
#   ROUNDS=5 JOINS=4 scripts/bench-join-compare.sh 8fba469 ffac748 tree
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
[ "$#" -ge 1 ] || { echo "usage: $0 REV|tree ..." >&2; exit 2; }
ROUNDS="${ROUNDS:-5}"
JOINS="${JOINS:-4}"
ROOM="${ROOM:-fresh}"
ARTIFACTS="${ARTIFACTS:-$ROOT/artifacts}"
OUT="$ARTIFACTS/compare-$(date -u +%Y%m%dT%H%M%S)"
./scripts/build-web.sh
if [ -z "${SATSUMA_BIN_DIR:-}" ]; then
  cargo build --release -p satsuma
  SATSUMA_BIN_DIR="${CARGO_TARGET_DIR:-$ROOT/target}/release"
fi
( cd client/web && [ -d node_modules/playwright-core ] || npm ci --no-audit --no-fund )
mkdir -p "$OUT"
i=0
for rev in "$@"; do
  i=$((i + 1))
  dir="$OUT/web-$i"
  mkdir -p "$dir"
  if [ "$rev" = tree ]; then
    cp -a client/web/public/. "$dir/"
    rm -f "$dir"/*.bundle.js "$dir/.bundle-inputs"
    bundles=1
  else
    git archive "$rev" client/web/public | tar -x -C "$dir" --strip-components=3
    rm -rf "$dir/pkg"
    cp -a client/web/public/pkg "$dir/pkg"
    bundles=$(git show "$rev:scripts/build-web.sh" | grep -c esbuild || true)
  fi
  if [ "$bundles" -gt 0 ]; then
    ./scripts/build-web.sh --js-only "$dir" >/dev/null
  else
    bash scripts/web-manifest.sh "$dir" >/dev/null
  fi
  echo "# compare: $i = $rev, page entry $(grep -o 'type="module" src="[^"]*"' "$dir/index.html")"
done
for r in $(seq 1 "$ROUNDS"); do
  i=0
  for rev in "$@"; do
    i=$((i + 1))
    load=$(cut -d' ' -f1 /proc/loadavg)
    ( cd client/web && SATSUMA_WEB_DIR="$OUT/web-$i" SATSUMA_BIN_DIR="$SATSUMA_BIN_DIR" ARTIFACTS="$OUT/runs-$i" \
        JOINS="$JOINS" ROOMS="$ROOM" node bench/join.mjs ) >"$OUT/run-$i-$r.log" 2>&1 \
      || echo "# compare: round $r of $rev failed (see $OUT/run-$i-$r.log)"
    echo "$load" >>"$OUT/load-$i"
    echo "# compare: round $r, $rev: $(grep '^# join |' "$OUT/run-$i-$r.log" | cut -d'|' -f4-6) (load $load)"
  done
done
node - "$OUT" "$ROOM" "$@" <<'JS'
const { readdirSync, readFileSync, existsSync } = require('node:fs');
const [out, room, ...revs] = process.argv.slice(2);
const steps = ['pageLoad', 'token', 'welcome', 'keyPackageSent', 'mlsWelcome', 'execute', 'sfuSession', 'ice', 'dtls',
  'firstPacket', 'firstKeyframe', 'firstDecrypted', 'firstDecoded'];
const pct = (a, p) => { const s = [...a].sort((x, y) => x - y); return s[Math.max(0, Math.ceil((p / 100) * s.length) - 1)]; };
revs.forEach((rev, k) => {
  const dir = `${out}/runs-${k + 1}`;
  const samples = existsSync(dir) ? readdirSync(dir).flatMap((f) => JSON.parse(readFileSync(`${dir}/${f}`)).rooms[room]?.samples ?? []) : [];
  const loads = readFileSync(`${out}/load-${k + 1}`, 'utf8').trim().split('\n').map(Number);
  const t = samples.map((s) => s.firstDecoded);
  if (!t.length) { console.log(`# compare | ${rev} | no samples`); return; }
  const p50 = (key, f = (s) => s[key]) => pct(samples.map(f).filter((x) => x !== undefined), 50);
  console.log(`# compare | ${rev} | ${room} | n=${t.length} | p50 ${pct(t, 50)} ms | p95 ${pct(t, 95)} ms | load ${Math.min(...loads)}-${Math.max(...loads)}`
    + ` | steps p50: ${steps.map((s) => `${s} ${p50(s)}`).join(', ')}`
    + ` | modules run ${p50('', (s) => s.nav?.modulesRun)}, requests ${p50('', (s) => s.nav?.requests)}`);
});
JS
