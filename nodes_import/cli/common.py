"""What every command shares: exit codes, loading the configuration, the database, failing."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click
import orjson
from psycopg_pool import ConnectionPool

from nodes_import import config as config_mod
from nodes_import import logs
from nodes_import.config import Config
from nodes_import.errors import ConfigError
from nodes_import.store import connection

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


def load(ctx: click.Context, **overrides: Any) -> Config:
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
    from nodes_import.cli.local import embedded_postgres

    return embedded_postgres(cfg.database.embedded_dir, quiet=quiet)


@contextmanager
def database(cfg: Config, *, max_size: int | None = None) -> Iterator[ConnectionPool]:
    """A pool on the configured (or embedded) database, with the schema up to date."""
    dsn = resolve_dsn(cfg)
    pool = connection.open_pool(dsn, max_size=max_size or cfg.database.pool_max_size,
                             timeout_s=cfg.database.connect_timeout_ms / 1000.0)
    try:
        with pool.connection() as conn:
            connection.init_schema(conn)
        yield pool
    finally:
        pool.close()


def fail(message: str, code: int = EXIT_FAILED) -> None:
    click.echo(f"nodes-import: {message}", err=True)
    sys.exit(code)


def dumps(value: Any) -> str:
    return orjson.dumps(value, default=str, option=orjson.OPT_NON_STR_KEYS).decode()


def log_level(ctx: click.Context, default: str) -> str:
    """The --log-level given to ``main``, else ``default`` (a daemon logs at INFO)."""
    parent = ctx.parent
    if parent is not None and parent.get_parameter_source("log_level") == \
            click.core.ParameterSource.COMMANDLINE:
        return str(parent.params["log_level"]).upper()
    logs.setup(default)
    return default
