"""Question: do small jobs wait behind large ones? (issue 17, scenario 1: fairness)

One daemon (``nodes-import run``, a subprocess, as in ``daemon_burst.py``) on the run's
server and a local Tansu broker, two phases on the same daemon, the tables emptied and
settled before each:

- ``alone``: ``large`` file jobs (a group each, every row new) produced at once; their
  rows/s over the wall from the first produce to the last ``finished_at``;
- ``mixed``: the same large jobs produced at once, then, once one of them is running,
  ``small`` reference-ID jobs (``ids`` IDs each) paced at ``rate`` a second while they
  run. The small jobs' latency (produce -> ``finished_at``) p50/p95/max over those
  produced while a large job was still running, and the large jobs' rows/s against the
  same large jobs alone.

Target (issue 17): small-job p95 < 300 ms while the large jobs run; the large jobs keep
at least 0.9 of their rows/s alone.

``bin/bench`` runs it as the "mixed load" step (``run.py``). Alone, with the daemon's
executor settings given as ``--executor KEY=VALUE`` (the keys of
``node.import.executor``), to compare ways of sharing the workers::

    .venv/bin/python -m benchmarks.mixed_load --rows 250000 --repeat 2 \
        --executor max-pool-size=3 --executor small-job-workers=1
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks import daemon_burst, generate
from benchmarks.daemon_burst import DOMAIN, DaemonRig
from benchmarks.harness import BenchServer, Result, meter

LARGE_JOBS = 4
SMALL_JOBS, SMALL_RATE, SMALL_IDS = 200, 20.0, 5  # issue 17: 200 small jobs at 20/s
P95_TARGET_MS = 300  # small-job p95 while the large jobs run
KEEP_TARGET = 0.9  # the large jobs' rows/s mixed, over alone


def empty(rig: DaemonRig) -> None:
    """Empty the node tables (the daemon idles): each phase loads into the same state.

    Not followed by a VACUUM ANALYZE: statistics that say "empty" (reltuples 0) made the
    first batches' statements run for minutes here (a CPU-bound plan, no lock wait), where
    TRUNCATE alone leaves the tables "never counted" (reltuples -1), as after ``db init``.
    """
    assert rig.conn is not None
    rig.conn.execute("TRUNCATE nodes, node_metadata")
    rig.conn.execute("CHECKPOINT")


def _large_bodies(label: str, path: Path, count: int) -> list[dict[str, Any]]:
    return [{"groupId": f"{label}-{n}", "domainId": DOMAIN, "jobId": str(uuid.uuid4()),
             "file": str(path)} for n in range(count)]


def _small_bodies(label: str, count: int, ids: int) -> list[dict[str, Any]]:
    return [{"groupId": f"{label}-{n}", "domainId": DOMAIN, "jobId": str(uuid.uuid4()),
             "referenceIds": [f"r{k}" for k in range(ids)]} for n in range(count)]


def _until_running(rig: DaemonRig, job_ids: list[str], timeout_s: float = 60.0) -> None:
    """Until one of ``job_ids`` has committed rows (a large job is under way)."""
    assert rig.conn is not None
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        row = rig.conn.execute("SELECT count(*) FROM job_status WHERE id = ANY(%s::uuid[])"
                               " AND rows_committed > 0", (job_ids,)).fetchone()
        if row and row[0]:
            return
        time.sleep(0.05)


def _large_figures(sent: dict[str, float], done: list[tuple[Any, ...]],
                   rows: int) -> dict[str, Any]:
    """rows/s of the large jobs: their rows over first produce -> last finished_at."""
    completed = [r for r in done if r[1] == "COMPLETED"]
    if not completed:
        return {"completed": 0, "rows_per_s": 0.0, "wall_s": None}
    first = min(sent.values())
    last = max(float(r[2]) for r in completed)
    return {"completed": len(completed), "wall_s": round(last - first, 3),
            "rows_per_s": round(len(completed) * rows / (last - first), 1),
            "finished_after_s": sorted(round(float(r[2]) - first, 2) for r in completed)}


def _latencies(sent: dict[str, float], done: list[tuple[Any, ...]],
               until: float | None) -> dict[str, Any]:
    """Latency figures of the small jobs produced before ``until`` (None: all)."""
    ms = sorted((float(r[2]) - sent[r[0]]) * 1000 for r in done
                if r[1] == "COMPLETED" and (until is None or sent[r[0]] < until))
    if not ms:
        return {"jobs": 0, "p50_ms": None, "p95_ms": None, "max_ms": None}
    return {"jobs": len(ms), "p50_ms": round(statistics.median(ms), 1),
            "p95_ms": round(daemon_burst._pct(ms, 0.95), 1), "max_ms": round(ms[-1], 1)}


def alone(rig: DaemonRig, path: Path, rows: int, count: int = LARGE_JOBS) -> dict[str, Any]:
    """The large jobs alone: rows/s."""
    cpu0 = daemon_burst._tree_cpu(rig.pid)
    sent = rig.send(_large_bodies("alone", path, count))
    done = rig.wait(sent, 1800)
    return {**_large_figures(sent, done, rows), "jobs": count, "rows_each": rows,
            "client_cpu_s": round(daemon_burst._tree_cpu(rig.pid) - cpu0, 2)}


def mixed(rig: DaemonRig, path: Path, rows: int, *, count: int = LARGE_JOBS,
          small: int = SMALL_JOBS, rate: float = SMALL_RATE,
          ids: int = SMALL_IDS) -> dict[str, Any]:
    """The large jobs, and small jobs paced at ``rate`` while they run."""
    cpu0 = daemon_burst._tree_cpu(rig.pid)
    large_sent = rig.send(_large_bodies("mixed", path, count))
    _until_running(rig, list(large_sent))
    small_sent = rig.send(_small_bodies("small", small, ids), rate)
    small_done = rig.wait(small_sent, 600)
    large_done = rig.wait(large_sent, 1800)
    large = _large_figures(large_sent, large_done, rows)
    # "while the large jobs run": produced before the last large job finished
    last_large = max((float(r[2]) for r in large_done), default=None)
    during = _latencies(small_sent, small_done, last_large)
    everyone = _latencies(small_sent, small_done, None)
    return {"large": {**large, "jobs": count, "rows_each": rows},
            "small": {**during, "sent": small, "rate": rate, "ids": ids,
                      "completed": sum(r[1] == "COMPLETED" for r in small_done),
                      "all_p95_ms": everyone["p95_ms"], "all_max_ms": everyone["max_ms"]},
            "client_cpu_s": round(daemon_burst._tree_cpu(rig.pid) - cpu0, 2)}


def machine_busy_s() -> float:
    """CPU seconds the whole machine has spent busy since boot (``/proc/stat``)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _metered(server: BenchServer | None, schema: str | None, name: str,
             phase: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run one phase; with a ``server``, its server CPU and WAL too, and the CPU that
    other processes of the (shared) machine took meanwhile: busy CPU of the machine minus
    the server's and the daemon's."""
    if server is None:
        return phase()
    result = Result(name, "daemon", 0, 0)
    busy = machine_busy_s()
    with meter(server, schema, result):
        out = phase()
        large = out.get("large", out)
        result.rows = large["completed"] * large["rows_each"]
        result.seconds = large["wall_s"] or 0.0
        busy = machine_busy_s() - busy
    out.update(server_cpu_s=result.server_cpu_s,
               wal_mb=round((result.wal_bytes or 0) / 1e6, 1),
               others_cpu_s=round(busy - (result.server_cpu_s or 0)
                                  - (out.get("client_cpu_s") or 0), 1))
    return out


def measure(rig: DaemonRig, path: Path, rows: int, *, repeat: int = 1,
            server: BenchServer | None = None, schema: str | None = None,
            **small: Any) -> dict[str, Any]:
    """``repeat`` rounds of alone and mixed, each on emptied tables (alone first in odd
    rounds, mixed first in even ones: a drift of the shared machine does not always favour
    the same phase); the figures of each round and the keep ratio (large rows/s mixed over
    alone) of each. With ``server`` (the schema the rig writes to), each phase's server
    CPU and WAL too."""
    rounds = []
    for n in range(repeat):
        phases: dict[str, dict[str, Any]] = {}
        for name in ("alone", "mixed") if n % 2 == 0 else ("mixed", "alone"):
            empty(rig)
            phases[name] = _metered(
                server, schema, f"mixed load round {n + 1}: {name}",
                functools.partial(alone, rig, path, rows) if name == "alone"
                else functools.partial(mixed, rig, path, rows, **small))
        a, m = phases["alone"], phases["mixed"]
        keep = round(m["large"]["rows_per_s"] / a["rows_per_s"], 3) if a["rows_per_s"] else None
        rounds.append({"alone": a, "mixed": m, "keep": keep})
    return {"rounds": rounds, "executor": dict(rig.executor)}


def large_ab(server: BenchServer, path: Path, rows: int, configs: list[dict[str, Any]],
             rounds: int) -> list[dict[str, Any]]:
    """The large jobs alone under each executor config, interleaved: per round, each
    config in turn (rotated), a fresh daemon on a fresh schema. Does a way of sharing the
    workers cost the large jobs throughput, drift of the shared machine spread over all?"""
    out: list[dict[str, Any]] = []
    for n in range(rounds):
        for k in range(len(configs)):
            config = configs[(n + k) % len(configs)]
            schema = server.new_schema("ab")
            try:
                with daemon_burst.rig(server.schema_dsn(schema), executor=config,
                                      allowed_roots=[str(path.parent)]) as rig:
                    figures = _metered(server, schema, f"ab {config}",
                                       functools.partial(alone, rig, path, rows))
            finally:
                server.drop_schema(schema)
            out.append({"round": n + 1, "executor": config, **figures})
    return out


def _config(text: str) -> dict[str, Any]:
    """``max-pool-size=3,small-job-workers=1`` -> executor keys."""
    pairs = (item.split("=", 1) for item in text.split(",") if item)
    return {k: int(v) if v.isdigit() else v for k, v in pairs}


def verdict(figures: dict[str, Any]) -> list[tuple[str, Any, bool]]:
    """The two targets of scenario 1, judged on every round."""
    out = []
    for n, r in enumerate(figures["rounds"]):
        p95 = r["mixed"]["small"]["p95_ms"]
        out.append((f"round {n + 1}: small-job p95 while large jobs run < {P95_TARGET_MS} ms",
                    p95, p95 is not None and p95 < P95_TARGET_MS))
        out.append((f"round {n + 1}: large jobs keep >= {KEEP_TARGET} of their rows/s alone",
                    r["keep"], r["keep"] is not None and r["keep"] >= KEEP_TARGET))
    return out


def show(figures: dict[str, Any]) -> None:
    """One line per phase and round."""
    print(f"executor {figures['executor']}")
    for n, r in enumerate(figures["rounds"]):
        a, m = r["alone"], r["mixed"]
        s = m["small"]
        print(f"round {n + 1}: alone {a['rows_per_s']:,.0f} rows/s ({a['wall_s']} s, "
              f"finished {a.get('finished_after_s')}); mixed {m['large']['rows_per_s']:,.0f} "
              f"rows/s ({m['large']['wall_s']} s, finished "
              f"{m['large'].get('finished_after_s')}); keep {r['keep']}; server CPU "
              f"alone {a.get('server_cpu_s')} s, mixed {m.get('server_cpu_s')} s; other "
              f"processes' CPU alone {a.get('others_cpu_s')} s, mixed "
              f"{m.get('others_cpu_s')} s")
        print(f"         small jobs during: {s['jobs']} of {s['sent']}, p50 {s['p50_ms']} "
              f"p95 {s['p95_ms']} max {s['max_ms']} ms (all: p95 {s['all_p95_ms']} "
              f"max {s['all_max_ms']} ms); completed {s['completed']}")
    for text, value, met in verdict(figures):
        print(f"  [{'met' if met else 'NOT met'}] {text}: {value}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=250_000, help="rows of each large job")
    parser.add_argument("--small", type=int, default=SMALL_JOBS)
    parser.add_argument("--rate", type=float, default=SMALL_RATE)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--executor", action="append", default=[], metavar="KEY=VALUE",
                        help="a node.import.executor key for the daemon (repeatable)")
    parser.add_argument("--ab", nargs="+", metavar="K=V,K=V",
                        help="instead: the large jobs alone under each of these executor "
                             "configs, interleaved --repeat rounds")
    parser.add_argument("--data-dir", type=Path, default=Path(
        os.environ.get("NODES_IMPORT_BENCH_DATA", "/tmp/nodes-import-bench")))
    args = parser.parse_args()
    executor = _config(",".join(args.executor))
    path = generate.ensure(args.data_dir, "new", args.rows)
    if args.ab:
        with BenchServer() as server:
            for f in large_ab(server, path, args.rows, [_config(c) for c in args.ab],
                              args.repeat):
                print(f"round {f['round']} {f['executor']}: {f['rows_per_s']:,.0f} rows/s "
                      f"({f['wall_s']} s), server CPU {f['server_cpu_s']} s, other "
                      f"processes' CPU {f['others_cpu_s']} s")
        return
    with BenchServer() as server, daemon_burst.rig(
            server.dsn, allowed_roots=[str(path.parent)], executor=executor) as rig:
        show(measure(rig, path, args.rows, repeat=args.repeat, server=server,
                     schema="public", small=args.small, rate=args.rate))


if __name__ == "__main__":
    main()
