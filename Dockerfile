# nodes-import: the import daemon as a container image.
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

ARG PYTHON_VERSION=3.11

# ---- build: install the package and its dependencies into a venv
FROM python:${PYTHON_VERSION}-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/nodes-import
WORKDIR /src
COPY pyproject.toml README.md ./
COPY nodes_import ./nodes_import
RUN /opt/nodes-import/bin/pip install .

# ---- runtime: the venv only, run as an unprivileged user
FROM python:${PYTHON_VERSION}-slim-bookworm AS runtime
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
