"""Memory stays flat: peak RSS of an import process is bounded, whatever the input size.

The documented bound is 300 MB for one import process (README, Reliability). CI runs
the light variants; ``NODES_IMPORT_HEAVY_TESTS=1`` runs the issue's full sizes (a
1,000,000-ID reference job and a 10,000,000-row file), which take minutes.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from nodes_import.cli.sample import write_reference_ids, write_users
from tests.fixtures.postgres import Database

RSS_BOUND_MB = 300
HEAVY = os.environ.get("NODES_IMPORT_HEAVY_TESTS") == "1"
DOMAIN = "3f1c1a3e-2b9d-4c55-9a57-0d3c6a1f0b21"

pytestmark = pytest.mark.slow

# Runs one job in a fresh interpreter and prints its final row; the parent reads the
# child's peak RSS from getrusage once it has exited.
_RUN_ID_LIST = """
import sys, orjson
from nodes_import import config
from nodes_import.worker import engine
from nodes_import.store import connection
from nodes_import.jobs import ImportJob, new_job_id
count = int(sys.argv[2])
ids = tuple(f"user-{n:09d}" for n in range(count))  # as a parsed message would hold them
cfg = config.load(environ={})
pool = connection.open_pool(sys.argv[1], max_size=3)
out = engine.run_import(ImportJob(new_job_id(), "mem", sys.argv[3], reference_ids=ids),
                        cfg.imports, pool)
print(orjson.dumps(out.row, default=str).decode())
"""


# A wrapper with exactly one child: its RUSAGE_CHILDREN peak is that child's own peak.
_MEASURE = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]);"
            " print('PEAK_RSS_KB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,"
            " file=sys.stderr); sys.exit(r.returncode)")


def _peak_rss_mb_of(args: list[str], env: dict[str, str], cwd: Path) -> tuple[float, str]:
    """Run ``args`` and return (its own peak RSS in MB, its stdout)."""
    result = subprocess.run([sys.executable, "-c", _MEASURE, *args], check=False, env=env, cwd=cwd,
                            capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stderr[-2000:]
    line = [x for x in result.stderr.splitlines() if x.startswith("PEAK_RSS_KB")][-1]
    peak = int(line.split()[1]) / 1024.0
    print(f"peak RSS {peak:.0f} MB")  # shown by bin/test --heavy (-rP)
    return peak, result.stdout


def _env(db: Database) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NODES_IMPORT_")}
    env["NODES_IMPORT_DSN"] = db.dsn
    return env


def test_a_large_file_import_stays_under_the_rss_bound(db: Database, tmp_path: Path) -> None:
    rows = 10_000_000 if HEAVY else 150_000
    path = write_users(tmp_path / "big.csv.gz", rows)
    peak, out = _peak_rss_mb_of(
        [sys.executable, "-m", "nodes_import", "import", str(path), "--group", "mem",
         "--domain", DOMAIN, "--json"], _env(db), tmp_path)
    row = orjson.loads(out)
    assert (row["status"], row["total_nodes"], row["success_count"]) == ("COMPLETED", rows, rows)
    assert peak < RSS_BOUND_MB, f"peak RSS {peak:.0f} MB for {rows:,} rows"


def test_a_large_reference_id_job_stays_under_the_rss_bound(db: Database,
                                                            tmp_path: Path) -> None:
    count = 1_000_000 if HEAVY else 100_000
    peak, out = _peak_rss_mb_of([sys.executable, "-c", _RUN_ID_LIST, db.dsn, str(count), DOMAIN],
                                _env(db), tmp_path)
    row = orjson.loads(out.strip().splitlines()[-1])
    assert (row["status"], row["total_nodes"]) == ("COMPLETED", count)
    assert peak < RSS_BOUND_MB, f"peak RSS {peak:.0f} MB for {count:,} IDs"


def test_a_large_reference_id_file_stays_under_the_rss_bound(db: Database,
                                                             tmp_path: Path) -> None:
    count = 1_000_000 if HEAVY else 100_000
    ids = write_reference_ids(tmp_path / "ids.txt.gz", count)
    peak, out = _peak_rss_mb_of(
        [sys.executable, "-m", "nodes_import", "import", "--reference-ids", str(ids),
         "--group", "mem-file", "--domain", DOMAIN, "--json"], _env(db), tmp_path)
    assert orjson.loads(out)["total_nodes"] == count
    assert peak < RSS_BOUND_MB, f"peak RSS {peak:.0f} MB for {count:,} IDs"
