#!/usr/bin/env bash
# Builds the test bed's container images with no registry, from Debian's packages:
#
#   localhost/pgml-operator:dev   docker/operator.Dockerfile
#   localhost/pgml-agent:dev      docker/agent.Dockerfile
#   localhost/pgml-postgres:15    tests/testbed/images/postgres.Dockerfile (PostgresML's stand-in)
#   localhost/pause:dev           tests/testbed/images/pause.Dockerfile (containerd's sandbox_image)
#
#   scripts/images.sh [--bin-dir DIR] [--refresh-base]   # prints the output dir on its last line
#
# Output: ${PGML_CACHE:-$HOME/.cache/pgml-operator}/images/out/<name>.tar, one archive per image
# that `ctr -n k8s.io images import FILE` tags localhost/<name>:<tag> (its name is in the
# archive); out/images.txt lists "<image> <file>" a line. A docker-archive (uncompressed
# layers) by default; PGML_IMAGES_FORMAT=oci-archive: an OCI image layout in the tar (gzipped
# layers: slower to write and to unpack, a third of the size).
#
# How: the base is `debootstrap --variant=minbase bookworm` from deb.debian.org, given the
# apt/dpkg settings of Debian's own container images (deb822 sources with the updates and
# security suites, no docs/man/locales, no apt caches, policy-rc.d), upgraded, and imported
# into a buildah store in the cache as localhost/debian:bookworm. buildah (Debian 12's, 1.28)
# then builds the Dockerfiles above on it (--build-arg RUNTIME_IMAGE / BASE_IMAGE), the Rust
# stage replaced by localhost/pgml-binaries:dev (--build-arg BINARIES): an image of /out/ with
# the host's binaries, stripped. buildah caches the RUN steps (--layers), so new binaries cost
# a COPY, a commit and an archive.
#
# Binaries: `cargo build --release --locked` of pgml-operator, pgml-instance, pgml-agent and
# pgml-freeze-guard (PGML_IMAGES_PROFILE=debug: the debug build), or, with --bin-dir DIR, the
# ones in DIR and no cargo at all (the test bed: the debug build it already has).
#
# Idempotent: an image is rebuilt when the hash of its inputs (this script, its Dockerfile, the
# base's recipe, its binaries' inode/size/mtime) differs from the stamp beside its archive;
# when none does, "up to date" in some 0.1 s, without the lock. The base is rebuilt when its
# recipe changes, or on --refresh-base (Debian's updates since). One build at a time (flock).
#
# Environment: PGML_CACHE; PGML_IMAGES_PROFILE (release|debug); PGML_IMAGES_FORMAT
# (docker-archive|oci-archive); PGML_IMAGES_ZFS_TOOLS (the agent's bundled ZFS tools: unset,
# the Dockerfile's zfsutils-linux; empty, none, for agent.zfs.tools=host only);
# PGML_IMAGES_STORAGE_DRIVER (overlay|vfs; default overlay where the kernel mounts it here);
# PGML_DEBIAN_MIRROR, PGML_DEBIAN_SECURITY_MIRROR.
# Needs root (debootstrap, buildah's store) and, installed when missing: buildah, debootstrap,
# strip, cc with a static libc (the pause program).
set -euo pipefail

SUITE=bookworm
MIRROR="${PGML_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
SECURITY_MIRROR="${PGML_DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}"
BASE_REF=localhost/debian:bookworm
BINARIES_REF=localhost/pgml-binaries:dev
BINS=(pgml-operator pgml-instance pgml-agent pgml-freeze-guard)
# name, reference, Dockerfile (from the repository root)
IMAGES=(
  "pgml-operator localhost/pgml-operator:dev docker/operator.Dockerfile"
  "pgml-agent localhost/pgml-agent:dev docker/agent.Dockerfile"
  "pgml-postgres localhost/pgml-postgres:15 tests/testbed/images/postgres.Dockerfile"
  "pause localhost/pause:dev tests/testbed/images/pause.Dockerfile"
)

usage() {
  sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'
}

bin_dir=""
refresh=0
while (($#)); do
  case "$1" in
    --bin-dir) [[ $# -ge 2 ]] || { usage >&2; exit 2; }; bin_dir="$2"; shift 2 ;;
    --bin-dir=*) bin_dir="${1#--bin-dir=}"; shift ;;
    --refresh-base) refresh=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) echo "images.sh: unknown argument: $1" >&2; usage >&2; exit 2 ;;
  esac
