#!/usr/bin/env bash
# Builds the Satsuma container image with buildah from scratch: no base image is pulled (no
# registry needed). The image holds the three server binaries (satsuma, satsuma-coordinator,
# satsuma-sfu) of this checkout, exactly the shared libraries they load (per ldd), the web
# client, CA certificates, and passwd/group entries for the non-root user 10001. Same layout,
# user, ports and environment as deploy/Dockerfile, so the Helm chart, the systemd-free quick
# start and the Dockerfile's docs apply to it unchanged.
#
#   scripts/build-image.sh                       # release binaries (cargo build --release), tag satsuma:dev
#   scripts/build-image.sh --profile debug       # target/debug binaries (what the test suite built)
#   scripts/build-image.sh --no-build --tag satsuma:0.1.0
#   scripts/build-image.sh --archive satsuma.tar # also write an OCI archive (podman load / ctr import)
#
# Needs: buildah (Debian package), root or a working rootless buildah setup, and the web client
# built by scripts/build-web.sh (client/web/public/pkg). Prints the image id on the last line.
set -euo pipefail
cd "$(dirname "$0")/.."

PROFILE="${SATSUMA_IMAGE_PROFILE:-release}"
TAG="${SATSUMA_IMAGE_TAG:-localhost/satsuma:dev}"
BUILD=1
ARCHIVE=""
while [ $# -gt 0 ]; do
  case "$1" in
    --profile) PROFILE="$2"; shift 2 ;;
    --tag) TAG="$2"; shift 2 ;;
    --no-build) BUILD=0; shift ;;
    --archive) ARCHIVE="$2"; shift 2 ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "build-image: unknown argument $1" >&2; exit 2 ;;
  esac
done
case "$PROFILE" in
  release) PROFILE_FLAG=(--release) ;;
  debug) PROFILE_FLAG=() ;;
  *) echo "build-image: --profile is release or debug" >&2; exit 2 ;;
esac

command -v buildah >/dev/null || { echo "build-image: buildah is not installed (apt-get install buildah)" >&2; exit 3; }

BINS=(satsuma satsuma-coordinator satsuma-sfu)
TARGET_DIR="${CARGO_TARGET_DIR:-target}"
BIN_DIR="$TARGET_DIR/$PROFILE"
if [ "$BUILD" = 1 ]; then
  cargo build "${PROFILE_FLAG[@]}" --locked -p satsuma -p satsuma-coordinator -p satsuma-sfu
fi
for b in "${BINS[@]}"; do
  [ -x "$BIN_DIR/$b" ] || { echo "build-image: $BIN_DIR/$b is missing (build it, or drop --no-build)" >&2; exit 3; }
done
WEB=client/web/public
[ -f "$WEB/index.html" ] && [ -f "$WEB/pkg/satsuma_wasm_bg.wasm" ] \
  || { echo "build-image: the web client is not built: run scripts/build-web.sh" >&2; exit 3; }

STAGE=$(mktemp -d)
CTR=""
cleanup() {
  [ -n "$CTR" ] && buildah rm "$CTR" >/dev/null 2>&1 || true
  rm -rf "$STAGE"
}
trap cleanup EXIT

# The root file system, staged in a temp dir and copied in as one layer.
ROOT="$STAGE/root"
mkdir -p "$ROOT/usr/local/bin" "$ROOT/usr/local/share/satsuma" "$ROOT/etc/ssl/certs" "$ROOT/tmp"
chmod 1777 "$ROOT/tmp"
for b in "${BINS[@]}"; do
  # Debug info (line tables) is not needed to run; strip it when binutils is there.
  if command -v objcopy >/dev/null; then
    objcopy --strip-debug "$BIN_DIR/$b" "$ROOT/usr/local/bin/$b"
  else
    cp "$BIN_DIR/$b" "$ROOT/usr/local/bin/$b"
  fi
  chmod 0755 "$ROOT/usr/local/bin/$b"
done

# Exactly the shared libraries the binaries load, at the paths the loader looks them up
# (ldd's resolved paths, the ELF interpreter included). A binary that needs a library ldd
# cannot find fails the build here rather than at run time.
LIBS=$(for b in "${BINS[@]}"; do
  out=$(ldd "$BIN_DIR/$b") || { echo "build-image: ldd $b failed" >&2; exit 3; }
  if grep -q "not found" <<<"$out"; then
    echo "build-image: $b needs a library that is not installed:" >&2
    grep "not found" <<<"$out" >&2
    exit 3
  fi
  awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// && $2 ~ /^\(/ {print $1}' <<<"$out"
done | sort -u)
for lib in $LIBS; do
  mkdir -p "$ROOT$(dirname "$lib")"
  cp -L "$lib" "$ROOT$lib"
done
echo "$LIBS" > "$STAGE/libs.txt"

# The web client, like the Dockerfile (the all-in-one server's default is <exe>/../share/satsuma/web).
cp -r "$WEB" "$ROOT/usr/local/share/satsuma/web"
rm -rf "$ROOT/usr/local/share/satsuma/web/node_modules"

# CA certificates (outbound TLS, e.g. an etcd or SFU endpoint over https).
if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
  cp /etc/ssl/certs/ca-certificates.crt "$ROOT/etc/ssl/certs/ca-certificates.crt"
fi

# Users: root and satsuma (10001), so that tools and logs name them; no shell, no home.
printf 'root:x:0:0:root:/root:/usr/sbin/nologin\nsatsuma:x:10001:10001:satsuma:/nonexistent:/usr/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n' > "$ROOT/etc/passwd"
printf 'root:x:0:\nsatsuma:x:10001:\nnogroup:x:65534:\n' > "$ROOT/etc/group"
# Name resolution through /etc/hosts first, then DNS (glibc's defaults, written down).
printf 'hosts: files dns\n' > "$ROOT/etc/nsswitch.conf"

CTR=$(buildah from scratch)
buildah copy --quiet "$CTR" "$ROOT" / >/dev/null
VERSION=$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' deploy/helm/satsuma/Chart.yaml)
REVISION=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
buildah config \
  --env PATH=/usr/local/bin:/usr/bin:/bin \
  --env SATSUMA_WEB_DIR=/usr/local/share/satsuma/web \
  --env SATSUMA_LISTEN=0.0.0.0:8080 \
  --env SATSUMA_MEDIA=0.0.0.0:7881 \
  --env SATSUMA_SFU_API=127.0.0.1:7880 \
  --user 10001:10001 \
  --workingdir / \
  --port 8080/tcp --port 7881/udp \
  --entrypoint '[]' \
  --cmd '["satsuma"]' \
  --stop-signal SIGTERM \
  --label org.opencontainers.image.title=satsuma \
  --label "org.opencontainers.image.version=$VERSION" \
  --label "org.opencontainers.image.revision=$REVISION" \
  --label "io.satsuma.build-profile=$PROFILE" \
  "$CTR"
ID=$(buildah commit --quiet --rm "$CTR" "$TAG")
CTR=""
if [ -n "$ARCHIVE" ]; then
  rm -f "$ARCHIVE"
  buildah push --quiet "$TAG" "oci-archive:$ARCHIVE:$TAG"
fi
echo "build-image: $TAG ($PROFILE binaries, $(wc -l < "$STAGE/libs.txt") shared libraries: $(tr '\n' ' ' < "$STAGE/libs.txt"))" >&2
echo "$ID"
