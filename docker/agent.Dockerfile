# syntax=docker/dockerfile:1.7
# The node agent image: /usr/local/bin/pgml-agent and /usr/local/bin/pgml-freeze-guard (the
# agent finds the guard beside itself), util-linux (blkid, fsfreeze, nsenter), the host-zpool
# and host-zfs wrappers (agent.zfs.tools=host) and Debian's zfsutils-linux (agent.zfs.tools=
# bundled).
#
#   docker build -f docker/agent.Dockerfile -t ghcr.io/pgml/pgml-agent:0.1.0 .
#
# Runs as root and privileged (the chart's DaemonSet says why): ZFS, block devices, mounts
# and fsfreeze cannot be done otherwise.
#
# The binaries come from the `builder` stage (the default), or from an image that holds them
# in /out: `--build-arg BINARIES=<image>` skips the Rust build. The test bed makes its images
# from this file that way, with binaries built on the host, buildah and a Debian base of its
# own (scripts/images.sh); so no BuildKit-only syntax here beyond the builder's cache mounts
# (buildah 1.28, Debian 12's, has no COPY heredocs: the wrappers are files in docker/agent/).

ARG RUST_IMAGE=rust:1.95-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim
ARG BINARIES=builder

FROM ${RUST_IMAGE} AS builder
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake clang \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    set -eux; \
    cargo build --release --locked -p pgml-agent --bin pgml-agent --bin pgml-freeze-guard; \
    mkdir -p /out; \
    cp target/release/pgml-agent target/release/pgml-freeze-guard /out/; \
    strip /out/pgml-agent /out/pgml-freeze-guard; \
    /out/pgml-agent --version

FROM ${BINARIES} AS binaries

FROM ${RUNTIME_IMAGE}
# zfsutils-linux is in Debian's contrib (CDDL): enable it for this one install. Without the
# recommended zfs-dkms/zfs-zed: the kernel module is the node's, and no daemon runs here.
# ZFS_TOOLS= (empty) leaves it out, for agent.zfs.tools=host only (the test bed's images).
ARG ZFS_TOOLS=zfsutils-linux
RUN set -eux; \
    sed -i 's/^Components: main$/Components: main contrib/' /etc/apt/sources.list.d/debian.sources; \
    apt-get update; \
    apt-get install -y --no-install-recommends ca-certificates util-linux ${ZFS_TOOLS}; \
    rm -rf /var/lib/apt/lists/*; \
    for t in blkid fsfreeze nsenter ${ZFS_TOOLS:+zpool zfs}; do command -v "$t"; done
# agent.zfs.tools=host: run the node's own zpool/zfs in the host's mount namespace (PID 1's;
# the DaemonSet sets hostPID), so the tools match the node's kernel module and the mounts they
# make are the host's. The agent takes one program path per tool (PGML_ZPOOL, PGML_ZFS), hence
# a wrapper per tool.
COPY --chmod=0755 docker/agent/host-zpool docker/agent/host-zfs /usr/local/bin/
COPY --from=binaries --chmod=0755 /out/pgml-agent /out/pgml-freeze-guard /usr/local/bin/
EXPOSE 8081
ENTRYPOINT ["/usr/local/bin/pgml-agent"]
LABEL org.opencontainers.image.title="pgml-agent" \
      org.opencontainers.image.description="pgml-operator's node agent: ZFS pools on EBS volumes, snapshot holds" \
      org.opencontainers.image.source="https://github.com/pgml-operator/pgml-operator" \
      org.opencontainers.image.licenses="Apache-2.0"
