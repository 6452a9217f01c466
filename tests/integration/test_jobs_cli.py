"""The ``jobs`` commands added by issue 16 as operators run them: a real process, a real
database: ``jobs list`` filters, ``jobs show`` progress of a running job, ``jobs rejects``
streamed (a million rejected rows in bounded memory)."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import uuid
from pathlib import Path

import orjson
import pytest

from nodes_import.jobs import ImportJob
from nodes_import.store import jobrows
from tests.fixtures.postgres import Database

DOMAIN = "3f1c1a3e-2b9d-4c55-9a57-0d3c6a1f0b21"


def _env(db: Database) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NODES_IMPORT_")}
    env["NODES_IMPORT_DSN"] = db.dsn
    return env


def _cli(db: Database, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "nodes_import", *args], cwd=cwd, env=_env(db),
                          capture_output=True, text=True, timeout=300, check=False)


def _job(db: Database, group: str, *, age: str | None = None) -> str:
    job_id = str(uuid.uuid4())
    with db.pool.connection() as conn:
        jobrows.create_job(conn, job_id=job_id, group_id=group, domain_id=DOMAIN,
                           node_type="USER", source="f.csv.gz")
    if age:
        db.query("UPDATE job_status SET created_at = now() - %s::interval WHERE id = %s"
                 " RETURNING 1", (age, job_id))
    return job_id


def test_jobs_list_filters_by_group_age_status_and_limit(db: Database, tmp_path: Path) -> None:
    recent_a, old_a, recent_b = _job(db, "a"), _job(db, "a", age="3 hours"), _job(db, "b")

    def listed(*args: str) -> list[str]:
        result = _cli(db, "jobs", "list", "--json", *args, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        return [j["id"] for j in orjson.loads(result.stdout)]

    assert set(listed("--group", "a")) == {recent_a, old_a}
    assert set(listed("--since", "2h")) == {recent_a, recent_b}
    assert listed("--group", "a", "--since", "2h") == [recent_a]
    assert listed("--since", "2h", "--status", "pending", "--limit", "1") in ([recent_a],
                                                                               [recent_b])
    assert listed("--status", "FAILED") == []
    text = _cli(db, "jobs", "list", "--group", "b", cwd=tmp_path).stdout
    assert recent_b in text and recent_a not in text
    bad = _cli(db, "jobs", "list", "--since", "soon", cwd=tmp_path)
    assert bad.returncode == 2 and "not a duration" in bad.stderr


def test_jobs_show_gives_a_running_jobs_progress(db: Database, tmp_path: Path) -> None:
    job_id = str(uuid.uuid4())
    with db.pool.connection() as conn:
        jobrows.begin_job(conn, ImportJob(job_id=job_id, group_id="p", domain_id=DOMAIN,
                                          source="f.csv.gz"), partitions=1,
                          source_bytes=1_000_000)
    # 40% read and 40,000 rows committed in the 20 s since it started: 2,000 rows/s, 30 s left
    db.query("UPDATE job_status SET bytes_read = 400000, rows_committed = 40000,"
             " total_nodes = 40000, success_count = 40000, inserted_count = 40000,"
             " started_at = updated_at - interval '20 seconds' WHERE id = %s RETURNING 1",
             (job_id,))
    text = _cli(db, "jobs", "show", job_id, cwd=tmp_path).stdout
    assert "progress 40,000 rows, 40.0% read, 2,000 rows/s, ETA 30s" in text
    shown = orjson.loads(_cli(db, "jobs", "show", job_id, "--json", cwd=tmp_path).stdout)
    assert (shown["progress_percentage"], shown["rows_per_s"], shown["eta_s"]) == (
        40.0, 2000.0, 30.0)


def _with_rejects(db: Database, count: int) -> str:
    job_id = _job(db, "rejects")
    _insert(db, job_id, count)
    return job_id


def _insert(db: Database, job_id: str, count: int) -> None:
    import psycopg

    with psycopg.connect(db.dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO job_failures (job_id, row_number, reference_id, reason, line)"
                     " SELECT %s, n, 'ref-' || n, 'blank reference_id',"
                     " 'ref-' || n || ',\"a, quoted\"\"value\"\",' || repeat('x', 80)"
                     " FROM generate_series(1, %s) n", (job_id, count))


def test_jobs_rejects_writes_every_rejected_row_as_csv_or_json_lines(
        db: Database, tmp_path: Path) -> None:
    job_id = _with_rejects(db, 12)
    result = _cli(db, "jobs", "rejects", job_id, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    rows = list(csv.reader(result.stdout.splitlines()))
    assert rows[0] == ["row_number", "reference_id", "reason", "line"]
    assert [int(r[0]) for r in rows[1:]] == list(range(1, 13))
    assert rows[1][3] == 'ref-1,"a, quoted""value"",' + "x" * 80  # the line, round-tripped
    out = tmp_path / "r.jsonl"
    written = _cli(db, "jobs", "rejects", job_id, "--json", "-o", str(out), cwd=tmp_path)
    assert written.returncode == 0 and "12 rejected rows" in written.stderr
    lines = [orjson.loads(line) for line in out.read_text().splitlines()]
    assert lines[0] == {"row_number": 1, "reference_id": "ref-1",
                        "reason": "blank reference_id",
                        "line": 'ref-1,"a, quoted""value"",' + "x" * 80}
    assert len(lines) == 12
    unknown = _cli(db, "jobs", "rejects", str(uuid.uuid4()), cwd=tmp_path)
    assert unknown.returncode == 1 and "no job" in unknown.stderr


_PEAK_RSS = """
import resource, subprocess, sys
done = subprocess.run(sys.argv[1:], check=False)
print(done.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


def _peak_rss_mb(db: Database, tmp_path: Path, *args: str) -> float:
    """Peak RSS of one ``nodes-import`` run (a fresh parent that waits for it alone)."""
    result = subprocess.run([sys.executable, "-c", _PEAK_RSS, sys.executable, "-m",
                             "nodes_import", *args], cwd=tmp_path, env=_env(db),
                            capture_output=True, text=True, timeout=600, check=False)
    code, kib = result.stdout.split()
    assert code == "0", result.stderr
    return int(kib) / 1024


@pytest.mark.slow
def test_a_million_rejected_rows_are_streamed_in_bounded_memory(
        db: Database, tmp_path: Path) -> None:
    few, many = _with_rejects(db, 10), _with_rejects(db, 1_000_000)
    small = _peak_rss_mb(db, tmp_path, "jobs", "rejects", few, "-o", str(tmp_path / "s.csv"))
    out = tmp_path / "big.csv"
    big = _peak_rss_mb(db, tmp_path, "jobs", "rejects", many, "-o", str(out))
    with out.open() as handle:
        assert sum(1 for _ in handle) == 1_000_001
    # Held in memory, a million rows (~120 bytes of text, 4 Python objects each) would add
    # some 400 MB; streamed, the peak is that of a handful of 5,000-row pages.
    print(f"peak RSS: {small:.0f} MB (10 rejects), {big:.0f} MB (1M rejects)")
    assert big - small < 60, (small, big)


def test_jobs_rejects_into_a_pipe_closed_early_exits_quietly(db: Database,
                                                             tmp_path: Path) -> None:
    job_id = _with_rejects(db, 20_000)  # ~2.5 MB: far more than a pipe holds
    result = subprocess.run(
        f"{sys.executable} -m nodes_import jobs rejects {job_id} | head -3", shell=True,
        cwd=tmp_path, env=_env(db), capture_output=True, text=True, timeout=120, check=False)
    assert result.stdout.splitlines()[0] == "row_number,reference_id,reason,line"
    assert len(result.stdout.splitlines()) == 3
    assert "Traceback" not in result.stderr and "BrokenPipe" not in result.stderr, result.stderr
