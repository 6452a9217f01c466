"""Question: which batch size, parallelism and block size should be the defaults?

Fresh imports of the same file through ``nodes-import import``, one schema each, over
a grid of ``node.import.batch.size`` x ``node.import.max-parallel-futures`` (writer
connections; the CLI's pool is that + 1), then ``node.import.block-size-bytes`` at
the default batch and parallelism. Every point is a rows/s figure to read against B of
the same run: the curve flattens where the database, not the client, is the limit.

Run alone: ``python -m benchmarks.sweep --rows 200000``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from benchmarks import generate
from benchmarks.harness import BenchServer, Result
from benchmarks.imports import import_once
from nodes_import.config import KEYS

# The engine's default block size: the batch x parallelism grid runs with it, so the
# block-size points measure only the other sizes.
DEFAULT_BLOCK = KEYS["node.import.block-size-bytes"][1]

FULL_BATCHES = [500, 5_000, 20_000, 25_000, 50_000, 100_000]
FULL_PARALLEL = [1, 2, 3, 4]
FULL_BLOCKS = [1 << 20, 4 << 20, 16 << 20]
QUICK_BATCHES = [500, 10_000, 50_000]
QUICK_PARALLEL = [1, 2, 4]


def run_sweep(server: BenchServer, data_dir: Path, rows: int, *, quick: bool = False,
              proposal: str | None = None, timeout_s: float | None = None) -> list[Result]:
    """The grid; one fresh import per point."""
    path = generate.ensure(data_dir, "new", rows)
    points: list[dict[str, int]] = [
        {"batch_size": b, "parallel": p}
        for b in (QUICK_BATCHES if quick else FULL_BATCHES)
        for p in (QUICK_PARALLEL if quick else FULL_PARALLEL)]
    if not quick:
        points += [{"block_size": size} for size in FULL_BLOCKS if size != DEFAULT_BLOCK]
    results = []
    for settings in points:
        schema = server.new_schema("sweep")
        name = "sweep " + " ".join(f"{k}={v}" for k, v in settings.items())
        results.append(import_once(server, schema, path, name, rows, kind="sweep",
                                   settings=settings, proposal=proposal, timeout_s=timeout_s))
        server.drop_schema(schema)
    return results


def main() -> None:
    """Command line: the sweep alone."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--proposal", default=None,
                        choices=["lateral", "no-analyze", "lateral-no-analyze"])
    parser.add_argument("--data-dir", type=Path, default=Path("/tmp/nodes-import-bench"))
    args = parser.parse_args()
    with BenchServer() as server:
        for r in run_sweep(server, args.data_dir, args.rows, quick=args.quick,
                           proposal=args.proposal):
            print(f"{r.name:45} {r.seconds:7.2f}s {r.rows_per_s:10,.0f} rows/s "
                  f"cpu {r.client_cpu_s}s rss {r.client_peak_rss_mb}MB {r.notes}")


if __name__ == "__main__":
    main()
