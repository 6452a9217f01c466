"""Storage: connections (the pool, session settings, the staging table, the watchdog),
the schema and its migrations, and how database errors are classified.

The batch write (the hot path's SQL) is in ``batchwrite``; job rows, leases and
housekeeping queries are in ``jobrows``.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from typing import Any

import psycopg
from psycopg import sql
from psycopg_pool import ConnectionPool, PoolTimeout

from nodes_import.errors import ConnectionLostError, StorageError, TransientStorageError

log = logging.getLogger(__name__)

STAGE_TABLE = "nodes_import_stage"
# SQLSTATEs worth another try: the server chose a victim or gave up on a statement.
_TRANSIENT_SQLSTATES = {
    "40001",  # serialization_failure
    "40P01",  # deadlock_detected
    "57014",  # query_canceled (statement_timeout)
    "55P03",  # lock_not_available
}
# SQLSTATEs of the link itself (besides class 08, connection_exception): the server is
# going away or takes no new connection. Transient, and an outage for the breaker.
_CONNECTION_SQLSTATES = {
    "57P01",  # admin_shutdown
    "57P02",  # crash_shutdown
    "57P03",  # cannot_connect_now
    "53300",  # too_many_connections
}


def classify(exc: BaseException) -> StorageError:
    """Wrap a psycopg error: ``ConnectionLostError`` (the link), ``TransientStorageError``
    (worth another try) or ``StorageError`` (the data: not retried)."""
    if isinstance(exc, StorageError):
        return exc
    sqlstate = getattr(exc, "sqlstate", None)
    if isinstance(exc, (psycopg.OperationalError, PoolTimeout)) and sqlstate is None:
        return ConnectionLostError(f"database connection failed: {_first_line(exc)}")
    if sqlstate in _CONNECTION_SQLSTATES or (sqlstate or "").startswith("08"):
        return ConnectionLostError(f"{_first_line(exc)} (SQLSTATE {sqlstate})")
    if sqlstate in _TRANSIENT_SQLSTATES:
        return TransientStorageError(f"{_first_line(exc)} (SQLSTATE {sqlstate})")
    if isinstance(exc, psycopg.InterfaceError):
        return ConnectionLostError(f"database connection unusable: {_first_line(exc)}")
    return StorageError(f"{_first_line(exc)}" + (f" (SQLSTATE {sqlstate})" if sqlstate else ""))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


@contextmanager
def wrapped() -> Iterator[None]:
    """Turn psycopg errors raised inside into the service's StorageError tree."""
    try:
        yield
    except (psycopg.Error, PoolTimeout) as exc:
        raise classify(exc) from exc


# ---------------------------------------------------------------- connections and schema


# Settings of the writer connections' own sessions (the server's configuration is never
# changed). jit: the upsert's estimated cost passes jit_above_cost, and compiling it took
# 0.4-0.5 s of every 35k-row batch on PostgreSQL 15 with LLVM (a fresh batch 2.4 -> 1.6 s
# with jit off). work_mem: the batch's sorts (DISTINCT ON, the inserts' ORDER BY) fit in
# memory instead of spilling ~6 MB temp files per sort at the 4 MB default.
SESSION_SETTINGS = {"jit": "off", "work_mem": "32MB"}


def _configure(conn: psycopg.Connection[Any]) -> None:
    """Per-connection set-up: session settings, the reusable staging table (rows vanish
    at each commit)."""
    for name, value in SESSION_SETTINGS.items():
        conn.execute(sql.SQL("SELECT set_config({}, {}, false)").format(
            sql.Literal(name), sql.Literal(value)))
    conn.execute(
        f"CREATE TEMP TABLE IF NOT EXISTS {STAGE_TABLE} ("
        " row_number BIGINT NOT NULL, reference_id TEXT NOT NULL,"
        " node_type TEXT, metadata JSONB) ON COMMIT DELETE ROWS"
    )
    # The per-batch ANALYZE only has to tell the planner how many rows are staged (and
    # that keys are distinct): a 300-row sample does, in ~1 ms instead of ~60 ms.
    for column in ("row_number", "reference_id", "node_type", "metadata"):
        conn.execute(f"ALTER TABLE {STAGE_TABLE} ALTER COLUMN {column} SET STATISTICS 1")
    conn.commit()


