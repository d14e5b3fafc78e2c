#!/usr/bin/env bash
# `make bench`: every benchmark scenario on the local cluster (started here if it is not running).
#
#   make bench            full run (about 45 minutes): writes docs/benchmarks.md and bench/results.json
#   make bench QUICK=1    a few minutes, smaller sizes: writes bench/out/quick/{benchmarks.md,results.json}
#
# Knobs (environment): RATE (apps created per second, 20), ZONE_OUTAGE=0 (skip scenario 6), OUTAGE_RESULTS (report these scenario-6 JSON files of an earlier run instead of running it), OUTAGE_SIZES
# (nodes per zone, "2 9 30"), BARE=false (skip the bare-client baseline),
# SINGLES SMALL BURST LARGE DRIFT (sizes, see bench/main.rs), KEEP_CLUSTER=1.
#
#   make bench ALLOC=glibc     the memory scenarios (1,000 apps, restart) only, with the operator built
#   make bench ALLOC=mimalloc  with glibc's allocator, mimalloc or musl's (as in the image):
#   make bench ALLOC=musl      bench/out/alloc-<ALLOC>/
#
# The cluster is started without real kubelet nodes (KCP_REAL_NODES=0) unless it is already running:
# the load scenarios run on kwok nodes, and three kubelets, containerds and kube-routers would only
# take CPU from the API server.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
ALLOC=${ALLOC:-}
if [ -n "$ALLOC" ]; then
  MODE=alloc-$ALLOC SINGLES=${SINGLES:-5} SMALL=${SMALL:-20} BURST=${BURST:-1000} LARGE=${LARGE:-0} DRIFT=${DRIFT:-10}
  BARE=${BARE:-false} ZONE_OUTAGE=${ZONE_OUTAGE:-0}
  OUT=bench/out/alloc-$ALLOC
  RESULTS=$OUT/results.json DOC=$OUT/benchmarks.md
elif [ "${QUICK:-0}" = 1 ]; then
  MODE=quick SINGLES=${SINGLES:-5} SMALL=${SMALL:-20} BURST=${BURST:-50} LARGE=${LARGE:-0} DRIFT=${DRIFT:-10}
  OUT=bench/out/quick
  RESULTS=$OUT/results.json DOC=$OUT/benchmarks.md
else
  MODE=full SINGLES=${SINGLES:-100} SMALL=${SMALL:-100} BURST=${BURST:-1000} LARGE=${LARGE:-5000} DRIFT=${DRIFT:-200}
  OUT=bench/out
  RESULTS=bench/results.json DOC=docs/benchmarks.md
fi
RATE=${RATE:-20}
mkdir -p "$OUT"
log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
log "mode $MODE: $SINGLES single apps, $SMALL, then $BURST at $RATE/s${LARGE:+, then up to $LARGE}; zone outage: ${ZONE_OUTAGE:-1}"

log "building release binaries"
cargo build --locked --release --quiet --bin resilient-operator --bin resilient-bench
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release
OPERATOR=$BIN/resilient-operator
# The operator is measured as the image ships it: built for musl (its allocator is musl's), when
# this machine has the target (`rustup target add x86_64-unknown-linux-musl`, Debian: musl-tools);
# otherwise the default (glibc) build, and results.json says which (conditions.operator.build).
musl_ready() { [[ $'\n'"$(rustup target list --installed 2>/dev/null)"$'\n' == *$'\n'x86_64-unknown-linux-musl$'\n'* ]] && command -v musl-gcc >/dev/null; }
BUILD=${ALLOC:-musl}
if [ -z "$ALLOC" ] && ! musl_ready; then
  log "no musl target here: measuring the glibc build (the image is built for musl)"
  BUILD=glibc
fi
case "$BUILD" in
  glibc) ;; # the default build
  musl)
    # The image's build: the `image` profile (Cargo.toml), for musl.
    cargo build --locked --profile image --quiet --target x86_64-unknown-linux-musl --bin resilient-operator
    OPERATOR=${CARGO_TARGET_DIR:-$ROOT/target}/x86_64-unknown-linux-musl/image/resilient-operator
    export OPERATOR_PROFILE="image profile (opt-level s, fat LTO)" ;;
  mimalloc)
    # Copied aside: the next default build relinks the default binary.
    cargo build --locked --release --quiet --features mimalloc --bin resilient-operator
    cp "$BIN/resilient-operator" "$BIN/resilient-operator-mimalloc"
    OPERATOR=$BIN/resilient-operator-mimalloc ;;
  *) log "ALLOC=$ALLOC: glibc, musl or mimalloc"; exit 2 ;;
