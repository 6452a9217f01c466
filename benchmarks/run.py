"""The suite: baselines, scenarios, sweep and profile in ONE run, as a table, JSON, PNG.

``bin/bench`` calls this. Every figure is divided by B measured in the same run, on
the same server, from the same file (see README.md). Modes:

- ``--quick``   100,000 rows, a 3x3 sweep on 50,000 rows, no profile: < 3 minutes;
- (default)     1,000,000 rows, the full sweep on 250,000 rows, extras, the profile;
- ``--large``   the default plus a 10,000,000-row fresh import (peak RSS) and B on that file,
                and the big-table step (``big_table.py``: 1M rows into 20M-row tables kept
                in a cached cluster under the data directory, ``pg-big``);
- ``--rss-rows N`` a fresh import of N rows for the client's peak RSS;
- ``--daemon-only`` only the daemon steps (``--no-daemon``: everything but them);
- ``--from-json PATH`` measure nothing: print a saved run (and chart it with ``--png``).

The dry-run step (``benchmarks/dry_run.py``, issue 16; not with ``--daemon-only``):
``import FILE --dry-run`` and the client floor taking turns on the scenarios' file (5 turns,
3 with ``--quick``), judged on wall time at 1M rows or more.

The daemon step (``benchmarks/daemon_burst.py``) runs ``nodes-import run`` on the same
server with a local Tansu broker: 200 small jobs on 4 partitions (jobs/s, latency from
produce to ``finished_at`` p50/p95), then 4 large file jobs produced at once (4 x 250,000
rows; 4 x 25,000 with ``--quick``). The mixed-load step (``benchmarks/mixed_load.py``,
issue 17) runs 4 x 1M-row jobs alone, then again with 200 small jobs paced at 20/s while
they run: the small jobs' latency and the large jobs' rows/s against alone. The daemons
step (``benchmarks/daemons.py``, issue 17) runs 8 x 250k-row jobs through 1, 2 and 3
daemons in one group: rows/s, connections and lock waits sampled from the server.

Scenarios run on the engine as it is; with ``--proposal NAME`` they run again with that
proposal of ``benchmarks/proposals.py`` applied (labelled ``[NAME]``), and the extras,
the large import, the sweep and the profile use the proposal.

This module measures and saves the JSON; ``benchmarks/report.py`` turns the results into
ratios, verdicts, tables and the chart.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from benchmarks import (
    baselines,
    big_table,
    daemon_burst,
    daemons,
    dry_run,
    generate,
    imports,
    mixed_load,
    profile_import,
    report,
    sweep,
)
from benchmarks.harness import BenchServer, Result, meter

DAEMON_JOBS, DAEMON_IDS = 200, 5  # the burst: 200 small jobs of 5 reference IDs
DAEMON_PACED_RATE = 20  # jobs/s: well under capacity, so latency is one job's own time
LARGE_JOBS = 4


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import psutil
    import psycopg
    import pyarrow

    return {"host": platform.node(), "cpu": cpu, "cores": os.cpu_count(),
            "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
            "python": platform.python_version(), "pyarrow": pyarrow.__version__,
            "psycopg": psycopg.__version__, "load_avg_start": os.getloadavg()}


def daemon_step(server: BenchServer, data_dir: Path, quick: bool) -> list[Result]:
    """Scenario 5: the daemon, a burst of small jobs and 4 large jobs at once."""
    out = []
    large_rows = 25_000 if quick else 250_000
    path = generate.ensure(data_dir, "new", large_rows)
    schema = server.new_schema("daemon")
    try:
        with daemon_burst.rig(server.schema_dsn(schema),
                              allowed_roots=[str(path.parent)]) as rig:
            for rate in (0, DAEMON_PACED_RATE):
                how = "at once" if not rate else f"paced {rate:g}/s"
                small = Result(f"daemon: {DAEMON_JOBS} small jobs ({DAEMON_IDS} IDs), "
                               f"{daemon_burst.PARTITIONS} partitions, {how}", "daemon",
                               DAEMON_JOBS * DAEMON_IDS, 0)
                server.settle(schema)
                with meter(server, schema, small):  # it prints the result at its end
                    f = rig.burst(f"small{rate:g}", DAEMON_JOBS, DAEMON_IDS, rate=rate)
                    small.seconds = f["wall_s"]
                    small.ok = (f["completed"] == DAEMON_JOBS
                                and f["nodes"] == f["nodes_expected"])
                small.client_cpu_s = f["client_cpu_s"]
                small.client_peak_rss_mb = round(f["daemon_rss_mb"] + f["workers_rss_mb"], 1)
                small.params = {**f, "small": True, "workers": rig.workers, "rate": rate}
                small.notes = (f"{f['jobs_per_s']} jobs/s, p50 {f['p50_ms']} ms, "
                               f"p95 {f['p95_ms']} ms")
                out.append(small)
            large = Result(f"daemon: {LARGE_JOBS} x {large_rows:,}-row file jobs at once",
                           "daemon", LARGE_JOBS * large_rows, 0,
                           LARGE_JOBS * path.stat().st_size)
            server.settle(schema)
            with meter(server, schema, large):
                f = rig.large_jobs("large", path, LARGE_JOBS, large_rows)
                large.seconds = f["wall_s"]
                large.ok = f["completed"] == LARGE_JOBS
            large.client_cpu_s = f["client_cpu_s"]
            large.client_peak_rss_mb = round(f["peak_daemon_rss_mb"]
                                             + f["peak_workers_rss_mb"], 1)
            large.params = {**f, "workers": rig.workers}
            large.notes = (f"{f['rows_per_s']:,.0f} rows/s, job latency p50 "
                           f"{(f['p50_ms'] or 0) / 1000:.1f} s, "
                           f"max {(f['max_ms'] or 0) / 1000:.1f} s")
            out.append(large)
    finally:
        server.drop_schema(schema)
    return out


def mixed_step(server: BenchServer, data_dir: Path, quick: bool) -> list[Result]:
    """Scenario 1 of issue 17 (``mixed_load.py``): 4 large jobs alone, then the same with
    small jobs paced at 20/s while they run; 4 x 1M rows (4 x 100k with ``--quick``, and
    40 small jobs instead of 200)."""
    rows = 100_000 if quick else 1_000_000
    small = 40 if quick else mixed_load.SMALL_JOBS
    path = generate.ensure(data_dir, "new", rows)
    schema = server.new_schema("mixed")
    try:
        with daemon_burst.rig(server.schema_dsn(schema),
                              allowed_roots=[str(path.parent)]) as rig:
            figures = mixed_load.measure(rig, path, rows, server=server, schema=schema,
                                         small=small)
    finally:
        server.drop_schema(schema)
    return report.mixed_results(figures, path.stat().st_size)


def daemons_step(server: BenchServer, data_dir: Path, quick: bool) -> list[Result]:
    """Scenario 2 of issue 17 (``daemons.py``): 8 large jobs through 1, 2 and 3 daemons in
    one group; 8 x 250k rows (8 x 25k with ``--quick``)."""
    rows = 25_000 if quick else 250_000
    path = generate.ensure(data_dir, "new", rows)
    return report.daemons_results(daemons.measure(server, path, rows), path.stat().st_size)


def _parser() -> argparse.ArgumentParser:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100k rows, < 3 minutes")
    parser.add_argument("--large", action="store_true", help="also a 10M-row fresh import")
    parser.add_argument("--rows", type=int, default=None, help="rows per scenario")
    parser.add_argument("--rss-rows", type=int, default=0, help="a fresh import this big")
    parser.add_argument("--sweep-rows", type=int, default=None)
    parser.add_argument("--no-sweep", action="store_true")
    parser.add_argument("--no-profile", action="store_true")
    parser.add_argument("--no-baselines", action="store_true")
    parser.add_argument("--no-daemon", action="store_true",
                        help="skip the daemon steps (burst, large jobs, mixed load)")
    parser.add_argument("--daemon-only", action="store_true",
                        help="B and the daemon step only")
    parser.add_argument("--proposal", default="none",
                        choices=["none", "lateral", "no-analyze", "lateral-no-analyze"])
    parser.add_argument("--timeout", type=float, default=None,
                        help="per-job limit for the engine as it is, seconds")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--png", type=Path, help="write the chart here (needs matplotlib)")
    parser.add_argument("--from-json", type=Path, metavar="JSON",
                        help="measure nothing: print (and --png) a saved run's results again")
    parser.add_argument("--data-dir", type=Path, default=Path(
        os.environ.get("NODES_IMPORT_BENCH_DATA", "/tmp/nodes-import-bench")))
    return parser


@dataclass
class Plan:
    """What one run measures: the command line, with the mode's sizes filled in."""

    args: argparse.Namespace
    rows: int
    sweep_rows: int
    timeout: float
    rss_rows: int  # the large fresh import (peak RSS), 0: none
    proposal: str | None

    @classmethod
    def of(cls, args: argparse.Namespace) -> Plan:
        return cls(args, rows=args.rows or (100_000 if args.quick else 1_000_000),
                   sweep_rows=args.sweep_rows or (50_000 if args.quick else 200_000),
                   timeout=args.timeout or (25.0 if args.quick else 120.0),
                   rss_rows=10_000_000 if args.large else args.rss_rows,
                   proposal=None if args.proposal == "none" else args.proposal)


