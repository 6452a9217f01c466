"""Following a job from the outside until it ends (``jobs cancel --wait``): its row read
every ``POLL_S``, its progress shown as ``import`` shows it."""

from __future__ import annotations

import time
from collections.abc import Callable

import click
from psycopg_pool import ConnectionPool

from nodes_import import status
from nodes_import.jobs import JobRow
from nodes_import.store import jobrows
from nodes_import.worker.jobstate import Progress

# How often the job's row is read while waiting.
POLL_S = 1.0

timeout_option = click.option(
    "--timeout", type=click.FloatRange(min=0, min_open=True), default=None,
    help="Give up waiting after this many seconds (exit 1; the job goes on). Default: wait "
         "until it ends.")


def as_progress(row: JobRow, now: float) -> Progress:
    """The row's figures as the engine's ``Progress``, what ``import``'s displays take: its
    elapsed time (first start to last batch, the database's clock) ends at ``now``."""
    elapsed = 0.0
    if row.started_at is not None and row.updated_at is not None:
        elapsed = max((row.updated_at - row.started_at).total_seconds(), 0.0)
    return Progress(rows_read=row.rows_committed, rows_committed=row.rows_committed,
                    failed=row.failed_count, bytes_read=row.bytes_read,
                    source_bytes=row.source_bytes, started=now - elapsed)


def until_finished(pool: ConnectionPool, job_id: str, *, timeout_s: float | None,
                   shown: Callable[[Progress], None] | None,
                   poll_s: float = POLL_S) -> JobRow | None:
    """Read the job's row every ``poll_s`` until it is COMPLETED or FAILED (its row), or
    ``timeout_s`` passed (None). A job not created yet (the daemon has not taken its
    message) is waited for; each PROCESSING row is shown."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        with pool.connection() as conn:
            row = jobrows.get_job(conn, job_id)
        if row is not None and row.status in status.TERMINAL:
            return row
        if row is not None and row.status == status.PROCESSING and shown is not None:
            shown(as_progress(row, time.monotonic()))
        if deadline is not None and time.monotonic() + poll_s > deadline:
            return None
        time.sleep(poll_s)