esac

started_here=0
status=$(e2e/cluster.sh status 2>/dev/null || true)
if ! grep -q 'kube-apiserver *running' <<<"$status"; then
  log "starting the local cluster"
  started_here=1
fi
KCP_REAL_NODES=${KCP_REAL_NODES:-0} e2e/cluster.sh up >/dev/null
eval "$(e2e/cluster.sh env)"
# shellcheck source=e2e/lib.sh
source e2e/lib.sh
cleanup() {
  # The finalizer policy's binding selects every app: never leave it on a cluster tests will use.
  kubectl delete -k config/admission-finalizer --ignore-not-found >/dev/null 2>&1 || true
  if [ "$started_here" = 1 ] && [ "${KEEP_CLUSTER:-0}" != 1 ]; then
    log "stopping the cluster started for the bench"
    e2e/cluster.sh down >/dev/null 2>&1 || true
  # Not `kubectl ... | grep -q .`: grep leaves at the first line, kubectl then fails on the closed
  # pipe, and with pipefail the apps were left behind (1,000 of them, into the next scenario 6).
  elif [ -n "$(kubectl get rapp -l bench=load -o name 2>/dev/null)" ]; then
    log "deleting the bench apps (not waiting)"
    kubectl delete rapp -l bench=load --wait=false >/dev/null 2>&1 || true
  fi
}
trap cleanup EXIT
install_operator_identity
# Established is not yet served: on a cluster just started, creating an app can still answer 503
# ("Resource kind ... not found") for a moment. Wait until a dry-run creation is accepted.
deadline=$((SECONDS + 60))
until kubectl create --dry-run=server -o name -f - >/dev/null 2>&1 <<'EOA'
apiVersion: resilient.dev/v1alpha1
kind: ResilientApp
metadata: {name: bench-served-check}
spec: {components: [{name: web, image: "registry.example/web:1", minAvailable: 1}]}
EOA
do
  [ $SECONDS -lt $deadline ] || { log "ResilientApps are not served 60 s after the CRD is Established"; exit 1; }
  sleep 0.5
done
# Installed as a cluster with MutatingAdmissionPolicy would have it: the finalizer comes from
# admission, not from a write of the operator (docs/benchmarks.md).
kubectl apply --server-side --force-conflicts -k config/admission-finalizer >/dev/null

# Extra kwok nodes, bench-node-<zone>-<i>, 250 pods each (the six standard nodes hold 660).
kwok_node() { # zone-letter index
  local n=bench-node-$1-$2
  kubectl apply -f - >/dev/null <<EON
apiVersion: v1
kind: Node
metadata:
  name: $n
  annotations: {node.alpha.kubernetes.io/ttl: "0", kwok.x-k8s.io/node: fake}
  labels: {kwok.x-k8s.io/managed: "true", type: kwok, kubernetes.io/hostname: $n, kubernetes.io/os: linux,
           kubernetes.io/arch: amd64, topology.kubernetes.io/region: region-1, topology.kubernetes.io/zone: zone-$1}
spec: {providerID: "kwok://$n"}
status:
  capacity: {cpu: "32", memory: 128Gi, pods: "250"}
  allocatable: {cpu: "32", memory: 128Gi, pods: "250"}
EON
}
# Exactly `extra` bench nodes per zone (the two standard nodes of each zone come on top).
bench_nodes() {
  local extra=$1 z i
  for z in a b c; do
    for ((i = 0; i < extra; i++)); do kwok_node "$z" "$i"; done
  done
  kubectl get nodes -o name | sed -n 's|^node/bench-node-[a-c]-||p' | sort -un | while read -r i; do
    if [ "$i" -ge "$extra" ]; then kubectl delete node bench-node-{a,b,c}-"$i" --ignore-not-found >/dev/null; fi
  done
  kubectl wait --for=condition=Ready node --all --timeout=120s >/dev/null
}

