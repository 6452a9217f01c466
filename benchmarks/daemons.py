"""Question: do several daemons on one database load as fast as one? (issue 17, scenario 2)

The same ``jobs`` large file jobs (a group each, every row new) through 1, 2 and 3
``nodes-import run`` processes in one consumer group, on the run's server, a local Tansu
broker and a topic of ``jobs`` partitions (a job per partition, so every daemon gets its
share). Each count starts on a fresh schema with fresh daemons, waits until the group has
settled (every daemon holds partitions), produces the jobs at once and waits for the last
``finished_at``. Meanwhile ``pg_stat_activity`` and ``pg_locks`` are sampled every
``SAMPLE_S``:

- connections: client backends of the database, by ``application_name`` (the daemon's
  own pool, the workers' pools), their peak and mean;
- lock waits: backends waiting on a heavyweight lock (``wait_event_type = 'Lock'``), as
  backend-seconds (samples x period) and their peak; ungranted ``pg_locks`` entries;
- leases: ``job leased by another daemon; waiting`` lines (a job claimed twice).

Figures: rows/s of all jobs (first produce -> last ``finished_at``), each count against
one daemon's (target: >= 0.95 with 2 and 3 daemons), server CPU and WAL, and what the
active backends waited on (``wait_event``), in backend-seconds.

``bin/bench`` runs it as the "daemons" step (``run.py``). Alone::

    .venv/bin/python -m benchmarks.daemons --rows 250000 --counts 1 2 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import threading
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import psycopg

from benchmarks import daemon_burst, generate
from benchmarks.daemon_burst import DOMAIN
from benchmarks.harness import BenchServer, Result, meter

JOBS = 8  # issue 17: the same 8 large jobs
COUNTS = (1, 2, 3)
SAMPLE_S = 0.5
KEEP_TARGET = 0.95  # rows/s with 2 and 3 daemons over one daemon's

_ACTIVITY = """
SELECT coalesce(application_name, ''), state, wait_event_type, wait_event
FROM pg_stat_activity
WHERE datname = current_database() AND backend_type = 'client backend'
  AND pid <> pg_backend_pid()
