"""Question: is ``nodes-import import FILE --dry-run`` within 1.5x of the client floor (issue 16)?

The floor (``baselines.client_floor``): a fresh process that only reads and parses the same
file with ISA-L and pyarrow, one thread. The dry run reads it with the import's reader and,
beside it, checks every batch and splits the keys for the distinct count (two more threads),
then counts the distinct keys. The two commands take turns (floor, dry run, floor, ...) so a
change in the machine's load falls on both; medians of wall time and of CPU (user + sys of
the whole process, threads included, from ``/usr/bin/time``), and their ratios.

Wall time is what the person waiting sees; CPU says what the second core pays for it.

    python -m benchmarks.dry_run                    # 1M and 5M rows, 5 turns each
    python -m benchmarks.dry_run --rows 1000000 --rounds 9 --json out.json
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path
from typing import Any

import orjson

from benchmarks import baselines, generate, imports
from benchmarks.harness import Result, run_cli

TARGET = 1.5  # issue 16: "no slower than the client floor x 1.5"


def _dry_run(path: Path, rows: int) -> tuple[float, float]:
    """One dry run of ``path``: (wall s, CPU s); checks it read every row."""
    env = {"NODES_IMPORT_NODE_IMPORT_ALLOWED_ROOTS": str(path.parent),
           "PYTHONPATH": str(imports.REPO)}
    wall, cpu, _rss, out = run_cli(["import", str(path), "--dry-run", "--json"], env)
    seen = orjson.loads(out.strip().splitlines()[-1])
    if seen["rows"] != rows:
        raise RuntimeError(f"the dry run read {seen['rows']} rows of {rows}")
    return wall, cpu


def measure(path: Path, rows: int, rounds: int) -> dict[str, Any]:
    """``rounds`` turns of the floor and the dry run on ``path``: medians and ratios."""
    floor_wall, floor_cpu, dry_wall, dry_cpu = [], [], [], []
    for turn in range(rounds):
        floor = baselines.client_floor(path, rows)
        floor_wall.append(floor.seconds)
        floor_cpu.append(floor.client_cpu_s)
        wall, cpu = _dry_run(path, rows)
        dry_wall.append(wall)
        dry_cpu.append(cpu)
        print(f"  {rows:,} rows, turn {turn + 1}: floor {floor.seconds:.2f} s wall /"
              f" {floor.client_cpu_s:.2f} s CPU, dry run {wall:.2f} / {cpu:.2f}",
              file=sys.stderr)
    med = statistics.median
    figures = {"rows": rows, "gzip_bytes": path.stat().st_size, "rounds": rounds,
               "floor_wall_s": med(floor_wall), "floor_cpu_s": med(floor_cpu),
               "dry_run_wall_s": med(dry_wall), "dry_run_cpu_s": med(dry_cpu),
               "load_avg": os.getloadavg()[0]}
    figures["wall_ratio"] = round(figures["dry_run_wall_s"] / figures["floor_wall_s"], 2)
    figures["cpu_ratio"] = round(figures["dry_run_cpu_s"] / figures["floor_cpu_s"], 2)
    return figures


def result(figures: dict[str, Any]) -> Result:
    """The figures as one row of the suite (``run.py``): the dry run's median wall and CPU,
    the ratios in ``params`` (``report.py`` judges ``wall_ratio`` against ``TARGET``)."""
    return Result(f"import --dry-run ({figures['rounds']} turns with the client floor)",
                  "dry-run", figures["rows"], figures["dry_run_wall_s"],
                  figures["gzip_bytes"], client_cpu_s=figures["dry_run_cpu_s"],
                  params=figures,
                  notes=f"x floor: wall {figures['wall_ratio']}, CPU {figures['cpu_ratio']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, action="append",
                        help="rows of a file (repeatable; default 1M and 5M)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--data-dir", type=Path, default=Path(
        os.environ.get("NODES_IMPORT_BENCH_DATA", "/tmp/nodes-import-bench")))
    args = parser.parse_args()
    imports.compile_package()
    out = []
    for rows in args.rows or [1_000_000, 5_000_000]:
        path = generate.ensure(args.data_dir, "new", rows)
        figures = measure(path, rows, args.rounds)
        out.append(figures)
        verdict = "met" if figures["wall_ratio"] <= TARGET else "NOT met"
        print(f"{rows:>10,} rows ({figures['gzip_bytes'] / 1e6:.0f} MB gzip, "
              f"{args.rounds} turns): floor {figures['floor_wall_s']:.2f} s /"
              f" {figures['floor_cpu_s']:.2f} s CPU; dry run {figures['dry_run_wall_s']:.2f} s"
              f" / {figures['dry_run_cpu_s']:.2f} s CPU; x floor: wall"
              f" {figures['wall_ratio']:.2f} ({verdict}, target {TARGET}),"
              f" CPU {figures['cpu_ratio']:.2f}; load {figures['load_avg']:.1f}")
    if args.json:
        args.json.write_bytes(orjson.dumps(out, option=orjson.OPT_INDENT_2))


if __name__ == "__main__":
    main()