Step = Callable[[str], None]


def _progress(started: float, json_path: Path | None, info: dict[str, Any],
              results: list[Result]) -> Step:
    """A step's announcement on stderr, and the figures so far saved as a partial JSON."""
    def step(what: str) -> None:
        print(f"[{time.monotonic() - started:6.0f}s] {what}", file=sys.stderr)
        if json_path:  # a partial file, replaced at the end: a crash loses no figures
            json_path.write_bytes(orjson.dumps(
                {**info, "partial": True, "results": [r.as_dict() for r in results]},
                option=orjson.OPT_INDENT_2))

    return step


def _loads(server: BenchServer, plan: Plan, results: list[Result], step: Step) -> None:
    """The baselines (B alone with --daemon-only), the scenarios of the engine as it is,
    and B on the large import's file."""
    args = plan.args
    if args.daemon_only:
        step("B and C★ (for the ratios)")
        data = baselines.prepare(generate.ensure(args.data_dir, "new", plan.rows))
        results += [baselines.copy_b(server, data), baselines.copy_c_star(server, data)]
        return
    if not args.no_baselines:
        step("baselines")
        results += baselines.run_all(server, generate.ensure(args.data_dir, "new", plan.rows),
                                     extra_b=not args.quick)
    step("scenarios, engine as it is")
    results += imports.run_all(server, args.data_dir, plan.rows, timeout_s=plan.timeout,
                               extras=not args.quick and not plan.proposal,
                               rss_rows=0 if plan.proposal else plan.rss_rows)
    if plan.rss_rows and not plan.proposal and not args.no_baselines:
        step(f"B on the {plan.rss_rows:,}-row file (the large import's ratio)")
        big_b = baselines.copy_b(server, baselines.prepare(
            generate.ensure(args.data_dir, "new", plan.rss_rows), only_b=True, c_star=False))
        big_b.name = report.big_b_name(plan.rss_rows)
        results.append(big_b)


