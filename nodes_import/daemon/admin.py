"""The admin HTTP API (parent side): one port, read-only, the standard library's WSGI server.

Routes (GET or HEAD; anything else is 405):

- ``/metrics``: Prometheus text (or OpenMetrics when asked) of every process: the
  workers' and the daemon's files in the multiprocess directory, plus gauges computed now;
- ``/healthz``: the process answers (200);
- ``/readyz``: 200 when the database answers and the daemon is subscribed to Kafka and
  not stopping; 503 with the reasons otherwise;
- ``/jobs?status=&limit=``: the most recent jobs, with their progress percentage;
- ``/jobs/{id}``: one job, with its progress and its first rejected rows.

Errors are JSON ``{"error": ...}``: 400 for a bad id or parameter, 404 for an unknown
path or job, 503 when the database does not answer. Nothing here ever shows a DSN. With
``admin.token`` set, every route but the two probes needs ``Authorization: Bearer <token>``
(401 otherwise): Prometheus sends it with ``authorization: {credentials: ...}``.
``Operations`` wires the API and the housekeeping thread into the daemon.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from socketserver import ThreadingMixIn
from typing import Any
from urllib.parse import parse_qs
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import orjson
from psycopg_pool import ConnectionPool

from nodes_import import metrics, status
from nodes_import.config import OperationsConfig
from nodes_import.daemon.housekeeping import Housekeeper
from nodes_import.errors import NodesImportError
from nodes_import.jobs import JobRow
from nodes_import.logs import redact_dsn
from nodes_import.store import connection, jobrows

log = logging.getLogger(__name__)

JSON = "application/json"
MAX_LIMIT = 1000  # /jobs?limit=
FAILURES_SHOWN = 20  # rejected rows in /jobs/{id}
DB_TIMEOUT_S = 2.0  # an admin request waits at most this for a connection

Readiness = Callable[[], str | None]  # None: ready; else the reason it is not
StartResponse = Callable[..., Any]


class HttpError(Exception):
    """An error answer: status code and message."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


# Routes that answer without the token: probes (systemd, a load balancer) carry none.
OPEN_PATHS = ("/healthz", "/readyz")

_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found",
            405: "Method Not Allowed",
            500: "Internal Server Error", 503: "Service Unavailable"}


