"""The main loop's database pool (parent side): opened at start, replaced after an outage.

The daemon's main thread (job rows: create, claim, FAIL) and the lease heartbeat share
one small pool. After an outage it is replaced by a fresh one (``reopen``): the old one
may wait out psycopg_pool's reconnect backoff (seconds, doubling while the database was
away) before it connects again. Users read ``pool`` each time, so they follow the swap.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from psycopg_pool import ConnectionPool

from nodes_import.errors import StorageError
from nodes_import.store import connection

# How long the main loop waits for a pooled connection: it must go on polling (and
# reaping) while the database is away, and the breaker needs the failure quickly.
DB_WAIT_S = 2.0
POOL_SIZE = 2  # the main thread and the heartbeat


class MainDatabase:
    """The daemon's own small connection pool; ``open`` and ``close`` bracket its life."""

    def __init__(self, dsn: str, *, connect_timeout_s: float) -> None:
        self.dsn, self.connect_timeout_s = dsn, connect_timeout_s
        self._pool: ConnectionPool | None = None

    @property
    def pool(self) -> ConnectionPool:
        """The current pool (``StorageError`` before ``open``)."""
        if self._pool is None:
            raise StorageError("the daemon's database pool is not open")
        return self._pool

    @property
    def opened(self) -> bool:
        """``open`` has succeeded (and ``close`` not run since)."""
        return self._pool is not None

    def open(self) -> None:
        """Connect (fails fast past the connect timeout) and apply pending migrations."""
        self._pool = connection.open_pool(self.dsn, max_size=POOL_SIZE,
                                          timeout_s=self.connect_timeout_s)
        with connection.wrapped(), self._pool.connection() as conn:
            connection.init_schema(conn)

    def reopen(self) -> None:
        """A fresh pool in place of the current one; ``StorageError`` (the current one is
        kept and goes on trying) when the database is gone again."""
        fresh = connection.open_pool(self.dsn, max_size=POOL_SIZE,
                                     timeout_s=self.connect_timeout_s)
        old, self._pool = self._pool, fresh
        if old is not None:
            old.close(timeout=1.0)

    @contextmanager
    def conn(self) -> Iterator[Any]:
        """A pooled connection for the main loop, waited for at most ``DB_WAIT_S``; a pool
        timeout becomes a ``TransientStorageError`` like any other outage."""
        with connection.wrapped(), self.pool.connection(timeout=DB_WAIT_S) as conn:
            yield conn

    def close(self) -> None:
        """Close the pool. Idempotent."""
        if self._pool is not None:
            self._pool.close()
            self._pool = None
