"""Housekeeping on a real database: purging finished jobs, the long-running job warning."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import uuid
from pathlib import Path

import click
import pytest

from nodes_import.cli.jobs import Duration
from nodes_import.config import OperationsConfig
from nodes_import.daemon.housekeeping import Housekeeper
from nodes_import.store import jobrows
from tests.fixtures.postgres import Database

DOMAIN = "3f1c1a3e-2b9d-4c55-9a57-0d3c6a1f0b21"


def add_job(db: Database, status: str, *, age_days: float = 0.0, failures: int = 0,
            started_hours_ago: float | None = None) -> str:
    """A job_status row finished (or started) in the past, with rejected rows."""
    job_id = str(uuid.uuid4())
    finished = "now() - %(age)s * interval '1 day'" if status in ("COMPLETED", "FAILED") \
        else "NULL"
    db.query(
        "INSERT INTO job_status (id, group_id, domain_id, status, node_type, source,"
        f" finished_at, updated_at, started_at) VALUES (%(id)s, 'hk', %(domain)s, %(status)s,"
        f" 'USER', 'f.csv.gz', {finished}, now() - %(age)s * interval '1 day',"
        " now() - %(started)s * interval '1 hour') RETURNING id",
        {"id": job_id, "domain": DOMAIN, "status": status, "age": age_days,
         "started": started_hours_ago if started_hours_ago is not None else age_days * 24})
    if failures:
        db.query("INSERT INTO job_failures (job_id, row_number, reference_id, reason, line)"
                 " SELECT %s, n, 'r' || n, 'blank', '' FROM generate_series(1, %s) n"
                 " RETURNING 1", (job_id, failures))
    return job_id


def remaining(db: Database) -> set[str]:
    return {str(r[0]) for r in db.query("SELECT id FROM job_status")}


def test_purge_deletes_old_finished_jobs_and_their_failures_in_batches(db: Database) -> None:
    old_done = [add_job(db, "COMPLETED", age_days=40, failures=3) for _ in range(3)]
    old_failed = add_job(db, "FAILED", age_days=31, failures=2)
    recent = add_job(db, "COMPLETED", age_days=5, failures=1)
    old_running = add_job(db, "PROCESSING", age_days=90)
    old_pending = add_job(db, "PENDING", age_days=90)
    with db.pool.connection() as conn:
        dry = jobrows.purge_jobs(conn, older_than_s=30 * 86400, dry_run=True)
        assert (dry.jobs, dry.failures) == (4, 11)
        assert len(remaining(db)) == 7  # a dry run deletes nothing
        purged = jobrows.purge_jobs(conn, older_than_s=30 * 86400, batch_size=2)
    assert (purged.jobs, purged.failures) == (4, 11)
    assert remaining(db) == {recent, old_running, old_pending}
    assert db.scalar("SELECT count(*) FROM job_failures") == 1
    assert not set([*old_done, old_failed]) & remaining(db)


def test_purge_by_status_and_never_running_jobs(db: Database) -> None:
    done = add_job(db, "COMPLETED", age_days=40)
    failed = add_job(db, "FAILED", age_days=40)
    with db.pool.connection() as conn:
        assert jobrows.purge_jobs(conn, older_than_s=86400, statuses=["FAILED"]).jobs == 1
        with pytest.raises(ValueError, match="only finished jobs can be purged"):
            jobrows.purge_jobs(conn, older_than_s=86400, statuses=["PROCESSING"])
    assert remaining(db) == {done}
    assert failed not in remaining(db)


def test_jobs_purge_on_the_command_line(db: Database, tmp_path: Path) -> None:
    add_job(db, "COMPLETED", age_days=40, failures=2)
    keep = add_job(db, "COMPLETED", age_days=1)
    env = {k: v for k, v in os.environ.items() if not k.startswith("NODES_IMPORT_")}
    env["NODES_IMPORT_DSN"] = db.dsn

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "nodes_import", "jobs", "purge", *args],
                              cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=60, check=False)

    dry = cli("--older-than", "30d", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.strip() == "would purge 1 jobs (COMPLETED, FAILED) and 2 rejected rows"
    done = cli("--older-than", "720h", "--status", "completed")
    assert done.stdout.strip() == "purged 1 jobs (COMPLETED) and 2 rejected rows"
    assert remaining(db) == {keep}
    refused = cli("--older-than", "30d", "--status", "PROCESSING")
    assert refused.returncode == 2 and "PROCESSING" in refused.stderr


@pytest.mark.parametrize("text, seconds", [("30d", 30 * 86400), ("12h", 43200), ("90m", 5400),
                                           ("45s", 45), ("2w", 1209600), ("7", 7 * 86400)])
def test_purge_ages_read_as_durations(text: str, seconds: float) -> None:
    assert Duration().convert(text, None, None) == seconds


@pytest.mark.parametrize("text", ["soon", "-1d", "0", "d"])
def test_a_bad_purge_age_is_a_usage_error(text: str) -> None:
    with pytest.raises(click.BadParameter):
        Duration().convert(text, None, None)


def test_a_long_running_job_is_warned_about_once(db: Database,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    stuck = add_job(db, "PROCESSING", started_hours_ago=2)
    add_job(db, "PROCESSING", started_hours_ago=0)
    keeper = Housekeeper(db.pool, OperationsConfig(long_running_warning_ms=3_600_000))
    with caplog.at_level(logging.WARNING, logger="nodes_import.daemon.housekeeping"):
        assert keeper.check_long_running() == [stuck]
        assert keeper.check_long_running() == [stuck]
    warnings = [r for r in caplog.records
                if r.getMessage() == "job running for longer than expected"]
    assert len(warnings) == 1
    assert warnings[0].fields["jobId"] == stuck  # type: ignore[attr-defined]


def test_the_daemon_side_purge_uses_the_retention_settings(db: Database) -> None:
    add_job(db, "FAILED", age_days=8, failures=1)
    keep = add_job(db, "FAILED", age_days=6)
    keeper = Housekeeper(db.pool, OperationsConfig(retention_enabled=True, retention_days=7))
    keeper.start()
    try:
        from tests.fixtures.kafka import wait_until

        wait_until(lambda: remaining(db) == {keep}, 10, "the old job purged")
    finally:
        keeper.stop()
    assert not keeper.is_alive()