class AdminApp:
    """The WSGI application. ``readiness`` is the daemon's hook; ``pool`` may be set later."""

    def __init__(self, *, pool: ConnectionPool | None = None,
                 readiness: Readiness | None = None,
                 collectors: Iterable[Any] = (), db_timeout_s: float = DB_TIMEOUT_S,
                 token: str | None = None) -> None:
        self.pool = pool
        self._token = f"Bearer {token}".encode() if token else None
        self.db_timeout_s = db_timeout_s
        self.readiness = readiness
        self.registry = metrics.registry(collectors)

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
        method = environ.get("REQUEST_METHOD", "GET")
        try:
            if method not in ("GET", "HEAD"):
                raise HttpError(405, f"method {method} not allowed: this API is read-only")
            self._authorize(environ)
            code, content_type, body = self._route(environ)
        except HttpError as exc:
            code, content_type, body = exc.code, JSON, _json({"error": exc.message})
        except NodesImportError as exc:  # the database went away mid-request
            code, content_type = 503, JSON
            body = _json({"error": f"database unavailable: {redact_dsn(str(exc))}"})
        except Exception:  # a bug: a JSON 500 and one log line, never a stack trace page
            log.exception("admin request failed", extra={"fields": {
                "path": environ.get("PATH_INFO")}})
            code, content_type, body = 500, JSON, _json({"error": "internal error"})
        headers = [("Content-Type", content_type), ("Content-Length", str(len(body))),
                   ("Cache-Control", "no-store")]
        if code == 405:
            headers.append(("Allow", "GET, HEAD"))
        if code == 401:
            headers.append(("WWW-Authenticate", 'Bearer realm="nodes-import"'))
        start_response(f"{code} {_REASONS.get(code, '')}", headers)
        return [] if method == "HEAD" else [body]

    def _authorize(self, environ: dict[str, Any]) -> None:
        """With a token configured, refuse (401) a request without it, probes excepted."""
        if self._token is None or environ.get("PATH_INFO") in OPEN_PATHS:
            return
        given = environ.get("HTTP_AUTHORIZATION", "").encode("latin-1", "replace")
        if not hmac.compare_digest(given, self._token):  # constant time: no timing oracle
            raise HttpError(401, "missing or wrong bearer token (admin.token)")

    def _route(self, environ: dict[str, Any]) -> tuple[int, str, bytes]:
        path = environ.get("PATH_INFO", "/") or "/"
        query = parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True)
        if path == "/metrics":
            from prometheus_client.exposition import choose_encoder

            encoder, content_type = choose_encoder(environ.get("HTTP_ACCEPT", ""))
            return 200, content_type, encoder(self.registry)
        if path == "/healthz":
            return 200, JSON, _json({"status": "ok"})
        if path == "/readyz":
            reasons = self.not_ready()
            if reasons:
                return 503, JSON, _json({"status": "not ready", "reasons": reasons})
            return 200, JSON, _json({"status": "ready"})
        if path in ("/jobs", "/jobs/"):
            return 200, JSON, _json(self.jobs(query))
        if path.startswith("/jobs/"):
            _no_params(query, set())
            return 200, JSON, _json(self.job(path.removeprefix("/jobs/")))
        raise HttpError(404, f"no such path: {path}")

    # ------------------------------------------------------------------ handlers

    def not_ready(self) -> list[str]:
        """Why the service is not ready (empty: it is)."""
        reasons = []
        try:
            with self._conn() as conn:
                connection.ping(conn)
        except (HttpError, NodesImportError, OSError) as exc:
            text = exc.message if isinstance(exc, HttpError) else str(exc)
            reasons.append(f"database: {redact_dsn(text) or type(exc).__name__}")
        if self.readiness is not None:
            reason = self.readiness()
            if reason:
                reasons.append(reason)
        return reasons

    def jobs(self, query: dict[str, list[str]]) -> list[dict[str, Any]]:
        """``/jobs``: the most recent jobs, optionally of one status."""
        _no_params(query, {"status", "limit"})
        wanted = _one(query, "status")
        if wanted is not None and wanted.upper() not in status.ALL:
            raise HttpError(400, f"status must be one of {', '.join(status.ALL)}, "
                                 f"got {wanted!r}")
        raw_limit = _one(query, "limit") or "50"
        try:
            limit = int(raw_limit)
        except ValueError:
            raise HttpError(400, f"limit must be an integer, got {raw_limit!r}") from None
        if not 1 <= limit <= MAX_LIMIT:
            raise HttpError(400, f"limit must be within 1..{MAX_LIMIT}, got {limit}")
        with self._conn() as conn:
            rows = jobrows.list_jobs(conn, status=wanted.upper() if wanted else None,
                                     limit=limit)
        return [_with_progress(row) for row in rows]

    def job(self, raw_id: str) -> dict[str, Any]:
        """``/jobs/{id}``: one job and its first rejected rows."""
        try:
            job_id = str(uuid.UUID(raw_id))
        except ValueError:
            raise HttpError(400, f"not a job id (UUID): {raw_id[:100]!r}") from None
        with self._conn() as conn:
            row = jobrows.get_job(conn, job_id)
            if row is None:
                raise HttpError(404, f"no job {job_id}")
            failures = jobrows.job_failures(conn, job_id, limit=FAILURES_SHOWN)
        return {**_with_progress(row), "failures": [asdict(f) for f in failures]}

    @contextmanager
    def _conn(self) -> Iterator[Any]:
        """A pooled connection; psycopg errors come out as the StorageError tree."""
        if self.pool is None:
            raise HttpError(503, "database not connected yet")
        with connection.wrapped(), self.pool.connection(timeout=self.db_timeout_s) as conn:
            yield conn


def _json(value: Any) -> bytes:
    return orjson.dumps(value, default=str)


def _one(query: dict[str, list[str]], name: str) -> str | None:
    values = query.get(name)
    if not values:
        return None
    if len(values) > 1:
        raise HttpError(400, f"{name} given {len(values)} times")
    return values[0] or None


def _no_params(query: dict[str, list[str]], allowed: set[str]) -> None:
    unknown = sorted(set(query) - allowed)
    if unknown:
        raise HttpError(400, f"unknown parameter(s): {', '.join(unknown)}")


def _with_progress(row: JobRow) -> dict[str, Any]:
    """The job's row as JSON fields, and its progress."""
    return {**asdict(row), "progress_percentage": metrics.progress_percentage(
        row.status, row.source_bytes, row.bytes_read)}


