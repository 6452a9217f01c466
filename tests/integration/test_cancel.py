"""Cancelling a job (issue 16): through the database, so it reaches the job wherever it
runs. The store's answers, the engine stopping at a batch boundary with what it committed,
``jobs cancel`` as operators run it, and a job running in a worker of a real daemon."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import orjson
import pytest

from nodes_import.cli.sample import write_users
from nodes_import.config import ImportConfig, RetryConfig
from nodes_import.jobs import Ending, ImportJob
from nodes_import.kafka import deadletter as dl
from nodes_import.store import cancel, jobrows
from nodes_import.worker import engine
from nodes_import.worker.jobstate import Progress
from tests.fixtures.daemon import Daemons
from tests.fixtures.kafka import KafkaTest, wait_until
from tests.fixtures.postgres import Database

DOMAIN = "3f1c1a3e-2b9d-4c55-9a57-0d3c6a1f0b21"
LEASE_MS = 30_000


def _job(path: Path | None = None, **fields: object) -> ImportJob:
    return ImportJob(job_id=str(uuid.uuid4()), group_id="cancel", domain_id=DOMAIN,
                     source=None if path is None else str(path), **fields)  # type: ignore[arg-type]


def _cfg(tmp_path: Path, batch_size: int = 1000) -> ImportConfig:
    return ImportConfig(batch_size=batch_size, max_parallel_futures=2,
                        allowed_roots=(str(tmp_path),),
                        retry=RetryConfig(max_attempts=2, initial_interval_ms=10))


def _counts_match_rows(db: Database, job_id: str) -> tuple[int, int, int]:
    """The job's counters agree with the rows in the tables; returns (total, success,
    rows_committed)."""
    total, success, failed, inserted, committed = db.query(
        "SELECT total_nodes, success_count, failed_count, inserted_count, rows_committed"
        " FROM job_status WHERE id = %s", (job_id,))[0]
    assert failed == 0 and success == inserted == total == committed
    assert db.scalar("SELECT count(*) FROM nodes WHERE group_id = 'cancel'") == inserted
    assert db.scalar("SELECT count(*) FROM node_metadata") == inserted
    return total, success, committed


def test_a_pending_job_is_cancelled_at_once_and_never_starts(db: Database, tmp_path: Path) -> None:
    path = write_users(tmp_path / "u.csv.gz", 500)
    job = _job(path)
    with db.pool.connection() as conn:
        jobrows.create_job(conn, job_id=job.job_id, group_id=job.group_id,
                           domain_id=job.domain_id, node_type="USER", source=str(path))
        done = cancel.cancel_job(conn, job.job_id, lease_ms=LEASE_MS)
    assert done is not None and (done.outcome, done.was) == (cancel.CANCELLED, "PENDING")
    assert (done.row.status, done.row.error) == ("FAILED", "Cancelled")
    assert done.row.cancel_requested_at is not None and done.row.finished_at is not None
    outcome = engine.run_import(job, _cfg(tmp_path), db.pool)  # a daemon taking it up later
    assert (outcome.status, outcome.ending, outcome.error) == ("FAILED", Ending.FAILED,
                                                               "Cancelled")
    assert outcome.error_type == "nodes_import.errors.JobCancelledError"
    assert db.scalar("SELECT count(*) FROM nodes") == 0
    assert db.scalar("SELECT attempts FROM job_status WHERE id = %s", (job.job_id,)) == 0


def test_cancel_of_a_finished_or_unknown_job_changes_nothing(db: Database, tmp_path: Path) -> None:
    job = _job(write_users(tmp_path / "u.csv.gz", 100))
    assert engine.run_import(job, _cfg(tmp_path), db.pool).status == "COMPLETED"
    with db.pool.connection() as conn:
        done = cancel.cancel_job(conn, job.job_id, lease_ms=LEASE_MS)
        assert cancel.cancel_job(conn, str(uuid.uuid4()), lease_ms=LEASE_MS) is None
    assert done is not None and (done.outcome, done.row.status) == (cancel.FINISHED, "COMPLETED")
    assert db.scalar("SELECT cancel_requested_at FROM job_status") is None


def test_a_running_job_is_asked_and_one_nobody_runs_is_cancelled_at_once(
        db: Database, tmp_path: Path) -> None:
    ids = [str(uuid.uuid4()) for _ in range(2)]
    with db.pool.connection() as conn:
        for job_id in ids:
            jobrows.begin_job(conn, ImportJob(job_id=job_id, group_id="cancel",
                                              domain_id=DOMAIN, source="x.csv.gz"),
                              partitions=1, source_bytes=100)
    db.query("UPDATE job_status SET heartbeat_at = now() - interval '1 hour' WHERE id = %s"
             " RETURNING 1",
             (ids[1],))
    with db.pool.connection() as conn:
        running = cancel.cancel_job(conn, ids[0], lease_ms=LEASE_MS)
        unattended = cancel.cancel_job(conn, ids[1], lease_ms=LEASE_MS)
        again = cancel.cancel_job(conn, ids[0], lease_ms=LEASE_MS)
    assert running is not None and running.outcome == cancel.REQUESTED
    assert running.row.status == "PROCESSING" and running.row.cancel_requested_at is not None
    assert again is not None and again.row.cancel_requested_at == running.row.cancel_requested_at
    assert unattended is not None and (unattended.outcome, unattended.was) == (
        cancel.CANCELLED, "PROCESSING")
    assert (unattended.row.status, unattended.row.error) == ("FAILED", "Cancelled")


def test_a_running_import_stops_at_its_next_batch_boundary_and_keeps_what_it_committed(
        db: Database, tmp_path: Path) -> None:
    path = write_users(tmp_path / "u.csv.gz", 30_000)
    job = _job(path)
    asked = threading.Event()

    def cancel_after_the_first_batch(_: Progress) -> None:
        if not asked.is_set():
            asked.set()
            with db.pool.connection() as conn:
                assert cancel.cancel_job(conn, job.job_id, lease_ms=LEASE_MS).outcome == \
                    cancel.REQUESTED  # type: ignore[union-attr]

    outcome = engine.run_import(job, _cfg(tmp_path), db.pool,
                                on_progress=cancel_after_the_first_batch)
    assert (outcome.status, outcome.error, outcome.ending) == ("FAILED", "Cancelled",
                                                               Ending.FAILED)
    assert outcome.error_type == "nodes_import.errors.JobCancelledError"
    total, _, _ = _counts_match_rows(db, job.job_id)
    assert 0 < total < 30_000  # it stopped: not every batch was written


def test_retry_failed_runs_a_cancelled_job_again_on_purpose(db: Database, tmp_path: Path) -> None:
    path = write_users(tmp_path / "u.csv.gz", 5000)
    job = _job(path)
    with db.pool.connection() as conn:
        jobrows.create_job(conn, job_id=job.job_id, group_id=job.group_id,
                           domain_id=job.domain_id, node_type="USER", source=str(path))
        cancel.cancel_job(conn, job.job_id, lease_ms=LEASE_MS)
    again = ImportJob(job_id=job.job_id, group_id=job.group_id, domain_id=DOMAIN,
                      source=str(path), resume_failed=True)
    outcome = engine.run_import(again, _cfg(tmp_path), db.pool)
    assert outcome.status == "COMPLETED"
    assert db.scalar("SELECT cancel_requested_at FROM job_status") is None
    assert _counts_match_rows(db, job.job_id)[0] == 5000


def test_a_flagged_job_whose_runner_died_ends_when_it_is_taken_up_again(
        db: Database, tmp_path: Path) -> None:
    path = write_users(tmp_path / "u.csv.gz", 3000)
    job = _job(path)
    with db.pool.connection() as conn:  # started (PROCESSING), its runner gone, then asked
        jobrows.begin_job(conn, job, partitions=2, source_bytes=path.stat().st_size)
        assert cancel.cancel_job(conn, job.job_id, lease_ms=LEASE_MS).outcome == \
            cancel.REQUESTED  # type: ignore[union-attr]
    outcome = engine.run_import(job, _cfg(tmp_path), db.pool)  # resumed: refused
    assert (outcome.status, outcome.error) == ("FAILED", "Cancelled")
    assert db.scalar("SELECT count(*) FROM nodes") == 0


def _cli(*args: str, cwd: Path, dsn: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NODES_IMPORT_")}
    env["NODES_IMPORT_DSN"] = dsn
    return subprocess.run([sys.executable, "-m", "nodes_import", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120, check=False)


def test_jobs_cancel_says_what_it_did_and_exits_1_for_a_finished_or_unknown_job(
        db: Database, tmp_path: Path) -> None:
    done_job = _job(write_users(tmp_path / "u.csv.gz", 100))
    engine.run_import(done_job, _cfg(tmp_path), db.pool)
    pending = _job(tmp_path / "u.csv.gz")
    with db.pool.connection() as conn:
        jobrows.create_job(conn, job_id=pending.job_id, group_id="cancel", domain_id=DOMAIN,
                           node_type="USER", source="u.csv.gz")
    result = _cli("jobs", "cancel", pending.job_id, cwd=tmp_path, dsn=db.dsn)
    assert result.returncode == 0, result.stderr
    assert "cancelled: it had not started" in result.stdout
    finished = _cli("jobs", "cancel", done_job.job_id, cwd=tmp_path, dsn=db.dsn)
    assert finished.returncode == 1
    assert "already finished (COMPLETED)" in finished.stderr
    unknown = _cli("jobs", "cancel", str(uuid.uuid4()), cwd=tmp_path, dsn=db.dsn)
    assert unknown.returncode == 1 and "no job" in unknown.stderr
    shown = orjson.loads(_cli("jobs", "show", pending.job_id, "--json", cwd=tmp_path,
                              dsn=db.dsn).stdout)
    assert (shown["status"], shown["error"]) == ("FAILED", "Cancelled")
    assert shown["cancel_requested_at"] is not None


@pytest.mark.slow
def test_a_job_running_in_a_worker_of_a_real_daemon_is_cancelled_and_keeps_its_rows(
        daemons: Daemons, kafka: KafkaTest, db: Database, tmp_path: Path) -> None:
    """The cancel goes from `jobs cancel` (another process) through the database to the
    worker process running the job: it stops at a batch boundary, the rows committed
    before stay, the counters match them, the job is dead-lettered as cancelled, and a
    redelivery of its message does not start it again."""
    kafka.create_topic()
    daemon = daemons.start(node={"import": {"batch": {"size": 500}}})
    rows = 200_000
    users = write_users(tmp_path / "big.csv.gz", rows)
    job_id = str(uuid.uuid4())
    kafka.send(orjson.dumps({"groupId": "cancel", "domainId": DOMAIN, "file": str(users),
                             "jobId": job_id}))
    wait_until(lambda: db.scalar("SELECT coalesce(max(rows_committed), 0) FROM job_status")
               > 0, 60, "the first batches committed")
    result = _cli("jobs", "cancel", job_id, "--wait", "--timeout", "60", cwd=tmp_path,
                  dsn=db.dsn)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "cancel requested" in result.stdout and "error: Cancelled" in result.stdout
    status, error = db.query("SELECT status, error FROM job_status WHERE id = %s",
                             (job_id,))[0]
    assert (status, error) == ("FAILED", "Cancelled")
    total, _, _ = _counts_match_rows(db, job_id)
    assert 0 < total < rows, "the job ran to its end: it was not stopped"
    assert daemon.events("job cancelled; stopping at this batch boundary")
    letter = kafka.read(kafka.dlq, 1)[0]
    info = dl.header_map(letter.headers)
    assert (info[dl.H_JOB_ID], info[dl.H_MESSAGE]) == (job_id, "Cancelled")
    assert info[dl.H_CLASS] == "nodes_import.errors.JobCancelledError"
    wait_until(lambda: kafka.committed() == {0: 1}, 10, "its offset committed")
    # The message again (another group reads the topic from the start): not restarted.
    again = daemons.start(kafka={"group-id": kafka.group_id + "-again"})
    wait_until(lambda: again.events("job already finished; skipped"), 30, "skipped")
    assert db.query("SELECT status, total_nodes FROM job_status WHERE id = %s",
                    (job_id,))[0] == ("FAILED", total)
