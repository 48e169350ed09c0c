# The test bed's stand-in for the PostgresML image (ghcr.io/postgresml/postgresml:2.10.0,
# which the test bed cannot pull): PostgreSQL 15 and pgBackRest from Debian 12, laid out as
# PostgresML's Ubuntu packages lay it out. README.md beside this file says what differs.
#
#   scripts/images.sh   # builds it as localhost/pgml-postgres:15 (buildah, Debian base)
#
# What the operator relies on, as in PostgresML's image:
#   - PostgreSQL's programs in /usr/lib/postgresql/15/bin (pgml-instance's default PGML_PG_BIN;
#     pg_config --bindir says so too), Debian's postgresql-common around them;
#   - a `postgres` user, which pgml-instance (run as root, the image has no USER) runs
#     PostgreSQL as through `runuser` (util-linux); home /var/lib/postgresql;
#   - `cp`, a shell, CA certificates (pgBackRest to S3 over TLS), `ps` (procps: what a user
#     looks at with kubectl exec).

ARG BASE_IMAGE=debian:bookworm-slim

# The stand-in `pgml` library (pgml-standin/pgml.c: NOT PostgresML; it only logs that it is
# a stand-in). The operator always preloads `pgml`, as the PostgresML image needs; this lets
# the operator's configuration start unchanged here. Compiled against the server headers of
# Debian's postgresql-server-dev-15, unpacked without its dependencies (clang, LLVM: only the
# headers are needed).
FROM ${BASE_IMAGE} AS pgml-standin
RUN set -eux; \
    apt-get update; \
    apt-get install -y --no-install-recommends gcc libc6-dev; \
    cd /tmp; \
    apt-get download postgresql-server-dev-15; \
    dpkg-deb -x postgresql-server-dev-15_*.deb /tmp/pgdev; \
    rm -rf /var/lib/apt/lists/*
COPY tests/testbed/images/pgml-standin/pgml.c /src/pgml.c
RUN gcc -O2 -fPIC -shared -Wall -Werror -I/tmp/pgdev/usr/include/postgresql/15/server \
        -o /src/pgml.so /src/pgml.c

FROM ${BASE_IMAGE}
# The postgres user and group before the packages, so postgresql-common takes them as they
# are: uid/gid 999 as PostgresML's Dockerfile of the 2.7 series and the official postgres
# images pin them (the 2.10 image leaves the uid to the package: a system uid).
# postgresql-contrib: the contrib modules (part of postgresql-15 on Debian 12; as the sandbox
# installs). The packages' own cluster (15/main) is made as in PostgresML's image.
RUN set -eux; \
    groupadd -r postgres --gid=999; \
    useradd -r -g postgres --uid=999 --home-dir=/var/lib/postgresql --shell=/bin/bash postgres; \
    install -d -o postgres -g postgres -m 0755 /var/lib/postgresql; \
    apt-get update; \
    apt-get install -y --no-install-recommends \
        ca-certificates util-linux procps postgresql-15 postgresql-contrib pgbackrest; \
    rm -rf /var/lib/apt/lists/*; \
    test "$(pg_config --bindir 2>/dev/null || echo /usr/lib/postgresql/15/bin)" = /usr/lib/postgresql/15/bin; \
    for t in initdb pg_ctl postgres pg_basebackup pg_rewind pg_controldata; do \
        test -x "/usr/lib/postgresql/15/bin/$t"; \
    done; \
    command -v pgbackrest runuser cp; \
    test "$(id -u postgres):$(id -g postgres)" = 999:999
COPY --from=pgml-standin /src/pgml.so /usr/lib/postgresql/15/lib/pgml.so
# And a stand-in `pgml` extension (pgml-standin/pgml.control: NOT PostgresML; it defines only
# pgml.standin()), so that the operator's CREATE EXTENSION pgml runs in the stand-in image.
COPY tests/testbed/images/pgml-standin/pgml.control tests/testbed/images/pgml-standin/pgml--standin.sql /usr/share/postgresql/15/extension/
ENV TZ=UTC
EXPOSE 5432
LABEL org.opencontainers.image.title="pgml-postgres" \
      org.opencontainers.image.description="pgml-operator's test bed: PostgreSQL 15 and pgBackRest from Debian 12, a stand-in for the PostgresML image" \
      org.opencontainers.image.source="https://github.com/pgml-operator/pgml-operator" \
      org.opencontainers.image.licenses="Apache-2.0"