versions=$(e2e/cluster.sh status 2>/dev/null | sed -n 's/^versions: //p')
version_of() { echo "$versions" | grep -o "$1 v[0-9.]*" | cut -d' ' -f2; }
OUTAGES=()
leftover=$(kubectl get rapp -l bench=load -o name 2>/dev/null | wc -l || true)
if [ "$leftover" -gt 0 ] && [ "${ZONE_OUTAGE:-1}" != 0 ] && [ -z "${OUTAGE_RESULTS:-}" ]; then
  log "$leftover apps of an earlier, interrupted run are still here: scenario 6 would fail them over too. Stopping."
  log "Run with ZONE_OUTAGE=0 once (scenarios 1-5 remove them first), or e2e/cluster.sh down for a fresh cluster."
  exit 1
fi
if [ -n "${OUTAGE_RESULTS:-}" ]; then
  # Scenario 6's results of an earlier run (its JSON files), reported as they are: say which.
  for f in $OUTAGE_RESULTS; do OUTAGES+=(--zone-outage "$f"); done
  log "scenario 6 not run: reporting $OUTAGE_RESULTS from an earlier run"
elif [ "${ZONE_OUTAGE:-1}" = 0 ]; then
  log "scenario 6 (zone outage) skipped: ZONE_OUTAGE=0"
else
  if [ "$MODE" = quick ]; then
    export OUTAGE_DEADLINE=${OUTAGE_DEADLINE:-90} RETURN_DEADLINE=${RETURN_DEADLINE:-30}
  fi
  # The node lifecycle controller taints one node of a lost zone every 10 s: the zone's size is
  # what makes failover slow without the operator acting on the zone. 2, 9 and 30 nodes per zone.
  for size in ${OUTAGE_SIZES:-2 9 30}; do
    bench_nodes $((size - 2))
    log "scenario 6: zone outage with $size nodes per zone, operator app and plain Deployment side by side (timeline in $OUT/zone-outage-$size.log)"
    OUT_DIR=$OUT OUT_FILE=$OUT/zone-outage-$size.json OPERATOR=$OPERATOR bench/zone-outage.sh 2>&1 | tee "$OUT/zone-outage-$size.log"
    OUTAGES+=(--zone-outage "$OUT/zone-outage-$size.json")
  done
fi

# Every app runs one pod: enough bench nodes for the largest size and 300 more pods.
most=$((SMALL > BURST ? SMALL : BURST))
most=$((LARGE > most ? LARGE : most))
need=$((most + 300 - 6 * 110))
per_zone=0
while [ $((per_zone * 3 * 250)) -lt "$need" ]; do per_zone=$((per_zone + 1)); done
# EXTRA_NODES_PER_ZONE: more kwok nodes than the largest phase needs (to compare runs by node count).
per_zone=$((per_zone > ${EXTRA_NODES_PER_ZONE:-0} ? per_zone : ${EXTRA_NODES_PER_ZONE:-0}))
bench_nodes "$per_zone"
nodes=$(kubectl get nodes --no-headers | wc -l)
log "$nodes nodes for the load scenarios; machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB, load average $(cut -d' ' -f1-3 /proc/loadavg)"
printf '{"mode": "%s", "out": "%s", "results": "%s", "nodes": %s, "etcd": "%s", "kwok": "%s", "go": "%s", "rust": "%s", "loadAverageAtStart": "%s"}\n' \
  "$MODE" "$OUT" "$RESULTS" "$nodes" "$(version_of etcd)" "$(version_of kwok)" "$(go env GOVERSION)" \
  "$(rustc --version | cut -d' ' -f2)" "$(cut -d' ' -f1-3 /proc/loadavg)" >"$OUT/conditions.json"

log "scenarios 1-5"
"$BIN/resilient-bench" --singles "$SINGLES" --small "$SMALL" --burst "$BURST" --large "$LARGE" --rate "$RATE" \
  --drift-samples "$DRIFT" --bare "${BARE:-true}" --operator "$OPERATOR" --operator-kubeconfig .cluster/operator.kubeconfig \
  --kubeconfig "$KUBECONFIG" --audit-log .cluster/logs/audit.log --pids .cluster/pids \
  --conditions "$OUT/conditions.json" "${OUTAGES[@]}" \
  --operator-log "$OUT/operator.log" --results "$RESULTS" --doc "$DOC"
log "done: $DOC and $RESULTS"
