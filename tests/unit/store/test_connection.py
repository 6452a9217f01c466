"""How database errors are classified: the link (ConnectionLostError), worth another try
(TransientStorageError), or the data (StorageError). Pure: psycopg's own exception classes."""

from __future__ import annotations

import socket

import psycopg
import pytest
from psycopg_pool import PoolTimeout

from nodes_import.errors import ConnectionLostError, StorageError, TransientStorageError
from nodes_import.store import connection


def _error(sqlstate: str, message: str = "boom") -> psycopg.Error:
    return psycopg.errors.lookup(sqlstate)(message)


@pytest.mark.parametrize("sqlstate", ["57P01", "57P02", "57P03", "53300", "08006", "08001"])
def test_a_server_going_away_is_a_lost_connection(sqlstate: str) -> None:
    wrapped = connection.classify(_error(sqlstate))
    assert isinstance(wrapped, ConnectionLostError)
    assert f"SQLSTATE {sqlstate}" in str(wrapped)


@pytest.mark.parametrize("sqlstate", ["40001", "40P01", "57014", "55P03"])
def test_a_chosen_victim_is_transient_but_not_a_lost_connection(sqlstate: str) -> None:
    wrapped = connection.classify(_error(sqlstate, "the connection was chosen as a victim"))
    assert type(wrapped) is TransientStorageError  # the word "connection" decides nothing


@pytest.mark.parametrize("exc", [psycopg.OperationalError("server closed the connection"),
                                 PoolTimeout("couldn't get a connection after 2.00 sec"),
                                 psycopg.InterfaceError("the connection is closed")])
def test_errors_without_a_sqlstate_from_the_link_are_lost_connections(exc: Exception) -> None:
    assert isinstance(connection.classify(exc), ConnectionLostError)


def test_refused_data_is_neither_transient_nor_a_lost_connection() -> None:
    wrapped = connection.classify(_error("22001", "value too long for connection"))
    assert type(wrapped) is StorageError
    assert "SQLSTATE 22001" in str(wrapped)


def test_a_pool_that_cannot_connect_raises_a_lost_connection() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(ConnectionLostError, match="cannot connect to PostgreSQL within 1s"):
        connection.open_pool(f"postgresql://nobody@127.0.0.1:{port}/x", max_size=1,
                             timeout_s=1.0)
