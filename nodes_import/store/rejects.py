"""A job's rejected rows (``job_failures``), read whole without holding them in memory.

``stream`` reads them through a server-side (named) cursor, ``itersize`` rows per round
trip, so a job with a million rejected rows costs the reader one page of them at a time
(``jobs rejects``). ``page`` reads one page after a row number (keyset paging on the
``(job_id, row_number)`` index: every page costs the same, however deep), for the admin
API, whose requests must each be short.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
from psycopg.rows import class_row

from nodes_import.store.connection import wrapped
from nodes_import.store.jobrows import RejectedRow

# Rows fetched per round trip by ``stream``.
STREAM_ITERSIZE = 5000

_COLUMNS = "SELECT row_number, reference_id, reason, line FROM job_failures"


def stream(conn: psycopg.Connection[Any], job_id: str, *,
           itersize: int = STREAM_ITERSIZE) -> Iterator[RejectedRow]:
    """Every rejected row of ``job_id`` by row number, through a named cursor: at most
    ``itersize`` of them in memory. The connection holds a transaction until the iterator
    is exhausted or closed."""
    name = f"nodes_import_rejects_{uuid.uuid4().hex[:12]}"
    with wrapped(), conn.transaction(), \
            conn.cursor(name, row_factory=class_row(RejectedRow)) as cur:
        cur.itersize = itersize
        cur.execute(_COLUMNS + " WHERE job_id = %s ORDER BY row_number", (job_id,))
        yield from cur


def page(conn: psycopg.Connection[Any], job_id: str, *, after: int = 0,
         limit: int = 1000) -> list[RejectedRow]:
    """Up to ``limit`` rejected rows of ``job_id`` numbered above ``after``, in order."""
    with wrapped(), conn.cursor(row_factory=class_row(RejectedRow)) as cur:
        rows = cur.execute(_COLUMNS + " WHERE job_id = %s AND row_number > %s"
                           " ORDER BY row_number LIMIT %s", (job_id, after, limit)).fetchall()
    conn.rollback()
    return rows
