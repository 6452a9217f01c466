"""The admin HTTP API (parent side): one port, the standard library's WSGI server; read-only
but for one route (a cancel, behind the token).

Routes (GET or HEAD; anything else is 405; the job routes are ``jobroutes.JobRoutes``):

- ``/metrics``: Prometheus text (or OpenMetrics when asked) of every process: the
  workers' and the daemon's files in the multiprocess directory, plus gauges computed now;
- ``/healthz``: the process answers (200);
- ``/readyz``: 200 when the database answers and the daemon is subscribed to Kafka and
  not stopping; 503 with the reasons otherwise;
- ``/jobs?status=&group=&limit=``: the most recent jobs, with their progress percentage;
- ``/jobs/{id}``: one job, with its progress and its first rejected rows (HTML when the
  client prefers it: a browser);
- ``/jobs/{id}/rejects?after=&limit=``: its rejected rows, a page at a time;
- ``/`` for a browser (``Accept: text/html``): the jobs page (``pages.py``).

The one route that changes anything is ``POST /jobs/{id}/cancel`` (``store.cancel``),
and only with ``admin.token`` configured: without one it is refused (403).

Errors are JSON ``{"error": ...}`` (HTML for a browser): 400 for a bad id or parameter,
404 for an unknown path or job, 503 when the database does not answer. Nothing here ever
shows a DSN. With ``admin.token`` set, every route but the two probes needs
``Authorization: Bearer <token>`` (401 otherwise): Prometheus sends it with
``authorization: {credentials: ...}``; a browser logs in with HTTP Basic, the token as
its password (any user name). A cancel needs more than a browser's stored Basic login (a
page of another site could make the browser send it): the Bearer header, or the token in
the posted form (the job page's button posts ``form_key``, a key derived from the token
that can only cancel). ``Operations`` wires the API and the housekeeping thread into the
daemon.
"""

from __future__ import annotations

import base64
import hmac
import ipaddress
import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from socketserver import ThreadingMixIn
from typing import Any
from urllib.parse import parse_qs
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from psycopg_pool import ConnectionPool

from nodes_import import metrics
from nodes_import.config import OperationsConfig
from nodes_import.daemon import pages
from nodes_import.daemon.housekeeping import Housekeeper
from nodes_import.daemon.http import (
    JSON,
    REASONS,
    Answer,
    HttpError,
    json_body,
    prefers_html,
)
from nodes_import.daemon.jobroutes import JobRoutes
from nodes_import.errors import NodesImportError
from nodes_import.logs import redact_dsn
from nodes_import.store import connection, jobrows

log = logging.getLogger(__name__)

DB_TIMEOUT_S = 2.0  # an admin request waits at most this for a connection
ADMIN_POOL_NAME = "nodes-import-admin"  # its application_name in pg_stat_activity
# The daemon's lease (node.import.lease-timeout.ms) when none is given: a running job
# without a heartbeat this long is run by nobody, and a cancel ends it at once.
DEFAULT_LEASE_MS = 30_000

Readiness = Callable[[], str | None]  # None: ready; else the reason it is not
StartResponse = Callable[..., Any]

# Routes that answer without the token: probes (systemd, a load balancer) carry none.
OPEN_PATHS = ("/healthz", "/readyz")


def _cancel_target(path: str) -> str | None:
    """The job id of ``/jobs/{id}/cancel`` (None: another path)."""
    parts = path.split("/")
    if len(parts) == 4 and parts[1] == "jobs" and parts[3] == "cancel":
        return parts[2]
    return None


