"""Cancelling a job: the request goes through the database, so it reaches the job wherever
it runs (any daemon, any worker, a one-off ``import``).

``cancel_job`` records the time of the request in ``job_status.cancel_requested_at``; the
job's runner sees it in the answer of its next batch's counters UPDATE
(``batchwrite.write_part``: no extra round trip), ends the job FAILED "Cancelled" and keeps
what it committed. A job that has not started never starts: ``cancel_job`` ends a PENDING
job at once, and ``jobrows.begin_job`` refuses a job whose request it finds. A re-run on
purpose (``import --retry-failed``) clears the request.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import class_row

from nodes_import import status as states
from nodes_import.errors import CANCELLED_MESSAGE
from nodes_import.jobs import JobRow
from nodes_import.store.connection import wrapped
from nodes_import.store.jobrows import job_columns

CANCELLED = "cancelled"  # ended FAILED "Cancelled" now: nobody was running it
REQUESTED = "requested"  # running: its runner stops at its next batch boundary
FINISHED = "finished"  # COMPLETED or FAILED already: nothing to cancel


@dataclass(frozen=True)
class Cancel:
    """The answer to ``cancel_job``: what became of the job, and its row afterwards."""

    outcome: str
    row: JobRow  # the row afterwards
    was: str  # its status before


# The job's row, locked, and whether anyone runs it: no heartbeat for the lease's length.
_LOCK = sql.SQL(
    "SELECT {}, heartbeat_at IS NULL OR heartbeat_at <= now() - %s * interval '1 millisecond'"
    " AS unattended FROM job_status WHERE id = %s FOR UPDATE").format(job_columns())
# The request recorded; ``now``: the job ended FAILED "Cancelled" in the same UPDATE.
_CANCEL = {now: sql.SQL(
    "UPDATE job_status SET cancel_requested_at = coalesce(cancel_requested_at, now()),"
    " updated_at = now(){} WHERE id = %s RETURNING {}").format(
        sql.SQL(", status = 'FAILED', error = %s, finished_at = now()" if now else ""),
        job_columns()) for now in (False, True)}


def cancel_job(conn: psycopg.Connection[Any], job_id: str, *, lease_ms: int) -> Cancel | None:
    """Cancel a job (None: no such job), in one transaction with its row locked:

    1. COMPLETED or FAILED: nothing changes (``FINISHED``);
    2. PENDING, or PROCESSING without a heartbeat for ``lease_ms`` (nobody runs it: its
       daemon or its ``import`` died): FAILED "Cancelled" at once (``CANCELLED``); a daemon
       that takes it up later finds it finished;
    3. PROCESSING and running: the request is recorded (``REQUESTED``); its runner ends it
       at its next batch boundary.
    """
    with wrapped(), conn.transaction(), conn.cursor() as cur:
        found = cur.execute(_LOCK, (lease_ms, job_id)).fetchone()
        if found is None:
            return None
        row = JobRow(*found[:-1])
        if row.status in states.TERMINAL:
            return Cancel(FINISHED, row, row.status)
        now = row.status == states.PENDING or bool(found[-1])
        params: tuple[Any, ...] = (CANCELLED_MESSAGE, job_id) if now else (job_id,)
        with conn.cursor(row_factory=class_row(JobRow)) as rows:
            updated = rows.execute(_CANCEL[now], params).fetchone()
    assert updated is not None
    return Cancel(CANCELLED if now else REQUESTED, updated, row.status)
