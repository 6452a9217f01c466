"""The ``nodes-import`` command line: parse, load config, set up logging, call one function.

Exit codes: 0 success (job COMPLETED), 1 the job FAILED or the service could not run,
2 usage or configuration error.
"""

from __future__ import annotations

import gc
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

import click
import orjson
from psycopg_pool import ConnectionPool

from nodes_import import config as config_mod
from nodes_import import engine, jobrows, logs, metrics, status, storage
from nodes_import.config import Config
from nodes_import.errors import ConfigError, NodesImportError
from nodes_import.jobs import ImportJob, new_job_id
from nodes_import.pipeline import memory

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


def _load(ctx: click.Context, **overrides: Any) -> Config:
    try:
        return config_mod.load(ctx.obj.get("config_path"), overrides)
    except ConfigError as exc:
        click.echo(f"nodes-import: configuration error: {exc}", err=True)
        ctx.exit(EXIT_USAGE)
        raise  # unreachable; keeps type checkers happy


def resolve_dsn(cfg: Config, *, quiet: bool = False) -> str:
    """The configured DSN, or the embedded PostgreSQL's when none is configured."""
    if cfg.database.dsn:
        return cfg.database.dsn
    from nodes_import.embedded import embedded_postgres

    return embedded_postgres(cfg.database.embedded_dir, quiet=quiet)


@contextmanager
def database(cfg: Config, *, max_size: int | None = None) -> Iterator[ConnectionPool]:
    """A pool on the configured (or embedded) database, with the schema up to date."""
    dsn = resolve_dsn(cfg)
    pool = storage.open_pool(dsn, max_size=max_size or cfg.database.pool_max_size,
                             timeout_s=cfg.database.connect_timeout_ms / 1000.0)
    try:
        with pool.connection() as conn:
            storage.init_schema(conn)
        yield pool
    finally:
        pool.close()


def _fail(message: str, code: int = EXIT_FAILED) -> None:
    click.echo(f"nodes-import: {message}", err=True)
    sys.exit(code)


def _dumps(value: Any) -> str:
    return orjson.dumps(value, default=str, option=orjson.OPT_NON_STR_KEYS).decode()


@click.group()
@click.option("--config", "config_path", type=click.Path(dir_okay=False),
              help="YAML config file (default: $NODES_IMPORT_CONFIG).")
@click.option("--log-level", default="WARNING", show_default=True,
              type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False))
@click.version_option(package_name="nodes-import")
@click.pass_context
def main(ctx: click.Context, config_path: str | None, log_level: str) -> None:
    """Import user nodes into PostgreSQL through COPY."""
    ctx.ensure_object(dict)
    ctx.obj["config_path"] = config_path
    logs.setup(log_level)
    memory.use_jemalloc()
    # Everything imported so far lives until exit: frozen, it is out of the cyclic
    # collector's reach, so its full collections (and the one at exit) skip it. 30-40 ms
    # of CPU per command, measured; nothing frozen here is ever garbage.
    gc.freeze()


@main.group()
def db() -> None:
    """Database schema."""


@db.command("init")
@click.option("--dsn", help="PostgreSQL connection string (default: embedded server).")
@click.pass_context
def db_init(ctx: click.Context, dsn: str | None) -> None:
    """Apply the schema migrations that are not applied yet (idempotent)."""
    cfg = _load(ctx, **{"database.dsn": dsn})
    try:
        pool = storage.open_pool(resolve_dsn(cfg), max_size=1,
                                 timeout_s=cfg.database.connect_timeout_ms / 1000.0)
        with pool, pool.connection() as conn:
            applied = storage.init_schema(conn)
    except NodesImportError as exc:
        _fail(str(exc))
    click.echo(f"applied: {', '.join(applied)}" if applied else "schema is up to date")


class _Bar:
    """A one-line progress display on a terminal: rows, rows/s, percent and ETA by bytes."""

    def __init__(self) -> None:
        self.last = 0.0

    def __call__(self, p: engine.Progress) -> None:
        now = time.monotonic()
        if now - self.last < 0.25:
            return
        self.last = now
        elapsed = max(now - p.started, 1e-6)
        line = f"{p.rows_committed:,} rows  {p.rows_committed / elapsed:,.0f} rows/s"
        if p.failed:
            line += f"  {p.failed:,} failed"
        if p.source_bytes:
            frac = min(p.bytes_read / p.source_bytes, 1.0)
            eta = elapsed * (1 - frac) / frac if frac > 0 else 0
            line += f"  {frac:6.1%}  ETA {eta:,.0f}s"
        click.echo("\r" + line.ljust(79), nl=False, err=True)

    def done(self) -> None:
        if self.last:
            click.echo("", err=True)


