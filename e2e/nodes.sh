# Real kubelet nodes for e2e/cluster.sh (sourced by it; see docs/dev-cluster.md).
#
# Each real node is a network namespace and a mount namespace of its own, with its own
# containerd, kubelet, kube-proxy and kube-router (NetworkPolicy, firewall only), a cgroup root
# in every cgroup v1 hierarchy, and a pod subnet on a bridge inside the node. The nodes are
# joined by a bridge in a "hub" network namespace; one veth links the hub to the host, which
# is how the kubelets reach the API server (through a forwarder on the host end of that veth)
# and the API server reaches the kubelets. Nothing is routed off the machine: the node
# namespaces have no default route and the host does not forward.
#
# Everything host-level is named after KCP_NET_ID (0..49), so clusters of different worktrees
# run side by side when each has its own id (and its own ports).

NODE_TOOLS=(node kube-router coredns http-echo images)
KUBE_ROUTER_VERSION=v2.1.0
COREDNS_VERSION=v1.15.0
HTTP_ECHO_VERSION=v1.0.0

REAL_NODES=${KCP_REAL_NODES:-3}
NET_ID=${KCP_NET_ID:-0}
NETP=rn$NET_ID                      # prefix of host-level names: netns, veth, cgroups
NET16=10.$((200 + NET_ID))          # this cluster's addresses: $NET16.0.0/16
HOST_IP=$NET16.0.1                  # host end of the hub link: API server forwarder
SERVICE_CIDR=10.96.0.0/16
CLUSTER_DNS=10.96.0.10
REAL_TAINT=resilient.dev/real-node
PAUSE_IMAGE=localhost/resilient-dev/pause:1.0
COREDNS_IMAGE=localhost/resilient-dev/coredns:$COREDNS_VERSION
HTTP_ECHO_IMAGE=docker.io/hashicorp/http-echo:${HTTP_ECHO_VERSION#v}
CGROUP_HIERARCHIES=(cpu cpuacct cpuset memory devices freezer blkio pids systemd unified)

# Binaries of one tool module, keyed by the module's files and the Go version.
tool_bin_dir() { # module
  local sum
  sum=$(cat "$TOOLS/$1"/go.mod "$TOOLS/$1"/go.sum $(find "$TOOLS/$1" -name '*.go' | sort) 2>/dev/null | sha256sum | cut -c1-12)
  echo "$(cache_root)/bin/$1_$(go_version)_$sum"
}

go_build_into() { # dir module package output ldflags
  local dir=$1 mod=$2 pkg=$3 out=$4 flags=$5 start
  [ -x "$dir/$out" ] && return 0
  log "go build $pkg (module e2e/tools/$mod) into $dir"
  start=$(date +%s)
  mkdir -p "$dir.partial"
  (cd "$TOOLS/$mod" && go mod download && go build -trimpath -ldflags "$flags" -o "$dir.partial/$out" "$pkg")
  mkdir -p "$dir"
  mv "$dir.partial/$out" "$dir/$out"
  rmdir "$dir.partial" 2>/dev/null || true
  log "$out built in $(($(date +%s) - start))s"
}

k8s_ldflags() {
  local ldf="-s -w" p
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldf="$ldf -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=35 -X $p.gitTreeState=clean -X $p.buildDate=1970-01-01T00:00:00Z"
  done
  echo "$ldf"
}

# Debian packages the real nodes need; installed when missing (apt-get update once).
ensure_node_packages() {
  local missing=() c
  for c in containerd:containerd runc:runc iptables:iptables ipset:ipset conntrack:conntrack socat:socat; do
    command -v "${c%%:*}" >/dev/null || missing+=("${c#*:}")
  done
  [ -x /usr/lib/cni/bridge ] && [ -x /usr/lib/cni/host-local ] && [ -x /usr/lib/cni/loopback ] || missing+=(containernetworking-plugins)
  command -v ip >/dev/null || missing+=(iproute2)
  command -v nsenter >/dev/null || missing+=(util-linux)
  [ ${#missing[@]} -eq 0 ] && return 0
  log "installing Debian packages: ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

build_nodes() {
  [ "$REAL_NODES" -gt 0 ] || return 0
  ensure_node_packages
  local t0 d
  t0=$(date +%s)
  d=$(tool_bin_dir images)
  go_build_into "$d" images ./ociimage ociimage "-s -w"
  go_build_into "$d" images ./pause pause "-s -w"
  d=$(tool_bin_dir http-echo)
  go_build_into "$d" http-echo github.com/hashicorp/http-echo http-echo "-s -w"
  d=$(tool_bin_dir coredns)
  go_build_into "$d" coredns . coredns "-s -w"
  d=$(tool_bin_dir kube-router)
  go_build_into "$d" kube-router github.com/cloudnativelabs/kube-router/v2/cmd/kube-router kube-router \
    "-s -w -X github.com/cloudnativelabs/kube-router/v2/pkg/version.Version=$KUBE_ROUTER_VERSION"
  d=$(tool_bin_dir node)
  go_build_into "$d" node k8s.io/kubernetes/test/images/agnhost agnhost "-s -w"
  go_build_into "$d" node k8s.io/kubernetes/cmd/kube-proxy kube-proxy "$(k8s_ldflags)"
  go_build_into "$d" node k8s.io/kubernetes/cmd/kubelet kubelet "$(k8s_ldflags)"
  log "node binaries ready ($(($(date +%s) - t0))s)"
}

# ---------------------------------------------------------------------------------------------
# Names and addresses

real_node_count() { local n=$REAL_NODES; [ "$n" -le ${#ZONES[@]} ] || n=${#ZONES[@]}; echo "$n"; }
real_node_name() { local z=${ZONES[$(($1 - 1))]}; echo "node-${z#zone-}-real"; } # index (1-based)
real_node_zone() { echo "${ZONES[$(($1 - 1))]}"; }
real_node_index() { # node name -> index, or nothing
  local i
  for i in $(seq 1 "$(real_node_count)"); do [ "$(real_node_name "$i")" = "$1" ] && echo "$i"; done
  return 0
}
real_node_ip() { echo "$NET16.0.$((10 + $1))"; }
real_node_pod_cidr() { echo "$NET16.$1.0/24"; }
real_node_netns() { echo "$NETP-n$1"; }
real_node_cgroup() { echo "resilient-$NETP-n$1"; }
real_node_dir() { echo "$W/nodes/$(real_node_name "$1")"; }
HUB_NETNS=$NETP-hub
HOST_VETH=${NETP}hub

# Host objects made by `up` are recorded here, one per line, and undone in reverse by `down`.
host_record() { mkdir -p "$W"; echo "$*" >>"$W/host-objects"; }

# ---------------------------------------------------------------------------------------------
# Images: one static binary each, in OCI archives cached next to the binaries.

image_archive() { # name binary-dir... -> path of the cached archive (built when missing)
  local name=$1 key
  shift
  key=$(echo "$name $* $(tool_bin_dir images)" | sha256sum | cut -c1-12)
  echo "$(cache_root)/images/$(echo "$name" | tr '/:' '__')_$key.tar"
}

build_images() {
  local oci pause agnhost echo_bin coredns d out
  oci=$(tool_bin_dir images)/ociimage
  pause=$(tool_bin_dir images)/pause
  agnhost=$(tool_bin_dir node)/agnhost
  echo_bin=$(tool_bin_dir http-echo)/http-echo
  coredns=$(tool_bin_dir coredns)/coredns
  mkdir -p "$(cache_root)/images"
  IMAGE_ARCHIVES=()
  out=$(image_archive "$PAUSE_IMAGE" "$pause")
  [ -f "$out" ] || "$oci" -o "$out" -name "$PAUSE_IMAGE" -entrypoint /pause -user 65535:65535 -file "/pause=$pause"
  IMAGE_ARCHIVES+=("$out")
  # agnhost as its upstream image has it (test/images/agnhost/Dockerfile): entrypoint /agnhost,
  # command pause, root user, /uploads; the tag is the VERSION file of the same module.
  d=$(cd "$TOOLS/node" && go list -m -f '{{.Dir}}' k8s.io/kubernetes)
  AGNHOST_IMAGE=registry.k8s.io/e2e-test-images/agnhost:$(cat "$d/test/images/agnhost/VERSION")
  out=$(image_archive "$AGNHOST_IMAGE" "$agnhost")
  [ -f "$out" ] || "$oci" -o "$out" -name "$AGNHOST_IMAGE" -entrypoint /agnhost -cmd pause -file "/agnhost=$agnhost" \
    -symlink /agnhost-2=agnhost -dir /uploads -dir /tmp:1777 -expose 80/tcp -expose 8080/tcp -expose 8081/tcp
  IMAGE_ARCHIVES+=("$out")
  # http-echo as its upstream image has it: distroless static "nonroot" (user 65532), /http-echo.
  out=$(image_archive "$HTTP_ECHO_IMAGE" "$echo_bin")
  [ -f "$out" ] || "$oci" -o "$out" -name "$HTTP_ECHO_IMAGE" -entrypoint /http-echo -user 65532 \
    -env ECHO_TEXT=hello-world -file "/http-echo=$echo_bin" -dir /tmp:1777 -expose 5678/tcp
  IMAGE_ARCHIVES+=("$out")
  out=$(image_archive "$COREDNS_IMAGE" "$coredns")
  [ -f "$out" ] || "$oci" -o "$out" -name "$COREDNS_IMAGE" -entrypoint /coredns -file "/coredns=$coredns" -expose 53/udp -expose 53/tcp
  IMAGE_ARCHIVES+=("$out")
}

# Import an image archive into every running real node (also used by tests: cluster.sh load-image).
load_image() { # archive
  local i n
  for i in $(seq 1 "$(real_node_count)"); do
    n=$(real_node_dir "$i")
    [ -S "$n/containerd.sock" ] || continue
    ctr -a "$n/containerd.sock" -n k8s.io images import --no-unpack=false "$1" >/dev/null ||
      die "importing $1 into $(real_node_name "$i") failed"
  done
}

# ---------------------------------------------------------------------------------------------
# Network: the hub namespace with a bridge, the host link, one namespace per node.

net_conflict() {
  ! ip netns list | awk '{print $1}' | grep -qx "$HUB_NETNS" && ! ip link show "$HOST_VETH" >/dev/null 2>&1
}

hub_up() {
  net_conflict || die "network namespace $HUB_NETNS or link $HOST_VETH exists: another cluster uses KCP_NET_ID=$NET_ID (set another id, 0..49, with other ports)"
  ip netns add "$HUB_NETNS"
  host_record netns "$HUB_NETNS"
  ip -n "$HUB_NETNS" link set lo up
  ip -n "$HUB_NETNS" link add br0 type bridge
  ip -n "$HUB_NETNS" link set br0 up
  # The host end is removed with the hub namespace (a veth pair dies with either end).
  ip link add "$HOST_VETH" type veth peer name host0 netns "$HUB_NETNS"
  ip addr add "$HOST_IP/24" dev "$HOST_VETH"
  ip link set "$HOST_VETH" up
  ip -n "$HUB_NETNS" link set host0 master br0 up
  # Every address of this cluster is on the hub link, so the host's answers to pods (the API
  # server forwarder) go back over it and never to the host's default route. The routes go away
  # with the link.
  ip route add "$NET16.0.0/16" dev "$HOST_VETH"
  local i
  for i in $(seq 1 "$(real_node_count)"); do
    ip route add "$(real_node_pod_cidr "$i")" via "$(real_node_ip "$i")" dev "$HOST_VETH"
  done
}

node_net_up() { # index
  local i=$1 ns j
  ns=$(real_node_netns "$i")
  ip netns add "$ns"
  host_record netns "$ns"
  ip -n "$ns" link set lo up
  ip link add "n$i" netns "$HUB_NETNS" type veth peer name eth0 netns "$ns"
  ip -n "$HUB_NETNS" link set "n$i" master br0 up
  ip -n "$ns" addr add "$(real_node_ip "$i")/24" dev eth0
  ip -n "$ns" link set eth0 up
  # No default route: pods and node processes reach only this cluster's addresses.
  ip -n "$ns" route add "$SERVICE_CIDR" dev eth0
  for j in $(seq 1 "$(real_node_count)"); do
    [ "$j" = "$i" ] || ip -n "$ns" route add "$(real_node_pod_cidr "$j")" via "$(real_node_ip "$j")"
  done
  # Forwarding inside the node's own namespace (pods <-> other nodes); the host's is untouched.
  nsenter --net="/run/netns/$ns" sysctl -qw net.ipv4.ip_forward=1
}

# ---------------------------------------------------------------------------------------------
# Mount namespace and cgroups of a node.

node_mounts_up() { # index
  local i=$1 n
  n=$(real_node_dir "$i")
  mkdir -p "$n/ns" "$n/varlib" "$n/varlog" "$n/sysctl"
  # A persistent mount namespace needs its handle on a private mount.
  mount --bind "$n/ns" "$n/ns"
  host_record mount "$n/ns"
  mount --make-private "$n/ns"
  touch "$n/ns/mnt"
  # The kubelet checks these and would set them host-wide: it reads the expected values from
  # files bind-mounted over them, in the node's mount namespace only.
  echo 1 >"$n/sysctl/vm.overcommit_memory"
  echo 10 >"$n/sysctl/kernel.panic"
  echo 1 >"$n/sysctl/kernel.panic_on_oops"
  unshare --mount="$n/ns/mnt" --propagation slave sh -ec "
    mount -t tmpfs -o mode=755 tmpfs /run
    mkdir -p /run/netns
    mount --bind '$n/varlib' /var/lib
    mount --bind '$n/varlog' /var/log
    mount --bind '$n/sysctl/vm.overcommit_memory' /proc/sys/vm/overcommit_memory
    mount --bind '$n/sysctl/kernel.panic' /proc/sys/kernel/panic
    mount --bind '$n/sysctl/kernel.panic_on_oops' /proc/sys/kernel/panic_on_oops
  "
  host_record mount "$n/ns/mnt"
}

node_cgroups_up() { # index
  local root h
  root=$(real_node_cgroup "$1")
  for h in "${CGROUP_HIERARCHIES[@]}"; do
    [ -d "/sys/fs/cgroup/$h" ] || continue
    mkdir -p "/sys/fs/cgroup/$h/$root/system"
    if [ "$h" = cpuset ]; then
      cat /sys/fs/cgroup/cpuset/cpuset.cpus >"/sys/fs/cgroup/cpuset/$root/cpuset.cpus"
      cat /sys/fs/cgroup/cpuset/cpuset.mems >"/sys/fs/cgroup/cpuset/$root/cpuset.mems"
      cat /sys/fs/cgroup/cpuset/cpuset.cpus >"/sys/fs/cgroup/cpuset/$root/system/cpuset.cpus"
      cat /sys/fs/cgroup/cpuset/cpuset.mems >"/sys/fs/cgroup/cpuset/$root/system/cpuset.mems"
    fi
  done
  host_record cgroup "$root"
}

# Every process of a node, and what it starts (shims, containers), lives in its cgroup root.
start_node_proc() { # index name command...
  local i=$1 name=$2
  shift 2
  mkdir -p "$PIDS" "$LOGS"
  setsid sh -c '
    root=$1 ns=$2 mnt=$3
    shift 3
    for h in /sys/fs/cgroup/*/"$root"/system; do echo $$ >"$h/cgroup.procs"; done
    exec nsenter --net="/run/netns/$ns" --mount="$mnt" -- "$@"' \
    sh "$(real_node_cgroup "$i")" "$(real_node_netns "$i")" "$(real_node_dir "$i")/ns/mnt" "$@" \
    >"$LOGS/$name.log" 2>&1 </dev/null &
  echo $! >"$PIDS/$name.pid"
}

# Kill what is left in a node's cgroups (containers, shims), frozen first so nothing forks away.
kill_cgroup_tree() { # cgroup root
  local root=$1 f pids
  local fz=/sys/fs/cgroup/freezer/$root
  [ -d "$fz" ] && echo FROZEN >"$fz/freezer.state" 2>/dev/null || true
  for _ in 1 2 3; do
    pids=$(find "/sys/fs/cgroup/pids/$root" "/sys/fs/cgroup/memory/$root" -name cgroup.procs -exec cat {} + 2>/dev/null | sort -u)
    [ -n "$pids" ] || break
    # shellcheck disable=SC2086
    kill -KILL $pids 2>/dev/null || true
    [ -d "$fz" ] && echo THAWED >"$fz/freezer.state" 2>/dev/null || true
    sleep 0.3
  done
}

remove_cgroup_tree() { # cgroup root
  local h
  for h in "${CGROUP_HIERARCHIES[@]}"; do
    [ -d "/sys/fs/cgroup/$h/$1" ] || continue
    find "/sys/fs/cgroup/$h/$1" -depth -type d -exec rmdir {} \; 2>/dev/null || true
    [ ! -d "/sys/fs/cgroup/$h/$1" ] || log "WARNING: could not remove cgroup /sys/fs/cgroup/$h/$1"
  done
}

# ---------------------------------------------------------------------------------------------
# Certificates and configuration files of a node.

node_kubeconfig() { # file cert key
  cat >"$1" <<EOK
apiVersion: v1
kind: Config
clusters: [{name: local, cluster: {server: "https://$HOST_IP:$APISERVER_PORT", certificate-authority: "$PKI/ca.crt"}}]
users: [{name: user, user: {client-certificate: "$2", client-key: "$3"}}]
contexts: [{name: local, context: {cluster: local, user: user}}]
current-context: local
EOK
}

client_cert() { # basename subject
  [ -f "$PKI/$1.crt" ] && return 0
  (
    cd "$PKI"
    openssl genrsa -out "$1.key" 2048 2>/dev/null
    openssl req -new -key "$1.key" -subj "$2" -out "$1.csr" 2>/dev/null
    printf 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n' >"$1.ext"
    openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 -extfile "$1.ext" -out "$1.crt" 2>/dev/null
  )
}

node_config() { # index
  local i=$1 n name ip
  n=$(real_node_dir "$i")
  name=$(real_node_name "$i")
  ip=$(real_node_ip "$i")
  mkdir -p "$n/containerd" "$n/cni/net.d" "$n/kubelet" "$n/runc"
  client_cert "$name" "/O=system:nodes/CN=system:node:$name"
  client_cert kube-proxy "/O=resilient-dev/CN=system:kube-proxy"
  node_kubeconfig "$n/kubelet.kubeconfig" "$PKI/$name.crt" "$PKI/$name.key"
  node_kubeconfig "$n/kube-proxy.kubeconfig" "$PKI/kube-proxy.crt" "$PKI/kube-proxy.key"
  # kube-router reads pods, namespaces, NetworkPolicies and nodes cluster-wide: the admin identity
  # keeps this local cluster simple (a production install gives it a ClusterRole of its own).
  node_kubeconfig "$n/kube-router.kubeconfig" "$PKI/admin.crt" "$PKI/admin.key"
  cat >"$n/containerd/config.toml" <<EOC
version = 2
root = "$n/containerd/root"
state = "$n/containerd/state"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs"]
[grpc]
  address = "$n/containerd.sock"
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "$n/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  # Root here lacks CAP_SYS_RESOURCE: without this every sandbox fails
  # ("can't get final child's PID from pipe: EOF").
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "$n/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$n/cni/net.d"
    max_conf_num = 1
EOC
  cat >"$n/cni/net.d/10-resilient-dev.conflist" <<EOC
{
  "cniVersion": "0.4.0",
  "name": "resilient-dev",
  "plugins": [{
    "type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false, "hairpinMode": true,
    "ipam": {"type": "host-local", "dataDir": "$n/cni/ipam", "routes": [{"dst": "0.0.0.0/0"}],
             "ranges": [[{"subnet": "$(real_node_pod_cidr "$i")", "gateway": "$NET16.$i.1"}]]}
  }]
}
EOC
  : >"$n/resolv.conf"
  cat >"$n/kubelet/config.yaml" <<EOC
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# cgroup v1 hosts: allowed explicitly, cgroupfs driver, a cgroup root of this node's own.
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: /$(real_node_cgroup "$i")
failSwapOn: false
# Lowering its own oom_score_adj needs CAP_SYS_RESOURCE, which root lacks here.
oomScoreAdj: 0
containerRuntimeEndpoint: unix://$n/containerd.sock
address: $ip
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $PKI/ca.crt}
authorization: {mode: Webhook}
clusterDNS: [$CLUSTER_DNS]
clusterDomain: cluster.local
resolvConf: $n/resolv.conf
registerWithTaints:
- {key: $REAL_TAINT, value: "true", effect: NoSchedule}
nodeLeaseDurationSeconds: 20
nodeStatusUpdateFrequency: 10s
# Imported images cannot be pulled again: never garbage-collect them.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: 100Mi, nodefs.available: 1%, imagefs.available: 1%, nodefs.inodesFree: 1%}
volumePluginDir: $n/kubelet/volume-plugins
shutdownGracePeriod: 0s
EOC
  cat >"$n/kube-proxy.yaml" <<EOC
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: $n/kube-proxy.kubeconfig}
hostnameOverride: $name
mode: iptables
clusterCIDR: $NET16.0.0/16
detectLocalMode: BridgeInterface
detectLocal: {bridgeInterface: cni0}
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
nodePortAddresses: [$ip/32]
iptables: {localhostNodePorts: false}
# Leave the kernel's conntrack settings alone (zero: do not set).
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s, udpTimeout: 0s, udpStreamTimeout: 0s}
EOC
}

# ---------------------------------------------------------------------------------------------
# Start and stop.

start_kubelet() { # index
  local i=$1 n
  n=$(real_node_dir "$i")
  start_node_proc "$i" "$(real_node_name "$i")-kubelet" "$(tool_bin_dir node)/kubelet" \
    --config="$n/kubelet/config.yaml" --kubeconfig="$n/kubelet.kubeconfig" --root-dir="$n/kubelet" \
    --hostname-override="$(real_node_name "$i")" --node-ip="$(real_node_ip "$i")" \
    --node-labels="type=real,$REAL_TAINT=true,topology.kubernetes.io/zone=$(real_node_zone "$i"),topology.kubernetes.io/region=region-1"
}

real_nodes_up() {
  local count i n name t0
  count=$(real_node_count)
  [ "$count" -gt 0 ] || return 0
  t0=$(date +%s)
  build_images
  log "starting $count real node(s): containerd, kubelet, kube-proxy, kube-router in network namespaces $NETP-n*"
  for i in $(seq 1 "$count"); do
    node_net_up "$i"
    node_mounts_up "$i"
    node_cgroups_up "$i"
    node_config "$i"
    start_node_proc "$i" "$(real_node_name "$i")-containerd" containerd --config "$(real_node_dir "$i")/containerd/config.toml"
  done
  for i in $(seq 1 "$count"); do
    n=$(real_node_dir "$i")
    wait_for "containerd of $(real_node_name "$i")" 60 ctr -a "$n/containerd.sock" version
  done
  log "importing ${#IMAGE_ARCHIVES[@]} images into each node"
  local a
  for a in "${IMAGE_ARCHIVES[@]}"; do load_image "$a"; done
  for i in $(seq 1 "$count"); do
    n=$(real_node_dir "$i")
    name=$(real_node_name "$i")
    start_kubelet "$i"
    start_node_proc "$i" "$name-kube-proxy" "$(tool_bin_dir node)/kube-proxy" --config="$n/kube-proxy.yaml"
  done
  wait_for "real nodes Ready" 180 real_nodes_ready
  # kube-router finds its node object at start: start it once the kubelets registered.
  for i in $(seq 1 "$count"); do
    n=$(real_node_dir "$i")
    name=$(real_node_name "$i")
    start_node_proc "$i" "$name-kube-router" "$(tool_bin_dir kube-router)/kube-router" \
      --kubeconfig="$n/kube-router.kubeconfig" --hostname-override="$name" \
      --run-firewall=true --run-router=false --run-service-proxy=false --run-loadbalancer=false \
      --enable-cni=false --enable-pod-egress=false --enable-ipv6=false --bgp-graceful-restart=false \
      --service-cluster-ip-range="$SERVICE_CIDR" --health-port=20244 --metrics-port=0
  done
  for i in $(seq 1 "$count"); do
    wait_for "kube-router of $(real_node_name "$i") healthy" 60 \
      nsenter --net="/run/netns/$(real_node_netns "$i")" curl -fsS http://127.0.0.1:20244/healthz
  done
  log "real nodes Ready in $(($(date +%s) - t0))s"
}

real_nodes_ready() {
  local i
  for i in $(seq 1 "$(real_node_count)"); do
    [ "$($KUBECTL get node "$(real_node_name "$i")" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')" = True ] || return 1
  done
}

real_node_processes() { echo kube-router kube-proxy kubelet containerd; }

real_nodes_down() {
  local i name c
  [ -d "$W/nodes" ] || [ -f "$W/host-objects" ] || return 0
  # The nodes stop side by side (each process gets up to 10 s to exit on SIGTERM).
  for i in $(seq 1 "$(real_node_count)"); do
    (
      name=$(real_node_name "$i")
      for c in $(real_node_processes); do stop_pid "$name-$c"; done
      kill_cgroup_tree "$(real_node_cgroup "$i")"
    ) &
  done
  wait
  stop_pid apiserver-forwarder
  undo_host_objects
}

undo_host_objects() {
  [ -f "$W/host-objects" ] || return 0
  local kind what
  tac "$W/host-objects" | while read -r kind what; do
    case $kind in
      mount) umount "$what" 2>/dev/null || umount -l "$what" 2>/dev/null || true ;;
      cgroup) kill_cgroup_tree "$what"; remove_cgroup_tree "$what" ;;
      netns) ip netns del "$what" 2>/dev/null || true ;;
    esac
  done
  rm -f "$W/host-objects"
}

# The API server listens on 127.0.0.1 only; the nodes reach it on the host end of the hub link.
start_apiserver_forwarder() {
  start_proc apiserver-forwarder socat "TCP-LISTEN:$APISERVER_PORT,bind=$HOST_IP,fork,reuseaddr" "TCP:127.0.0.1:$APISERVER_PORT"
  wait_for "the API server forwarder" 20 curl -fsSk "https://$HOST_IP:$APISERVER_PORT/readyz" --cacert "$PKI/ca.crt" \
    --cert "$PKI/admin.crt" --key "$PKI/admin.key"
}

# ---------------------------------------------------------------------------------------------
# Cluster add-ons of the real nodes: CoreDNS behind the kube-dns Service (the kubelets'
# clusterDNS), and a MutatingAdmissionPolicy that puts the pods of chosen namespaces on the
# real nodes (tests bind it to their namespaces, see tests/common).

real_node_addons() {
  local replicas=2
  [ "$(real_node_count)" -ge 2 ] || replicas=1
  $KUBECTL apply --server-side -f - >/dev/null <<EOM
apiVersion: admissionregistration.k8s.io/v1beta1
kind: MutatingAdmissionPolicy
metadata:
  name: resilient-dev-real-nodes
spec:
  # Bound per namespace by MutatingAdmissionPolicyBindings (tests create them).
  matchConstraints:
    resourceRules:
    - {apiGroups: [""], apiVersions: [v1], operations: [CREATE], resources: [pods]}
  failurePolicy: Fail
  reinvocationPolicy: Never
  mutations:
  - patchType: JSONPatch
    jsonPatch:
      expression: >
        (has(object.spec.tolerations) ?
          [JSONPatch{op: "add", path: "/spec/tolerations/-",
                     value: Object.spec.tolerations{key: "$REAL_TAINT", operator: "Exists", effect: "NoSchedule"}}] :
          [JSONPatch{op: "add", path: "/spec/tolerations",
                     value: [Object.spec.tolerations{key: "$REAL_TAINT", operator: "Exists", effect: "NoSchedule"}]}]) +
        (has(object.spec.nodeSelector) ?
          [JSONPatch{op: "add", path: "/spec/nodeSelector/" + jsonpatch.escapeKey("$REAL_TAINT"), value: "true"}] :
          [JSONPatch{op: "add", path: "/spec/nodeSelector", value: {"$REAL_TAINT": "true"}}])
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: coredns, namespace: kube-system}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: "system:coredns"}
rules:
- {apiGroups: [""], resources: [endpoints, services, pods, namespaces], verbs: [list, watch]}
- {apiGroups: [discovery.k8s.io], resources: [endpointslices], verbs: [list, watch]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "system:coredns"}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "system:coredns"}
subjects: [{kind: ServiceAccount, name: coredns, namespace: kube-system}]
---
apiVersion: v1
kind: ConfigMap
metadata: {name: coredns, namespace: kube-system}
data:
  # Cluster names only: nothing is forwarded off the machine.
  Corefile: |
    .:53 {
        errors
        health :8080
        ready :8181
        kubernetes cluster.local in-addr.arpa ip6.arpa {
            pods insecure
            fallthrough in-addr.arpa ip6.arpa
            ttl 30
        }
        cache 30
        loadbalance
    }
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: coredns, namespace: kube-system, labels: {k8s-app: kube-dns}}
spec:
  replicas: $replicas
  selector: {matchLabels: {k8s-app: kube-dns}}
  template:
    metadata: {labels: {k8s-app: kube-dns}}
    spec:
      serviceAccountName: coredns
      dnsPolicy: Default
      nodeSelector: {$REAL_TAINT: "true"}
      tolerations:
      - {key: $REAL_TAINT, operator: Exists, effect: NoSchedule}
      topologySpreadConstraints:
      - {maxSkew: 1, topologyKey: kubernetes.io/hostname, whenUnsatisfiable: DoNotSchedule, labelSelector: {matchLabels: {k8s-app: kube-dns}}}
      containers:
      - name: coredns
        image: $COREDNS_IMAGE
        args: [-conf, /etc/coredns/Corefile]
        ports:
        - {name: dns, containerPort: 53, protocol: UDP}
        - {name: dns-tcp, containerPort: 53, protocol: TCP}
        readinessProbe: {httpGet: {path: /ready, port: 8181}, periodSeconds: 2}
        livenessProbe: {httpGet: {path: /health, port: 8080}}
        resources: {requests: {cpu: 10m, memory: 32Mi}, limits: {memory: 128Mi}}
        securityContext:
          allowPrivilegeEscalation: false
          readOnlyRootFilesystem: true
          capabilities: {drop: [ALL], add: [NET_BIND_SERVICE]}
        volumeMounts: [{name: config, mountPath: /etc/coredns}]
      volumes: [{name: config, configMap: {name: coredns}}]
---
apiVersion: v1
kind: Service
metadata: {name: kube-dns, namespace: kube-system, labels: {k8s-app: kube-dns}}
spec:
  clusterIP: $CLUSTER_DNS
  selector: {k8s-app: kube-dns}
  ports:
  - {name: dns, port: 53, protocol: UDP}
  - {name: dns-tcp, port: 53, protocol: TCP}
EOM
}

# ---------------------------------------------------------------------------------------------
# The operator's image, from a built binary: the binary (debug symbols stripped) and the shared
# libraries it links (glibc of this machine), user 65532, entrypoint and command as in the
# Dockerfile. Named as config/manager names it, so `kubectl apply -k config/default` runs it.
operator_image() { # binary
  local bin=$1 image tmp lib args=() out
  [ -x "$bin" ] || die "no operator binary at $bin (cargo build first)"
  image=$(sed -n 's/^ *image: *\([^ ]*resilient-operator[^ ]*\)$/\1/p' "$ROOT/config/manager/manager.yaml" | head -1)
  [ -n "$image" ] || die "no operator image in config/manager/manager.yaml"
  tmp=$(mktemp -d)
  strip -o "$tmp/resilient-operator" "$bin" 2>/dev/null || cp "$bin" "$tmp/resilient-operator"
  for lib in $(ldd "$bin" | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}'); do
    args+=(-file "$lib=$lib:0755")
  done
  mkdir -p "$W/images"
  out=$W/images/operator.tar
  "$(tool_bin_dir images)/ociimage" -o "$out" -name "$image" -user 65532:65532 -entrypoint /resilient-operator \
    -cmd "run --metrics-address=0.0.0.0:8080 --log-format=json --leader-elect" \
    -file "/resilient-operator=$tmp/resilient-operator" "${args[@]}" -dir /tmp:1777 -expose 8080/tcp
  rm -rf "$tmp"
  load_image "$out"
  echo "$image"
}