done

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${PGML_CACHE:-$HOME/.cache/pgml-operator}/images"
out="$cache/out"
logs="$cache/logs"
profile="${PGML_IMAGES_PROFILE:-release}"
# Unset: the Dockerfile's default (zfsutils-linux, as released); set, even empty: that.
zfs_arg=()
if [[ -n "${PGML_IMAGES_ZFS_TOOLS+set}" ]]; then zfs_arg=(--build-arg "ZFS_TOOLS=$PGML_IMAGES_ZFS_TOOLS"); fi
format="${PGML_IMAGES_FORMAT:-docker-archive}"
case "$format" in docker-archive | oci-archive) ;; *) echo "images: PGML_IMAGES_FORMAT is docker-archive or oci-archive" >&2; exit 2 ;; esac
mkdir -p "$out" "$logs" "$cache/debs"

log() { echo "images: $*" >&2; }
die() { echo "images: $*" >&2; exit 1; }

# --- the binaries -------------------------------------------------------------------------

if [[ -z "$bin_dir" ]]; then
  case "$profile" in
    release) profile_flag=(--release) ;;
    debug) profile_flag=() ;;
    *) die "PGML_IMAGES_PROFILE is release or debug, not '$profile'" ;;
  esac
  command -v cargo >/dev/null || die "cargo not found in PATH (or give --bin-dir DIR)"
  cargo=(cargo build "${profile_flag[@]}" --locked
    -p pgml-operator --bin pgml-operator -p pgml-instance --bin pgml-instance
    -p pgml-agent --bin pgml-agent --bin pgml-freeze-guard)
  (cd "$root" && "${cargo[@]}") >&2
  meta="$(cd "$root" && cargo metadata --format-version 1 --no-deps)"
  target="$(grep -o '"target_directory":"[^"]*"' <<<"$meta" | head -n1 | cut -d'"' -f4)"
  [[ -n "$target" ]] || die "cargo metadata gave no target_directory"
  bin_dir="$target/$profile"
fi
bin_dir="$(cd "$bin_dir" && pwd)" || die "no such folder: $bin_dir"
for b in "${BINS[@]}"; do
  [[ -x "$bin_dir/$b" ]] || die "$bin_dir/$b: missing (build it, or give --bin-dir DIR)"
done

# --- what each image is made of -----------------------------------------------------------

sha() { sha256sum | cut -c1-64; }

# The base's recipe: this function's text and the mirrors. Rebuilt when they change, or on
# --refresh-base (the token file's content changes).
build_base() {
  local c m
  c="$(bh from --quiet scratch)"
  m="$(bh mount "$c")"
  log "base: debootstrap --variant=minbase $SUITE (log: $logs/base.log)"
  debootstrap --variant=minbase --cache-dir="$cache/debs" "$SUITE" "$m" "$MIRROR" \
    >"$logs/base.log" 2>&1 || { tail -n 30 "$logs/base.log" >&2; die "debootstrap failed"; }
  # Debian's container images' settings (debuerreotype's minimizing-config and slimify): a
  # deb822 sources file the Dockerfiles edit (the agent's adds contrib), apt caches dropped
  # after each run, no translations, no docs/man/locales, services never started.
  rm -f "$m/etc/apt/sources.list"
  cat >"$m/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $MIRROR
Suites: $SUITE $SUITE-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $SECURITY_MIRROR
Suites: $SUITE-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
  cat >"$m/etc/apt/apt.conf.d/docker-clean" <<'EOF'
# No downloaded packages nor package caches left in image layers.
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
  echo 'Acquire::Languages "none";' >"$m/etc/apt/apt.conf.d/docker-no-languages"
  echo 'Acquire::GzipIndexes "true";' >"$m/etc/apt/apt.conf.d/docker-gzip-indexes"
  echo 'Apt::AutoRemove::SuggestsImportant "false";' >"$m/etc/apt/apt.conf.d/docker-autoremove-suggests"
  echo 'force-unsafe-io' >"$m/etc/dpkg/dpkg.cfg.d/docker-apt-speedup"
  cat >"$m/etc/dpkg/dpkg.cfg.d/docker" <<'EOF'
# Files containers do not need, left out of every package installed (as in debian:*-slim).
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/lintian/overrides/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/man/*
EOF
  printf '#!/bin/sh\n# Services are not started by package installs in an image build.\nexit 101\n' \
    >"$m/usr/sbin/policy-rc.d"
  chmod 0755 "$m/usr/sbin/policy-rc.d"
  find "$m/usr/share/doc" -mindepth 1 ! -type d ! -name copyright -delete
  find "$m/usr/share/doc" -mindepth 1 -type d -empty -delete
  rm -rf "$m"/usr/share/{groff,info,linda,lintian/overrides,locale,man}/*
  log "base: apt-get upgrade ($SUITE-updates, $SUITE-security)"
  bh run --isolation chroot --network host "$c" -- sh -euc '
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get upgrade -y -qq -o Dpkg::Use-Pty=0
    apt-get clean
  ' >>"$logs/base.log" 2>&1 || { tail -n 30 "$logs/base.log" >&2; die "apt-get upgrade failed"; }
  rm -rf "$m"/var/lib/apt/lists/* "$m"/var/cache/apt/*.bin "$m"/var/cache/apt/archives/*.deb \
    "$m"/var/cache/debconf/*-old "$m"/var/lib/dpkg/*-old "$m"/var/log/*.log "$m"/var/log/apt/* \
    "$m"/tmp/* "$m"/dev/*
  : >"$m/etc/resolv.conf"
  : >"$m/etc/hostname"
  bh config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --cmd '["bash"]' --label "org.opencontainers.image.description=Debian $SUITE (debootstrap minbase, pgml-operator's test bed)" "$c"
  bh commit --quiet --rm "$c" "$BASE_REF" >/dev/null
}

token_file="$cache/base.refresh"
[[ -f "$token_file" ]] || echo 0 >"$token_file"
if ((refresh)); then date +%s%N >"$token_file"; fi
base_key="$( { declare -f build_base; echo "$SUITE $MIRROR $SECURITY_MIRROR"; cat "$token_file"; } | sha)"

# Inputs by content, from the repository root (the same in any checkout); binaries by inode,
# size and mtime (a relink makes a new file), which costs no read of them.
files_key() { (cd "$root" && sha256sum -- "$@"); }
bins_key() { (cd "$bin_dir" && stat -L -c '%n %i %s %.9Y' -- "$@"); }
script_key="$(files_key scripts/images.sh)"

declare -A key
key[pgml-operator]="$( { echo "$script_key $base_key $format"; files_key docker/operator.Dockerfile .dockerignore; bins_key pgml-operator pgml-instance; } | sha)"
key[pgml-agent]="$( { echo "$script_key $base_key $format ${zfs_arg[*]}"; files_key docker/agent.Dockerfile .dockerignore docker/agent/host-zpool docker/agent/host-zfs; bins_key pgml-agent pgml-freeze-guard; } | sha)"
key[pgml-postgres]="$( { echo "$script_key $base_key $format"; files_key tests/testbed/images/postgres.Dockerfile tests/testbed/images/pgml-standin/pgml.c tests/testbed/images/pgml-standin/pgml.control tests/testbed/images/pgml-standin/pgml--standin.sql; } | sha)"
key[pause]="$( { echo "$script_key $format"; files_key tests/testbed/images/pause.Dockerfile tests/testbed/images/pause.c; } | sha)"

stale() { # the names of the images whose archive or stamp is not this build's
  local spec name
  for spec in "${IMAGES[@]}"; do
    read -r name _ _ <<<"$spec"
    if [[ ! -f "$out/$name.tar" || "$(cat "$out/.$name.key" 2>/dev/null)" != "${key[$name]}" ]]; then
      echo "$name"
    fi
  done
}

todo="$(stale)"
if [[ -z "$todo" ]]; then
  log "up to date"
  echo "$out"
  exit 0
fi

# --- the build ------------------------------------------------------------------------------

exec 9>"$cache/.lock"
flock 9
todo="$(stale)"
if [[ -z "$todo" ]]; then
  log "up to date"
  echo "$out"
  exit 0
fi

[[ "$(id -u)" -eq 0 ]] || die "root is needed (debootstrap, buildah's store)"
need=()
command -v buildah >/dev/null || need+=(buildah)
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v strip >/dev/null || need+=(binutils)
command -v cc >/dev/null || need+=(gcc libc6-dev)
if ((${#need[@]})); then
  log "installing Debian packages: ${need[*]}"
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >&2
fi

# buildah's store: overlay when this kernel mounts it here (layers stored as differences),
# else vfs (a full copy per layer). Its runroot (locks, mount counts) on a tmpfs, so that a
# reboot forgets mounts that are gone.
driver="${PGML_IMAGES_STORAGE_DRIVER:-}"
if [[ -z "$driver" ]]; then
  probe="$(mktemp -d "$cache/.overlay-probe.XXXXXX")"
  mkdir "$probe"/{l,u,w,m}
  if mount -t overlay overlay -o "lowerdir=$probe/l,upperdir=$probe/u,workdir=$probe/w" "$probe/m" 2>/dev/null; then
    umount "$probe/m"
    driver=overlay
  else
    driver=vfs
  fi
  rm -rf "$probe"
fi
runroot="${XDG_RUNTIME_DIR:-/run}/pgml-images/$(printf '%s' "$cache" | sha | cut -c1-12)-$driver"
store=(--root "$cache/buildah/$driver" --runroot "$runroot" --storage-driver "$driver")
bh() { buildah "${store[@]}" "$@"; }
# Working containers left by a build that was killed (none of ours runs: the lock is held).
bh rm --all >/dev/null 2>&1 || true

start=$(date +%s)
has_image() { bh inspect --type image --format '{{.FromImageID}}' "$1" >/dev/null 2>&1; }
if [[ "$(cat "$cache/base.key" 2>/dev/null)" != "$base_key" ]] || ! has_image "$BASE_REF"; then
  t=$(date +%s)
  build_base
  echo "$base_key" >"$cache/base.key"
  log "base: $BASE_REF built in $(($(date +%s) - t))s ($driver store)"
fi

if grep -qE '^(pgml-operator|pgml-agent)$' <<<"$todo"; then
  # The binaries as the Dockerfiles' builder stage leaves them: /out/<name>, stripped.
  ctx="$cache/ctx/binaries"
  rm -rf "$ctx"
  mkdir -p "$ctx/out"
  for b in "${BINS[@]}"; do strip -o "$ctx/out/$b" "$bin_dir/$b"; done
  c="$(bh from --quiet scratch)"
  bh copy --quiet "$c" "$ctx/out" /out >/dev/null
  bh commit --quiet --rm "$c" "$BINARIES_REF" >/dev/null
  rm -rf "$ctx"
  log "binaries: $BINARIES_REF from $bin_dir"
fi

build_image() { # name, reference, Dockerfile
  local name="$1" ref="$2" dockerfile="$3" t context args bud
  t=$(date +%s)
  context="$root"
  args=(--build-arg "RUNTIME_IMAGE=$BASE_REF" --build-arg "BASE_IMAGE=$BASE_REF"
    --build-arg "BINARIES=$BINARIES_REF")
  case "$name" in
    pgml-agent) args+=("${zfs_arg[@]}") ;;
    pause)
      context="$cache/ctx/pause"
      rm -rf "$context"
      mkdir -p "$context"
      cc -static -Os -s -Wall -Wextra -o "$context/pause" "$root/tests/testbed/images/pause.c"
      ;;
  esac
  log "$name: buildah bud -f $dockerfile -t $ref (log: $logs/$name.log)"
  bud=(bud --isolation chroot --network host --layers --pull=never --force-rm
    "${args[@]}" -f "$root/$dockerfile" -t "$ref" "$context")
  bh "${bud[@]}" >"$logs/$name.log" 2>&1 || { tail -n 40 "$logs/$name.log" >&2; die "$name: build failed"; }
  # A docker-archive: its layers uncompressed, as the store holds them (buildah 1.28 gzips
  # an oci-archive's whatever the flags: 7 s more for the PostgreSQL image, and containerd
  # then unpacks faster). PGML_IMAGES_FORMAT=oci-archive: an OCI image layout in the tar.
  rm -f "$out/$name.tar" "$out/.$name.key" "$out/$name.tar.tmp"
  bh push --quiet "$ref" "$format:$out/$name.tar.tmp:$ref" >>"$logs/$name.log" 2>&1 ||
    { tail -n 20 "$logs/$name.log" >&2; die "$name: writing the archive failed"; }
  mv -f "$out/$name.tar.tmp" "$out/$name.tar"
  echo "${key[$name]}" >"$out/.$name.key"
  log "$name: $out/$name.tar ($(du -m "$out/$name.tar" | cut -f1) MB) in $(($(date +%s) - t))s"
}

# The images at once: their RUN steps are mostly downloads and dpkg (a cold build, the
# three apt-get runs overlap), the rest writes files. buildah's store takes concurrent builds.
pids=()
names=()
trap 'kill "${pids[@]}" 2>/dev/null; wait; exit 130' INT TERM
for spec in "${IMAGES[@]}"; do
  read -r name ref dockerfile <<<"$spec"
  grep -qx "$name" <<<"$todo" || continue
  build_image "$name" "$ref" "$dockerfile" &
  pids+=("$!")
  names+=("$name")
done
failed=()
for i in "${!pids[@]}"; do
  wait "${pids[$i]}" || failed+=("${names[$i]}")
done
trap - INT TERM
((${#failed[@]} == 0)) || die "failed: ${failed[*]} (logs: $logs/<name>.log)"

# Images no name points at any more (the previous builds of these, and after a new base the
# cached steps on the old one): their layers go. A pass frees the parents for the next.
for _ in 1 2 3 4 5 6 7 8; do
  [[ -n "$(bh rmi --prune 2>/dev/null)" ]] || break
done

for spec in "${IMAGES[@]}"; do
  read -r name ref _ <<<"$spec"
  echo "$ref $out/$name.tar"
done >"$out/images.txt.tmp"
mv -f "$out/images.txt.tmp" "$out/images.txt"
log "built in $(($(date +%s) - start))s"
echo "$out"
