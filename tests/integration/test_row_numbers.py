"""Data row numbers stay right when a file has many rows of the wrong width.

Found by the chaos soak (seed 3, a 29,977-row overlap file with 45 wrong-width rows): with
more than 32 invalid rows pending (pyarrow parses blocks ahead of the batch being cut),
``parse._RowNumbers`` numbered a batch on its slow path and forgot where that batch ended,
so the next batch's numbers restarted up to one batch's invalid rows too low. The
job_failures rows of later batches then named the wrong rows, and, since a checkpoint is a
row number, a resumed job skipped rows it had never written.
"""

from __future__ import annotations

import csv
import dataclasses
import gzip
import io
import threading
import uuid
from pathlib import Path

from nodes_import.config import ImportConfig, RetryConfig
from nodes_import.jobs import ImportJob
from nodes_import.worker import engine
from tests.fixtures.postgres import Database

DOMAIN = "3f1c1a3e-2b9d-4c55-9a57-0d3c6a1f0b21"
ROWS = 20_000  # data rows; every 40th of the wrong width, every 97th with a blank key


def _file(path: Path) -> tuple[set[str], list[tuple[int, str]]]:
    """The file; (the keys it imports, the (row number, reason) of its bad rows)."""
    keys, bad = set(), []
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["reference_id", "email", "plan"])
    for n in range(1, ROWS + 1):
        if n % 40 == 0:
            out.write(f"short{n}\n")
            bad.append((n, "expected 3 fields, got 1"))
        elif n % 97 == 0:
            writer.writerow(["", f"{n}@example.com", "free"])
            bad.append((n, "blank reference_id"))
        else:
            writer.writerow([f"k{n}", f"{n}@example.com", "free"])
            keys.add(f"k{n}")
    path.write_bytes(gzip.compress(out.getvalue().encode()))
    return keys, bad


def _cfg(tmp_path: Path) -> ImportConfig:
    return dataclasses.replace(
        ImportConfig(batch_size=1000, max_parallel_futures=1, allowed_roots=(str(tmp_path),),
                     retry=RetryConfig(3, 10, 2.0, 50)))


def test_job_failures_name_the_right_rows_when_many_rows_have_the_wrong_width(
        db: Database, tmp_path: Path) -> None:
    keys, bad = _file(tmp_path / "wide.csv.gz")
    job = ImportJob(str(uuid.uuid4()), "g", DOMAIN, source=str(tmp_path / "wide.csv.gz"))
    outcome = engine.run_import(job, _cfg(tmp_path), db.pool)
    assert outcome.status == "COMPLETED", outcome
    rows = db.query("SELECT row_number, reason FROM job_failures WHERE job_id = %s"
                    " ORDER BY row_number", (job.job_id,))
    assert [(int(n), r) for n, r in rows] == bad
    assert db.scalar("SELECT count(*) FROM nodes") == len(keys)


def test_a_job_stopped_after_its_first_batches_resumes_without_skipping_rows(
        db: Database, tmp_path: Path) -> None:
    keys, bad = _file(tmp_path / "wide.csv.gz")
    job = ImportJob(str(uuid.uuid4()), "g", DOMAIN, source=str(tmp_path / "wide.csv.gz"))
    cancel = threading.Event()

    def stop_after_first_commits(progress: engine.Progress) -> None:
        if progress.rows_committed >= 2000:
            cancel.set()

    first = engine.run_import(job, _cfg(tmp_path), db.pool, on_progress=stop_after_first_commits,
                              cancel=cancel)
    assert first.status == "PROCESSING"  # stopped at a checkpoint, part of the file written
    assert 0 < db.scalar("SELECT rows_committed FROM job_status WHERE id = %s",
                         (job.job_id,)) < ROWS
    second = engine.run_import(job, _cfg(tmp_path), db.pool)
    assert second.status == "COMPLETED", second
    stored = {r[0] for r in db.query("SELECT reference_id FROM nodes")}
    assert stored == keys, f"{len(keys - stored)} rows never written"
    row = db.query("SELECT total_nodes, success_count, failed_count, inserted_count"
                   " FROM job_status WHERE id = %s", (job.job_id,))[0]
    assert row == (ROWS, len(keys), len(bad), len(keys))