# ---------------------------------------------------------------------- the server


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a slow client never holds up the daemon's exit
    allow_reuse_address = True


class _QuietHandler(WSGIRequestHandler):
    """Request lines at DEBUG through our logger, not on stderr."""

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("admin request", extra={"fields": {"request": format % args}})


class AdminServer:
    """The WSGI server in a daemon thread: ``start`` binds (fails fast), ``close`` stops."""

    def __init__(self, app: AdminApp, host: str, port: int) -> None:
        self.app, self.host, self.port = app, host, port
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> int:
        """Bind and serve; returns the port (useful with port 0)."""
        try:
            self._server = make_server(self.host, self.port, self.app, server_class=_Server,
                                       handler_class=_QuietHandler)
        except OSError as exc:
            raise NodesImportError(f"admin API cannot listen on {self.host}:{self.port}: "
                                   f"{exc.strerror or exc}") from exc
        self.port = self._server.server_port
        self._thread = threading.Thread(target=self._server.serve_forever, name="admin-http",
                                        kwargs={"poll_interval": 0.2}, daemon=True)
        self._thread.start()
        log.info("admin API listening", extra={"fields": {"host": self.host, "port": self.port}})
        return self.port

    def close(self) -> None:
        """Stop serving and free the port. Idempotent."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None



# --------------------------------------------------------------- the daemon's side


class Operations:
    """The daemon's operations side: the admin API, its own small database pool (scrapes
    never wait behind job starts), the scrape-time gauges and the housekeeping thread.

    1. ``start`` binds the port before anything else (a taken port fails start-up);
    2. ``attach`` opens the pool once the daemon reached the database, then housekeeping;
    3. ``close`` stops them in reverse order.
    """

    def __init__(self, ops: OperationsConfig, *, owner: str, readiness: Readiness,
                 scrape: Callable[[metrics.Scrape], None]) -> None:
        self.ops, self.owner = ops, owner
        self.app = AdminApp(readiness=readiness, collectors=[metrics.ScrapeCollector(
            [scrape, self._scrape_jobs], on_error=_scrape_failed)], token=ops.admin_token)
        self.server: AdminServer | None = None
        self.pool: ConnectionPool | None = None
        self.housekeeper: Housekeeper | None = None

    def start(self) -> None:
        """1. Serve the admin API (when enabled)."""
        if self.ops.admin_enabled:
            self.server = AdminServer(self.app, self.ops.admin_host, self.ops.admin_port)
            self.server.start()
            if not self.ops.admin_token and not _loopback(self.ops.admin_host):
                log.warning("admin API open to the network without a token; set admin.token "
                            "(or NODES_IMPORT_ADMIN_TOKEN)", extra={"fields": {
                                "host": self.ops.admin_host}})

    def attach(self, dsn: str, connect_timeout_s: float) -> None:
        """2. Open the pool; start housekeeping."""
        self.pool = connection.open_pool(dsn, max_size=2, timeout_s=connect_timeout_s,
                                      name="nodes-import-admin")
        self.app.pool = self.pool
        self.housekeeper = Housekeeper(self.pool, self.ops)
        self.housekeeper.start()

    def close(self) -> None:
        """3. Stop housekeeping, the server, the pool. Idempotent."""
        if self.housekeeper is not None:
            self.housekeeper.stop()
            self.housekeeper = None
        if self.server is not None:
            self.server.close()
            self.server = None
        if self.pool is not None:
            self.pool.close()
            self.pool = None

    def _scrape_jobs(self, snap: metrics.Scrape) -> None:
        """Progress of this daemon's running jobs; age of the oldest running job anywhere."""
        if self.pool is None:
            return
        with connection.wrapped(), self.pool.connection(timeout=DB_TIMEOUT_S) as conn:
            rows = jobrows.running_jobs(conn)
        snap.gauges["node_import_oldest_running_job_age_seconds"] = \
            max((row.age_s for row in rows), default=0.0)
        for row in rows:
            pct = metrics.progress_percentage(row.status, row.source_bytes, row.bytes_read)
            if row.claimed_by == self.owner and pct is not None:
                snap.progress[row.id] = pct


def _loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address or localhost (0.0.0.0, a name: not)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _scrape_failed(exc: BaseException) -> None:
    log.warning("a scrape-time gauge could not be read", extra={"fields": {
        "error": redact_dsn(str(exc)), "errorType": type(exc).__name__}})
