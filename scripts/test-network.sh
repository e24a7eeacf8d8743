#!/usr/bin/env bash
# The hostile-network browser tests (issue 12): the web client in headless
# Chromium inside network namespaces that the tests create themselves (veth
# pairs, nftables rules; addresses in 10.213.0.0/16, nothing leaves the
# machine), against the all-in-one `satsuma` and coturn:
#   - ICE-TCP: a page whose namespace drops all outbound UDP;
#   - TURN over TCP, TLS and UDP: a page that reaches only coturn;
#   - ICE restart: a page's path blocked for 3 s, then restored;
#   - time to first decrypted frame (p50/p95 for UDP, ICE-TCP, TURN/TCP).
# Installs what it needs from Debian (iproute2, nftables, iptables, coturn,
# openssl) if missing. When the kernel or the user cannot make namespaces it
# prints "SKIPPED: <reason>" and exits 0.
#
# Expects what scripts/test-browser.sh sets up (chromium, playwright-core, the
# WASM build and the server binaries); run that first, or set SKIP_BUILD=0 to
# build here.
#
#   scripts/test-network.sh                     # all of client/web/tests/net/
#   scripts/test-network.sh tests/net/ice.test.mjs   # one file (relative to client/web)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"

skip() {
  echo "== network tests SKIPPED: $*"
  exit 0
}

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
if [ -n "$SUDO" ] && ! sudo -n true 2>/dev/null; then
  skip "not root and no passwordless sudo (network namespaces need CAP_SYS_ADMIN/CAP_NET_ADMIN)"
fi

need=()
command -v ip >/dev/null || need+=(iproute2)
command -v nft >/dev/null || need+=(nftables)
command -v iptables >/dev/null || need+=(iptables)
command -v turnserver >/dev/null || need+=(coturn)
command -v openssl >/dev/null || need+=(openssl)
command -v unshare >/dev/null || need+=(util-linux)
if [ "${#need[@]}" -gt 0 ]; then
  echo "== installing ${need[*]} (Debian packages)"
  $SUDO apt-get update -qq || true
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null \
    || skip "could not install ${need[*]}"
fi

# The kernel must allow network namespaces, veth pairs and nftables in them.
$SUDO unshare -n true 2>/dev/null || skip "the kernel refuses 'unshare -n' (no network namespaces)"
PROBE="sat-$$-probe"
if ! $SUDO ip netns add "$PROBE" 2>/dev/null; then
  skip "'ip netns add' is refused"
fi
probe_ok=1
$SUDO ip netns exec "$PROBE" ip link add p0 type veth peer name p1 2>/dev/null || probe_ok=0
$SUDO ip netns exec "$PROBE" nft add table inet probe 2>/dev/null || probe_ok=0
$SUDO ip netns del "$PROBE" 2>/dev/null || true
[ "$probe_ok" -eq 1 ] || skip "veth pairs or nftables are refused inside a network namespace"

if [ "${SKIP_BUILD:-1}" = "0" ] || [ ! -d client/web/node_modules/playwright-core ]; then
  echo "== browser prerequisites"
  [ -x /usr/bin/chromium ] || DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
  (cd client/web && { [ -d node_modules/playwright-core ] || npm ci --no-audit --no-fund; })
  ./scripts/build-web.sh
  cargo build --workspace --bins
fi

TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
export SATSUMA_BIN_DIR="${SATSUMA_BIN_DIR:-$TARGET_DIR/debug}"
export ARTIFACTS="${ARTIFACTS:-$ROOT/artifacts}"
mkdir -p "$ARTIFACTS"
[ -x "$SATSUMA_BIN_DIR/satsuma" ] || { echo "no $SATSUMA_BIN_DIR/satsuma: run scripts/test-browser.sh first (or SKIP_BUILD=0)"; exit 1; }

echo "== network tests (Chromium in network namespaces)"
cd client/web
if [ "$#" -gt 0 ]; then
  files=("$@")
else
  files=(tests/net/*.test.mjs)
fi
$SUDO env "PATH=$PATH" "SATSUMA_BIN_DIR=$SATSUMA_BIN_DIR" "ARTIFACTS=$ARTIFACTS" ${CHROMIUM:+"CHROMIUM=$CHROMIUM"} \
  node --test --test-concurrency=1 "${files[@]}"