def _summary(row: dict[str, Any]) -> str:
    lines = [
        f"job {row['id']}: {row['status']}",
        f"  group {row['group_id']}, domain {row['domain_id']}, type {row['node_type']}",
        f"  source {row['source']}",
        (f"  rows {row['total_nodes']:,}: {row['success_count']:,} imported "
         f"({row['inserted_count']:,} inserted, {row['updated_count']:,} updated, "
         f"{row['unchanged_count']:,} unchanged), {row['failed_count']:,} failed"),
    ]
    if row.get("started_at") and row.get("finished_at"):
        seconds = (row["finished_at"] - row["started_at"]).total_seconds()
        rate = row["total_nodes"] / seconds if seconds > 0 else 0
        lines.append(f"  took {seconds:.2f}s ({rate:,.0f} rows/s)")
    if row.get("error"):
        lines.append(f"  error: {row['error']}")
    return "\n".join(lines)


@main.command("import")
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
@click.option("--dsn", help="PostgreSQL connection string (default: embedded server).")
@click.option("--json", "as_json", is_flag=True, help="Print the final job row as JSON.")
@click.pass_context
def import_cmd(ctx: click.Context, source: str | None, ids_file: str | None, group_id: str,
               domain_id: Any, node_type: str | None, job_id: Any, retry_failed: bool,
               dsn: str | None, as_json: bool) -> None:
    """Run one import job in the foreground: a CSV file (SOURCE) or --reference-ids FILE."""
    if (source is None) == (ids_file is None):
        raise click.UsageError("give exactly one of SOURCE or --reference-ids FILE")
    if not group_id.strip() or len(group_id) > 255:
        raise click.UsageError("--group must be 1..255 characters")
    if retry_failed and job_id is None:
        raise click.UsageError("--retry-failed needs the --job-id of the FAILED job")
    metrics.disable()  # a one-off import has no /metrics endpoint to serve them
    cfg = _load(ctx, **{"database.dsn": dsn})
    job = ImportJob(job_id=str(job_id or new_job_id()), group_id=group_id,
                    domain_id=str(domain_id),
                    node_type=node_type or cfg.imports.default_node_type,
                    source=source, reference_ids_file=ids_file, resume_failed=retry_failed)
    bar = _Bar() if sys.stderr.isatty() and not as_json else None
    pool_size = cfg.imports.max_parallel_futures + 1
    try:
        with database(cfg, max_size=pool_size) as pool:
            outcome = engine.run_import(job, cfg.imports, pool, on_progress=bar)
    except NodesImportError as exc:
        if bar:
            bar.done()
        _fail(str(exc))
    if bar:
        bar.done()
    click.echo(_dumps(outcome.row) if as_json else _summary(outcome.row))
    sys.exit(EXIT_OK if outcome.status == status.COMPLETED else EXIT_FAILED)


@main.group()
def jobs() -> None:
    """Inspect import jobs."""


@jobs.command("list")
@click.option("--status", "job_status", type=click.Choice(status.ALL, case_sensitive=False))
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 10_000))
@click.option("--dsn")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def jobs_list(ctx: click.Context, job_status: str | None, limit: int, dsn: str | None,
              as_json: bool) -> None:
    """The most recent jobs first."""
    cfg = _load(ctx, **{"database.dsn": dsn})
    try:
        with database(cfg, max_size=1) as pool, pool.connection() as conn:
            rows = jobrows.list_jobs(conn, status=job_status.upper() if job_status else None,
                                     limit=limit)
    except NodesImportError as exc:
        _fail(str(exc))
    if as_json:
        click.echo(_dumps(rows))
        return
    click.echo(f"{'id':36}  {'status':10}  {'total':>10}  {'success':>10}  {'failed':>8}  group")
    for r in rows:
        click.echo(f"{r['id']!s:36}  {r['status']:10}  {r['total_nodes']:>10,}  "
                   f"{r['success_count']:>10,}  {r['failed_count']:>8,}  {r['group_id']}")


