#!/usr/bin/env bash
# Zone outage, side by side in one run: an operator-managed app and a plain Deployment with the
# same replica count and Kubernetes defaults. Samples every second from the outage until both have
# recovered (or a deadline), then brings the zone back and watches the spread.
# Prints a timeline and a summary; writes $OUT_DIR/zone-outage.json (default bench/out).
#
#   bench/zone-outage.sh            (starts the cluster and the operator if needed)
#   OUTAGE_DEADLINE=400 RETURN_DEADLINE=150 bench/zone-outage.sh
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
ZONE=${ZONE:-zone-a}
OUTAGE_DEADLINE=${OUTAGE_DEADLINE:-420}
RETURN_DEADLINE=${RETURN_DEADLINE:-150}
OUT=${OUT_DIR:-bench/out}
OUT_FILE=${OUT_FILE:-$OUT/zone-outage.json}
mkdir -p "$OUT"
log() { printf '[zone-outage %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

if [ -z "${OPERATOR:-}" ]; then
  log "building the operator"
  cargo build --locked --quiet --release --bin resilient-operator
  OPERATOR=${CARGO_TARGET_DIR:-$ROOT/target}/release/resilient-operator
fi
e2e/cluster.sh up >/dev/null
eval "$(e2e/cluster.sh env)"
# shellcheck source=e2e/lib.sh
source e2e/lib.sh
install_operator_identity
# The operator runs with its ServiceAccount's token, as installed by config/default.
KUBECONFIG=$ROOT/.cluster/operator.kubeconfig start_operator "$OPERATOR" .cluster/logs/operator-bench.log 18081
OP=bench-op
PLAIN=bench-plain
finish() {
  kill "$OPERATOR_PID" 2>/dev/null || true
  e2e/cluster.sh zone-up "$ZONE" >/dev/null 2>&1 || true
  kubectl delete rapp "$OP" --ignore-not-found --wait=false >/dev/null 2>&1 || true
  kubectl delete ns "$PLAIN" --ignore-not-found --wait=false >/dev/null 2>&1 || true
}
trap finish EXIT
load_node_zones

log "creating $OP (ResilientApp, minAvailable 4) and $PLAIN (plain Deployment, 6 replicas, defaults)"
kubectl delete rapp "$OP" --ignore-not-found --wait=true >/dev/null
kubectl delete ns "$PLAIN" --ignore-not-found --wait=true >/dev/null
# A CRD that has just become Established can still be answered "not found" for a moment: retry.
deadline=$((SECONDS + 60))
until kubectl apply -f - >/dev/null <<EOF
apiVersion: resilient.dev/v1alpha1
kind: ResilientApp
metadata: {name: $OP}
spec:
  components:
    - {name: web, image: registry.example/web:1, minAvailable: 4}
---
apiVersion: v1
kind: Namespace
metadata: {name: $PLAIN}
EOF
do
  [ $SECONDS -lt $deadline ] || { log "could not create $OP within 60 s"; exit 1; }
  sleep 1
done
until kubectl get sa default -n "$PLAIN" >/dev/null 2>&1; do sleep 0.5; done
kubectl apply -f - >/dev/null <<EOF
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: $PLAIN}
spec:
  replicas: 6
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers: [{name: web, image: registry.example/web:1}]
EOF
kubectl wait --for=condition=Ready "rapp/$OP" --timeout=120s >/dev/null
kubectl rollout status -n "$PLAIN" deploy/web --timeout=120s >/dev/null
OP_SEL=resilient.dev/component=web
PLAIN_SEL=app=web
ZONES=(zone-a zone-b zone-c)

node_state() { # the lost zone's nodes: how many are Ready and how many carry a NoExecute taint
  kubectl get nodes -l "topology.kubernetes.io/zone=$ZONE" --no-headers \
    -o custom-columns='R:.status.conditions[?(@.type=="Ready")].status,T:.spec.taints[*].key' |
    awk '{n++; if ($1 == "True") r++; if ($2 != "<none>") t++} END {printf "%d nodes: %d Ready, %d tainted", n, r, t}'
}

# Sets nodes, op_ready op_zones op_want, pl_ready pl_zones.
sample_both() {
  nodes=$(node_state)
  read -r op_ready op_zones <<<"$(ready_by_zone "$OP" "$OP_SEL")"
  read -r pl_ready pl_zones <<<"$(ready_by_zone "$PLAIN" "$PLAIN_SEL")"
  op_want=$(kubectl get deploy -n "$OP" web -o jsonpath='{.spec.replicas}')
}

# One timeline line at second $t, when something changed since the last one.
print_if_changed() {
  local line
  line=$(printf '%-32s %-29s %s' "$nodes" "$op_ready/$op_want:$op_zones" "$pl_ready/6:$pl_zones")
  if [ "$line" != "$last" ]; then
    printf '%4d  %s\n' "$t" "$line"
    last=$line
  fi
}

