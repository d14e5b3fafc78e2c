#!/usr/bin/env bash
# A real local Kubernetes control plane built from Go modules: etcd, kube-apiserver,
# kube-controller-manager, kube-scheduler and kwok (fake kubelets) as plain processes on 127.0.0.1,
# with 3 zones x 2 fake nodes. See docs/dev-cluster.md.
#
#   e2e/cluster.sh up | env | down | status | build | zone-down ZONE | zone-up ZONE
#                  | restart COMPONENT | pause COMPONENT SECONDS | compact   (faults, for tests)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TOOLS=$ROOT/e2e/tools
W=$ROOT/.cluster
PKI=$W/pki
LOGS=$W/logs
PIDS=$W/pids
# A running cluster keeps the settings it was started with (ports, real nodes, network id).
if [ -f "$W/cluster.env" ]; then
  # shellcheck disable=SC1091
  . "$W/cluster.env"
fi

K8S_VERSION=v1.35.4
ETCD_VERSION=v3.6.14
KWOK_VERSION=v0.8.0
# Built from e2e/tools/metrics-server (its own cache key); serves metrics.k8s.io for the HPA
# controller and `kubectl top`, from the pod usage kwok simulates.
METRICS_SERVER_VERSION=v0.9.0
ZONES=(zone-a zone-b zone-c)
NODES_PER_ZONE=2

APISERVER_PORT=${KCP_APISERVER_PORT:-6443}
ETCD_CLIENT_PORT=${KCP_ETCD_PORT:-2379}
ETCD_PEER_PORT=$((ETCD_CLIENT_PORT + 1))
KCM_PORT=${KCP_KCM_PORT:-10257}
SCHED_PORT=${KCP_SCHED_PORT:-10259}
KWOK_PORT=${KCP_KWOK_PORT:-10247}
METRICS_SERVER_PORT=${KCP_METRICS_SERVER_PORT:-$((KWOK_PORT + 1))}
# The node lifecycle controller marks a silent node Unknown after this grace period
# (Kubernetes default 50s; shortened so tests are quick). Pod tolerations keep the default 300s.
NODE_MONITOR_GRACE=${KCP_NODE_MONITOR_GRACE:-20s}
NODE_MONITOR_PERIOD=${KCP_NODE_MONITOR_PERIOD:-2s}
NODE_LEASE_SECONDS=${KCP_NODE_LEASE_SECONDS:-20}

export GOTOOLCHAIN=local CGO_ENABLED=0
export GOFLAGS="${GOFLAGS:-} -buildvcs=false"

