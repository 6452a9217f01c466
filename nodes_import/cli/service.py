"""The long-running commands: ``run`` (the daemon) and ``demo``."""

from __future__ import annotations

import sys

import click

from nodes_import.cli.common import (
    BOOTSTRAP_FLAGS,
    DEFAULT_LOG_LEVEL,
    EXIT_FAILED,
    EXIT_OK,
    RUN_LOG_LEVEL,
    configured,
    fail_on,
    load,
    log_level,
)
from nodes_import.cli.progress import summary
from nodes_import.errors import NodesImportError


@click.command("run")
@click.option("--config", "config_path", type=click.Path(dir_okay=False),
              help="YAML config file (also accepted before the command).")
@click.option("--dsn", help="PostgreSQL connection string (default: database.dsn, else the "
                            "libpq environment: PGHOST, PGSERVICE...).")
@click.option(*BOOTSTRAP_FLAGS, "bootstrap_servers",
              help="Kafka HOST:PORT list (default: kafka.bootstrap-servers).")
@click.option("--topic-pattern", help="Regex of the job topics (default ^.*-users).")
@click.option("--group-id", help="Kafka consumer group (default nodes-import-group).")
@click.option("--admin-port", type=click.IntRange(1, 65535),
              help="Port of the admin HTTP API: /metrics, /healthz, /readyz, /jobs "
                   "(default admin.port, 9400).")
@click.option("--local", "use_local", is_flag=True,
              help="Start local stand-ins for what is not configured: an in-memory Kafka "
                   "broker, the embedded PostgreSQL (the 'local' extra; for trying things "
                   "out, never production). Without it a missing one exits 2.")
@click.pass_context
def run_cmd(ctx: click.Context, config_path: str | None, dsn: str | None,
            bootstrap_servers: str | None, topic_pattern: str | None,
            group_id: str | None, admin_port: int | None, use_local: bool) -> None:
    """Run the import daemon in the foreground until SIGTERM/SIGINT (exit 0)."""
    from nodes_import.daemon import service
    from nodes_import.pipeline import memory

    memory.use_jemalloc()
    if config_path:
        ctx.obj["config_path"] = config_path
    cfg = load(ctx, **{"database.dsn": dsn, "kafka.bootstrap-servers": bootstrap_servers,
                        "kafka.topic-pattern": topic_pattern, "kafka.group-id": group_id,
                        "admin.port": admin_port})
    try:
        if not use_local:
            service.serve(configured(cfg), log_level=log_level(ctx, RUN_LOG_LEVEL))
            return
        from nodes_import.cli.local import local_services

        level = log_level(ctx, RUN_LOG_LEVEL)
        with local_services(cfg) as resolved:  # stand-ins only for what is not configured
            service.serve(resolved, log_level=level)
    except NodesImportError as exc:
        fail_on(exc)


@click.command("demo")
@click.pass_context
def demo_cmd(ctx: click.Context) -> None:
    """Local stand-ins + daemon: import a sample file and an ID list (implies run --local).

    Uses a configured database or broker when there is one (as run --local does), else
    the embedded PostgreSQL and a local broker of the 'local' extra.
    """
    from nodes_import.cli.demo import run_demo
    from nodes_import.pipeline import memory

    memory.use_jemalloc()
    cfg = load(ctx)
    log_level(ctx, DEFAULT_LOG_LEVEL)
    try:
        ok = run_demo(cfg, click.echo, summary)
    except NodesImportError as exc:
        fail_on(exc)
    sys.exit(EXIT_OK if ok else EXIT_FAILED)
