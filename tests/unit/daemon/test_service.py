"""The daemon's close (the end of the stop order) without a broker or a database."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from psycopg_pool import PoolTimeout

from nodes_import import config
from nodes_import.daemon.service import Daemon


class UnreachablePool:
    """A pool whose database is away: no connection comes within its timeout."""

    closed = False

    @contextmanager
    def connection(self, timeout: float | None = None) -> Iterator[Any]:
        raise PoolTimeout("couldn't get a connection after 10.00 sec")
        yield

    def close(self, timeout: float = 5.0) -> None:
        self.closed = True


def _daemon() -> Daemon:
    cfg = config.load(overrides={"database.dsn": "postgresql://127.0.0.1:1/x",
                                 "kafka.bootstrap-servers": "127.0.0.1:1",
                                 "admin.enabled": False}, environ={})
    return Daemon(cfg)


def test_close_goes_on_to_the_end_when_the_leases_cannot_be_released(
        caplog: pytest.LogCaptureFixture) -> None:
    daemon = _daemon()
    pool = UnreachablePool()
    daemon.db._pool = pool  # type: ignore[assignment]
    with caplog.at_level(logging.INFO, logger="nodes_import.daemon"):
        daemon._close()
    messages = [r.getMessage() for r in caplog.records if r.name == "nodes_import.daemon"]
    assert messages == ["cannot release leases", "daemon stopped"]
    assert pool.closed and not daemon.db.opened
