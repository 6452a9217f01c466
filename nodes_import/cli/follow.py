"""Following a job from the outside until it ends (``submit --wait``, ``jobs cancel
--wait``): its row read every ``POLL_S``, its progress shown as ``import`` shows it (a bar
on a terminal, a line every ``--progress-interval`` seconds elsewhere), the same exit codes
(0 COMPLETED, 1 FAILED). A job the daemon has not taken yet (no row) is waited for."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

from nodes_import import status
from nodes_import.cli import progress
from nodes_import.cli.common import EXIT_FAILED, EXIT_OK, database, fail, fail_on, load
from nodes_import.cli.progress import final_text
from nodes_import.errors import NodesImportError, TransientStorageError
from nodes_import.jobs import JobRow
from nodes_import.worker.jobstate import Progress

if TYPE_CHECKING:
    from psycopg_pool import ConnectionPool

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
    message) is waited for; each PROCESSING row is shown. A database that goes away for a
    while is waited for too (the job goes on without us)."""
    from nodes_import.store import connection, jobrows

    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        try:
            with connection.wrapped(), pool.connection(timeout=max(poll_s, 1.0)) as conn:
                row = jobrows.get_job(conn, job_id)
        except TransientStorageError:
            row = None
        if row is not None and row.status in status.TERMINAL:
            return row
        if row is not None and row.status == status.PROCESSING and shown is not None:
            shown(as_progress(row, time.monotonic()))
        if deadline is not None and time.monotonic() + poll_s > deadline:
            return None
        time.sleep(poll_s)


def wait_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """The options of ``submit --wait``."""
    for option in reversed((
            click.option("--wait", is_flag=True, help="Follow the job until it ends, with "
                         "import's progress and exit codes (0 COMPLETED, 1 FAILED); needs "
                         "the database the daemon writes to."),
            timeout_option,
            click.option("--dsn", help="With --wait: the daemon's PostgreSQL (default: "
                         "database.dsn, else the libpq environment)."),
            click.option("--progress-interval", type=click.FloatRange(min=0),
                         default=progress.PROGRESS_INTERVAL_S, show_default=True,
                         help="With --wait off a terminal: seconds between progress lines "
                              "(0: none)."),
            click.option("--json", "as_json", is_flag=True,
                         help="With --wait: print the final job row as JSON."))):
        command = option(command)
    return command


def after_submit(ctx: click.Context, job_id: str, *, wait: bool, timeout: float | None,
                 dsn: str | None, progress_interval: float, as_json: bool) -> None:
    """With ``--wait``: follow the job just sent until it ends; print it as ``import``
    does and exit 0 (COMPLETED) or 1 (FAILED, or still running at ``--timeout``)."""
    if not wait:
        return
    cfg = load(ctx, **{"database.dsn": dsn})
    shown = progress.reporter(job_id, on_terminal=sys.stderr.isatty(),
                              interval_s=progress_interval, as_json=as_json)
    try:
        with database(cfg, max_size=1) as pool:
            row = until_finished(pool, job_id, timeout_s=timeout, shown=shown)
    except NodesImportError as exc:
        fail_on(exc)
    finally:
        if shown:
            shown.done()
    if row is None:
        fail(f"job {job_id} has not ended after {timeout:g}s; it goes on "
             f"(nodes-import jobs show {job_id})")
    click.echo(final_text(row, as_json))
    sys.exit(EXIT_OK if row.status == status.COMPLETED else EXIT_FAILED)
