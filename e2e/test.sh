#!/usr/bin/env bash
# `make test`: build, start the local control plane if it is not running, run every test
# (unit, property, integration, end-to-end), and stop the control plane it started.
# A missing cluster is a failure, never a skip.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
step() { printf '\n== %s\n' "$*"; }

step "building the operator and the tests"
cargo test --locked --no-run --all-targets

# Also when a cluster already runs: the tools the tests use (helm) may be newer than it.
step "building the local cluster's tools (cached)"
e2e/cluster.sh build

started_here=0
if e2e/cluster.sh env >/dev/null 2>&1 && "$(e2e/cluster.sh env | sed -n 's/^export PATH=\(.*\):\$PATH$/\1/p')/kubectl" \
    --kubeconfig=.cluster/kubeconfig get --raw=/readyz >/dev/null 2>&1; then
  step "using the running local cluster"
else
  step "starting the local cluster (e2e/cluster.sh up)"
  e2e/cluster.sh up >/dev/null
  started_here=1
fi
results=$(mktemp)
cleanup() {
  local status=$?
  if [ "$status" != 0 ]; then
    # The cluster directory (and its logs) goes away with the cluster: show what the operators
    # the tests started logged, for a failure in CI.
    for f in .cluster/logs/operator-*.log; do
      [ -f "$f" ] || continue
      step "last lines of $f"
      tail -n 25 "$f"
    done
  fi
  if [ "$started_here" = 1 ] && [ "${KEEP_CLUSTER:-0}" != 1 ]; then
    step "stopping the local cluster"
    e2e/cluster.sh down
  fi
  if [ "$status" != 0 ] && [ -s "$results" ]; then
    # Last, so that the tail of a CI log names what failed (the test output above is long).
    step "what failed"
    awk '/^     Running /{bin=$2}
         /^test .* FAILED$/{print bin ": " $0}
         /panicked at /{print bin ": " $0; n=30; next}
         /^(stack backtrace:|note: run with)/{n=0}
         n>0{print "    " $0; n--}' "$results" | head -n 100
  fi
  rm -f "$results"
}
trap cleanup EXIT

step "running every test"
# Integration tests mostly wait on the cluster, so more threads than cores is fine.
cargo test --locked --all-targets --no-fail-fast -- --test-threads="${TEST_THREADS:-6}" 2>&1 | tee "$results"
