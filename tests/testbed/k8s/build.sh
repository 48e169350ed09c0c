#!/usr/bin/env bash
# Builds the test bed's Kubernetes control plane (kube-apiserver,
# kube-controller-manager, kubectl, embedded etcd) from the Go modules, as one
# multi-call binary `pgml-k8s` with symlinks named after each command.
#
#   tests/testbed/k8s/build.sh        # prints the bin dir on its last line
#
# Output: ${PGML_CACHE:-$HOME/.cache/pgml-operator}/k8s/v1.35.4/bin/
# Idempotent: skipped when the binaries are there and the hash of go.mod, go.sum,
# main.go and this script matches the stamp file written by the last build.
# Uses the default GOMODCACHE / GOCACHE, which persist on the project's machines,
# so a rebuild after a cache hit costs seconds, a cold one several minutes
# (download ~1 GB of modules, compile, link with a few GB of RAM).
#
# Module checksums: go.sum is committed and covers every module the build needs,
# so the build itself never consults the checksum database. The default GOSUMDB
# was reachable when go.sum was made; if it is not on some machine, only a
# go.mod change (`go mod tidy`) needs GONOSUMDB/GOSUMDB=off for this module.
set -euo pipefail

KUBE_VERSION=v1.35.4
KUBE_MAJOR=1
KUBE_MINOR=35
COMMANDS=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl etcd)

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="${PGML_CACHE:-$HOME/.cache/pgml-operator}/k8s/${KUBE_VERSION}/bin"
stamp="${out}/.stamp"
mkdir -p "$out"

hash="$(cd "$here" && cat go.mod go.sum main.go build.sh | sha256sum | cut -d' ' -f1)"

up_to_date() {
  [[ -f "$stamp" && "$(cat "$stamp")" == "$hash" && -x "$out/pgml-k8s" ]] || return 1
  local c
  for c in "${COMMANDS[@]}"; do [[ -x "$out/$c" ]] || return 1; done
}

if up_to_date; then
  echo "k8s ${KUBE_VERSION}: up to date" >&2
  echo "$out"
  exit 0
fi

# One build at a time (the Makefile and CI may race); re-check after the lock.
exec 9>"${out}/.lock"
flock 9
if up_to_date; then
  echo "k8s ${KUBE_VERSION}: up to date" >&2
  echo "$out"
  exit 0
fi

command -v go >/dev/null || { echo "build.sh: go not found in PATH" >&2; exit 1; }

ldflags="-s -w"
# Version stamping as upstream's hack/lib/version.sh does, else it reports v0.0.0.
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags+=" -X ${pkg}.gitVersion=${KUBE_VERSION}"
  ldflags+=" -X ${pkg}.gitMajor=${KUBE_MAJOR}"
  ldflags+=" -X ${pkg}.gitMinor=${KUBE_MINOR}"
  ldflags+=" -X ${pkg}.gitTreeState=clean"
done

echo "k8s ${KUBE_VERSION}: building into $out (cold: several minutes)" >&2
start=$(date +%s)
tmp="$out/.pgml-k8s.tmp.$$"
trap 'rm -f "$tmp"' EXIT
(
  cd "$here"
  CGO_ENABLED=0 go build \
    -trimpath -buildvcs=false \
    -tags selinux,notest \
    -ldflags "$ldflags" \
    -o "$tmp" .
)
mv -f "$tmp" "$out/pgml-k8s"
for c in "${COMMANDS[@]}"; do
  ln -sfn pgml-k8s "$out/$c"
done
echo "$hash" > "$stamp"
echo "k8s ${KUBE_VERSION}: built in $(( $(date +%s) - start ))s" >&2
echo "$out"
