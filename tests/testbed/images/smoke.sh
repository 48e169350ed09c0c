#!/usr/bin/env bash
# Proves the archives scripts/images.sh wrote: imports each into a throwaway containerd (its
# own root, state and socket in a temporary folder, no CRI plugin) and runs each image once
# with `ctr run --rm`; the bootstrap-controller step is played as the operator's Pods do it
# (the operator image copies pgml-instance into a shared folder, the PostgreSQL image runs it).
#
#   tests/testbed/images/smoke.sh [OUT_DIR]   # default: the cache's images/out
#
# Needs root, containerd, ctr and runc. Stops its containerd and removes its folder on exit.
set -euo pipefail

out="${1:-${PGML_CACHE:-$HOME/.cache/pgml-operator}/images/out}"
[[ -f "$out/images.txt" ]] || { echo "smoke: no $out/images.txt (run scripts/images.sh)" >&2; exit 1; }

tmp="$(mktemp -d /tmp/pgml-images-smoke.XXXXXX)"
sock="$tmp/containerd.sock"
cat >"$tmp/config.toml" <<EOF
version = 2
root = "$tmp/root"
state = "$tmp/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$sock"
[ttrpc]
  address = "$tmp/containerd-ttrpc.sock"
[debug]
  address = ""
[metrics]
  address = ""
EOF
containerd --config "$tmp/config.toml" >"$tmp/containerd.log" 2>&1 &
pid=$!
ctr=(ctr --address "$sock" --namespace k8s.io)

cleanup() {
  local c
  for c in $("${ctr[@]}" containers ls -q 2>/dev/null); do
    "${ctr[@]}" task kill -s SIGKILL "$c" >/dev/null 2>&1 || true
    "${ctr[@]}" task delete "$c" >/dev/null 2>&1 || true
    "${ctr[@]}" containers rm "$c" >/dev/null 2>&1 || true
  done
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  # Snapshots containerd left mounted, innermost first.
  local mounts
  mounts="$(grep -o " $tmp/[^ ]*" /proc/self/mounts | sort -r || true)"
  for m in $mounts; do umount "$m" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT

for _ in $(seq 50); do
  "${ctr[@]}" version >/dev/null 2>&1 && break
  sleep 0.2
done
"${ctr[@]}" version >/dev/null || { cat "$tmp/containerd.log" >&2; exit 1; }

fail=0
check() { # description, then the command; its output is shown
  local what="$1"
  shift
  if got="$("$@" 2>&1)"; then
    printf 'ok    %-44s %s\n' "$what" "$(tr '\n' ' ' <<<"$got" | cut -c1-100)"
  else
    printf 'FAIL  %-44s %s\n' "$what" "$(tr '\n' ' ' <<<"$got" | cut -c1-300)"
    fail=1
  fi
}
n=0
run() { # image, then the command
  local ref="$1"
  shift
  n=$((n + 1))
  "${ctr[@]}" run --rm "$ref" "smoke-$n-$RANDOM" "$@"
}

while read -r ref file; do
  check "import $(basename "$file")" "${ctr[@]}" images import "$file"
  check "listed $ref" sh -c '"$@" | grep -qx "$0" && echo "$0"' "$ref" "${ctr[@]}" images ls -q
done <"$out/images.txt"

check "operator: pgml-operator --version" run localhost/pgml-operator:dev /usr/local/bin/pgml-operator --version
check "operator: runs as 65532:65532" sh -c '[ "$("$@")" = "65532:65532" ] && echo 65532:65532' \
  _ "${ctr[@]}" run --rm localhost/pgml-operator:dev smoke-id sh -c 'echo "$(id -u):$(id -g)"'
check "agent: pgml-agent --version" run localhost/pgml-agent:dev /usr/local/bin/pgml-agent --version
check "agent: tools" run localhost/pgml-agent:dev sh -euc \
  'for t in blkid fsfreeze nsenter host-zpool host-zfs pgml-freeze-guard; do command -v "$t"; done
   command -v zpool zfs 2>/dev/null || echo "(no bundled zpool/zfs: ZFS_TOOLS empty)"'
check "postgres: postgres --version" run localhost/pgml-postgres:15 /usr/lib/postgresql/15/bin/postgres --version
check "postgres: pgbackrest version" run localhost/pgml-postgres:15 pgbackrest version
check "postgres: id postgres" run localhost/pgml-postgres:15 id postgres

# The Pod's bootstrap-controller init container, then pgml-instance in the PostgreSQL image.
mkdir -m 1777 "$tmp/controller"
bind="type=bind,src=$tmp/controller,dst=/controller,options=rbind:rw"
check "operator: cp pgml-instance /controller" \
  "${ctr[@]}" run --rm --mount "$bind" localhost/pgml-operator:dev smoke-cp \
  cp /usr/local/bin/pgml-instance /controller/pgml-instance
check "postgres: /controller/pgml-instance --version" \
  "${ctr[@]}" run --rm --mount "$bind" localhost/pgml-postgres:15 smoke-instance \
  /controller/pgml-instance --version
check "postgres: initdb, start, query as postgres" \
  "${ctr[@]}" run --rm localhost/pgml-postgres:15 smoke-pg sh -euc '
    bin=/usr/lib/postgresql/15/bin
    install -d -o postgres -g postgres /tmp/pg
    runuser -u postgres -- $bin/initdb -D /tmp/pg/data -U postgres -E UTF8 >/dev/null 2>&1
    runuser -u postgres -- $bin/pg_ctl -D /tmp/pg/data -o "-k /tmp/pg -c listen_addresses=" -w start >/dev/null
    psql -h /tmp/pg -U postgres -Atc "select version()"
    runuser -u postgres -- $bin/pg_ctl -D /tmp/pg/data -w stop >/dev/null'

# pause: runs until SIGTERM, then ends.
pause_check() {
  "${ctr[@]}" run -d localhost/pause:dev smoke-pause >/dev/null
  sleep 0.5
  "${ctr[@]}" task ls | grep -E '^smoke-pause .*RUNNING' >/dev/null || { echo "not running"; return 1; }
  "${ctr[@]}" task kill -s SIGTERM smoke-pause
  for _ in $(seq 25); do
    if "${ctr[@]}" task ls | grep -E '^smoke-pause .*STOPPED' >/dev/null; then
      "${ctr[@]}" task delete smoke-pause >/dev/null
      "${ctr[@]}" containers rm smoke-pause
      echo "ran until SIGTERM"
      return 0
    fi
    sleep 0.2
  done
  echo "still running after SIGTERM"
  return 1
}
check "pause: sleeps, ends on SIGTERM" pause_check

if ((fail)); then
  echo "smoke: FAILED" >&2
  exit 1
fi
echo "smoke: all images imported and ran"
