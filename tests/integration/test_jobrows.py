"""Job rows read back as frozen dataclasses of primitives, one field per column."""

from __future__ import annotations

import uuid

from nodes_import.jobs import JobRow
from nodes_import.store import jobrows
from tests.fixtures.postgres import Database

DOMAIN = "3f1c1a3e-2b9d-4c55-9a57-0d3c6a1f0b21"


def test_every_field_of_a_job_row_is_a_column_of_job_status(db: Database) -> None:
    columns = {r[0] for r in db.query(
        "SELECT column_name FROM information_schema.columns"
        " WHERE table_name = 'job_status' AND table_schema = current_schema()")}
    assert set(jobrows.JOB_COLUMNS) <= columns
    assert "checkpoint" not in jobrows.JOB_COLUMNS  # the resumption state stays in the store


def test_a_job_reads_back_as_a_job_row_with_its_uuids_as_text(db: Database) -> None:
    job_id = str(uuid.uuid4())
    with db.pool.connection() as conn:
        created = jobrows.create_job(conn, job_id=job_id, group_id="g", domain_id=DOMAIN.upper(),
                                     node_type="USER", source="f.csv")
        jobrows.start_job(conn, job_id=job_id, partitions=1, source_bytes=10, claimed_by="a:1")
        conn.execute("INSERT INTO job_failures VALUES (%s, 2, NULL, 'blank', ',x')", (job_id,))
        conn.commit()
        ended = jobrows.finish_job(conn, job_id=job_id, status="FAILED", error="bad", owner="a:1")
        listed = jobrows.list_jobs(conn)
        failures = jobrows.job_failures(conn, job_id)
    assert isinstance(created, JobRow) and created.status == "PENDING"
    assert (created.id, created.domain_id) == (job_id, DOMAIN)  # PostgreSQL's text of a UUID
    assert ended is not None and (ended.status, ended.error, ended.attempts) == ("FAILED", "bad", 1)
    assert ended.started_at is not None and ended.finished_at is not None
    assert (ended.source_bytes, ended.claimed_by) == (10, "a:1")
    assert listed == [ended]
    assert failures == [jobrows.RejectedRow(2, None, "blank", ",x")]


def test_a_running_job_reads_back_with_its_age(db: Database) -> None:
    job_id = str(uuid.uuid4())
    with db.pool.connection() as conn:
        jobrows.create_job(conn, job_id=job_id, group_id="g", domain_id=DOMAIN,
                           node_type="USER", source="reference-ids")
        jobrows.start_job(conn, job_id=job_id, partitions=1, source_bytes=None, claimed_by="a:1")
        running = jobrows.running_jobs(conn)
    assert len(running) == 1
    job = running[0]
    assert (job.id, job.domain_id, job.status, job.claimed_by) == (
        job_id, DOMAIN, "PROCESSING", "a:1")
    assert (job.source_bytes, job.bytes_read, job.rows_committed) == (None, 0, 0)
    assert 0 <= job.age_s < 60