def _sweep(server: BenchServer, plan: Plan, results: list[Result], step: Step) -> None:
    """B on the sweep's rows, then the sweep."""
    args, rows = plan.args, plan.sweep_rows
    step(f"sweep on {rows:,} rows")
    sweep_b = baselines.copy_b(server, baselines.prepare(
        generate.ensure(args.data_dir, "new", rows)))
    sweep_b.name, sweep_b.kind = f"B on the sweep's {rows:,} rows", "sweep"
    results.append(sweep_b)
    results += sweep.run_sweep(server, args.data_dir, rows, quick=args.quick,
                               proposal=plan.proposal, timeout_s=plan.timeout)


def measure(plan: Plan, info: dict[str, Any], results: list[Result],
            step: Step) -> dict[str, Any] | None:
    """Every step the plan asks for on one throwaway server, appended to results; the
    profile (None: not asked for)."""
    args = plan.args
    prof: dict[str, Any] | None = None
    with BenchServer() as server:
        info["postgres"] = server.version()
        _loads(server, plan, results, step)
        if not args.daemon_only:
            step("import --dry-run against the client floor (issue 16)")
            path = generate.ensure(args.data_dir, "new", plan.rows)
            results.append(dry_run.result(dry_run.measure(path, plan.rows,
                                                          3 if args.quick else 5)))
        if not args.no_daemon:
            step("daemon: small-job burst, large jobs at once")
            try:
                results += daemon_step(server, args.data_dir, args.quick)
            except Exception as exc:  # the figures so far still get reported
                print(f"daemon step failed: {type(exc).__name__}: {exc}", file=sys.stderr)
                info["daemon_error"] = f"{type(exc).__name__}: {exc}"
            step("mixed load: small jobs while 4 large jobs run (issue 17)")
            try:
                results += mixed_step(server, args.data_dir, args.quick)
            except Exception as exc:  # the figures so far still get reported
                print(f"mixed-load step failed: {type(exc).__name__}: {exc}", file=sys.stderr)
                info["mixed_error"] = f"{type(exc).__name__}: {exc}"
            step("several daemons, one database: 8 large jobs through 1, 2, 3 (issue 17)")
            try:
                results += daemons_step(server, args.data_dir, args.quick)
            except Exception as exc:  # the figures so far still get reported
                print(f"daemons step failed: {type(exc).__name__}: {exc}", file=sys.stderr)
                info["daemons_error"] = f"{type(exc).__name__}: {exc}"
        if plan.proposal and not args.daemon_only:
            step(f"scenarios, engine + [{plan.proposal}]")
            results += imports.run_all(server, args.data_dir, plan.rows, proposal=plan.proposal,
                                       extras=not args.quick, rss_rows=plan.rss_rows)
        if not args.no_sweep:
            _sweep(server, plan, results, step)
        if args.large:
            step("big table: 1M rows into 20M-row tables (issue 17; cached cluster)")
            try:
                with BenchServer(keep=args.data_dir / "pg-big") as big:
                    measured, info["big_table"] = big_table.measure(big, args.data_dir,
                                                                    plan.rows)
                results += measured
            except Exception as exc:  # the figures so far still get reported
                print(f"big-table step failed: {type(exc).__name__}: {exc}", file=sys.stderr)
                info["big_table_error"] = f"{type(exc).__name__}: {exc}"
        if not args.quick and not args.no_profile:
            step("profile")
            try:
                prof = profile_import.profile(server, args.data_dir, plan.rows, plan.proposal)
            except Exception as exc:  # the figures so far still get reported
                prof = {"skipped": f"profile failed: {type(exc).__name__}: {exc}"}
    return prof


