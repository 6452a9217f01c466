"""The ``jobs`` commands: ``list``, ``show``, ``cancel``, ``rejects``, ``purge``. The
store (and with it psycopg) is imported inside each command: ``jobs --help`` loads none."""

from __future__ import annotations

import csv
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from typing import IO, Any, ClassVar

import click
import orjson

from nodes_import import metrics, status
from nodes_import.cli import follow
from nodes_import.cli.common import (
    DSN_HELP,
    EXIT_FAILED,
    EXIT_OK,
    JSON_HELP,
    database,
    dumps,
    fail,
    fail_on,
    load,
)
from nodes_import.cli.progress import summary
from nodes_import.errors import NodesImportError

# The columns of `jobs rejects` (CSV header, JSON keys): a job_failures row.
REJECT_COLUMNS = ("row_number", "reference_id", "reason", "line")


class Duration(click.ParamType):
    """``30d``, ``12h``, ``90m``, ``45s``, ``2w`` -> seconds."""

    name = "duration"
    UNITS: ClassVar[dict[str, int]] = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> float:
        text = str(value).strip().lower()
        unit = text[-1:] if text[-1:] in self.UNITS else ""
        number = text[:-1] if unit else text
        try:
            seconds = float(number) * self.UNITS[unit or "d"]
        except ValueError:
            self.fail(f"{value!r} is not a duration like 30d, 12h, 90m", param, ctx)
        if seconds <= 0:
            self.fail(f"{value!r} must be positive", param, ctx)
        return seconds


@click.group()
def jobs() -> None:
    """Inspect, cancel and purge import jobs."""


@jobs.command("list")
@click.option("--status", "job_status", type=click.Choice(status.ALL, case_sensitive=False),
              help="Only jobs of this status.")
@click.option("--group", "group_id", help="Only jobs of this group.")
@click.option("--since", "since", type=Duration(),
              help="Only jobs created this long ago or less: 2h, 30m, 7d (a bare number is "
                   "days).")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 10_000),
              help="Jobs listed at most.")
@click.option("--dsn", help=DSN_HELP)
@click.option("--json", "as_json", is_flag=True, help=JSON_HELP)
@click.pass_context
def jobs_list(ctx: click.Context, job_status: str | None, group_id: str | None,
              since: float | None, limit: int, dsn: str | None, as_json: bool) -> None:
    """The most recent jobs first."""
    from nodes_import.store import jobrows

    cfg = load(ctx, **{"database.dsn": dsn})
    try:
        with database(cfg, max_size=1) as pool, pool.connection() as conn:
            rows = jobrows.list_jobs(conn, status=job_status.upper() if job_status else None,
                                     limit=limit, group_id=group_id, since_s=since)
    except NodesImportError as exc:
        fail_on(exc)
    if as_json:
        click.echo(dumps([asdict(r) for r in rows]))
        return
    click.echo(f"{'id':36}  {'status':10}  {'total':>10}  {'success':>10}  {'failed':>8}  group")
    for r in rows:
        click.echo(f"{r.id:36}  {r.status:10}  {r.total_nodes:>10,}  "
                   f"{r.success_count:>10,}  {r.failed_count:>8,}  {r.group_id}")


@jobs.command("show")
@click.argument("job_id", type=click.UUID)
@click.option("--dsn", help=DSN_HELP)
@click.option("--json", "as_json", is_flag=True, help=JSON_HELP)
@click.pass_context
def jobs_show(ctx: click.Context, job_id: Any, dsn: str | None, as_json: bool) -> None:
    """One job with its first rejected rows, and its progress while it runs (rows, percent
    read, rows/s, ETA)."""
    from nodes_import.store import jobrows

    cfg = load(ctx, **{"database.dsn": dsn})
    try:
        with database(cfg, max_size=1) as pool, pool.connection() as conn:
            row = jobrows.get_job(conn, str(job_id))
            failures = jobrows.job_failures(conn, str(job_id)) if row else []
    except NodesImportError as exc:
        fail_on(exc)
    if row is None:
        fail(f"no job {job_id}")
    if as_json:
        p = metrics.job_progress(row)
        click.echo(dumps({**asdict(row), "progress_percentage": p.percent,
                          "rows_per_s": p.rows_per_s, "eta_s": p.eta_s,
                          "failures": [asdict(f) for f in failures]}))
        return
    click.echo(summary(row))
    for f in failures:
        click.echo(f"  row {f.row_number}: {f.reason}: {f.line!r}")


