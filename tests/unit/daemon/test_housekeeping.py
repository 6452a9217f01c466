"""The housekeeping thread outlives a database outage: a pool that cannot hand out a
connection is a StorageError it logs and retries, never an exception that ends the thread."""

from __future__ import annotations

import logging
import socket

import pytest
from psycopg_pool import ConnectionPool

from nodes_import.config import OperationsConfig
from nodes_import.daemon.housekeeping import Housekeeper
from nodes_import.errors import ConnectionLostError


@pytest.fixture
def dead_pool() -> ConnectionPool:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    pool = ConnectionPool(f"postgresql://nobody@127.0.0.1:{port}/x", min_size=1,
                          timeout=0.3, open=False, kwargs={"connect_timeout": 1})
    pool.open(wait=False)
    yield pool
    pool.close(timeout=0.5)


def test_a_pool_timeout_is_a_lost_connection_not_a_raw_psycopg_error(
        dead_pool: ConnectionPool) -> None:
    keeper = Housekeeper(dead_pool, OperationsConfig())
    with pytest.raises(ConnectionLostError):
        keeper.check_long_running()
    with pytest.raises(ConnectionLostError):
        keeper.purge()


def test_the_thread_logs_the_outage_and_keeps_checking(
        dead_pool: ConnectionPool, caplog: pytest.LogCaptureFixture) -> None:
    keeper = Housekeeper(dead_pool, OperationsConfig(long_running_warning_ms=400))
    with caplog.at_level(logging.WARNING, logger="nodes_import.daemon.housekeeping"):
        keeper.start()
        try:
            keeper.stopped.wait(1.5)
            assert keeper.is_alive()  # a raw PoolTimeout would have ended it
        finally:
            keeper.stop()
    failed = [r for r in caplog.records
              if r.getMessage() == "housekeeping failed; retried at the next check"]
    assert len(failed) >= 2
