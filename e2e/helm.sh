# Helm, built from Go modules (e2e/tools/helm) into the same cache as the control plane, under a
# key of its own: the Helm version, the Go version and a hash of the tool module. A cached binary is
# never rebuilt; a bump of e2e/tools/helm (or of Go) builds a new one. Sourced by e2e/cluster.sh
# (which defines log, die, go_version, cache_root and TOOLS); `e2e/cluster.sh env` prints
# `export HELM=...`.

HELM_VERSION=v3.22.0

helm_bin_dir() {
  local sum
  sum=$(cat "$TOOLS/helm/go.mod" "$TOOLS/helm/go.sum" | sha256sum | cut -c1-12)
  echo "$(cache_root)/bin/helm-${HELM_VERSION}_$(go_version)_${sum}"
}

build_helm() {
  local dir client_go minor ldf t0
  dir=$(helm_bin_dir)
  [ -x "$dir/helm" ] && return 0
  log "building helm $HELM_VERSION into $dir (about 3 minutes cold on 2 cores; cached afterwards)"
  t0=$(date +%s)
  # Helm's own Makefile stamps its version and the Kubernetes version of the client-go it links
  # (the default for `helm template` and `helm lint`'s deprecation checks).
  client_go=$(cd "$TOOLS/helm" && go list -m -f '{{.Version}}' k8s.io/client-go)
  minor=$(echo "$client_go" | cut -d. -f2)
  ldf="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
  ldf="$ldf -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=$minor"
  ldf="$ldf -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$minor"
  mkdir -p "$dir.partial"
  (cd "$TOOLS/helm" && go mod download && go build -trimpath -ldflags "$ldf" -o "$dir.partial/helm" helm.sh/helm/v3/cmd/helm)
  mkdir -p "$dir"
  mv "$dir.partial/helm" "$dir/helm"
  rmdir "$dir.partial" 2>/dev/null || true
  log "helm built in $(($(date +%s) - t0))s"
}
