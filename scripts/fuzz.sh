#!/usr/bin/env bash
# Longer fuzzing runs: every cargo-fuzz target of the repository, one after the other.
#
#   scripts/fuzz.sh [seconds]        # seconds per target, default 60
#
# Targets: coordinator/fuzz (mls_framing, relay_framing, client_json), sfu/fuzz
# (api_json, tcp_deframe), client/e2ee/fuzz (frame_trailer, frame_decrypt, handshake). Each target's
# corpus is kept in the repository (<crate>/fuzz/corpus/<target>/) and replayed by
# `cargo test` (<crate>/tests/fuzz_corpus.rs). A run starts from that corpus, adds what
# libFuzzer finds, then minimizes it (libFuzzer's set-cover merge, as cargo fuzz cmin
# does); commit the result. A crash is
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

HOST=$(rustc -vV | sed -n 's/^host: //p')
summary=()
crashed=0
for dir in "${FUZZ_DIRS[@]}"; do
  targets=$(cargo "+$TOOLCHAIN" fuzz list --fuzz-dir "$dir")
  wanted=()
  for target in $targets; do
    if [ -z "${FUZZ_TARGETS:-}" ] || [[ " $FUZZ_TARGETS " == *" $target "* ]]; then
      wanted+=("$target")
    fi
  done
  [ "${#wanted[@]}" -gt 0 ] || continue
  # One build per fuzz crate (cargo fuzz build: release, debug assertions, libFuzzer's
  # instrumentation); the binaries then run without cargo, so a long run holds no lock
  # on the shared target directory.
  echo
  echo "== building $dir"
  cargo "+$TOOLCHAIN" fuzz build --fuzz-dir "$dir" --target-dir "$TARGET_DIR" \
    --sanitizer "$SANITIZER"
  for target in "${wanted[@]}"; do
    bin="$TARGET_DIR/$HOST/release/$target"
    corpus="$dir/corpus/$target"
    artifacts="$dir/artifacts/$target"
    mkdir -p "$corpus" "$artifacts"
    before=$(find "$corpus" -type f | wc -l)
    log="$TARGET_DIR/fuzz-logs/$target.log"
    mkdir -p "$(dirname "$log")"
    echo
    echo "== $dir: $target (${SECS}s, corpus $before files; log $log)"
    status=0
    touch "$log.start"
    "$bin" -max_total_time="$SECS" -max_len="$MAX_LEN" -print_final_stats=1 \
      -artifact_prefix="$artifacts/" "$corpus" >"$log" 2>&1 || status=$?
    grep -E '^#[0-9]+\s+DONE' "$log" | tail -n 1 | sed 's/^/   /' || true
    last=$(grep -E '^#[0-9]+\s' "$log" | grep 'cov:' | tail -n 1 || true)
    runs=$(grep -E '^stat::number_of_executed_units:' "$log" | awk '{print $2}' | tail -n 1)
    cov=$(sed -nE 's/.*cov: ([0-9]+).*/\1/p' <<<"$last")
    ft=$(sed -nE 's/.*ft: ([0-9]+).*/\1/p' <<<"$last")
    execs=$(grep -E '^stat::average_exec_per_sec:' "$log" | awk '{print $2}' | tail -n 1)
    result="ok"
    if [ "$status" -ne 0 ]; then
      found=$(find "$artifacts" -type f -newer "$log.start" 2>/dev/null || true)
      crashed=1
      if [ -n "$found" ]; then
        result="CRASH"
        for f in $found; do
          cp "$f" "$corpus/$(basename "$f")"
          echo "   crash input kept in the corpus: $corpus/$(basename "$f")"
        done
        grep -E 'panicked at|ERROR: libFuzzer|SUMMARY' "$log" | head -n 5 | sed 's/^/   /'
      else
        result="FAILED (exit $status, see $log)"
      fi
    fi
    # Merge: keep a small set of inputs that covers every edge the corpus reaches (edges,
    # not hit counts, so the corpus stays small enough to keep in the repository).
    if [ "$result" = ok ]; then
      merged=$(mktemp -d)
      if "$bin" -set_cover_merge=1 -use_counters=0 -max_len="$MAX_LEN" "$merged" "$corpus" \
        >"$log.cmin" 2>&1; then
        find "$corpus" -type f -delete
        cp "$merged"/* "$corpus"/ 2>/dev/null || true
      else
        echo "   corpus minimization failed, see $log.cmin"
        crashed=1
      fi
      rm -rf "$merged"
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
