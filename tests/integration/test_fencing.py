"""Batch writes are fenced on the job's lease, and FAILED outcomes name their exception."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from nodes_import.cli.sample import write_users
from nodes_import.config import ImportConfig, RetryConfig
from nodes_import.jobs import ImportJob, new_job_id
from nodes_import.worker import engine
from nodes_import.worker.engine import Progress
from tests.fixtures.postgres import Database

DOMAIN = "3f1c1a3e-2b9d-4c55-9a57-0d3c6a1f0b21"
FAST_RETRY = RetryConfig(max_attempts=3, initial_interval_ms=10, multiplier=2.0,
                         max_interval_ms=50)


def _cfg(tmp_path: Path) -> ImportConfig:
    # One writer: the take-over below happens between two of its batches, never during one.
    return ImportConfig(batch_size=1000, max_parallel_futures=1, retry=FAST_RETRY,
                        allowed_roots=(str(tmp_path),))


def test_a_runner_whose_job_was_taken_over_has_its_next_batch_refused_and_counts_stay_exact(
        db: Database, tmp_path: Path) -> None:
    path = write_users(tmp_path / "users.csv.gz", 5000)
    job = ImportJob(job_id=new_job_id(), group_id="g1", domain_id=DOMAIN, source=str(path),
                    claimed_by="old:1")
    taken = []

    def take_over(_progress: Progress) -> None:
        # After the old runner's first batch commits, a new owner claims the job (as a
        # daemon does once the old one's lease expired).
        if not taken:
            taken.append(True)
            db.query("UPDATE job_status SET claimed_by = 'new:2' WHERE id = %s RETURNING 1",
                     (job.job_id,))

    outcome = engine.run_import(job, _cfg(tmp_path), db.pool, on_progress=take_over)

    assert outcome.status == "PROCESSING"  # stopped, not FAILED: the new owner ends it
    assert outcome.error and "taken over by new:2" in outcome.error
    row = db.query("SELECT status, claimed_by, rows_committed, total_nodes, error"
                   " FROM job_status WHERE id = %s", (job.job_id,))[0]
    assert row == ("PROCESSING", "new:2", 1000, 1000, None)
    assert db.scalar("SELECT count(*) FROM nodes") == 1000
    assert db.scalar("SELECT count(*) FROM job_failures") == 0

    # The new owner resumes from the checkpoint: every row once, exact counters.
    resumed = engine.run_import(dataclasses.replace(job, claimed_by="new:2"), _cfg(tmp_path),
                                db.pool)
    assert resumed.status == "COMPLETED"
    assert db.scalar("SELECT count(*) FROM nodes") == 5000
    assert db.query("SELECT total_nodes, success_count, rows_committed FROM job_status"
                    " WHERE id = %s", (job.job_id,))[0] == (5000, 5000, 5000)


def test_an_unfenced_runner_without_an_owner_still_writes(db: Database, tmp_path: Path) -> None:
    path = write_users(tmp_path / "users.csv.gz", 1500)
    job = ImportJob(job_id=new_job_id(), group_id="g1", domain_id=DOMAIN, source=str(path))
    assert engine.run_import(job, _cfg(tmp_path), db.pool).status == "COMPLETED"
    assert db.scalar("SELECT count(*) FROM nodes") == 1500


def test_a_failed_job_outcome_carries_its_exception_class_and_stack_trace(
        db: Database, tmp_path: Path) -> None:
    job = ImportJob(job_id=new_job_id(), group_id="g1", domain_id=DOMAIN,
                    source=str(tmp_path / "missing.csv.gz"))
    outcome = engine.run_import(job, _cfg(tmp_path), db.pool)
    assert outcome.status == "FAILED"
    assert outcome.error_type == "nodes_import.errors.SourceError"
    assert outcome.stack_trace and "SourceError" in outcome.stack_trace
    assert "Traceback" in outcome.stack_trace
