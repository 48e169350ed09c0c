#!/usr/bin/env bash
# Builds kwok (sigs.k8s.io/kwok, the `kwok` controller, cmd/kwok) from the Go module proxy.
# The sandbox runs it to play the kubelet on the simulated nodes: Pods bound to them
# become Running/Ready with a pod IP, deleted Pods go away, the nodes keep heartbeating.
#
#   tests/testbed/kwok/build.sh        # prints the bin dir on its last line
#
# Output, in ${PGML_CACHE:-$HOME/.cache/pgml-operator}/kwok/<VERSION>/bin/:
#   kwok          the controller
#   stages.yaml   kwok's default Stages as kwokctl installs them (node-initialize,
#                 node-heartbeat-with-lease, pod-ready, pod-complete, pod-delete), taken
#                 from the same module release; the kwok binary alone has none built in
# The version is in ./VERSION (the sandbox reads it too, to find the binary).
# Idempotent: skipped when both files are there and the hash of VERSION and this script
# matches the stamp written by the last build.
#
# kwok is its own module with no replace directives, so `go install <pkg>@<version>` builds
# it with the versions (and go.sum) of its release, apart from the Kubernetes module
# (tests/testbed/k8s), whose versions it does not touch. The proxy serves v0.6.1, v0.7.0 and
# v0.8.0; v0.8.0 is built with client-go v0.36.1 and needs Go >= 1.26.0. A client one minor
# newer than kube-apiserver v1.35 is within Kubernetes' version skew, and kwok uses only
# stable core/v1 and coordination/v1 APIs (tests/e2e/tests/kwok.rs checks what we rely on).
# Uses the default GOMODCACHE / GOCACHE (persistent on the project's machines): with both
# empty the build took 4m15s on the 2-core machine (~330 MB of modules, ~800 MB of build
# cache), 2 minutes with the caches the Kubernetes build leaves, seconds when only this
# script changed; an up-to-date check takes milliseconds. Module checksums are verified
# against the default GOSUMDB, as for any `go install`.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
KWOK_VERSION="$(tr -d '[:space:]' < "$here/VERSION")"
out="${PGML_CACHE:-$HOME/.cache/pgml-operator}/kwok/${KWOK_VERSION}/bin"
stamp="${out}/.stamp"
mkdir -p "$out"

hash="$(cat "$here/VERSION" "$here/build.sh" | sha256sum | cut -d' ' -f1)"

up_to_date() {
  [[ -f "$stamp" && "$(cat "$stamp")" == "$hash" && -x "$out/kwok" && -s "$out/stages.yaml" ]]
}

if up_to_date; then
  echo "kwok ${KWOK_VERSION}: up to date" >&2
  echo "$out"
  exit 0
fi

# One build at a time (the Makefile and CI may race); re-check after the lock.
exec 9>"${out}/.lock"
flock 9
if up_to_date; then
  echo "kwok ${KWOK_VERSION}: up to date" >&2
  echo "$out"
  exit 0
fi

command -v go >/dev/null || { echo "kwok/build.sh: go not found in PATH" >&2; exit 1; }

echo "kwok ${KWOK_VERSION}: building into $out (cold: about 4 minutes)" >&2
start=$(date +%s)
gobin="$out/.gobin.$$"
trap 'rm -rf "$gobin"' EXIT
mkdir -p "$gobin"
# From / with GOWORK=off: no go.mod or go.work of the caller's can get in the way.
(
  cd /
  GOWORK=off GOBIN="$gobin" CGO_ENABLED=0 go install \
    -trimpath -ldflags "-s -w" \
    "sigs.k8s.io/kwok/cmd/kwok@${KWOK_VERSION}"
)
# The default Stages, from the module's kustomize/stage/ (already in GOMODCACHE now).
moddir="$(cd / && GOWORK=off go mod download -json "sigs.k8s.io/kwok@${KWOK_VERSION}" \
  | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
[[ -d "$moddir/kustomize/stage" ]] || { echo "kwok/build.sh: no kustomize/stage in '$moddir'" >&2; exit 1; }
{
  sep=""
  for f in node/fast/node-initialize.yaml \
           node/heartbeat-with-lease/node-heartbeat-with-lease.yaml \
           pod/fast/pod-ready.yaml pod/fast/pod-complete.yaml pod/fast/pod-delete.yaml; do
    printf '%s# sigs.k8s.io/kwok@%s kustomize/stage/%s\n' "$sep" "$KWOK_VERSION" "$f"
    cat "$moddir/kustomize/stage/$f"
    sep=$'---\n'
  done
} > "$gobin/stages.yaml"
mv -f "$gobin/stages.yaml" "$out/stages.yaml"
mv -f "$gobin/kwok" "$out/kwok"
echo "$hash" > "$stamp"
echo "kwok ${KWOK_VERSION}: built in $(( $(date +%s) - start ))s" >&2
echo "$out"
