#!/usr/bin/env bash
# Installs what the sandbox and the tests need, and nothing twice:
#   - Debian packages: zfs-fuse (real zpool/zfs), xfsprogs (reflink image store),
#     PostgreSQL 15, pgBackRest (2.45 on Debian 12: WAL archiving to the simulated S3), openssl;
#   - a Python venv (.venv) with moto[server] for the simulated EC2;
#   - the Kubernetes control plane (kube-apiserver, etcd, kube-controller-manager,
#     kubectl) built from Go modules into ~/.cache/pgml-operator (kept between runs);
#   - kwok (the simulated nodes' kubelet), built from its Go module into the same cache
#     (tests/testbed/kwok/build.sh; the sandbox finds it there);
#   - Helm, built from its Go module into the same cache (tests/testbed/helm/build.sh; the
#     chart test finds it there);
#   - CoreDNS (the real nodes' cluster DNS), built from its Go module into the same cache
#     (tests/testbed/coredns/build.sh);
#   - the real nodes' packages: containerd, runc, CNI plugins, iptables, conntrack, and what
#     scripts/images.sh builds images with (debootstrap, buildah, umoci).
# Prints the Kubernetes bin dir on its last line.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
# The real nodes (tests/testbed/sandbox/realnode.py): containerd, runc, the CNI plugins,
# iptables and conntrack for kube-proxy; the images (scripts/images.sh): debootstrap, buildah,
# umoci.
for pkg in zfs-fuse xfsprogs postgresql-15 postgresql-contrib pgbackrest openssl util-linux iproute2 procps curl \
           containerd runc containernetworking-plugins iptables conntrack debootstrap buildah umoci; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need_apt+=("$pkg")
done
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "deps: installing Debian packages: ${need_apt[*]}" >&2
  if [ "$(id -u)" -ne 0 ]; then echo "deps: root is needed to install ${need_apt[*]} (and to run the sandbox)" >&2; exit 1; fi
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >&2
fi

req=tests/testbed/requirements.txt
stamp=.venv/.requirements.sha256
want=$(sha256sum "$req" | cut -d' ' -f1)
if [ ! -x .venv/bin/python ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "deps: creating .venv with $(python3 --version)" >&2
  python3 -m venv .venv >&2
  .venv/bin/pip install -q --disable-pip-version-check -r "$req" >&2
  echo "$want" > "$stamp"
fi

bash tests/testbed/kwok/build.sh >&2
bash tests/testbed/helm/build.sh >&2
bash tests/testbed/coredns/build.sh >&2
bash tests/testbed/k8s/build.sh