op_before=$(kubectl get deploy -n "$OP" web -o jsonpath='{.spec.replicas}')
# Read from the cluster, not assumed: the zone's size and the app's (defaulted) failoverSeconds.
nodes_per_zone=$(kubectl get nodes -l "topology.kubernetes.io/zone=$ZONE" --no-headers | wc -l)
failover_seconds=$(kubectl get rapp "$OP" -o jsonpath='{.spec.resilience.failoverSeconds}')
log "$ZONE has $nodes_per_zone nodes; the app's failoverSeconds is $failover_seconds"
op_during=$op_before
log "before: operator $(ready_by_zone "$OP" "$OP_SEL") | plain $(ready_by_zone "$PLAIN" "$PLAIN_SEL")"
echo "t(s)  nodes of $ZONE                   operator app                  plain Deployment"
start=$(date +%s)
e2e/cluster.sh zone-down "$ZONE" 2>/dev/null
op_low=99 plain_low=99 op_recovered="" plain_recovered="" last=""
while :; do
  t=$(($(date +%s) - start))
  sample_both
  ((op_ready < op_low)) && op_low=$op_ready
  ((pl_ready < plain_low)) && plain_low=$pl_ready
  ((op_want > op_during)) && op_during=$op_want
  if [ -z "$op_recovered" ] && [ "$(live_in_zone "$OP" "$OP_SEL" "$ZONE")" = 0 ] &&
    [ $((op_ready - $(zone_count "$op_zones" "$ZONE"))) -ge "$op_want" ]; then op_recovered=$t; fi
  if [ -z "$plain_recovered" ] && [ "$(live_in_zone "$PLAIN" "$PLAIN_SEL" "$ZONE")" = 0 ] &&
    [ $((pl_ready - $(zone_count "$pl_zones" "$ZONE"))) -ge 6 ]; then plain_recovered=$t; fi
  print_if_changed
  if [ -n "$op_recovered" ] && [ -n "$plain_recovered" ]; then break; fi
  ((t < OUTAGE_DEADLINE)) || break
  sleep 1
done

log "zone $ZONE returns"
back=$(date +%s)
e2e/cluster.sh zone-up "$ZONE" 2>/dev/null
op_even="" plain_even="" last=""
while :; do
  t=$(($(date +%s) - back))
  sample_both
  [ -z "$op_even" ] && [ "$op_ready" -ge "$op_want" ] && [ "$(skew "$op_zones" "${ZONES[@]}")" -le 1 ] && op_even=$t
  [ -z "$plain_even" ] && [ "$pl_ready" -ge 6 ] && [ "$(skew "$pl_zones" "${ZONES[@]}")" -le 1 ] && plain_even=$t
  print_if_changed
  if [ -n "$op_even" ] && [ -n "$plain_even" ]; then break; fi
  ((t < RETURN_DEADLINE)) || break
  sleep 1
done

within_goal=false
[ -n "$op_recovered" ] && [ "$op_recovered" -le $((failover_seconds + 30)) ] && within_goal=true
cat >"$OUT_FILE" <<EOF
{"zone": "$ZONE", "nodesPerZone": $nodes_per_zone,
 "operator": {"lowestReady": $op_low, "minAvailable": 4, "replicasBefore": $op_before, "replicasDuring": $op_during, "recoveredSeconds": ${op_recovered:-null}, "evenAgainSeconds": ${op_even:-null}, "failoverSeconds": $failover_seconds, "withinFailoverSecondsPlus30": $within_goal},
 "plain": {"lowestReady": $plain_low, "replicas": 6, "recoveredSeconds": ${plain_recovered:-null}, "evenAgainSeconds": ${plain_even:-null}},
 "outageDeadlineSeconds": $OUTAGE_DEADLINE, "returnDeadlineSeconds": $RETURN_DEADLINE}
EOF
echo
echo "summary (seconds after the zone went dark / came back):"
printf '  %-18s lowest ready %2s, all replicas Running outside %s after %ss, even spread %s after return\n' \
  "operator app" "$op_low" "$ZONE" "${op_recovered:-never (>$OUTAGE_DEADLINE)}" "${op_even:+after ${op_even}s}"
printf '  %-18s lowest ready %2s, all replicas Running outside %s after %ss, even spread %s after return\n' \
  "plain Deployment" "$plain_low" "$ZONE" "${plain_recovered:-never (>$OUTAGE_DEADLINE)}" "${plain_even:+after ${plain_even}s}${plain_even:-never within ${RETURN_DEADLINE}s}"
echo "results: $OUT_FILE"