@jobs.command("cancel")
@click.argument("job_id", type=click.UUID)
@click.option("--wait", is_flag=True, help="Follow the job until it has stopped.")
@follow.timeout_option
@click.option("--dsn", help=DSN_HELP)
@click.pass_context
def jobs_cancel(ctx: click.Context, job_id: Any, wait: bool, timeout: float | None,
                dsn: str | None) -> None:
    """Cancel a job: a PENDING job never starts; a running one stops at its next batch
    boundary (whichever daemon or worker runs it), keeps what it committed and ends FAILED
    "Cancelled". Exit 1 when the job is unknown or already finished."""
    from nodes_import.store import cancel

    said = {cancel.CANCELLED: "cancelled: it {was}; FAILED \"Cancelled\"",
            cancel.REQUESTED: "cancel requested: it stops at its next batch boundary, keeping "
                              "what it committed, and ends FAILED \"Cancelled\""}
    cfg = load(ctx, **{"database.dsn": dsn})
    try:
        with database(cfg, max_size=1) as pool:
            with pool.connection() as conn:
                done = cancel.cancel_job(conn, str(job_id),
                                         lease_ms=cfg.executor.lease_timeout_ms)
            if done is None:
                fail(f"no job {job_id}")
            if done.outcome == cancel.FINISHED:
                fail(f"job {job_id} already finished ({done.row.status}); nothing to cancel")
            was = "had not started" if done.was == status.PENDING else \
                "was PROCESSING but nobody ran it (no heartbeat)"
            click.echo(f"job {job_id}: " + said[done.outcome].format(was=was))
            if not wait or done.outcome == cancel.CANCELLED:
                return
            row = follow.until_finished(pool, str(job_id), timeout_s=timeout, shown=None)
    except NodesImportError as exc:
        fail_on(exc)
    if row is None:
        fail(f"job {job_id} has not stopped after {timeout:g}s; it stops at its next batch "
             "boundary (jobs show)")
    click.echo(summary(row))
    sys.exit(EXIT_OK if row.cancel_requested_at is not None and row.status == status.FAILED
             else EXIT_FAILED)


@contextmanager
def _output(path: str | None) -> Iterator[IO[str]]:
    """The file ``-o`` names (stdout when none)."""
    if path is None or path == "-":
        yield sys.stdout
        return
    with open(path, "w", encoding="utf-8", newline="") as handle:
        yield handle


@jobs.command("rejects")
@click.argument("job_id", type=click.UUID)
@click.option("--csv", "as_format", flag_value="csv", default=True,
              help="CSV with a header row (the default).")
@click.option("--json", "as_format", flag_value="json",
              help="JSON lines: one object per rejected row.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, writable=True),
              help="Write to this file instead of stdout.")
@click.option("--dsn", help=DSN_HELP)
@click.pass_context
def jobs_rejects(ctx: click.Context, job_id: Any, as_format: str, output: str | None,
                 dsn: str | None) -> None:
    """Every rejected row of a job (row number, reference_id, reason, line), streamed from
    the database: a job with millions of them is never held in memory."""
    from nodes_import.store import jobrows, rejects

    cfg = load(ctx, **{"database.dsn": dsn})
    written = 0
    try:
        with database(cfg, max_size=1) as pool, pool.connection() as conn:
            if jobrows.get_job(conn, str(job_id)) is None:
                fail(f"no job {job_id}")
            with _output(output) as handle:
                rows = rejects.stream(conn, str(job_id))
                if as_format == "json":
                    for r in rows:
                        handle.write(orjson.dumps(asdict(r)).decode() + "\n")
                        written += 1
                else:
                    out = csv.writer(handle, lineterminator="\n")
                    out.writerow(REJECT_COLUMNS)
                    for r in rows:
                        out.writerow((r.row_number, r.reference_id, r.reason, r.line))
                        written += 1
    except NodesImportError as exc:
        fail_on(exc)
    except BrokenPipeError:  # `| head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit
        return
    if output not in (None, "-"):
        click.echo(f"{written:,} rejected rows of job {job_id} written to {output}", err=True)


@jobs.command("purge")
@click.option("--older-than", "older_than", type=Duration(), required=True,
              help="Finished more than this long ago: 30d, 12h, 90m (a bare number is days).")
@click.option("--status", "statuses", multiple=True,
              type=click.Choice(status.PURGEABLE, case_sensitive=False),
              help="Only jobs of this status (repeatable; default COMPLETED and FAILED). "
                   "PENDING and PROCESSING jobs are never purged.")
@click.option("--batch-size", default=500, show_default=True, type=click.IntRange(1, 100_000),
              help="Jobs deleted per transaction.")
@click.option("--dry-run", is_flag=True, help="Count what would be deleted; delete nothing.")
@click.option("--dsn", help=DSN_HELP)
@click.pass_context
def jobs_purge(ctx: click.Context, older_than: float, statuses: tuple[str, ...],
               batch_size: int, dry_run: bool, dsn: str | None) -> None:
    """Delete finished jobs and their rejected rows (job_failures), in batches."""
    from nodes_import.store import jobrows

    cfg = load(ctx, **{"database.dsn": dsn})
    wanted = tuple(s.upper() for s in statuses) or status.PURGEABLE
    try:
        with database(cfg, max_size=1) as pool, pool.connection() as conn:
            purged = jobrows.purge_jobs(conn, older_than_s=older_than, statuses=wanted,
                                        batch_size=batch_size, dry_run=dry_run)
    except NodesImportError as exc:
        fail_on(exc)
    verb = "would purge" if dry_run else "purged"
    click.echo(f"{verb} {purged.jobs:,} jobs ({', '.join(wanted)}) and "
               f"{purged.failures:,} rejected rows")
