#!/usr/bin/env bash
# Builds the Kubernetes control plane the tests run against (kube-apiserver,
# kube-controller-manager, kube-scheduler, kubectl) and etcd, all of ONE pinned release, from the Go module proxy.
# The binaries are cached under ~/.cache/kubeos/kubernetes-<version>/bin, so a second run is a
# no-op (and a run after a tool was added builds only that one). Prints that bin directory on its last line.
#
# k8s.io/kubernetes publishes its go.mod with its staging modules (k8s.io/api and friends) required
# at v0.0.0 and without the replace directives its own repository uses, so it cannot be built
# directly with `go install`: a small wrapper module adds `replace k8s.io/api => k8s.io/api v0.X.Y`
# for each staging module and builds the commands from there. etcd's own modules carry replace
# directives too; it builds from the same wrapper, at the version Kubernetes requires.
set -euo pipefail

KUBERNETES_VERSION="${KUBEOS_KUBERNETES_VERSION:-v1.36.3}"
staging_version="v0${KUBERNETES_VERSION#v1}"
cache_root="${KUBEOS_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/kubeos}"
dest="$cache_root/kubernetes-$KUBERNETES_VERSION"
bin="$dest/bin"
tools=(kube-apiserver kube-controller-manager kube-scheduler kubectl etcd)

have_all() {
  for tool in "${tools[@]}"; do [ -x "$bin/$tool" ] || return 1; done
}

if have_all; then
  echo "install-kubernetes: $KUBERNETES_VERSION already built in $bin" >&2
  echo "$bin"
  exit 0
fi

go_cmd="$(command -v go || true)"
[ -n "$go_cmd" ] || go_cmd=/usr/local/go/bin/go
if [ ! -x "$go_cmd" ]; then
  echo "install-kubernetes: Go is needed to build Kubernetes $KUBERNETES_VERSION (looked on PATH and at /usr/local/go/bin/go)" >&2
  exit 1
fi

export GOFLAGS=-mod=mod GOTOOLCHAIN=local CGO_ENABLED=0
started=$SECONDS
mkdir -p "$cache_root"
work="$(mktemp -d "$cache_root/build-XXXXXX")"
trap 'rm -rf "$work"' EXIT
cd "$work"

echo "install-kubernetes: building Kubernetes $KUBERNETES_VERSION (a cold build takes several minutes)" >&2
"$go_cmd" mod download -json "k8s.io/kubernetes@$KUBERNETES_VERSION" >kubernetes.json
kube_mod="$("$go_cmd" env GOMODCACHE)/cache/download/k8s.io/kubernetes/@v/$KUBERNETES_VERSION.mod"

{
  echo "module kubeos.local/kubernetes-build"
  echo
  echo "go $(sed -n 's/^go //p' "$kube_mod")"
  echo
  echo "require k8s.io/kubernetes $KUBERNETES_VERSION"
  echo
  # Staging modules are the ones the published go.mod requires at exactly v0.0.0.
  awk '$2 == "v0.0.0" && $1 ~ /^k8s\.io\// { print "replace " $1 " => " $1 " '"$staging_version"'" }' "$kube_mod"
} >go.mod
cat >tools.go <<'GO'
//go:build tools

package tools
GO

"$go_cmd" mod download k8s.io/kubernetes
etcd_version="$(awk '$1 == "go.etcd.io/etcd/server/v3" { print $2 }' "$kube_mod")"
"$go_cmd" get "k8s.io/kubernetes/cmd/kube-apiserver@$KUBERNETES_VERSION" \
  "k8s.io/kubernetes/cmd/kube-controller-manager@$KUBERNETES_VERSION" \
  "k8s.io/kubernetes/cmd/kube-scheduler@$KUBERNETES_VERSION" \
  "k8s.io/kubernetes/cmd/kubectl@$KUBERNETES_VERSION" \
  "go.etcd.io/etcd/server/v3@$etcd_version" >&2

minor="${KUBERNETES_VERSION#v1.}"
minor="${minor%%.*}"
version_flags=""
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  version_flags+=" -X $pkg.gitVersion=$KUBERNETES_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
  version_flags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
done

mkdir -p "$work/bin" "$bin"
for cmd in "${tools[@]}"; do
  [ -x "$bin/$cmd" ] && continue
  if [ "$cmd" = etcd ]; then
    echo "install-kubernetes: go build etcd $etcd_version" >&2
    "$go_cmd" build -trimpath -ldflags "-s -w" -o "$work/bin/etcd" "go.etcd.io/etcd/server/v3"
  else
    echo "install-kubernetes: go build $cmd" >&2
    "$go_cmd" build -trimpath -ldflags "-s -w$version_flags" -o "$work/bin/$cmd" "k8s.io/kubernetes/cmd/$cmd"
  fi
  # one rename per tool: an interrupted run leaves whole binaries or none
  mv "$work/bin/$cmd" "$bin/$cmd"
done
echo "install-kubernetes: built Kubernetes $KUBERNETES_VERSION and etcd $etcd_version in $((SECONDS - started)) s" >&2
echo "$bin"
