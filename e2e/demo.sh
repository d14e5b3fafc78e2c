#!/usr/bin/env bash
# `make demo`: a local three-zone cluster, the operator, the example shop app, a zone outage, and
# what survived. Every long step says what it does. The cluster is left running at the end.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
APP=${DEMO_APP:-shop}
ZONE=${DEMO_ZONE:-zone-a}
COMPONENT=web

bold() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
say() { printf '   %s\n' "$*"; }

bold "1/7 building the operator (cargo build; the first build takes a few minutes)"
cargo build --locked --quiet
OPERATOR=${CARGO_TARGET_DIR:-$ROOT/target}/debug/resilient-operator

bold "2/7 starting a local 3-zone Kubernetes (etcd, kube-apiserver, controller manager, scheduler, kwok)"
say "the first run builds them from Go modules (~15 min on 2 cores), later runs take seconds"
e2e/cluster.sh up >/dev/null
eval "$(e2e/cluster.sh env)"
kubectl get nodes -L topology.kubernetes.io/zone --no-headers | awk '{printf "   %-10s %-6s %s\n", $1, $2, $6}'

bold "3/7 installing the operator: config/crd, config/rbac and config/admission, then the operator as its ServiceAccount"
say "(no container engine here, so the operator runs as a local process instead of the config/manager Deployment)"
mkdir -p .cluster/logs
# shellcheck source=e2e/lib.sh
source e2e/lib.sh
install_operator_identity
KUBECONFIG=$PWD/.cluster/operator.kubeconfig start_operator "$OPERATOR" .cluster/logs/operator-demo.log 18080 \
  --leader-elect --leader-election-namespace resilient-system
trap 'kill $OPERATOR_PID 2>/dev/null || true' EXIT
say "operator pid $OPERATOR_PID (ServiceAccount resilient-system/resilient-operator, leader Lease resilient-system/resilient-operator)"
say "logs in .cluster/logs/operator-demo.log, metrics on http://127.0.0.1:18080/metrics"

bold "4/7 applying examples/$APP.yaml (web x minAvailable 4, api, worker; tolerate 1 zone failure)"
kubectl apply -f "examples/$APP.yaml"
kubectl wait --for=condition=Ready "rapp/$APP" --timeout=180s >/dev/null
kubectl get rapp "$APP" -o wide
echo
kubectl describe rapp "$APP" | sed -n '/^  Conditions:/,/^  Observed Generation/p'

load_node_zones
SELECTOR="resilient.dev/component=$COMPONENT"
placement() { ready_by_zone "$APP" "$SELECTOR"; }
MIN_AVAILABLE=$(kubectl get rapp "$APP" -o jsonpath="{.spec.components[?(@.name==\"$COMPONENT\")].minAvailable}")
REPLICAS=$(kubectl get deploy -n "$APP" "$COMPONENT" -o jsonpath='{.spec.replicas}')
say "$COMPONENT: $REPLICAS replicas, minAvailable $MIN_AVAILABLE, ready by zone:$(placement | cut -d' ' -f2-)"

bold "5/7 zone outage: $ZONE goes dark (its kubelets stop heartbeating)"
e2e/cluster.sh zone-down "$ZONE" 2>/dev/null
start=$(date +%s)
lowest=$REPLICAS
recovered=""
last=""
while :; do
  now=$(($(date +%s) - start))
  read -r ready zones <<<"$(placement)"
  if [ "$ready" -lt "$lowest" ]; then lowest=$ready; fi
  want=$(kubectl get deploy -n "$APP" "$COMPONENT" -o jsonpath='{.spec.replicas}')
  in_lost=$(live_in_zone "$APP" "$SELECTOR" "$ZONE")
  outside=$((ready - $(zone_count "$zones" "$ZONE")))
  line="$ready ready of $want replicas, by zone:$zones"
  if [ "$line" != "$last" ]; then
    printf '   t+%3ss  %s: %s\n' "$now" "$COMPONENT" "$line"
    last=$line
  fi
  if [ "$in_lost" = 0 ] && [ "$outside" -ge "$want" ]; then recovered=$now; recovered_replicas=$want; break; fi
  [ "$now" -lt 240 ] || break
  sleep 1
done
echo
kubectl get rapp "$APP" -o wide
say "ZoneFailureTolerant: $(kubectl get rapp "$APP" -o jsonpath='{.status.conditions[?(@.type=="ZoneFailureTolerant")].message}')"

bold "6/7 $ZONE comes back"
e2e/cluster.sh zone-up "$ZONE" 2>/dev/null
up_start=$(date +%s)
even=""
last=""
while :; do
  now=$(($(date +%s) - up_start))
  read -r ready zones <<<"$(placement)"
  want=$(kubectl get deploy -n "$APP" "$COMPONENT" -o jsonpath='{.spec.replicas}')
  skew=$(skew "$zones" zone-a zone-b zone-c)
  line="$ready ready of $want replicas, by zone:$zones"
  if [ "$line" != "$last" ]; then
    printf '   t+%3ss  %s: %s\n' "$now" "$COMPONENT" "$line"
    last=$line
  fi
  if [ "$ready" -ge "$want" ] && [ "$skew" -le 1 ]; then even=$now; break; fi
  [ "$now" -lt 150 ] || break
  sleep 1
done

bold "7/7 what survived"
say "$COMPONENT kept at least $lowest ready pods during the outage (minAvailable $MIN_AVAILABLE)"
if [ -n "$recovered" ]; then
  say "all $recovered_replicas replicas (recomputed for the 2 zones left) were Ready in the surviving zones ${recovered}s after the outage began"
else
  say "replacements were not all Ready within 180s"
fi
say "Kubernetes alone would have waited 300s (default tolerations) before replacing the lost pods"
if [ -n "$even" ]; then
  say "after $ZONE came back the spread was even again (skew <= 1) in ${even}s"
else
  say "after $ZONE came back the spread stayed uneven for 150s: Kubernetes does not rebalance by itself"
fi
if [ "$lowest" -ge "$MIN_AVAILABLE" ]; then say "guarantee kept: yes"; else say "guarantee kept: NO"; fi
echo
say "the cluster keeps running: eval \$(e2e/cluster.sh env); kubectl get rapp"
say "stop it with: make cluster-down"