class AdminApp:
    """The WSGI application. ``readiness`` is the daemon's hook; ``pool`` may be set later."""

    def __init__(self, *, pool: ConnectionPool | None = None,
                 readiness: Readiness | None = None,
                 collectors: Iterable[Any] = (), db_timeout_s: float = DB_TIMEOUT_S,
                 token: str | None = None, lease_ms: int = DEFAULT_LEASE_MS) -> None:
        self.pool = pool
        self._token = f"Bearer {token}".encode() if token else None
        self._basic_password = token.encode() if token else None
        self.db_timeout_s = db_timeout_s
        self.readiness = readiness
        self.registry = metrics.registry(collectors)
        self.job_routes = JobRoutes(self._conn, token=token, lease_ms=lease_ms)

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
        method = environ.get("REQUEST_METHOD", "GET")
        path = environ.get("PATH_INFO", "/") or "/"
        browser = prefers_html(environ)
        allow = "GET, HEAD"
        try:
            target = _cancel_target(path)
            if target is not None:
                allow = "POST"
                if method != "POST":
                    raise HttpError(405, f"method {method} not allowed: POST to cancel")
                code, content_type, body, more = self.job_routes.cancel(environ, target, browser)
            else:
                if method not in ("GET", "HEAD"):
                    raise HttpError(405, f"method {method} not allowed: this API is read-only "
                                         "but for POST /jobs/{id}/cancel")
                self._authorize(environ)
                code, content_type, body, more = self._route(environ, browser)
        except HttpError as exc:
            code, content_type, body, more = self._error(exc.code, exc.message, browser)
        except NodesImportError as exc:  # the database went away mid-request
            code, content_type, body, more = self._error(
                503, f"database unavailable: {redact_dsn(str(exc))}", browser)
        except Exception:  # a bug: a JSON 500 and one log line, never a stack trace page
            log.exception("admin request failed", extra={"fields": {"path": path}})
            code, content_type, body, more = self._error(500, "internal error", browser)
        headers = [("Content-Type", content_type), ("Content-Length", str(len(body))),
                   ("Cache-Control", "no-store"), *more]
        if code == 405:
            headers.append(("Allow", allow))
        if code == 401:
            # A browser asks its user for a login (the token as the password) on Basic.
            headers.append(("WWW-Authenticate", 'Basic realm="nodes-import", charset="UTF-8"'
                            if browser else 'Bearer realm="nodes-import"'))
        start_response(f"{code} {REASONS.get(code, '')}", headers)
        return [] if method == "HEAD" else [body]

    @staticmethod
    def _error(code: int, message: str, browser: bool) -> Answer:
        if browser:
            return code, pages.HTML, pages.error_page(code, message), list(
                pages.SECURITY_HEADERS)
        return code, JSON, json_body({"error": message}), []

    def _authorize(self, environ: dict[str, Any]) -> None:
        """With a token configured, refuse (401) a request without it, probes excepted:
        ``Authorization: Bearer <token>``, or HTTP Basic with the token as the password."""
        if self._token is None or environ.get("PATH_INFO") in OPEN_PATHS:
            return
        given = environ.get("HTTP_AUTHORIZATION", "").encode("latin-1", "replace")
        if hmac.compare_digest(given, self._token):  # constant time: no timing oracle
            return
        if given[:6].lower() == b"basic " and self._basic_password is not None:
            try:
                _, _, password = base64.b64decode(given[6:].strip(), validate=True) \
                    .partition(b":")
            except ValueError:
                password = b""
            if hmac.compare_digest(password, self._basic_password):
                return
        raise HttpError(401, "missing or wrong bearer token (admin.token)")

    def _route(self, environ: dict[str, Any], browser: bool) -> Answer:
        path = environ.get("PATH_INFO", "/") or "/"
        query = parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True)
        jobs = self.job_routes
        if path == "/metrics":
            from prometheus_client.exposition import choose_encoder

            encoder, content_type = choose_encoder(environ.get("HTTP_ACCEPT", ""))
            return 200, content_type, encoder(self.registry), []
        if path == "/healthz":
            return 200, JSON, json_body({"status": "ok"}), []
        if path == "/readyz":
            reasons = self.not_ready()
            if reasons:
                return 503, JSON, json_body({"status": "not ready", "reasons": reasons}), []
            return 200, JSON, json_body({"status": "ready"}), []
        if path == "/" and browser:
            return jobs.jobs_page(query)
        if path in ("/jobs", "/jobs/"):
            return jobs.jobs(query)
        parts = path.split("/")
        if len(parts) == 4 and parts[1] == "jobs" and parts[3] == "rejects":
            return jobs.rejects(parts[2], query)
        if path.startswith("/jobs/"):
            raw_id = path.removeprefix("/jobs/")
            return jobs.job_page(raw_id, query) if browser else jobs.job(raw_id, query)
        if path == "/":
            raise HttpError(404, "no such path: / (the jobs page is HTML: ask for text/html)")
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

    @contextmanager
    def _conn(self) -> Iterator[Any]:
        """A pooled connection; psycopg errors come out as the StorageError tree."""
        if self.pool is None:
            raise HttpError(503, "database not connected yet")
        with connection.wrapped(), self.pool.connection(timeout=self.db_timeout_s) as conn:
            yield conn


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
                 scrape: Callable[[metrics.Scrape], None],
                 lease_ms: int = DEFAULT_LEASE_MS) -> None:
        self.ops, self.owner = ops, owner
        self.app = AdminApp(readiness=readiness, collectors=[metrics.ScrapeCollector(
            [scrape, self._scrape_jobs], on_error=_scrape_failed)], token=ops.admin_token,
            lease_ms=lease_ms)
        self.server: AdminServer | None = None
        self.pool: ConnectionPool | None = None
        self.housekeeper: Housekeeper | None = None
        self._dsn, self._connect_timeout_s = "", 0.0  # set by attach

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
        self._dsn, self._connect_timeout_s = dsn, connect_timeout_s
        self.pool = self._open_pool()
        self.app.pool = self.pool
        self.housekeeper = Housekeeper(self.pool, self.ops)
        self.housekeeper.start()

    def _open_pool(self) -> ConnectionPool:
        return connection.open_pool(self._dsn, max_size=2, timeout_s=self._connect_timeout_s,
                                    name=ADMIN_POOL_NAME)

    def reopen(self) -> None:
        """After an outage, a fresh pool in place of the current one (as the daemon's own,
        ``MainDatabase.reopen``): psycopg_pool waits longer after each failed reconnect
        (1, 2, 4, 8 s...), so after a long outage the old pool could leave ``/readyz``,
        the scrapes and housekeeping failing for about as long again. ``StorageError``
        (the current one is kept and goes on trying) when the database is gone again."""
        if self.pool is None:
            return
        fresh = self._open_pool()
        old, self.pool = self.pool, fresh
        self.app.pool = fresh
        if self.housekeeper is not None:
            self.housekeeper.pool = fresh
        old.close(timeout=1.0)

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