def save_json(path: Path, info: dict[str, Any], results: list[Result],
              checks: list[dict[str, Any]], prof: dict[str, Any] | None) -> None:
    """The whole run: its info, every result, the verdicts and the profile."""
    path.write_bytes(orjson.dumps(
        {**info, "results": [r.as_dict() for r in results], "targets": checks,
         "profile": prof}, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))
    print(f"\nJSON: {path}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Run the suite; print the table; write JSON/PNG when asked."""
    args = _parser().parse_args(argv)
    if args.from_json:
        report.show_saved(args.from_json, args.png)
        return 0
    plan = Plan.of(args)
    started = time.monotonic()
    info: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"), "machine": machine(),
        "mode": "quick" if args.quick else ("large" if args.large else "default"),
        "rows": plan.rows}
    print(f"nodes-import benchmarks, {info['mode']} mode, {plan.rows:,} rows; data in "
          f"{args.data_dir}", file=sys.stderr)
    if args.daemon_only:
        args.no_sweep = args.no_profile = True
    imports.compile_package()
    if not args.daemon_only:
        for variant in ("new", "changed10", "changed100", "ids"):
            generate.ensure(args.data_dir, variant, plan.rows)
    results: list[Result] = []
    prof = measure(plan, info, results, _progress(started, args.json, info, results))
    report.all_ratios(results, plan.rss_rows)
    info["seconds"] = round(time.monotonic() - started, 1)
    info["machine"]["load_avg_end"] = os.getloadavg()
    checks = report.render(info, results, prof)
    if args.json:
        save_json(args.json, info, results, checks, prof)
    if args.png:
        report.draw(results, args.png)
    return 0


if __name__ == "__main__":
    sys.exit(main())