log() { printf '[cluster %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
# shellcheck source=e2e/helm.sh
. "$ROOT/e2e/helm.sh"

go_version() { command -v go >/dev/null || die "Go is required to build the control plane (go not found on PATH)"; go env GOVERSION; }

# Binaries live outside the repo so clean clones on the same machine reuse them.
cache_root() { echo "${RESILIENT_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/resilient-operator}"; }
bin_dir() {
  local sum m f
  # Only the control plane's modules (the real nodes' modules have keys of their own, see
  # e2e/nodes.sh), in the order a glob over e2e/tools gave before those existed.
  sum=$({
    for f in go.mod go.sum; do for m in etcd k8s kstatus kwok; do cat "$TOOLS/$m/$f"; done; done
    cat "$TOOLS"/{etcd,k8s,kstatus,kwok}/*.go 2>/dev/null || true
  } | sha256sum | cut -c1-12)
  echo "$(cache_root)/bin/k8s-${K8S_VERSION}_etcd-${ETCD_VERSION}_kwok-${KWOK_VERSION}_$(go_version)_${sum}"
}
BIN=""
KUBECTL=""
ensure_bin_var() { [ -n "$BIN" ] || { BIN=$(bin_dir); KUBECTL="$BIN/kubectl --kubeconfig=$W/kubeconfig"; }; }

# shellcheck source=e2e/nodes.sh
. "$ROOT/e2e/nodes.sh"

# metrics-server, built from Go modules like every other tool, under a key of its own module.
metrics_server_bin() { echo "$(tool_bin_dir metrics-server)/metrics-server"; }
build_metrics_server() {
  go_build_into "$(tool_bin_dir metrics-server)" metrics-server sigs.k8s.io/metrics-server/cmd/metrics-server metrics-server "-s -w"
}

build() {
  build_helm
  build_metrics_server
  ensure_bin_var
  local all=(kube-apiserver kube-controller-manager kube-scheduler kubectl etcd kwok kstatus) missing=() b
  for b in "${all[@]}"; do [ -x "$BIN/$b" ] || missing+=("$b"); done
  if [ ${#missing[@]} -eq 0 ]; then return 0; fi
  log "building ${missing[*]} into $BIN"
  log "a cold build takes about 25 minutes on 2 cores; later runs reuse the cache"
  mkdir -p "$BIN.partial"
  local ldf="-s -w" p
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldf="$ldf -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=35 -X $p.gitTreeState=clean -X $p.buildDate=1970-01-01T00:00:00Z"
  done
  local start total=${#missing[@]} n=0 mod pkg flags t0
  t0=$(date +%s)
  for m in k8s etcd kwok kstatus; do
    log "downloading Go modules for e2e/tools/$m (cached in $(go env GOMODCACHE))"
    (cd "$TOOLS/$m" && go mod download)
  done
  for b in "${missing[@]}"; do
    n=$((n + 1))
    case $b in
      etcd) mod=etcd; pkg=go.etcd.io/etcd/server/v3; flags="-s -w" ;;
      kwok) mod=kwok; pkg=sigs.k8s.io/kwok/cmd/kwok; flags="-s -w" ;;
      kstatus) mod=kstatus; pkg=.; flags="-s -w" ;;
      *) mod=k8s; pkg=k8s.io/kubernetes/cmd/$b; flags=$ldf ;;
    esac
    log "[$n/$total] go build $pkg"
    start=$(date +%s)
    (cd "$TOOLS/$mod" && go build -trimpath -ldflags "$flags" -o "$BIN.partial/$b" "$pkg")
    log "[$n/$total] $b built in $(($(date +%s) - start))s"
  done
  mkdir -p "$BIN"
  for b in "${missing[@]}"; do mv "$BIN.partial/$b" "$BIN/$b"; done
  rmdir "$BIN.partial" 2>/dev/null || true
  log "build finished in $(($(date +%s) - t0))s"
}

pki() {
  [ -f "$PKI/admin.crt" ] && return 0
  mkdir -p "$PKI"
  log "creating a CA and an admin certificate in $PKI"
  (
    cd "$PKI"
    openssl genrsa -out ca.key 2048 2>/dev/null
    openssl req -x509 -new -key ca.key -subj /CN=resilient-dev-ca -days 3650 -out ca.crt 2>/dev/null
    openssl genrsa -out admin.key 2048 2>/dev/null
    cat >admin.ext <<EOE
basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth,clientAuth
subjectAltName=DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,IP:127.0.0.1,IP:10.96.0.1,IP:$HOST_IP
EOE
    openssl req -new -key admin.key -subj "/O=system:masters/CN=resilient-dev-admin" -out admin.csr 2>/dev/null
    openssl x509 -req -in admin.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 -extfile admin.ext -out admin.crt 2>/dev/null
    # The aggregation layer: the API server proxies metrics.k8s.io to metrics-server with a client
    # certificate of a CA of its own (front proxy), and the user in request headers.
    openssl genrsa -out front-proxy-ca.key 2048 2>/dev/null
    openssl req -x509 -new -key front-proxy-ca.key -subj /CN=resilient-dev-front-proxy-ca -days 3650 -out front-proxy-ca.crt 2>/dev/null
    openssl genrsa -out front-proxy-client.key 2048 2>/dev/null
    printf 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n' >front-proxy-client.ext
    openssl req -new -key front-proxy-client.key -subj /CN=front-proxy-client -out front-proxy-client.csr 2>/dev/null
    openssl x509 -req -in front-proxy-client.csr -CA front-proxy-ca.crt -CAkey front-proxy-ca.key -CAcreateserial -days 3650 \
      -extfile front-proxy-client.ext -out front-proxy-client.crt 2>/dev/null
    # metrics-server's serving certificate: the aggregator checks it against <service>.<namespace>.svc.
    openssl genrsa -out metrics-server.key 2048 2>/dev/null
    printf 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\nsubjectAltName=DNS:metrics-server.kube-system.svc,DNS:localhost,IP:127.0.0.1\n' >metrics-server.ext
    openssl req -new -key metrics-server.key -subj /CN=metrics-server.kube-system.svc -out metrics-server.csr 2>/dev/null
    openssl x509 -req -in metrics-server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
      -extfile metrics-server.ext -out metrics-server.crt 2>/dev/null
  )
  cat >"$W/kubeconfig" <<EOK
apiVersion: v1
kind: Config
clusters:
- name: resilient-dev
  cluster: {server: "https://127.0.0.1:$APISERVER_PORT", certificate-authority: "$PKI/ca.crt"}
users:
- name: resilient-dev-admin
  user: {client-certificate: "$PKI/admin.crt", client-key: "$PKI/admin.key"}
contexts:
- name: resilient-dev
  context: {cluster: resilient-dev, user: resilient-dev-admin}
current-context: resilient-dev
EOK
}

pid_alive() { [ -f "$PIDS/$1.pid" ] && kill -0 "$(cat "$PIDS/$1.pid")" 2>/dev/null; }

start_proc() { # name, command...
  local name=$1
  shift
  mkdir -p "$PIDS" "$LOGS" "$W/cmds"
  # Kept so that `restart` can start the very same command again.
  printf '%q ' "$@" >"$W/cmds/$name"
  setsid "$@" >>"$LOGS/$name.log" 2>&1 </dev/null &
  echo $! >"$PIDS/$name.pid"
}

# Faults, for the fault-injection tests (tests/faults.rs):
#   restart COMPONENT      kill -9 it and start it again with the same command, wait until it serves
#   pause COMPONENT SECS   SIGSTOP it for SECS seconds, then SIGCONT
#   compact                compact etcd's history to now, so that every watch must list again
component_pid() { # component
  ensure_bin_var
  local name=$1
  case $name in apiserver) name=kube-apiserver ;; scheduler) name=kube-scheduler ;; controller-manager) name=kube-controller-manager ;; esac
  [ -f "$PIDS/$name.pid" ] || die "no recorded pid for $name (is the cluster up?)"
  echo "$name $(cat "$PIDS/$name.pid")"
}

restart_component() { # component
  ensure_bin_var
  local name pid
  read -r name pid < <(component_pid "${1:?usage: cluster.sh restart etcd|apiserver|controller-manager|scheduler|kwok}")
  log "kill -9 $name (pid $pid)"
  kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
  while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
  log "starting $name again"
  eval "start_proc $name $(cat "$W/cmds/$name")"
  case $name in
    etcd) wait_for "etcd" 60 curl -fsS "http://127.0.0.1:$ETCD_CLIENT_PORT/health" ;;
    kube-apiserver) wait_for "kube-apiserver /readyz" 120 $KUBECTL get --raw=/readyz ;;
    *) sleep 1; pid_alive "$name" || die "$name did not stay up (see $LOGS/$name.log)" ;;
  esac
  log "$name is back"
}

pause_component() { # component seconds
  ensure_bin_var
  local name pid secs=${2:?usage: cluster.sh pause COMPONENT SECONDS}
  read -r name pid < <(component_pid "$1")
  log "SIGSTOP $name for ${secs}s"
  kill -STOP "$pid"
  sleep "$secs"
  kill -CONT "$pid"
  log "SIGCONT $name"
}

compact_etcd() {
  local rev
  rev=$(curl -fsS -X POST "http://127.0.0.1:$ETCD_CLIENT_PORT/v3/kv/range" -d '{"key":"AA=="}' | sed -n 's/.*"revision":"\([0-9]*\)".*/\1/p')
  [ -n "$rev" ] || die "could not read etcd's revision"
  curl -fsS -X POST "http://127.0.0.1:$ETCD_CLIENT_PORT/v3/kv/compaction" -d "{\"revision\":\"$rev\",\"physical\":true}" >/dev/null
  log "etcd compacted to revision $rev: every watch from an older revision must list again"
}

port_free() { ! ss -ltnH "sport = :$1" 2>/dev/null | grep -q .; }

wait_for() { # description, timeout seconds, command...
  local what=$1 timeout=$2 deadline
  shift 2
  deadline=$(($(date +%s) + timeout))
  until "$@" >/dev/null 2>&1; do
    [ "$(date +%s)" -lt "$deadline" ] || die "timed out after ${timeout}s waiting for $what (logs in $LOGS)"
    sleep 0.5
  done
}

healthy() {
  local c
  for c in etcd kube-apiserver kube-controller-manager kube-scheduler kwok metrics-server; do pid_alive $c || return 1; done
  local i
  for i in $(seq 1 "$(real_node_count)"); do
    # The kubelet may be stopped on purpose (zone-down).
    for c in containerd kube-proxy kube-router; do pid_alive "$(real_node_name "$i")-$c" || return 1; done
  done
  $KUBECTL get --raw=/readyz >/dev/null 2>&1
}

kwok_stages() {
  # The stage definitions ship inside the kwok module; standalone kwok has no built-in defaults.
  # So do the resource-usage simulation (a pod uses what its kwok.x-k8s.io/usage-cpu and
  # usage-memory annotations say, else 1m and 1Mi) and the kubelet-like /metrics/resource endpoint
  # per node that metrics-server scrapes (path in the node annotation below).
  local dir
  dir=$(cd "$TOOLS/kwok" && go mod download -json "sigs.k8s.io/kwok@$KWOK_VERSION" | sed -n 's/.*"Dir": "\(.*\)",*/\1/p')
  [ -d "$dir/kustomize/stage" ] || die "kwok stage files not found in the module cache ($dir)"
  local f
  for f in stage/node/fast/node-initialize.yaml stage/node/heartbeat-with-lease/node-heartbeat-with-lease.yaml \
    stage/pod/fast/pod-ready.yaml stage/pod/fast/pod-complete.yaml stage/pod/fast/pod-delete.yaml \
    metrics/resource/metrics-resource.yaml metrics/usage/usage-from-annotation.yaml; do
    cat "$dir/kustomize/$f"
    echo '---'
  done
}

nodes_yaml() {
  local z i n
  for z in "${ZONES[@]}"; do
    for i in $(seq 1 "$NODES_PER_ZONE"); do
      n=node-${z#zone-}-$i
      cat <<EON
---
apiVersion: v1
kind: Node
metadata:
  name: $n
  annotations: {node.alpha.kubernetes.io/ttl: "0", kwok.x-k8s.io/node: fake,
                metrics.k8s.io/resource-metrics-path: /metrics/nodes/$n/metrics/resource}
  labels:
    kwok.x-k8s.io/managed: "true"
    type: kwok
    kubernetes.io/hostname: $n
    kubernetes.io/os: linux
    kubernetes.io/arch: amd64
    node.kubernetes.io/instance-type: m5.2xlarge
    topology.kubernetes.io/region: region-1
    topology.kubernetes.io/zone: $z
spec: {providerID: "kwok://$n"}
status:
  capacity: {cpu: "8", memory: 32Gi, pods: "110", ephemeral-storage: 100Gi}
  allocatable: {cpu: 7910m, memory: 31Gi, pods: "110", ephemeral-storage: 95Gi}
  # Both kinds of address from the start: kwok's node-initialize stage, run again when a zone
  # comes back, writes an empty address list when one of them is missing (metrics-server then
  # cannot reach the node).
  addresses: [{type: InternalIP, address: 127.0.0.1}, {type: Hostname, address: $n}]
  nodeInfo: {architecture: amd64, operatingSystem: linux, kubeletVersion: $K8S_VERSION, kubeProxyVersion: $K8S_VERSION,
             bootID: "", containerRuntimeVersion: "kwok", kernelVersion: "", machineID: "", osImage: "kwok", systemUUID: ""}
EON
    done
  done
}

# metrics-server as a process on the host, registered with the aggregation layer through an
# ExternalName Service (the API server dials https://localhost:PORT, as it resolves such a Service).
metrics_server_up() {
  log "starting metrics-server $METRICS_SERVER_VERSION on https://127.0.0.1:$METRICS_SERVER_PORT"
  start_proc metrics-server "$(metrics_server_bin)" --kubeconfig="$W/kubeconfig" \
    --authentication-kubeconfig="$W/kubeconfig" --authorization-kubeconfig="$W/kubeconfig" \
    --bind-address=127.0.0.1 --secure-port="$METRICS_SERVER_PORT" \
    --tls-cert-file="$PKI/metrics-server.crt" --tls-private-key-file="$PKI/metrics-server.key" \
    --kubelet-preferred-address-types=InternalIP --kubelet-use-node-status-port --kubelet-insecure-tls \
    --metric-resolution=10s --kubelet-request-timeout=5s
  $KUBECTL apply -f - >/dev/null <<EOM
apiVersion: v1
kind: Service
metadata: {name: metrics-server, namespace: kube-system}
spec: {type: ExternalName, externalName: localhost}
---
apiVersion: apiregistration.k8s.io/v1
kind: APIService
metadata: {name: v1beta1.metrics.k8s.io}
spec:
  group: metrics.k8s.io
  version: v1beta1
  groupPriorityMinimum: 100
  versionPriority: 100
  service: {name: metrics-server, namespace: kube-system, port: $METRICS_SERVER_PORT}
  caBundle: $(base64 -w0 <"$PKI/ca.crt")
EOM
  wait_for "the metrics.k8s.io API (metrics-server)" 90 metrics_api_available
}

metrics_api_available() {
  pid_alive metrics-server || die "metrics-server exited (see $LOGS/metrics-server.log)"
  $KUBECTL wait --for=condition=Available apiservice/v1beta1.metrics.k8s.io --timeout=5s
}

print_env() {
  ensure_bin_var
  echo "export KUBECONFIG=$W/kubeconfig"
  echo "export PATH=$BIN:\$PATH"
  echo "export HELM=$(helm_bin_dir)/helm"
}

up() {
  build
  build_nodes
  ensure_bin_var
  if [ -f "$W/kubeconfig" ] && healthy; then
    log "cluster already running"
    print_env
    return 0
  fi
  if [ -d "$PIDS" ]; then
    log "found a stopped or partial cluster; cleaning it up first"
    down_quiet
  fi
  local p
  for p in "$APISERVER_PORT" "$ETCD_CLIENT_PORT" "$ETCD_PEER_PORT" "$KCM_PORT" "$SCHED_PORT" "$KWOK_PORT" "$METRICS_SERVER_PORT"; do
    port_free "$p" || die "port 127.0.0.1:$p is in use by another process (see: ss -ltnp 'sport = :$p')"
  done
  local t0
  t0=$(date +%s)
  mkdir -p "$W" "$LOGS"
  cat >"$W/cluster.env" <<EOE
KCP_APISERVER_PORT=$APISERVER_PORT KCP_ETCD_PORT=$ETCD_CLIENT_PORT KCP_KCM_PORT=$KCM_PORT KCP_SCHED_PORT=$SCHED_PORT
KCP_KWOK_PORT=$KWOK_PORT KCP_METRICS_SERVER_PORT=$METRICS_SERVER_PORT KCP_REAL_NODES=$REAL_NODES KCP_NET_ID=$NET_ID
EOE
  pki
  local advertise=127.0.0.1
  if [ "$(real_node_count)" -gt 0 ]; then
    hub_up
    advertise=$HOST_IP
  fi
  # Every request is audited (metadata only), so tests and benchmarks can count what each user
  # agent sent, from the API server's own records.
  cat >"$W/audit-policy.yaml" <<'EOA'
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
- level: Metadata
EOA
  log "starting etcd $ETCD_VERSION on 127.0.0.1:$ETCD_CLIENT_PORT"
  start_proc etcd "$BIN/etcd" --name=node0 --data-dir="$W/etcd" \
    --listen-client-urls="http://127.0.0.1:$ETCD_CLIENT_PORT" --advertise-client-urls="http://127.0.0.1:$ETCD_CLIENT_PORT" \
    --listen-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster="node0=http://127.0.0.1:$ETCD_PEER_PORT" --auto-compaction-retention=1 \
    --quota-backend-bytes=8589934592 --unsafe-no-fsync --log-level=warn
  wait_for "etcd" 30 curl -fsS "http://127.0.0.1:$ETCD_CLIENT_PORT/health"
  log "starting kube-apiserver $K8S_VERSION on https://127.0.0.1:$APISERVER_PORT (TLS, RBAC)"
  start_proc kube-apiserver "$BIN/kube-apiserver" --etcd-servers="http://127.0.0.1:$ETCD_CLIENT_PORT" \
    --bind-address=127.0.0.1 --secure-port="$APISERVER_PORT" --advertise-address="$advertise" \
    --kubelet-client-certificate="$PKI/admin.crt" --kubelet-client-key="$PKI/admin.key" \
    --kubelet-preferred-address-types=InternalIP \
    --feature-gates=MutatingAdmissionPolicy=true --runtime-config=admissionregistration.k8s.io/v1beta1=true \
    --allow-privileged=true --authorization-mode=Node,RBAC \
    --tls-cert-file="$PKI/admin.crt" --tls-private-key-file="$PKI/admin.key" --client-ca-file="$PKI/ca.crt" \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-account-key-file="$PKI/admin.key" --service-account-signing-key-file="$PKI/admin.key" \
    --proxy-client-cert-file="$PKI/front-proxy-client.crt" --proxy-client-key-file="$PKI/front-proxy-client.key" \
    --requestheader-client-ca-file="$PKI/front-proxy-ca.crt" --requestheader-allowed-names=front-proxy-client \
    --requestheader-username-headers=X-Remote-User --requestheader-group-headers=X-Remote-Group \
    --requestheader-extra-headers-prefix=X-Remote-Extra- \
    --service-cluster-ip-range=10.96.0.0/16 \
    --audit-policy-file="$W/audit-policy.yaml" --audit-log-path="$LOGS/audit.log" --audit-log-format=json \
    --audit-log-maxsize=500 --audit-log-maxbackup=1
  wait_for "kube-apiserver /readyz" 120 $KUBECTL get --raw=/readyz
  log "starting kube-controller-manager (node-monitor-grace-period=$NODE_MONITOR_GRACE)"
  start_proc kube-controller-manager "$BIN/kube-controller-manager" --kubeconfig="$W/kubeconfig" \
    --bind-address=127.0.0.1 --secure-port="$KCM_PORT" \
    --authorization-always-allow-paths=/healthz,/readyz,/livez,/metrics \
    --root-ca-file="$PKI/ca.crt" --service-account-private-key-file="$PKI/admin.key" \
    --leader-elect=false --node-monitor-period="$NODE_MONITOR_PERIOD" --node-monitor-grace-period="$NODE_MONITOR_GRACE" \
    --kube-api-qps=100 --kube-api-burst=200
  log "starting kube-scheduler"
  start_proc kube-scheduler "$BIN/kube-scheduler" --kubeconfig="$W/kubeconfig" \
    --bind-address=127.0.0.1 --secure-port="$SCHED_PORT" \
    --authorization-always-allow-paths=/healthz,/readyz,/livez,/metrics --leader-elect=false
  kwok_stages >"$W/kwok.yaml"
  log "starting kwok $KWOK_VERSION (fake kubelets for nodes labelled kwok.x-k8s.io/managed=true)"
  start_proc kwok "$BIN/kwok" --kubeconfig="$W/kubeconfig" --config="$W/kwok.yaml" \
    --manage-all-nodes=false --manage-nodes-with-label-selector=kwok.x-k8s.io/managed=true \
    --node-lease-duration-seconds="$NODE_LEASE_SECONDS" --cidr=10.244.0.0/16 --node-ip=127.0.0.1 \
    --server-address="127.0.0.1:$KWOK_PORT" --node-port="$KWOK_PORT"
  wait_for "kube-controller-manager /healthz" 60 curl -fsSk "https://127.0.0.1:$KCM_PORT/healthz"
  wait_for "kube-scheduler /healthz" 60 curl -fsSk "https://127.0.0.1:$SCHED_PORT/healthz"
  log "creating ${#ZONES[@]} zones x $NODES_PER_ZONE nodes"
  nodes_yaml | $KUBECTL apply -f - >/dev/null
  wait_for "all nodes Ready" 120 $KUBECTL wait --for=condition=Ready node --all --timeout=5s
  wait_for "the default ServiceAccount" 60 $KUBECTL get serviceaccount default -n default
  metrics_server_up
  if [ "$(real_node_count)" -gt 0 ]; then
    start_apiserver_forwarder
    real_nodes_up
    # After the nodes registered, so the scheduler spreads CoreDNS over them.
    real_node_addons
    wait_for "CoreDNS Ready" 120 $KUBECTL -n kube-system wait --for=condition=Available deployment/coredns --timeout=5s
  fi
  log "cluster up in $(($(date +%s) - t0))s"
  print_env
}

stop_pid() { # name
  local f=$PIDS/$1.pid pid i
  [ -f "$f" ] || return 0
  pid=$(cat "$f")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$f"
}

down_quiet() {
  local c
  real_nodes_down
  for c in metrics-server kwok kube-scheduler kube-controller-manager kube-apiserver etcd; do stop_pid $c; done
  undo_host_objects
  if grep -q " $W/" /proc/self/mountinfo; then
    log "WARNING: mounts left under $W; not removing it"
    grep " $W/" /proc/self/mountinfo >&2
    return 1
  fi
  rm -rf "$W"
}

down() {
  if [ ! -d "$W" ]; then
    log "no cluster state in $W; nothing to stop"
    return 0
  fi
  log "stopping the processes started by e2e/cluster.sh up"
  down_quiet
  log "stopped; removed $W"
}

zone_nodes() { $KUBECTL get nodes -l "topology.kubernetes.io/zone=$1" -o name; }

zone_down() {
  local zone=${1:?usage: cluster.sh zone-down ZONE} i
  ensure_bin_var
  [ -n "$(zone_nodes "$zone")" ] || die "no nodes in zone $zone"
  # kwok stops acting as the kubelet of the zone's fake nodes: no more lease renewals or status
  # updates, exactly what the control plane sees when a zone loses power or network. A real
  # node of the zone has its kubelet stopped (its containers keep running, as in a partition).
  log "zone $zone goes dark: its kubelets stop heartbeating"
  $KUBECTL label node -l "topology.kubernetes.io/zone=$zone,type=kwok" kwok.x-k8s.io/managed- >/dev/null
  for i in $(seq 1 "$(real_node_count)"); do
    [ "$(real_node_zone "$i")" = "$zone" ] || continue
    log "stopping the kubelet of $(real_node_name "$i")"
    stop_pid "$(real_node_name "$i")-kubelet"
  done
  log "the node lifecycle controller marks them Unknown after ~$NODE_MONITOR_GRACE and taints them node.kubernetes.io/unreachable"
}

zone_up() {
  local zone=${1:?usage: cluster.sh zone-up ZONE}
  ensure_bin_var
  [ -n "$(zone_nodes "$zone")" ] || die "no nodes in zone $zone"
  log "zone $zone comes back: its kubelets heartbeat again"
  $KUBECTL label node -l "topology.kubernetes.io/zone=$zone,type=kwok" kwok.x-k8s.io/managed=true --overwrite >/dev/null
  local i
  for i in $(seq 1 "$(real_node_count)"); do
    [ "$(real_node_zone "$i")" = "$zone" ] || continue
    pid_alive "$(real_node_name "$i")-kubelet" || start_kubelet "$i"
  done
  local deadline=$(($(date +%s) + 120)) n
  for n in $(zone_nodes "$zone"); do
    until [ "$($KUBECTL get "$n" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')" = "True" ]; do
      [ "$(date +%s)" -lt "$deadline" ] || die "$n did not become Ready within 120s"
      sleep 0.5
    done
  done
  log "zone $zone nodes are Ready"
}

status() {
  ensure_bin_var
  local c
  echo "binaries: $BIN"
  for c in etcd kube-apiserver kube-controller-manager kube-scheduler kwok metrics-server; do
    if pid_alive $c; then
      printf '  %-24s running  pid %-8s rss %s KiB\n' "$c" "$(cat "$PIDS/$c.pid")" "$(ps -o rss= -p "$(cat "$PIDS/$c.pid")" | tr -d ' ')"
    else
      printf '  %-24s stopped\n' "$c"
    fi
  done
  local i p
  for i in $(seq 1 "$(real_node_count)"); do
    for c in containerd kubelet kube-proxy kube-router; do
      p=$(real_node_name "$i")-$c
      if pid_alive "$p"; then
        printf '  %-24s running  pid %-8s rss %s KiB\n' "$p" "$(cat "$PIDS/$p.pid")" "$(ps -o rss= -p "$(cat "$PIDS/$p.pid")" | tr -d ' ')"
      else
        printf '  %-24s stopped\n' "$p"
      fi
    done
    if [ -f "/sys/fs/cgroup/memory/$(real_node_cgroup "$i")/memory.usage_in_bytes" ]; then
      printf '  %-24s memory of the whole node (cgroup, page cache included): %s MiB\n' "$(real_node_name "$i")" \
        $(($(cat "/sys/fs/cgroup/memory/$(real_node_cgroup "$i")/memory.usage_in_bytes") / 1048576))
    fi
  done
  echo "versions: kubernetes $K8S_VERSION, etcd $ETCD_VERSION, kwok $KWOK_VERSION, $(go_version)"
  [ "$(real_node_count)" = 0 ] || echo "real nodes: containerd $(containerd --version | awk '{print $3}'), runc $(runc --version | awk 'NR==1{print $3}'), kube-router $KUBE_ROUTER_VERSION, CoreDNS $COREDNS_VERSION"
  if [ -f "$W/kubeconfig" ] && $KUBECTL get --raw=/readyz >/dev/null 2>&1; then
    $KUBECTL get nodes -L topology.kubernetes.io/zone --sort-by='{.metadata.labels.topology\.kubernetes\.io/zone}'
  else
    echo "api server: not reachable"
  fi
}

cmd=${1:-}
shift || true
case $cmd in
  up) up ;;
  env) ensure_bin_var; [ -f "$W/kubeconfig" ] || die "no cluster (run: e2e/cluster.sh up)"; print_env ;;
  down) down ;;
  build) build; build_nodes ;;
  build-nodes) build_nodes ;;
  operator-image) ensure_bin_var; [ -n "${1:-}" ] || die "usage: cluster.sh operator-image BINARY"; operator_image "$1" ;;
  images) ensure_bin_var; build_images; for a in "${IMAGE_ARCHIVES[@]}"; do load_image "$a"; done ;;
  load-image) ensure_bin_var; [ -n "${1:-}" ] || die "usage: cluster.sh load-image ARCHIVE"; load_image "$1" ;;
  status) status ;;
  zone-down) zone_down "$@" ;;
  zone-up) zone_up "$@" ;;
  restart) restart_component "$@" ;;
  pause) pause_component "$@" ;;
  compact) compact_etcd ;;
  *) echo "usage: $0 up|env|down|status|build|build-nodes|images|load-image ARCHIVE|operator-image BINARY|zone-down ZONE|zone-up ZONE|restart COMPONENT|pause COMPONENT SECS|compact" >&2; exit 2 ;;
esac
