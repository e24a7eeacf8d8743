#!/usr/bin/env bash
# Longer fuzzing runs: every cargo-fuzz target of the repository, one after the other.
#
#   scripts/fuzz.sh [seconds]        # seconds per target, default 60
#
# Targets: coordinator/fuzz (mls_framing, relay_framing, client_json), sfu/fuzz
# (api_json), client/e2ee/fuzz (frame_trailer, frame_decrypt, handshake). Each target's
# corpus is kept in the repository (<crate>/fuzz/corpus/<target>/) and replayed by
# `cargo test` (<crate>/tests/fuzz_corpus.rs). A run starts from that corpus, adds what
# libFuzzer finds, then minimizes it (cargo fuzz cmin); commit the result. A crash is
# a bug: its input (in <crate>/fuzz/artifacts/<target>/) is copied into the corpus, so
# `cargo test` fails on it until it is fixed, and the script exits non-zero.
#
# Environment:
#   FUZZ_TARGETS="a b"   only these targets
#   FUZZ_SANITIZER=none  libFuzzer sanitizer (none, address, ...; default none: the
#                        code under test is safe Rust, and ASan halves the speed)
#   FUZZ_TOOLCHAIN=nightly
#   FUZZ_MAX_LEN=4096    longest input libFuzzer makes (and reads from the corpus)
#   CARGO_TARGET_DIR     default: the workspace's target/ (fuzz builds land in
#                        target/x86_64-unknown-linux-gnu/, apart from normal builds)
#
# Needs a nightly toolchain (libFuzzer's instrumentation flags are unstable) and
# cargo-fuzz; both are installed here when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"

SECS="${1:-60}"
if ! [[ "$SECS" =~ ^[0-9]+$ ]] || [ "$SECS" -lt 1 ]; then
  echo "usage: $0 [seconds per target]" >&2
  exit 2
fi
TOOLCHAIN="${FUZZ_TOOLCHAIN:-nightly}"
SANITIZER="${FUZZ_SANITIZER:-none}"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
MAX_LEN="${FUZZ_MAX_LEN:-4096}"
FUZZ_DIRS=(coordinator/fuzz sfu/fuzz client/e2ee/fuzz)

if ! rustup run "$TOOLCHAIN" rustc --version >/dev/null 2>&1; then
  echo "== installing the Rust $TOOLCHAIN toolchain (cargo-fuzz needs nightly)"
  if ! rustup toolchain install "$TOOLCHAIN" --profile minimal; then
    cat >&2 <<EOF
error: the Rust '$TOOLCHAIN' toolchain is not installed and rustup could not install it
(is its distribution server reachable from here?). cargo-fuzz needs a nightly compiler
for libFuzzer's instrumentation. Install one ('rustup toolchain install nightly'), or
name an installed nightly with FUZZ_TOOLCHAIN=..., and run this again.
The corpus replay ('cargo test --test fuzz_corpus' in coordinator, sfu, client/e2ee)
needs no nightly.
EOF
    exit 1
  fi
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "== installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi
echo "== $(rustup run "$TOOLCHAIN" rustc --version), $(cargo fuzz --version), ${SECS}s per target, sanitizer $SANITIZER"

summary=()
crashed=0
for dir in "${FUZZ_DIRS[@]}"; do
  targets=$(cargo "+$TOOLCHAIN" fuzz list --fuzz-dir "$dir")
  for target in $targets; do
    if [ -n "${FUZZ_TARGETS:-}" ] && ! [[ " $FUZZ_TARGETS " == *" $target "* ]]; then
      continue
    fi
    corpus="$dir/corpus/$target"
    artifacts="$dir/artifacts/$target"
    mkdir -p "$corpus" "$artifacts"
    before=$(find "$corpus" -type f | wc -l)
    log="$TARGET_DIR/fuzz-logs/$target.log"
    mkdir -p "$(dirname "$log")"
    echo
    echo "== $dir: $target (${SECS}s, corpus $before files; log $log)"
    flags=(--fuzz-dir "$dir" --target-dir "$TARGET_DIR" --sanitizer "$SANITIZER")
    status=0
    touch "$log.start"
    cargo "+$TOOLCHAIN" fuzz run "${flags[@]}" "$target" "$corpus" -- \
      -max_total_time="$SECS" -max_len="$MAX_LEN" -print_final_stats=1 \
      -artifact_prefix="$artifacts/" \
      >"$log" 2>&1 || status=$?
    grep -E '^#[0-9]+\s+(INITED|DONE|pulse|NEW)' "$log" | tail -n 1 || true
    last=$(grep -E '^#[0-9]+\s' "$log" | grep 'cov:' | tail -n 1 || true)
    runs=$(grep -E '^stat::number_of_executed_units:' "$log" | awk '{print $2}' | tail -n 1)
    cov=$(sed -nE 's/.*cov: ([0-9]+).*/\1/p' <<<"$last")
    ft=$(sed -nE 's/.*ft: ([0-9]+).*/\1/p' <<<"$last")
    execs=$(sed -nE 's/.*exec\/s: ([0-9]+).*/\1/p' <<<"$last")
    result="ok"
    if [ "$status" -ne 0 ]; then
      found=$(find "$artifacts" -type f -newer "$log.start" 2>/dev/null || true)
      if [ -n "$found" ]; then
        crashed=1
        result="CRASH"
        for f in $found; do
          cp "$f" "$corpus/$(basename "$f")"
          echo "   crash input kept in the corpus: $corpus/$(basename "$f")"
        done
        grep -E 'panicked at|ERROR: libFuzzer|SUMMARY' "$log" | head -n 5 | sed 's/^/   /'
      else
        result="FAILED (exit $status, see $log)"
        crashed=1
      fi
    fi
    # Merge: keep a small set of inputs that covers every edge the corpus reaches (edges,
    # not hit counts, so the corpus stays small enough to keep in the repository).
    if [ "$result" = ok ]; then
      echo "   minimizing the corpus (cargo fuzz cmin)"
      cargo "+$TOOLCHAIN" fuzz cmin "${flags[@]}" "$target" "$corpus" -- \
        -use_counters=0 -set_cover_merge=1 -max_len="$MAX_LEN" >"$log.cmin" 2>&1 \
        || { echo "   cmin failed, see $log.cmin"; crashed=1; }
    fi
    after=$(find "$corpus" -type f | wc -l)
    bytes=$(find "$corpus" -type f -printf '%s\n' | awk '{s+=$1} END {print s+0}')
    line=$(printf '%-14s runs %-10s cov %-6s ft %-6s exec/s %-7s corpus %s -> %s files (%s bytes)  %s' \
      "$target" "${runs:-?}" "${cov:-?}" "${ft:-?}" "${execs:-?}" "$before" "$after" "$bytes" "$result")
    echo "   $line"
    summary+=("$line")
  done
done

echo
echo "== summary (${SECS}s per target)"
printf '%s\n' "${summary[@]}"
if [ "$crashed" -ne 0 ]; then
  echo "== a target crashed or failed: fix the bug; its input is in the corpus, so 'cargo test' replays it" >&2
  exit 1
fi