"""


class ActivitySampler(threading.Thread):
    """Samples the database's client backends and lock waits every ``SAMPLE_S``."""

    def __init__(self, dsn: str) -> None:
        super().__init__(name="activity-sampler", daemon=True)
        self.dsn = dsn
        self.halt = threading.Event()
        self.connections: list[int] = []
        self.by_app: list[Counter[str]] = []
        self.lock_waiting: list[int] = []
        self.ungranted: list[int] = []
        self.waits: Counter[str] = Counter()  # samples of active backends per wait event

    def run(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            while not self.halt.wait(SAMPLE_S):
                rows = conn.execute(_ACTIVITY).fetchall()
                ungranted = conn.execute("SELECT count(*) FROM pg_locks WHERE NOT granted"
                                         ).fetchone()
                self.connections.append(len(rows))
                self.by_app.append(Counter(app for app, _, _, _ in rows))
                self.lock_waiting.append(sum(wait == "Lock" for _, _, wait, _ in rows))
                self.waits.update(f"{kind}:{event}" if kind else "CPU (no wait)"
                                  for _, state, kind, event in rows if state == "active")
                self.ungranted.append(int(ungranted[0]) if ungranted else 0)

    def figures(self) -> dict[str, Any]:
        """Peaks and means of what was sampled."""
        self.halt.set()
        self.join()
        apps = sorted({app for c in self.by_app for app in c})
        n = max(1, len(self.connections))
        return {
            "samples": len(self.connections),
            "connections_peak": max(self.connections, default=0),
            "connections_mean": round(sum(self.connections) / n, 1),
            "connections_peak_by_app": {a: max(c[a] for c in self.by_app) for a in apps},
            "lock_wait_backend_s": round(sum(self.lock_waiting) * SAMPLE_S, 1),
            "lock_waiting_peak": max(self.lock_waiting, default=0),
            "ungranted_locks_peak": max(self.ungranted, default=0),
            # what the active backends were doing, in backend-seconds
            "active_backend_s": {k: round(v * SAMPLE_S, 1)
                                 for k, v in self.waits.most_common(6)},
        }


def run_count(server: BenchServer, path: Path, rows: int, daemons: int,
              jobs: int = JOBS) -> dict[str, Any]:
    """``jobs`` large jobs through ``daemons`` daemons on a fresh schema."""
    schema = server.new_schema(f"daemons{daemons}")
    dsn = server.schema_dsn(schema)
    result = Result(f"{daemons} daemon(s)", "daemon", jobs * rows, 0)
    try:
        with daemon_burst.rig(dsn, allowed_roots=[str(path.parent)], partitions=jobs,
                              daemons=daemons, log_level="INFO") as rig:
            held = rig.wait_balanced()
            bodies = [{"groupId": f"d{daemons}-{n}", "domainId": DOMAIN,
                       "jobId": str(uuid.uuid4()), "file": str(path)} for n in range(jobs)]
            sampler = ActivitySampler(dsn)
            sampler.start()
            with meter(server, schema, result):
                sent = rig.send(bodies)
                done = rig.wait(sent, 3600)
                first = min(sent.values())
                completed = [r for r in done if r[1] == "COMPLETED"]
                last = max((float(r[2]) for r in completed), default=first)
                result.seconds = last - first
                result.ok = len(completed) == jobs
            activity = sampler.figures()
            ran_by = Counter(r[0] for r in server.query(
                f"SELECT split_part(claimed_by, ':', 2) FROM {schema}.job_status"))  # ours
            lease_waits = sum(len(rig.events(n, "job leased by another daemon; waiting"))
                              for n in range(daemons))
            durations = [float(r[0]) for r in server.query(
                f"SELECT extract(epoch FROM finished_at - started_at) FROM {schema}.job_status"
                " WHERE status = 'COMPLETED'")]
    finally:
        server.drop_schema(schema)
    return {"daemons": daemons, "jobs": jobs, "rows_each": rows,
            "partitions_held": [held[n] for n in sorted(held)],
            "completed": len(completed), "wall_s": round(result.seconds, 3),
            "rows_per_s": round(result.rows_per_s, 1), "server_cpu_s": result.server_cpu_s,
            "wal_mb": round((result.wal_bytes or 0) / 1e6, 1),
            "jobs_per_daemon": sorted(ran_by.values()), "lease_waits": lease_waits,
            "job_s_median": round(statistics.median(durations), 2) if durations else None,
            **activity}


def measure(server: BenchServer, path: Path, rows: int,
            counts: tuple[int, ...] = COUNTS) -> list[dict[str, Any]]:
    """Every daemon count in turn (a count may come again: ``1 2 3 3 2 1`` spreads the
    shared machine's drift); each one's rows/s over the mean of one daemon's runs."""
    out = [run_count(server, path, rows, n) for n in counts]
    ones = [f["rows_per_s"] for f in out if f["daemons"] == 1]
    base = sum(ones) / len(ones) if ones else out[0]["rows_per_s"]
    for f in out:
        f["vs_first"] = round(f["rows_per_s"] / base, 3) if base else None
    return out


def show(figures: list[dict[str, Any]]) -> None:
    """One line per daemon count."""
    for f in figures:
        print(f"{f['daemons']} daemon(s): {f['rows_per_s']:,.0f} rows/s ({f['wall_s']} s, "
              f"x{f['vs_first']} of one daemon's mean), jobs per daemon {f['jobs_per_daemon']}, "
              f"connections peak {f['connections_peak']} mean {f['connections_mean']} "
              f"{f['connections_peak_by_app']}, lock waits {f['lock_wait_backend_s']} "
              f"backend-s (peak {f['lock_waiting_peak']}, ungranted {f['ungranted_locks_peak']})"
              f", lease waits {f['lease_waits']}, server CPU {f['server_cpu_s']} s; active "
              f"backends {f['active_backend_s']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=250_000, help="rows of each job")
    parser.add_argument("--counts", type=int, nargs="+", default=list(COUNTS))
    parser.add_argument("--data-dir", type=Path, default=Path(
        os.environ.get("NODES_IMPORT_BENCH_DATA", "/tmp/nodes-import-bench")))
    args = parser.parse_args()
    path = generate.ensure(args.data_dir, "new", args.rows)
    with BenchServer() as server:
        show(measure(server, path, args.rows, tuple(args.counts)))


if __name__ == "__main__":
    main()
