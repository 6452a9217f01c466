"""The engine against a database link that fails: every scenario ends in exact counts.

The service talks to the real PostgreSQL through ``FaultProxy``; each test asserts the
final rows in ``nodes``/``node_metadata`` and the job's counters, so nothing is lost or
counted twice whatever the fault.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg_pool import ConnectionPool

from nodes_import.cli.sample import write_users
from nodes_import.config import ImportConfig, RetryConfig
from nodes_import.jobs import ImportJob, new_job_id
from nodes_import.store import connection
from nodes_import.worker import engine
from tests.fixtures.faultproxy import FaultProxy, through
from tests.fixtures.postgres import Database

DOMAIN = "3f1c1a3e-2b9d-4c55-9a57-0d3c6a1f0b21"
RETRY = RetryConfig(max_attempts=4, initial_interval_ms=100, multiplier=2.0,
                    max_interval_ms=400)

LATENCY_S = 0.02  # the latency test's delay per forwarded chunk, each way

pytestmark = pytest.mark.slow


@pytest.fixture()
def proxied(db: Database, pg_proxy: FaultProxy) -> Iterator[ConnectionPool]:
    """A pool on the test schema whose every connection goes through the proxy."""
    pool = connection.open_pool(through(pg_proxy, db.dsn), max_size=4, timeout_s=3)
    try:
        yield pool
    finally:
        pool.close(timeout=2)


def _cfg(tmp_path: Path, **changes: Any) -> ImportConfig:
    base = ImportConfig(batch_size=2000, max_parallel_futures=2, retry=RETRY,
                        allowed_roots=(str(tmp_path),))
    return dataclasses.replace(base, **changes)


def _job(path: Path, job_id: str | None = None) -> ImportJob:
    return ImportJob(job_id=job_id or new_job_id(), group_id="g", domain_id=DOMAIN,
                     source=str(path))


def _job_row(db: Database, job_id: str) -> dict[str, Any]:
    return db.query("SELECT to_jsonb(j) FROM job_status j WHERE id = %s", (job_id,))[0][0]


def _assert_exact(db: Database, job_id: str, rows: int) -> None:
    job = _job_row(db, job_id)
    assert job["status"] == "COMPLETED", job["error"]
    assert (job["total_nodes"], job["success_count"], job["failed_count"]) == (rows, rows, 0)
    assert job["inserted_count"] + job["updated_count"] + job["unchanged_count"] == rows
    assert db.scalar("SELECT count(*) FROM nodes") == rows
    assert db.scalar("SELECT count(*) FROM node_metadata") == rows


def _after_commits(count: int, action: Any) -> Any:
    """A progress callback that runs ``action`` once, after ``count`` commits."""
    seen = {"n": 0}
    lock = threading.Lock()

    def callback(progress: engine.Progress) -> None:
        with lock:
            seen["n"] += 1
            if seen["n"] == count:
                action()

    return callback


def test_a_connection_cut_in_the_middle_of_a_copy_is_retried_to_exact_counts(
        db: Database, pg_proxy: FaultProxy, proxied: ConnectionPool, tmp_path: Path) -> None:
    path = write_users(tmp_path / "u.csv.gz", 30_000)
    job = _job(path)
    # after the first commits, cut the next connection that streams a COPY (> 64 KiB)
    callback = _after_commits(2, lambda: pg_proxy.cut_after(64 * 1024))
    engine.run_import(job, _cfg(tmp_path), proxied, on_progress=callback)
    assert pg_proxy.connections_cut >= 1
    _assert_exact(db, job.job_id, 30_000)


def test_postgres_backends_terminated_mid_copy_are_retried_to_exact_counts(
        db: Database, tmp_path: Path) -> None:
    path = write_users(tmp_path / "u.csv.gz", 30_000)
    job = _job(path)
    stop = threading.Event()
    killed = []

    def killer() -> None:  # terminate whatever backend is running our COPY, twice
        with psycopg.connect(db.dsn, autocommit=True) as conn:
            while not stop.is_set() and len(killed) < 2:
                rows = conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE"
                    " application_name = 'nodes-import' AND query LIKE 'COPY%%'"
                    " AND state = 'active'").fetchall()
                killed.extend(r for r in rows if r[0])
                time.sleep(0.01)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    try:
        engine.run_import(job, _cfg(tmp_path, batch_size=1000), db.pool)
    finally:
        stop.set()
        thread.join(5)
    assert killed, "the test never caught a COPY to terminate"
    _assert_exact(db, job.job_id, 30_000)


def test_a_database_away_longer_than_the_retry_budget_fails_the_job_and_a_rerun_resumes(
        db: Database, pg_proxy: FaultProxy, proxied: ConnectionPool, tmp_path: Path) -> None:
    path = write_users(tmp_path / "u.csv.gz", 20_000)
    job = _job(path)
    impatient = connection.open_pool(through(pg_proxy, db.dsn), max_size=3, timeout_s=1)
    # A batch's retry budget: 4 attempts, each waiting at most 1 s for a connection, with
    # 0.1 + 0.2 + 0.4 s of backoff: ~3.7 s. The database stays away for 8 s, so the
    # writers give up; the job's end is retried 3x longer (~17 s) and gets recorded.
    callback = _after_commits(2, lambda: pg_proxy.refuse_for(8))
    try:
        outcome = engine.run_import(job, _cfg(tmp_path, batch_size=1000), impatient,
                                    on_progress=callback)
    finally:
        impatient.close(timeout=2)
    assert outcome.status == "FAILED"
    row = _job_row(db, job.job_id)
    assert row["status"] == "FAILED"
    assert "connect" in row["error"]
    assert row["success_count"] + row["failed_count"] == row["total_nodes"]
    assert 0 < row["rows_committed"] < 20_000
    # the operator re-runs the same job: it resumes from its checkpoint
    pg_proxy.heal()
    rerun = dataclasses.replace(job, resume_failed=True)
    assert engine.run_import(rerun, _cfg(tmp_path, batch_size=1000), proxied).status \
        == "COMPLETED"
    _assert_exact(db, job.job_id, 20_000)
    assert _job_row(db, job.job_id)["inserted_count"] == 20_000
    assert _job_row(db, job.job_id)["attempts"] == 2


def test_latency_on_the_link_slows_batches_but_loses_nothing(
        db: Database, pg_proxy: FaultProxy, proxied: ConnectionPool, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    path = write_users(tmp_path / "u.csv.gz", 6_000)
    job = _job(path)
    pg_proxy.set_latency(LATENCY_S)
    with caplog.at_level(logging.INFO, logger="nodes_import.worker.engine"):
        engine.run_import(job, _cfg(tmp_path, batch_size=1000), proxied)
    _assert_exact(db, job.job_id, 6_000)
    # Each batch is at least SET LOCAL, COPY, the upsert, the counters and COMMIT: five
    # round trips, each delayed both ways. The durations the engine logs (and counts in
    # nodes_import_batch_duration_seconds) must show it: a lower bound, which a loaded
    # machine can only make easier to meet.
    batches = [getattr(r, "fields", {}) for r in caplog.records
               if r.getMessage() == "batch committed"]
    assert sum(b["batchSize"] for b in batches) == 6_000
    floor_ms = 5 * 2 * LATENCY_S * 1000
    durations = [b["durationMs"] for b in batches]
    assert min(durations) >= floor_ms, durations


def test_a_batch_timeout_shorter_than_the_link_allows_fails_those_rows_with_the_reason(
        db: Database, pg_proxy: FaultProxy, proxied: ConnectionPool, tmp_path: Path) -> None:
    path = write_users(tmp_path / "u.csv.gz", 4_000)
    job = _job(path)
    pg_proxy.set_latency(0.05)  # a COPY of ~240 KiB in 64 KiB chunks takes > 200 ms
    cfg = _cfg(tmp_path, batch_timeout_ms=100,
               retry=RetryConfig(max_attempts=2, initial_interval_ms=10, multiplier=1.0,
                                 max_interval_ms=10))
    engine.run_import(job, cfg, proxied)
    row = _job_row(db, job.job_id)
    assert row["status"] == "COMPLETED"
    assert row["failed_count"] > 0
    assert row["success_count"] + row["failed_count"] == row["total_nodes"] == 4_000
    reasons = {r[0] for r in db.query("SELECT DISTINCT reason FROM job_failures")}
    assert any("statement timeout" in r for r in reasons), reasons
    assert db.scalar("SELECT count(*) FROM nodes") == row["success_count"]


def test_a_stalled_link_is_dropped_by_the_watchdog_and_no_connection_leaks(
        db: Database, pg_proxy: FaultProxy, proxied: ConnectionPool, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    path = write_users(tmp_path / "u.csv.gz", 8_000)
    job = _job(path)
    # The watchdog fires 2.5 s into a write, long enough for a healthy batch on a loaded
    # machine. The link stays stalled until the engine logs a dropped connection (its
    # retry then goes through), or for 30 s at most: a watchdog that never fires leaves
    # the job waiting out the stall, and the assertions below fail instead of a hang.
    cfg = _cfg(tmp_path, batch_size=1000, batch_timeout_ms=2000)
    dropped_seen = threading.Event()

    class DroppedWatch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "stalled" in str(getattr(record, "fields", {})):
                dropped_seen.set()

    def stall_until_dropped() -> None:
        pg_proxy.stall(True)

        def heal() -> None:
            dropped_seen.wait(30)
            pg_proxy.stall(False)

        threading.Thread(target=heal, daemon=True).start()

    watch = DroppedWatch()
    logging.getLogger("nodes_import").addHandler(watch)
    engine.WATCHDOG_GRACE_S, grace = 0.5, engine.WATCHDOG_GRACE_S
    try:
        engine.run_import(job, cfg, proxied, on_progress=_after_commits(2, stall_until_dropped))
    finally:
        engine.WATCHDOG_GRACE_S = grace
        logging.getLogger("nodes_import").removeHandler(watch)
        pg_proxy.stall(False)
    _assert_exact(db, job.job_id, 8_000)
    dropped = [r for r in caplog.records if "stalled" in str(getattr(r, "fields", {}))]
    assert dropped, "the watchdog never dropped the stalled connection"
    stats = proxied.get_stats()
    assert stats["pool_size"] - stats["pool_available"] == 0  # every connection returned
    assert not [t for t in threading.enumerate() if t.name.startswith("writer-")]