# libpq TCP keepalives: a peer that vanished without a FIN (network partition, VM
# gone) is noticed in about idle + interval * count seconds instead of hours.
KEEPALIVES: dict[str, Any] = {"keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10,
              "keepalives_count": 3}


def open_pool(dsn: str, *, max_size: int, timeout_s: float = 30.0,
              name: str = "nodes-import") -> ConnectionPool:
    """A psycopg pool whose connections carry the staging table. Opens and waits.

    ``timeout_s`` bounds both waiting for a pooled connection and each new connection's
    handshake (libpq ``connect_timeout``), so a server that accepts but never answers
    cannot hang start-up or a writer.
    """
    pool = ConnectionPool(
        dsn,
        min_size=1,
        max_size=max_size,
        kwargs={"autocommit": False, "application_name": name,
                "connect_timeout": max(1, round(timeout_s)), **KEEPALIVES},
        configure=_configure,
        timeout=timeout_s,
        name=name,
        open=False,
    )
    try:
        pool.open(wait=True, timeout=timeout_s)
    except PoolTimeout as exc:
        pool.close()
        raise ConnectionLostError(
            f"cannot connect to PostgreSQL within {timeout_s:.0f}s") from exc
    return pool


def migrations() -> list[tuple[str, str]]:
    """The versioned schema files, in order: (version, SQL)."""
    folder = resources.files("nodes_import.store") / "sql"
    files = sorted((p for p in folder.iterdir() if p.name.endswith(".sql")), key=lambda p: p.name)
    return [(p.name.removesuffix(".sql"), p.read_text(encoding="utf-8")) for p in files]


def init_schema(conn: psycopg.Connection[Any]) -> list[str]:
    """Apply the migrations not yet applied; returns the versions applied now.

    An advisory lock serialises concurrent ``db init`` runs (several daemons starting).
    """
    applied_now = []
    with wrapped(), conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('nodes_import.schema'))")
        conn.execute("CREATE TABLE IF NOT EXISTS schema_migrations ("
                     " version TEXT PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())")
        done = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
        for version, text in migrations():
            if version in done:
                continue
            conn.execute(text)  # our own files, never input
            conn.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (version,))
            applied_now.append(version)
    return applied_now


def new_id_function(conn: psycopg.Connection[Any]) -> str:
    """``uuidv7()`` where the server has it (PostgreSQL 18+), else ``gen_random_uuid()``."""
    version = conn.info.server_version
    return "uuidv7()" if version >= 180000 else "gen_random_uuid()"


@contextmanager
def watchdog(conn: psycopg.Connection[Any], seconds: float) -> Iterator[None]:
    """Break ``conn``'s socket if the block inside runs past ``seconds``.

    ``statement_timeout`` is enforced by the server, so it cannot help when the link
    itself stalls (a dead proxy, a partition): the client would wait for an answer
    forever. Shutting the socket down makes the blocked read fail at once, which
    surfaces as a transient connection error, and the pool discards the connection.
    """
    fired = threading.Event()

    def fire() -> None:
        fired.set()
        try:
            fd = conn.pgconn.socket
            with socket.socket(fileno=os.dup(fd)) as sock:
                sock.shutdown(socket.SHUT_RDWR)
        except (OSError, psycopg.Error):
            pass  # already closed: nothing is blocked on it

    timer = threading.Timer(seconds, fire)
    timer.daemon = True
    timer.start()
    try:
        yield
    except StorageError as exc:
        if fired.is_set():
            raise ConnectionLostError(
                f"database connection stalled for {seconds:.0f}s; connection dropped") from exc
        raise
    finally:
        timer.cancel()


def probe(dsn: str, *, timeout_s: float) -> None:
    """A fresh connection and ``SELECT 1`` (the circuit breaker's probe): proves the server
    takes new connections, whatever state a pool's old ones are in."""
    with wrapped(), psycopg.connect(dsn, connect_timeout=max(2, round(timeout_s)),
                                    autocommit=True, **KEEPALIVES) as conn:
        conn.execute("SELECT 1")


def ping(conn: psycopg.Connection[Any]) -> None:
    """One round trip: the database answers (readiness)."""
    with wrapped():
        conn.execute("SELECT 1")
        conn.rollback()
