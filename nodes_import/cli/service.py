"""The long-running commands: ``run`` (the daemon) and ``demo``."""

from __future__ import annotations

import sys

import click

from nodes_import.cli.common import EXIT_FAILED, EXIT_OK, fail, load, log_level
from nodes_import.cli.imports import summary
from nodes_import.errors import NodesImportError


@click.command("run")
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
    from nodes_import.cli.local import local_services
    from nodes_import.daemon import service

    if config_path:
        ctx.obj["config_path"] = config_path
    cfg = load(ctx, **{"database.dsn": dsn, "kafka.bootstrap-servers": bootstrap_servers,
                        "kafka.topic-pattern": topic_pattern, "kafka.group-id": group_id,
                        "admin.port": admin_port})
    try:
        level = log_level(ctx, "INFO")
        with local_services(cfg) as resolved:  # embedded ones where none is configured
            service.serve(resolved, log_level=level)
    except NodesImportError as exc:
        fail(str(exc))


@click.command("demo")
@click.pass_context
def demo_cmd(ctx: click.Context) -> None:
    """Embedded PostgreSQL + local broker + daemon: import a sample file and an ID list."""
    from nodes_import.cli.demo import run_demo

    cfg = load(ctx)
    log_level(ctx, "WARNING")
    try:
        ok = run_demo(cfg, click.echo, summary)
    except NodesImportError as exc:
        fail(str(exc))
    sys.exit(EXIT_OK if ok else EXIT_FAILED)
