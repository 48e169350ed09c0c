# syntax=docker/dockerfile:1.7
# The operator image: /usr/local/bin/pgml-operator (the controllers) and
# /usr/local/bin/pgml-instance (the instance manager).
#
#   docker build -f docker/operator.Dockerfile -t ghcr.io/pgml/pgml-operator:0.1.0 .
#
# The operator also serves as PGML_INSTANCE_IMAGE: every PgmlCluster Pod has an init
# container from this image that runs `cp /usr/local/bin/pgml-instance /controller/pgml-instance`
# (crates/pgml-operator/src/cluster/build.rs), and the PostgresML container then runs
# /controller/pgml-instance. So the runtime needs a `cp` (distroless has none: Debian slim),
# and pgml-instance must run in whatever image the cluster uses (Ubuntu 22.04 for PostgresML
# 2.x, older glibc than Debian 12's): it is linked statically against musl.
#
# The binaries come from the `builder` stage (the default), or from an image that holds them
# in /out: `--build-arg BINARIES=<image>` skips the Rust build. The test bed makes its images
# from this file that way, with binaries built on the host, buildah and a Debian base of its
# own (scripts/images.sh); so no BuildKit-only syntax here beyond the builder's cache mounts
# (buildah 1.28, Debian 12's, has no COPY heredocs). That pgml-instance is the host's glibc
# build (it needs glibc >= 2.34: the test bed's Debian 12 PostgreSQL image, Ubuntu 22.04).

ARG RUST_IMAGE=rust:1.95-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim
ARG BINARIES=builder

FROM ${RUST_IMAGE} AS builder
ARG TARGETARCH
# musl-tools: the static pgml-instance (musl-gcc, which the cc crate picks for *-linux-musl);
# cmake and clang: aws-lc-sys (rustls' crypto) when it has no prebuilt bindings for a target.
RUN apt-get update \
 && apt-get install -y --no-install-recommends musl-tools cmake clang \
 && rm -rf /var/lib/apt/lists/*
RUN case "${TARGETARCH:-amd64}" in \
      amd64) echo x86_64-unknown-linux-musl > /musl-target ;; \
      arm64) echo aarch64-unknown-linux-musl > /musl-target ;; \
      *) echo "unsupported TARGETARCH ${TARGETARCH}" >&2; exit 1 ;; \
    esac \
 && rustup target add "$(cat /musl-target)"
WORKDIR /src
COPY . .
# The workspace's lock file, exactly (--locked); caches for the registry and target/ only.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    set -eux; \
    cargo build --release --locked -p pgml-operator --bin pgml-operator; \
    musl="$(cat /musl-target)"; \
    cargo build --release --locked -p pgml-instance --bin pgml-instance --target "$musl"; \
    mkdir -p /out; \
    cp target/release/pgml-operator /out/; \
    cp "target/$musl/release/pgml-instance" /out/; \
    strip /out/pgml-operator /out/pgml-instance; \
    /out/pgml-operator --version; \
    /out/pgml-instance --version; \
    if ldd /out/pgml-instance 2>&1 | grep -q '=>'; then echo "pgml-instance is not static" >&2; exit 1; fi

FROM ${BINARIES} AS binaries

FROM ${RUNTIME_IMAGE}
# ca-certificates: TLS to the EC2 and STS endpoints. The same uid/gid as distroless' nonroot,
# which the chart runs as (runAsUser 65532).
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 65532 nonroot \
 && useradd --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin nonroot
COPY --from=binaries --chmod=0755 /out/pgml-operator /out/pgml-instance /usr/local/bin/
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/pgml-operator"]
LABEL org.opencontainers.image.title="pgml-operator" \
      org.opencontainers.image.description="PostgresML on EC2: the pgml-operator controllers and the pgml-instance manager" \
      org.opencontainers.image.source="https://github.com/pgml-operator/pgml-operator" \
      org.opencontainers.image.licenses="Apache-2.0"
