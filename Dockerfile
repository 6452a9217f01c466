# nodes-import: the import daemon as a container image.
#
# Reproducible: the base image is pinned by version and the dependencies are installed
# from requirements.lock (versions and sha256 hashes; CI installs the same file). No
# Docker engine runs where this project is developed and tested, so the image is not
# built in CI: tests/unit/test_deploy.py checks what can be read from this file (it
# installs exactly the lock, no stand-ins, runs non-root).
#
#   docker build -t nodes-import .
#   docker run --rm -p 9400:9400 --stop-timeout 45 \
#     -e NODES_IMPORT_DSN='postgresql://nodes_import@db:5432/nodes' \
#     -e NODES_IMPORT_KAFKA_BOOTSTRAP_SERVERS='kafka:9092' \
#     -v /etc/nodes-import/config.yaml:/etc/nodes-import/config.yaml:ro \
#     -v /srv/imports:/data:ro nodes-import
#
# Configuration: the mounted config.yaml (NODES_IMPORT_CONFIG), overridden by
# NODES_IMPORT_* environment variables (secrets such as the DSN password belong there, or
# in PGPASSWORD / a libpq service file, never in the image). Extra arguments go to
# `nodes-import run` (e.g. --admin-port 9500). Stop timeout: at least
# node.import.drain-timeout.ms (30 s) plus ~15 s, or running batches are cut off.

# The base image, pinned by version (Debian bookworm, Python 3.11): bump it on purpose,
# with the lock. (No digest: none could be read where this file was written.)
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

# ---- build: the locked dependencies, then the package, into a venv
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/nodes-import
WORKDIR /src
# 1. Exactly what requirements.lock names: pinned versions, checked against its hashes,
#    wheels only (nothing compiled here). It holds the runtime dependencies only: no
#    local stand-ins (embedded PostgreSQL, in-memory broker) in production.
COPY requirements.lock ./
RUN /opt/nodes-import/bin/pip install --require-hashes --only-binary=:all: --no-deps \
      -r requirements.lock
# 2. The package itself, adding nothing (--no-deps); `pip check` fails the build when the
#    lock no longer covers pyproject's dependencies. (Its build backend, setuptools, is
#    fetched by pip into a throwaway build environment: it never reaches the image.)
COPY pyproject.toml README.md LICENSE ./
COPY nodes_import ./nodes_import
RUN /opt/nodes-import/bin/pip install --no-deps . \
 && /opt/nodes-import/bin/pip check

# ---- runtime: the venv only, run as an unprivileged user
FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="nodes-import" \
      org.opencontainers.image.description="Imports user nodes into PostgreSQL from jobs announced on Kafka" \
      org.opencontainers.image.source="https://github.com/nodes-import/nodes-import" \
      org.opencontainers.image.licenses="MIT"
RUN groupadd --system --gid 10001 nodes-import \
 && useradd --system --uid 10001 --gid nodes-import --no-create-home \
            --home-dir /nonexistent --shell /usr/sbin/nologin nodes-import \
 && mkdir -p /data /run/nodes-import \
 && chown nodes-import:nodes-import /run/nodes-import
COPY --from=build /opt/nodes-import /opt/nodes-import
COPY config.yaml /etc/nodes-import/config.yaml
ENV PATH=/opt/nodes-import/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    NODES_IMPORT_CONFIG=/etc/nodes-import/config.yaml \
    NODES_IMPORT_ADMIN_HOST=0.0.0.0 \
    NODES_IMPORT_ADMIN_PORT=9400 \
    NODES_IMPORT_METRICS_MULTIPROC_DIR=/run/nodes-import/metrics \
    NODES_IMPORT_NODE_IMPORT_ALLOWED_ROOTS=/data
WORKDIR /data
USER nodes-import
EXPOSE 9400
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('NODES_IMPORT_ADMIN_PORT', '9400'), timeout=4)"]
ENTRYPOINT ["nodes-import", "run"]
