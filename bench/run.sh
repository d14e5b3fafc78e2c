#!/usr/bin/env bash
# `make bench` (QUICK=1 for a few minutes): benchmarks on the local cluster, results in
# bench/out/results.json and bench/out/zone-outage.json. docs/benchmarks.md reports a full run.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
if [ "${QUICK:-0}" = 1 ]; then APPS=${APPS:-50}; DRIFT=10; else APPS=${APPS:-1000}; DRIFT=50; fi
RATE=${RATE:-20}
log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

log "building release binaries"
cargo build --locked --release --quiet --bin resilient-operator --bin resilient-bench
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release
e2e/cluster.sh up >/dev/null
eval "$(e2e/cluster.sh env)"
kubectl apply --server-side -k config/crd >/dev/null
kubectl wait --for condition=Established crd/resilientapps.resilient.dev --timeout=30s >/dev/null

# Every app runs at least one pod; the six standard nodes hold 660. Add kwok nodes for big runs.
need=$((APPS + 200))
have=$((6 * 110))
i=0
while [ "$have" -lt "$need" ]; do
  for z in a b c; do
    n=bench-node-$z-$i
    kubectl apply -f - >/dev/null <<EON
apiVersion: v1
kind: Node
metadata:
  name: $n
  annotations: {node.alpha.kubernetes.io/ttl: "0", kwok.x-k8s.io/node: fake}
  labels: {kwok.x-k8s.io/managed: "true", type: kwok, kubernetes.io/hostname: $n, kubernetes.io/os: linux,
           kubernetes.io/arch: amd64, topology.kubernetes.io/region: region-1, topology.kubernetes.io/zone: zone-$z}
spec: {providerID: "kwok://$n"}
status:
  capacity: {cpu: "32", memory: 128Gi, pods: "250"}
  allocatable: {cpu: "32", memory: 128Gi, pods: "250"}
EON
    have=$((have + 250))
  done
  i=$((i + 1))
done
kubectl wait --for=condition=Ready node --all --timeout=120s >/dev/null
log "machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB; $(kubectl version 2>/dev/null | tr '\n' ' ')"
log "scenarios 1-5 with $APPS apps at $RATE/s"
"$BIN/resilient-bench" --apps "$APPS" --rate "$RATE" --drift-samples "$DRIFT" --operator "$BIN/resilient-operator" \
  --kubeconfig "$KUBECONFIG" --audit-log .cluster/logs/audit.log --out bench/out/results.json
if [ "${ZONE_OUTAGE:-1}" = 0 ]; then
  log "scenario 6 skipped (ZONE_OUTAGE=0)"
elif [ "${QUICK:-0}" = 1 ]; then
  log "scenario 6: zone outage side by side"
  OUTAGE_DEADLINE=${OUTAGE_DEADLINE:-90} RETURN_DEADLINE=${RETURN_DEADLINE:-30} bench/zone-outage.sh
else
  log "scenario 6: zone outage side by side"
  bench/zone-outage.sh
fi
log "results: bench/out/results.json, bench/out/zone-outage.json"
