"""The database-side commands: ``db init``, ``import``, ``jobs list|show|purge``."""

from __future__ import annotations

import sys
from dataclasses import asdict
from typing import Any, ClassVar

import click

from nodes_import import metrics, status
from nodes_import.cli import progress
from nodes_import.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    database,
    dumps,
    fail,
    fail_on,
    load,
    resolve_dsn,
)
from nodes_import.errors import NodesImportError
from nodes_import.jobs import ImportJob, JobOutcome, JobRow, new_job_id
from nodes_import.pipeline.validate import MAX_GROUP_ID_CHARS
from nodes_import.store import connection, jobrows
from nodes_import.worker import engine

DSN_HELP = ("PostgreSQL connection string (default: database.dsn, else the libpq environment: "
            "PGHOST, PGSERVICE...; else the embedded server of the 'local' extra).")
JSON_HELP = "Print JSON instead of text."


@click.group()
def db() -> None:
    """Database schema."""


@db.command("init")
@click.option("--dsn", help=DSN_HELP)
@click.pass_context
def db_init(ctx: click.Context, dsn: str | None) -> None:
    """Apply the schema migrations that are not applied yet (idempotent)."""
    cfg = load(ctx, **{"database.dsn": dsn})
    try:
        pool = connection.open_pool(resolve_dsn(cfg), max_size=1,
                                 timeout_s=cfg.database.connect_timeout_ms / 1000.0)
        with pool, pool.connection() as conn:
            applied = connection.init_schema(conn)
    except NodesImportError as exc:
        fail_on(exc)
    click.echo(f"applied: {', '.join(applied)}" if applied else "schema is up to date")


def summary(row: JobRow) -> str:
    lines = [
        f"job {row.id}: {row.status}",
        f"  group {row.group_id}, domain {row.domain_id}, type {row.node_type}",
        f"  source {row.source}",
        (f"  rows {row.total_nodes:,}: {row.success_count:,} imported "
         f"({row.inserted_count:,} inserted, {row.updated_count:,} updated, "
         f"{row.unchanged_count:,} unchanged), {row.failed_count:,} failed"),
    ]
    if row.started_at and row.finished_at:
        seconds = (row.finished_at - row.started_at).total_seconds()
        rate = row.total_nodes / seconds if seconds > 0 else 0
        lines.append(f"  took {seconds:.2f}s ({rate:,.0f} rows/s)")
    if row.error:
        lines.append(f"  error: {row.error}")
    return "\n".join(lines)


def _ended(outcome: JobOutcome, as_json: bool) -> str:
    """What ``import`` prints: the job's row, its status first as ``import --json`` has
    always printed it (only the status when the row is gone)."""
    row = outcome.row
    if as_json:
        return dumps({"status": outcome.status} if row is None
                     else {"status": row.status, **asdict(row)})
    return f"job {outcome.job_id}: {outcome.status} (its row is gone)" if row is None \
        else summary(row)


@click.command("import")
@click.argument("source", required=False)
@click.option("--reference-ids", "ids_file", help="File of reference IDs, one per line "
              "(optionally gzipped): the non-cost-based path.")
@click.option("--group", "group_id", required=True, help="Group the nodes belong to.")
@click.option("--domain", "domain_id", required=True, type=click.UUID, help="Domain UUID.")
@click.option("--type", "node_type", default=None, help="Node type (default USER).")
@click.option("--job-id", type=click.UUID, help="Job id (default: a new one). Re-running "
              "an unfinished job resumes it from its checkpoint.")
@click.option("--retry-failed", is_flag=True, help="With --job-id: take a FAILED job up "
              "again from its checkpoint (after fixing what failed it).")
