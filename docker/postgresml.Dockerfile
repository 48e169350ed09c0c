# The PostgresML image with what pgml-instance, the instance manager of every PgmlCluster
# Pod, runs besides PostgreSQL's own programs: pgBackRest. docs/install.md
# ("The PostgreSQL image") says what the upstream image has and lacks.
#
#   docker build -f docker/postgresml.Dockerfile -t ghcr.io/pgml/pgml-postgresml:2.10.0 .
#   # PostgreSQL 17 inside (see below): add --build-arg PG_MAJOR=17
#
# then `spec.image: ghcr.io/pgml/pgml-postgresml:2.10.0` in a PgmlCluster. The build context
# is not used (nothing is copied in).
#
# What pgml-instance runs (crates/pgml-instance/src), all checked at the end of the build:
#   - as `postgres`, through `runuser -u postgres --` (util-linux; pgml-instance itself runs
#     as root, the image has no USER): initdb, pg_ctl, pg_basebackup, pg_rewind,
#     pg_controldata, psql (PGML_PG_BIN, set below), and pgbackrest (found on PATH);
#   - pg_config --bindir, only when PGML_PG_BIN is not set (it is, below).
# pgml-instance itself is not in this image: the Pod's init container copies it in from the
# operator's image (a static binary).
#
# Upstream (postgresml/postgresml, docker/Dockerfile): the v2.10.0 tag's file builds on
# nvidia/cuda:12.1.1-devel-ubuntu22.04 with PostgreSQL 15 (postgresml-15) and the PGDG apt
# repository configured, and installs no pgBackRest; a `postgres` user comes from the
# packages, with whatever system uid was free. The image tag is pushed by a workflow run by
# hand from the main branch, whose Dockerfile moved to Ubuntu 24.04 and PostgreSQL 17 the day
# after that tag: which one ghcr.io's 2.10.0 holds cannot be told from the sources. Hence
# PG_MAJOR is an argument, and the build fails, naming the versions it finds, when it is
# wrong.
#
# The `postgres` user gets a fixed uid/gid (POSTGRES_UID, default 999, as the test bed's
# stand-in and the official postgres images have it), its files renumbered, so that a Pod can
# say runAsUser/fsGroup without looking inside the image.

ARG POSTGRESML_IMAGE=ghcr.io/postgresml/postgresml:2.10.0

FROM ${POSTGRESML_IMAGE}

ARG PG_MAJOR=15
ARG POSTGRES_UID=999

# pgBackRest from PGDG (apt.postgresql.org, already a source of the upstream image, with its
# key): its current release for the Ubuntu release underneath (without that source, Ubuntu's
# own, from universe). pgBackRest logs to /var/log/pgbackrest by default (the operator's
# pgbackrest.conf sets no log-path): postgres must own it. procps: `ps` for whoever runs
# `kubectl exec`.
RUN set -eux; \
    bin="/usr/lib/postgresql/${PG_MAJOR}/bin"; \
    if [ ! -x "$bin/pg_ctl" ]; then \
        echo "no PostgreSQL ${PG_MAJOR} in this image; it has: $(ls /usr/lib/postgresql)" >&2; \
        echo "build with --build-arg PG_MAJOR=<one of those>" >&2; \
        exit 1; \
    fi; \
    apt-get update; \
    apt-cache policy pgbackrest; \
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        pgbackrest procps util-linux ca-certificates; \
    rm -rf /var/lib/apt/lists/*; \
    install -d -o postgres -g postgres -m 0750 /var/log/pgbackrest /var/lib/pgbackrest /var/spool/pgbackrest

# The postgres user and group renumbered to POSTGRES_UID, and every file they owned with them.
RUN set -eux; \
    old_uid="$(id -u postgres)"; \
    old_gid="$(id -g postgres)"; \
    if [ "$old_uid" != "$POSTGRES_UID" ]; then \
        if getent passwd "$POSTGRES_UID" >/dev/null; then \
            echo "uid $POSTGRES_UID is taken: $(getent passwd "$POSTGRES_UID")" >&2; exit 1; \
        fi; \
        usermod -u "$POSTGRES_UID" postgres; \
        find / -xdev -user "$old_uid" -exec chown -h postgres {} +; \
    fi; \
    if [ "$old_gid" != "$POSTGRES_UID" ]; then \
        if getent group "$POSTGRES_UID" >/dev/null; then \
            echo "gid $POSTGRES_UID is taken: $(getent group "$POSTGRES_UID")" >&2; exit 1; \
        fi; \
        groupmod -g "$POSTGRES_UID" postgres; \
        find / -xdev -group "$old_gid" -exec chgrp -h postgres {} +; \
    fi; \
    test "$(id -u postgres):$(id -g postgres)" = "$POSTGRES_UID:$POSTGRES_UID"

# Everything pgml-instance runs is there and runs.
RUN set -eux; \
    bin="/usr/lib/postgresql/${PG_MAJOR}/bin"; \
    for t in initdb pg_ctl postgres pg_basebackup pg_rewind pg_controldata psql; do \
        test -x "$bin/$t"; \
    done; \
    command -v pgbackrest runuser cp ps; \
    runuser -u postgres -- pgbackrest version; \
    runuser -u postgres -- "$bin/postgres" --version

ENV PGML_PG_BIN=/usr/lib/postgresql/${PG_MAJOR}/bin
# Upstream's entry point starts the packaged cluster (with a pg_hba.conf that trusts every
# address) and the dashboard. pgml-instance is the entry point of a PgmlCluster Pod (its
# `command`); a container started without one gets a shell, not a second PostgreSQL.
ENTRYPOINT []
CMD ["bash"]
LABEL org.opencontainers.image.title="pgml-postgresml" \
      org.opencontainers.image.description="PostgresML with pgBackRest and a fixed postgres uid, for pgml-operator's PgmlClusters" \
      org.opencontainers.image.source="https://github.com/pgml-operator/pgml-operator" \
      org.opencontainers.image.licenses="Apache-2.0"
