# Shared shell helpers of e2e/demo.sh and bench/zone-outage.sh. Source after `eval $(e2e/cluster.sh env)`.

# NODE_ZONE[node]=zone for every node.
declare -gA NODE_ZONE
load_node_zones() {
  local n
  while read -r n z; do NODE_ZONE[$n]=$z; done < <(kubectl get nodes --no-headers \
    -o custom-columns='NAME:.metadata.name,ZONE:.metadata.labels.topology\.kubernetes\.io/zone')
}

# "<total> zone=count ..." of ready, not-terminating pods matching a label selector.
ready_by_zone() { # namespace selector
  kubectl get pods -n "$1" -l "$2" --no-headers \
    -o custom-columns='NODE:.spec.nodeName,READY:.status.conditions[?(@.type=="Ready")].status,DEL:.metadata.deletionTimestamp' |
    while read -r node ready del; do
      if [ "$ready" = True ] && [ "$del" = "<none>" ]; then echo "${NODE_ZONE[$node]:-unscheduled}"; fi
    done | sort | uniq -c | awk '{t += $1; s = s " " $2 "=" $1} END {print t + 0 s}'
}

# Number of not-terminating pods matching a selector in a zone ("unscheduled" for Pending ones).
live_in_zone() { # namespace selector zone
  kubectl get pods -n "$1" -l "$2" --no-headers \
    -o custom-columns='NODE:.spec.nodeName,DEL:.metadata.deletionTimestamp' |
    while read -r node del; do
      if [ "$del" = "<none>" ] && [ "${NODE_ZONE[$node]:-unscheduled}" = "$3" ]; then echo x; fi
    done | wc -l
}

# Count for one zone out of a ready_by_zone line.
zone_count() { # "line" zone
  echo "$1" | tr ' ' '\n' | awk -F= -v z="$2" '$1 == z {n = $2} END {print n + 0}'
}

# Largest minus smallest count over the given zones.
skew() { # "line" zone...
  local line=$1
  shift
  for z in "$@"; do zone_count "$line" "$z"; done | sort -n | awk 'NR == 1 {min = $1} {max = $1} END {print max - min}'
}

# Start the operator in the background; sets OPERATOR_PID and records it in .cluster/pids. An
# operator that an earlier, interrupted run left on the same port is stopped by its recorded pid.
start_operator() { # binary log-file metrics-port [extra run arguments...]
  local bin=$1 log=$2 port=$3 pidfile old
  shift 3
  pidfile=.cluster/pids/operator-$port.pid
  if [ -f "$pidfile" ]; then
    old=$(cat "$pidfile")
    if [ "$(cat /proc/"$old"/comm 2>/dev/null)" = resilient-opera ]; then kill "$old" 2>/dev/null || true; fi
    rm -f "$pidfile"
  fi
  "$bin" run --metrics-address "127.0.0.1:$port" "$@" >"$log" 2>&1 &
  OPERATOR_PID=$!
  mkdir -p .cluster/pids
  echo "$OPERATOR_PID" >"$pidfile"
}

# Install the CRD, the operator's RBAC and the admission policies (config/crd, config/rbac,
# config/admission: config/default without the manager Deployment), and write
# .cluster/operator.kubeconfig, which authenticates as the operator's ServiceAccount: the operator
# then runs with exactly the permissions config/default grants it in a real cluster.
install_operator_identity() {
  kubectl apply --server-side -k config/crd >/dev/null
  # A CRD just created has no conditions for a moment, and `kubectl wait` fails on that: retry.
  local deadline=$((SECONDS + 30))
  until kubectl wait --for condition=Established crd/resilientapps.resilient.dev --timeout=30s >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || { echo "the ResilientApp CRD is not Established after 30 s" >&2; return 1; }
    sleep 0.5
  done
  kubectl get namespace resilient-system >/dev/null 2>&1 || kubectl create namespace resilient-system >/dev/null
  kubectl apply --server-side --force-conflicts -k config/rbac >/dev/null
  kubectl apply --server-side --force-conflicts -k config/admission >/dev/null
  local token server
  token=$(kubectl create token resilient-operator -n resilient-system --duration=24h)
  server=$(kubectl config view --minify -o jsonpath='{.clusters[0].cluster.server}')
  cat >.cluster/operator.kubeconfig <<EOK
apiVersion: v1
kind: Config
clusters: [{name: local, cluster: {server: "$server", certificate-authority: "$PWD/.cluster/pki/ca.crt"}}]
users: [{name: resilient-operator, user: {token: "$token"}}]
contexts: [{name: operator, context: {cluster: local, user: resilient-operator}}]
current-context: operator
EOK
}