@click.option("--dsn", help=DSN_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print the final job row as JSON.")
@click.option("--progress-interval", type=click.FloatRange(min=0),
              default=progress.PROGRESS_INTERVAL_S, show_default=True,
              help="Seconds between progress lines on stderr when it is not a terminal "
                   "(a log, CI); 0: none. On a terminal a progress bar shows instead.")
@click.pass_context
def import_cmd(ctx: click.Context, source: str | None, ids_file: str | None, group_id: str,
               domain_id: Any, node_type: str | None, job_id: Any, retry_failed: bool,
               dsn: str | None, as_json: bool, progress_interval: float) -> None:
    """Run one import job in the foreground: a CSV file (SOURCE) or --reference-ids FILE."""
    if (source is None) == (ids_file is None):
        raise click.UsageError("give exactly one of SOURCE or --reference-ids FILE")
    if not group_id.strip() or len(group_id) > MAX_GROUP_ID_CHARS:
        raise click.UsageError(f"--group must be 1..{MAX_GROUP_ID_CHARS} characters")
    if retry_failed and job_id is None:
        raise click.UsageError("--retry-failed needs the --job-id of the FAILED job")
    metrics.disable()  # a one-off import has no /metrics endpoint to serve them
    cfg = load(ctx, **{"database.dsn": dsn})
    job = ImportJob(job_id=str(job_id or new_job_id()), group_id=group_id,
                    domain_id=str(domain_id),
                    node_type=node_type or cfg.imports.default_node_type,
                    source=source, reference_ids_file=ids_file, resume_failed=retry_failed)
    shown = progress.reporter(job.job_id, on_terminal=sys.stderr.isatty(),
                              interval_s=progress_interval, as_json=as_json)
    pool_size = cfg.imports.max_parallel_futures + 1
    try:
        with database(cfg, max_size=pool_size) as pool:
            outcome = engine.run_import(job, cfg.imports, pool, on_progress=shown)
    except NodesImportError as exc:
        if shown:
            shown.done()
        fail_on(exc)
    if shown:
        shown.done()
    click.echo(_ended(outcome, as_json))
    sys.exit(EXIT_OK if outcome.status == status.COMPLETED else EXIT_FAILED)


@click.group()
def jobs() -> None:
    """Inspect import jobs."""


@jobs.command("list")
@click.option("--status", "job_status", type=click.Choice(status.ALL, case_sensitive=False),
              help="Only jobs of this status.")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 10_000),
              help="Jobs listed at most.")
@click.option("--dsn", help=DSN_HELP)
@click.option("--json", "as_json", is_flag=True, help=JSON_HELP)
@click.pass_context
def jobs_list(ctx: click.Context, job_status: str | None, limit: int, dsn: str | None,
              as_json: bool) -> None:
    """The most recent jobs first."""
    cfg = load(ctx, **{"database.dsn": dsn})
    try:
        with database(cfg, max_size=1) as pool, pool.connection() as conn:
            rows = jobrows.list_jobs(conn, status=job_status.upper() if job_status else None,
                                     limit=limit)
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
    """One job with its first rejected rows."""
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
        click.echo(dumps({**asdict(row), "failures": [asdict(f) for f in failures]}))
        return
    click.echo(summary(row))
    for f in failures:
        click.echo(f"  row {f.row_number}: {f.reason}: {f.line!r}")


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


@jobs.command("purge")
@click.option("--older-than", "older_than", type=Duration(), required=True,
              help="Finished more than this long ago: 30d, 12h, 90m (a bare number is days).")
@click.option("--status", "statuses", multiple=True,
              type=click.Choice(jobrows.PURGEABLE, case_sensitive=False),
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
    cfg = load(ctx, **{"database.dsn": dsn})
    wanted = tuple(s.upper() for s in statuses) or jobrows.PURGEABLE
    try:
        with database(cfg, max_size=1) as pool, pool.connection() as conn:
            purged = jobrows.purge_jobs(conn, older_than_s=older_than, statuses=wanted,
                                        batch_size=batch_size, dry_run=dry_run)
    except NodesImportError as exc:
        fail_on(exc)
    verb = "would purge" if dry_run else "purged"
    click.echo(f"{verb} {purged.jobs:,} jobs ({', '.join(wanted)}) and "
               f"{purged.failures:,} rejected rows")
