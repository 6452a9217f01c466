"""Question: does an engine proposal beat the engine as it is, on this machine, now?

B, then for each engine variant (as it is, and each proposal named) a fresh import, an
unchanged re-import and a re-import with every row changed, each variant in its own
schema; the variants take turns per scenario (A B C, A B C, ...) so slow drift of a
shared machine spreads over all of them. Ratios are to the B of this run.

``python -m benchmarks.compare --rows 500000 --proposals no-analyze``
"""

from __future__ import annotations

import argparse
from pathlib import Path

from benchmarks import baselines, generate
from benchmarks.harness import BenchServer, Result
from benchmarks.imports import import_once
from benchmarks.report import table


def compare(server: BenchServer, data_dir: Path, rows: int,
            proposals: list[str]) -> list[Result]:
    """B plus the three scenarios per variant, interleaved."""
    files = {v: generate.ensure(data_dir, v, rows) for v in ("new", "changed100")}
    b = baselines.copy_b(server, baselines.prepare(files["new"]))
    results = [b]
    variants: list[str | None] = [None, *proposals]
    schemas = {v: server.new_schema("cmp") for v in variants}
    steps = [("new", "fresh import"), ("new", "re-import unchanged"),
             ("changed100", "re-import 100% changed")]
    for variant_file, what in steps:
        for v in variants:
            label = f" [{v}]" if v else " (engine as it is)"
            results.append(import_once(server, schemas[v], files[variant_file], what + label,
                                       rows, proposal=v, timeout_s=300))
    for schema in schemas.values():
        server.drop_schema(schema)
    for r in results:
        r.ratio_b = round(r.rows_per_s / b.rows_per_s, 3) if r.ok else None
    return results


def main() -> None:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=500_000)
    parser.add_argument("--proposals", nargs="+", default=["no-analyze"])
    parser.add_argument("--data-dir", type=Path, default=Path("/tmp/nodes-import-bench"))
    args = parser.parse_args()
    with BenchServer() as server:
        results = compare(server, args.data_dir, args.rows, args.proposals)
    print(table(results))


if __name__ == "__main__":
    main()
