"""The writer connections' own session settings (the server's configuration is untouched)."""

from __future__ import annotations

import psycopg
import pytest

from nodes_import.store import connection
from tests.fixtures.postgres import Database


def _settings(conn: psycopg.Connection) -> dict[str, str]:
    return {name: conn.execute("SELECT current_setting(%s)", (name,)).fetchone()[0]
            for name in connection.SESSION_SETTINGS}


def test_pooled_connections_carry_the_session_settings_across_rollbacks(db: Database) -> None:
    assert connection.SESSION_SETTINGS == {"jit": "off", "work_mem": "32MB"}
    with db.pool.connection() as conn:
        assert _settings(conn) == connection.SESSION_SETTINGS
        with pytest.raises(psycopg.errors.DivisionByZero):
            conn.execute("SELECT 1 / 0")
        conn.rollback()
        assert _settings(conn) == connection.SESSION_SETTINGS


def test_other_sessions_keep_the_servers_settings(db: Database) -> None:
    with psycopg.connect(db.dsn) as conn:
        assert conn.execute("SELECT current_setting('work_mem')").fetchone()[0] != "32MB"
