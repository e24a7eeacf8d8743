#!/usr/bin/env bash
# Installs what the test suite needs on a fresh Debian machine. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! rustup target list --installed | grep -q wasm32-unknown-unknown; then
  rustup target add wasm32-unknown-unknown
fi
rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy rustfmt

# etcd for the room-store tests (coordinator/tests/room_store.rs start their own members on
# 127.0.0.1; without the binary they print SKIPPED).
if ! command -v etcd >/dev/null 2>&1; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "== installing etcd (Debian package etcd-server)"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq etcd-server >/dev/null
  # The package enables a system service; the tests start their own members.
  $SUDO systemctl disable --now etcd >/dev/null 2>&1 || true
fi

# ffmpeg/ffprobe for the recording test (client/web/tests/recording.test.mjs decodes and
# hashes satsuma-record's WebM files with them).
if ! command -v ffprobe >/dev/null 2>&1 || ! command -v ffmpeg >/dev/null 2>&1; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "== installing ffmpeg (Debian package)"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq ffmpeg >/dev/null
fi

# The deploy check (scripts/test-deploy.sh): buildah builds the image, podman runs it (runc: crun
# refuses hosts with cgroups in hybrid mode), etcdctl backs the store up and restores it. Where
# they cannot be installed the script prints SKIPPED for the image part.
if ! command -v buildah >/dev/null 2>&1 || ! command -v podman >/dev/null 2>&1 \
  || ! command -v runc >/dev/null 2>&1 || ! command -v etcdctl >/dev/null 2>&1; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "== installing buildah, podman, runc, etcd-client (Debian packages)"
  { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq \
      buildah podman runc etcd-client >/dev/null; } \
    || echo "could not install buildah/podman/runc/etcd-client: the image test will be skipped"
fi
