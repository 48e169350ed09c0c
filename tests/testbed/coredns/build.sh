#!/usr/bin/env bash
# Builds CoreDNS (github.com/coredns/coredns, the `coredns` server) from the Go module proxy.
# The sandbox runs it as a host process on the nodes' bridge-facing address, answering
# cluster.local from the kube-apiserver (the `kubernetes` plugin); the kubelets'
# clusterDNS points at it. See README.md for the command line and the Corefile.
#
#   tests/testbed/coredns/build.sh        # prints the bin dir on its last line
#
# Output: ${PGML_CACHE:-$HOME/.cache/pgml-operator}/coredns/<VERSION>/bin/coredns
# The version is in ./VERSION (the sandbox reads it too, to find the binary).
# Idempotent: skipped when the binary is there and the hash of VERSION and this script
# matches the stamp written by the last build.
#
# CoreDNS is its own module with no replace directives, so `go install <pkg>@<version>`
# builds it with the versions (and go.sum) of its release, with upstream's full plugin set
# (core/plugin/zplugin.go); no wrapper module is needed. v1.15.0 needs Go >= 1.26.0 and is
# built with client-go v0.37.1: two minors newer than kube-apiserver v1.35, outside the
# documented client skew, but the `kubernetes` plugin only lists and watches GA APIs
# (core/v1 Services and Namespaces, discovery.k8s.io/v1 EndpointSlices; Pods only with
# `pods verified`).
# Version stamping: coremain.CoreVersion ("1.15.0") is a constant of the release; the only
# -ldflags variable upstream's Makefile sets is coremain.GitCommit (a commit hash there,
# the module version here, as the proxy does not give the commit). `coredns -version`:
#   CoreDNS-1.15.0
#   linux/amd64, go1.26.8, v1.15.0
# Uses the default GOMODCACHE / GOCACHE (persistent on the project's machines): with both
# empty the build took 3m52s on the 2-core machine (~1.6 GB of modules, ~1.1 GB of build
# cache, a 79 MB binary), 4m23s with the caches the Kubernetes and kwok builds leave (they
# hold none of CoreDNS's module versions), 5s when only this script changed; an up-to-date
# check takes 20 ms. The build is reproducible (same bytes from empty and warm caches).
# A wrapper module with only the plugins the sandbox uses (kubernetes, errors, health,
# ready, cache, log, loop, forward, hosts, file, bind) was measured at 3m07s cold, 55 MB:
# client-go dominates either way, so the upstream module is built as released.
# Module checksums are verified against the default GOSUMDB, as for any `go install`.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
COREDNS_VERSION="$(tr -d '[:space:]' < "$here/VERSION")"
out="${PGML_CACHE:-$HOME/.cache/pgml-operator}/coredns/${COREDNS_VERSION}/bin"
stamp="${out}/.stamp"
mkdir -p "$out"

hash="$(cat "$here/VERSION" "$here/build.sh" | sha256sum | cut -d' ' -f1)"

up_to_date() {
  [[ -f "$stamp" && "$(cat "$stamp")" == "$hash" && -x "$out/coredns" ]]
}

if up_to_date; then
  echo "coredns ${COREDNS_VERSION}: up to date" >&2
  echo "$out"
  exit 0
fi

# One build at a time (the Makefile and CI may race); re-check after the lock.
exec 9>"${out}/.lock"
flock 9
if up_to_date; then
  echo "coredns ${COREDNS_VERSION}: up to date" >&2
  echo "$out"
  exit 0
fi

command -v go >/dev/null || { echo "coredns/build.sh: go not found in PATH" >&2; exit 1; }

echo "coredns ${COREDNS_VERSION}: building into $out (cold: about 4 minutes)" >&2
start=$(date +%s)
gobin="$out/.gobin.$$"
trap 'rm -rf "$gobin"' EXIT
mkdir -p "$gobin"
# From / with GOWORK=off: no go.mod or go.work of the caller's can get in the way.
(
  cd /
  GOWORK=off GOBIN="$gobin" CGO_ENABLED=0 go install \
    -trimpath -buildvcs=false \
    -ldflags "-s -w -X github.com/coredns/coredns/coremain.GitCommit=${COREDNS_VERSION}" \
    "github.com/coredns/coredns@${COREDNS_VERSION}"
)
mv -f "$gobin/coredns" "$out/coredns"
echo "$hash" > "$stamp"
echo "coredns ${COREDNS_VERSION}: built in $(( $(date +%s) - start ))s" >&2
echo "$out"
