#!/usr/bin/env bash
# Builds Helm v3 (helm.sh/helm/v3, cmd/helm) from the Go module proxy, for the chart tests
# (tests/e2e/tests/chart.rs: helm lint, helm template) and anyone who wants to try the chart.
#
#   tests/testbed/helm/build.sh          # builds if missing; prints the bin dir on its last line
#   tests/testbed/helm/build.sh --print  # builds if missing; prints the helm binary's path
#
# Output: ${PGML_CACHE:-$HOME/.cache/pgml-operator}/helm/<VERSION>/helm
# The version is in ./VERSION. Idempotent: skipped when the binary is there and the hash of
# VERSION and this script matches the stamp written by the last build.
#
# Helm is its own module with no replace directives, so `go install <pkg>@<version>` builds
# it with the versions (and go.sum) of its release. Uses the default GOMODCACHE / GOCACHE;
# module checksums are verified against the default GOSUMDB, as for any `go install`.
set -euo pipefail

print_binary=0
case "${1:-}" in
  --print) print_binary=1 ;;
  "") ;;
  *) echo "usage: $0 [--print]" >&2; exit 2 ;;
esac

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
HELM_VERSION="$(tr -d '[:space:]' < "$here/VERSION")"
out="${PGML_CACHE:-$HOME/.cache/pgml-operator}/helm/${HELM_VERSION}"
stamp="${out}/.stamp"
mkdir -p "$out"

hash="$(cat "$here/VERSION" "$here/build.sh" | sha256sum | cut -d' ' -f1)"

up_to_date() {
  [[ -f "$stamp" && "$(cat "$stamp")" == "$hash" && -x "$out/helm" ]]
}

done_() {
  if [[ $print_binary == 1 ]]; then echo "$out/helm"; else echo "$out"; fi
  exit 0
}

if up_to_date; then
  echo "helm ${HELM_VERSION}: up to date" >&2
  done_
fi

# One build at a time (the Makefile, CI and tests may race); re-check after the lock.
exec 9>"${out}/.lock"
flock 9
if up_to_date; then
  echo "helm ${HELM_VERSION}: up to date" >&2
  done_
fi

command -v go >/dev/null || { echo "helm/build.sh: go not found in PATH" >&2; exit 1; }

echo "helm ${HELM_VERSION}: building into $out (cold: a few minutes)" >&2
start=$(date +%s)
gobin="$out/.gobin.$$"
trap 'rm -rf "$gobin"' EXIT
mkdir -p "$gobin"
# From / with GOWORK=off and GOFLAGS=-mod=mod: no go.mod or go.work of the caller's can get
# in the way. The version stamped into `helm version` is set the way helm's Makefile does.
(
  cd /
  GOWORK=off GOFLAGS=-mod=mod GOBIN="$gobin" CGO_ENABLED=0 go install \
    -trimpath \
    -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=${HELM_VERSION}" \
    "helm.sh/helm/v3/cmd/helm@${HELM_VERSION}"
)
"$gobin/helm" version --short >&2
mv -f "$gobin/helm" "$out/helm"
echo "$hash" > "$stamp"
echo "helm ${HELM_VERSION}: built in $(( $(date +%s) - start ))s" >&2
done_