@jobs.command("show")
@click.argument("job_id", type=click.UUID)
@click.option("--dsn")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def jobs_show(ctx: click.Context, job_id: Any, dsn: str | None, as_json: bool) -> None:
    """One job with its first rejected rows."""
    cfg = _load(ctx, **{"database.dsn": dsn})
    try:
        with database(cfg, max_size=1) as pool, pool.connection() as conn:
            row = jobrows.get_job(conn, str(job_id))
            failures = jobrows.job_failures(conn, str(job_id)) if row else []
    except NodesImportError as exc:
        _fail(str(exc))
    if row is None:
        _fail(f"no job {job_id}")
    if as_json:
        click.echo(_dumps({**row, "failures": failures}))
        return
    click.echo(_summary(row))
    for f in failures:
        click.echo(f"  row {f['row_number']}: {f['reason']}: {f['line']!r}")


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
@click.option("--dsn")
@click.pass_context
def jobs_purge(ctx: click.Context, older_than: float, statuses: tuple[str, ...],
               batch_size: int, dry_run: bool, dsn: str | None) -> None:
    """Delete finished jobs and their rejected rows (job_failures), in batches."""
    cfg = _load(ctx, **{"database.dsn": dsn})
    wanted = tuple(s.upper() for s in statuses) or jobrows.PURGEABLE
    try:
        with database(cfg, max_size=1) as pool, pool.connection() as conn:
            purged = jobrows.purge_jobs(conn, older_than_s=older_than, statuses=wanted,
                                        batch_size=batch_size, dry_run=dry_run)
    except NodesImportError as exc:
        _fail(str(exc))
    verb = "would purge" if dry_run else "purged"
    click.echo(f"{verb} {purged.jobs:,} jobs ({', '.join(wanted)}) and "
               f"{purged.failures:,} rejected rows")


# --------------------------------------------------------------------------- the daemon


def _log_level(ctx: click.Context, default: str) -> str:
    """The --log-level given to ``main``, else ``default`` (a daemon logs at INFO)."""
    parent = ctx.parent
    if parent is not None and parent.get_parameter_source("log_level") == \
            click.core.ParameterSource.COMMANDLINE:
        return str(parent.params["log_level"]).upper()
    logs.setup(default)
    return default


@main.command("run")
@click.option("--config", "config_path", type=click.Path(dir_okay=False),
              help="YAML config file (also accepted before the command).")
@click.option("--dsn", help="PostgreSQL connection string (default: embedded server).")
@click.option("--bootstrap-servers", help="Kafka HOST:PORT list (default: a local broker).")
@click.option("--topic-pattern", help="Regex of the job topics (default ^.*-users).")
@click.option("--group-id", help="Kafka consumer group (default nodes-import-group).")
@click.option("--admin-port", type=click.IntRange(1, 65535),
              help="Port of the admin HTTP API: /metrics, /healthz, /readyz, /jobs "
                   "(default admin.port, 9400).")
@click.pass_context
def run_cmd(ctx: click.Context, config_path: str | None, dsn: str | None,
            bootstrap_servers: str | None, topic_pattern: str | None,
            group_id: str | None, admin_port: int | None) -> None:
    """Run the import daemon in the foreground until SIGTERM/SIGINT (exit 0)."""
    from nodes_import import daemon

    if config_path:
        ctx.obj["config_path"] = config_path
    cfg = _load(ctx, **{"database.dsn": dsn, "kafka.bootstrap-servers": bootstrap_servers,
                        "kafka.topic-pattern": topic_pattern, "kafka.group-id": group_id,
                        "admin.port": admin_port})
    try:
        daemon.serve(cfg, log_level=_log_level(ctx, "INFO"))
    except NodesImportError as exc:
        _fail(str(exc))


@main.command("demo")
@click.pass_context
def demo_cmd(ctx: click.Context) -> None:
    """Embedded PostgreSQL + local broker + daemon: import a sample file and an ID list."""
    from nodes_import.demo import run_demo

    cfg = _load(ctx)
    _log_level(ctx, "WARNING")
    try:
        ok = run_demo(cfg, click.echo, _summary)
    except NodesImportError as exc:
        _fail(str(exc))
    sys.exit(EXIT_OK if ok else EXIT_FAILED)


# The Kafka-side commands (submit, dlq) live in their own module; importing it registers
# them on ``main``. Last, because it imports this module's helpers.
from nodes_import import cli_kafka  # noqa: F401
