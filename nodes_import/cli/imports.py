"""The database-side commands: ``db init`` and ``import`` (the ``jobs`` family is in
``jobs.py``). The engine, the database client and Arrow are imported inside the
commands that use them: ``import --dry-run`` never loads psycopg, ``--help`` neither."""

from __future__ import annotations

import gc
import sys
from dataclasses import asdict
from typing import TYPE_CHECKING, Any, NoReturn

import click

from nodes_import import metrics, status
from nodes_import.cli import progress
from nodes_import.cli.common import (
    DSN_HELP,
    EXIT_FAILED,
    EXIT_OK,
    database,
    dumps,
    fail_on,
    load,
    resolve_dsn,
)
from nodes_import.errors import NodesImportError
from nodes_import.jobs import ImportJob, JobOutcome, new_job_id

if TYPE_CHECKING:
    from nodes_import.worker.dryrun import DryRun


@click.group()
def db() -> None:
    """Database schema."""


@db.command("init")
@click.option("--dsn", help=DSN_HELP)
@click.pass_context
def db_init(ctx: click.Context, dsn: str | None) -> None:
    """Apply the schema migrations that are not applied yet (idempotent)."""
    from nodes_import.store import connection

    cfg = load(ctx, **{"database.dsn": dsn})
    try:
        pool = connection.open_pool(resolve_dsn(cfg), max_size=1,
                                 timeout_s=cfg.database.connect_timeout_ms / 1000.0)
        with pool, pool.connection() as conn:
            applied = connection.init_schema(conn)
    except NodesImportError as exc:
        fail_on(exc)
    click.echo(f"applied: {', '.join(applied)}" if applied else "schema is up to date")


def _loaded() -> None:
    """Once the command has imported what it runs: Arrow's allocator (``memory``), and
    what is loaded frozen out of the collector's reach (as in ``cli.main``). After the
    imports, not before: switching to jemalloc before psycopg and the engine were loaded
    doubled a 1M-row import's page faults (58k -> 115k, +0.1 s of CPU; measured, the
    order the CLI had before it loaded commands lazily restores it)."""
    from nodes_import.pipeline import memory

    memory.use_jemalloc()
    gc.freeze()


def _ended(outcome: JobOutcome, as_json: bool) -> str:
    """What ``import`` prints: the job's row, its status first as ``import --json`` has
    always printed it (only the status when the row is gone)."""
    row = outcome.row
    if row is not None:
        return progress.final_text(row, as_json)
    return dumps({"status": outcome.status}) if as_json \
        else f"job {outcome.job_id}: {outcome.status} (its row is gone)"


@click.command("import")
@click.argument("source", required=False)
@click.option("--reference-ids", "ids_file", help="File of reference IDs, one per line "
              "(optionally gzipped): the non-cost-based path.")
@click.option("--group", "group_id", help="Group the nodes belong to (required, but with "
              "--dry-run).")
@click.option("--domain", "domain_id", type=click.UUID, help="Domain UUID (required, but "
              "with --dry-run).")
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
@click.option("--dry-run", is_flag=True, help="Read and validate the whole file with the "
              "import's pipeline, write nothing (no database needed), print what it would "
              "count; exit 0 if it would complete, 1 if it would fail.")
@click.pass_context
def import_cmd(ctx: click.Context, source: str | None, ids_file: str | None,
               group_id: str | None, domain_id: Any, node_type: str | None, job_id: Any,
               retry_failed: bool, dsn: str | None, as_json: bool, progress_interval: float,
               dry_run: bool) -> None:
    """Run one import job in the foreground: a CSV file (SOURCE) or --reference-ids FILE."""
    from nodes_import.pipeline.validate import MAX_GROUP_ID_CHARS

    if (source is None) == (ids_file is None):
        raise click.UsageError("give exactly one of SOURCE or --reference-ids FILE")
    if dry_run:
        _dry_run(ctx, source, ids_file, as_json)
    for name, value in (("--group", group_id), ("--domain", domain_id)):
        if value is None:
            raise click.UsageError(f"Missing option '{name}'.")
    assert group_id is not None
    if not group_id.strip() or len(group_id) > MAX_GROUP_ID_CHARS:
        raise click.UsageError(f"--group must be 1..{MAX_GROUP_ID_CHARS} characters")
    if retry_failed and job_id is None:
        raise click.UsageError("--retry-failed needs the --job-id of the FAILED job")
    from nodes_import.worker import engine

    _loaded()
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


def _dry_run(ctx: click.Context, source: str | None, ids_file: str | None,
             as_json: bool) -> NoReturn:
    """``import --dry-run``: the whole file through the import's pipeline, nothing written;
    exit 0 if the import would complete, 1 if it would fail."""
    from nodes_import.worker import dryrun

    _loaded()
    metrics.disable()
    cfg = load(ctx)
    job = ImportJob(job_id=new_job_id(), group_id="dry-run", domain_id=new_job_id(),
                    source=source, reference_ids_file=ids_file)
    report = dryrun.dry_run(job, cfg.imports)
    click.echo(_dry_run_json(report) if as_json else _dry_run_text(report))
    sys.exit(EXIT_OK if report.would_complete else EXIT_FAILED)


def _dry_run_json(r: DryRun) -> str:
    return dumps({
        "source": r.source, "would_complete": r.would_complete, "error": r.error,
        "error_type": r.error_type, "rows": r.rows, "valid": r.valid, "rejected": r.rejected,
        "rejected_by_reason": dict(r.reasons.most_common()), "distinct_keys": r.distinct_keys,
        "duplicate_keys": r.duplicate_keys, "columns": r.columns,
        "first_rejected": [asdict(x) for x in r.first_rejected], "seconds": round(r.seconds, 3),
    })


def _dry_run_text(r: DryRun) -> str:
    verdict = "would complete" if r.would_complete else f"would FAIL: {r.error}"
    rate = f" ({r.rows / r.seconds:,.0f} rows/s)" if r.seconds > 0 else ""
    read = "rows" if r.would_complete else "rows read before that"
    lines = [f"dry run of {r.source}: {verdict} (nothing written)",
             f"  {read} {r.rows:,}: {r.valid:,} would be imported, {r.rejected:,} rejected",
             f"  keys {r.distinct_keys:,} distinct; {r.duplicate_keys:,} rows repeat a key "
             "seen before (the last occurrence wins)"]
    if r.reasons:
        lines.append("  rejected by reason:")
        lines += [f"    {count:>10,}  {reason}" for reason, count in r.reasons.most_common()]
    if r.first_rejected:
        lines.append(f"  first rejected rows ({len(r.first_rejected)} of {r.rejected:,}):")
        lines += [f"    row {x.row_number}: {x.reason}: {x.line!r}" for x in r.first_rejected]
    lines.append(f"  read in {r.seconds:.2f}s{rate}")
    return "\n".join(lines)
