"""Job rows read back as frozen dataclasses of primitives, one field per column."""

from __future__ import annotations

import uuid

import psycopg
import pytest
from psycopg.rows import class_row

from nodes_import.errors import StorageError
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


def _add_jobs(db: Database, count: int, *, status: str = "COMPLETED", group: str = "g",
              age_s: float = 0.0) -> list[str]:
    """``count`` jobs created ``age_s`` seconds ago (one microsecond apart: an order)."""
    rows = db.query(
        "INSERT INTO job_status (id, group_id, domain_id, status, node_type, source, created_at,"
        " started_at)"
        " SELECT gen_random_uuid(), %s, %s, %s, 'USER', 'f.csv',"
        "  now() - %s * interval '1 second' + n * interval '1 microsecond',"
        "  CASE WHEN %s = 'PROCESSING' THEN now() END"
        " FROM generate_series(1, %s) AS n ORDER BY n RETURNING id::text",
        (group, DOMAIN, status, age_s, status, count))
    return [r[0] for r in rows]


def test_jobs_are_listed_newest_first_by_status_group_and_age_fifty_unless_told(
        db: Database) -> None:
    old = _add_jobs(db, 2, group="g", age_s=7200)
    failed = _add_jobs(db, 1, status="FAILED", group="g")
    others = _add_jobs(db, 51, group="other")
    with db.pool.connection() as conn:
        assert [j.id for j in jobrows.list_jobs(conn, status="FAILED")] == failed
        assert [j.id for j in jobrows.list_jobs(conn, group_id="g")] == failed + old[::-1]
        assert [j.id for j in jobrows.list_jobs(conn, group_id="g", since_s=3600)] == failed
        assert [j.id for j in jobrows.list_jobs(conn, status="COMPLETED", group_id="g")] == \
            old[::-1]
        assert [j.id for j in jobrows.list_jobs(conn)] == others[::-1][:50]
        assert len(jobrows.list_jobs(conn, limit=54)) == 54


def test_a_jobs_rejected_rows_come_by_row_number_a_hundred_unless_told(db: Database) -> None:
    [job_id] = _add_jobs(db, 1, status="FAILED")
    db.query("INSERT INTO job_failures (job_id, row_number, reference_id, reason, line)"
             " SELECT %s, 200 - n, 'r' || n, 'blank', '' FROM generate_series(1, 101) AS n"
             " RETURNING 1", (job_id,))
    with db.pool.connection() as conn:
        failures = jobrows.job_failures(conn, job_id)
        assert len(jobrows.job_failures(conn, job_id, limit=3)) == 3
    assert [f.row_number for f in failures] == list(range(99, 199))


def test_running_jobs_are_the_processing_ones_a_thousand_at_most(db: Database) -> None:
    _add_jobs(db, 1001, status="PROCESSING")
    _add_jobs(db, 1, status="PENDING")
    with db.pool.connection() as conn:
        running = jobrows.running_jobs(conn)
        assert len(jobrows.running_jobs(conn, limit=5)) == 5
    assert len(running) == 1000 and {j.status for j in running} == {"PROCESSING"}


def test_a_job_starts_from_pending_or_processing_and_a_failed_one_only_when_rerun(
        db: Database) -> None:
    [pending, failed, done] = [_add_jobs(db, 1, status=s)[0]
                               for s in ("PENDING", "FAILED", "COMPLETED")]
    with db.pool.connection() as conn:
        assert jobrows.start_job(conn, job_id=pending, partitions=2, source_bytes=None) == [0, 0]
        # started again (a resume): the checkpoint it has, not a new one
        conn.execute("UPDATE job_status SET checkpoint = '{5,7}' WHERE id = %s", (pending,))
        conn.commit()
        assert jobrows.start_job(conn, job_id=pending, partitions=2, source_bytes=None) == [5, 7]
        assert jobrows.start_job(conn, job_id=failed, partitions=1, source_bytes=None) is None
        assert jobrows.start_job(conn, job_id=done, partitions=1, source_bytes=None,
                                 resume_failed=True) is None
        assert jobrows.start_job(conn, job_id=failed, partitions=1, source_bytes=None,
                                 resume_failed=True) == [0]
        assert jobrows.start_job(conn, job_id=str(uuid.uuid4()), partitions=1,
                                 source_bytes=None) is None
    statuses = dict(db.query("SELECT id::text, status FROM job_status"))
    assert statuses == {pending: "PROCESSING", failed: "PROCESSING", done: "COMPLETED"}


def test_a_job_row_read_through_a_table_alias_is_the_same_row(db: Database) -> None:
    [job_id] = _add_jobs(db, 1, status="FAILED")
    query = psycopg.sql.SQL("SELECT {} FROM job_status js JOIN job_status other"
                            " ON other.id = js.id WHERE js.id = %s").format(
        jobrows.job_columns("js"))  # qualified: the join makes every bare name ambiguous
    with db.pool.connection() as conn:
        with conn.cursor(row_factory=class_row(JobRow)) as cur:
            aliased = cur.execute(query, (job_id,)).fetchone()
        conn.rollback()
        assert aliased == jobrows.get_job(conn, job_id)
        # get_job leaves the connection idle, not inside a transaction it opened
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE


def test_only_the_owner_can_complete_its_job_inside_its_transaction(db: Database) -> None:
    [job_id] = _add_jobs(db, 1, status="PROCESSING")
    db.query("UPDATE job_status SET claimed_by = 'new:2' WHERE id = %s RETURNING 1", (job_id,))
    with db.pool.connection() as conn:
        with pytest.raises(StorageError) as caught, conn.transaction():
            jobrows.complete_job(conn, job_id=job_id, owner="old:1")
        assert str(caught.value) == f"job {job_id} is not PROCESSING under old:1; not completed"
        with conn.transaction():
            assert jobrows.complete_job(conn, job_id=job_id, owner="new:2").status == "COMPLETED"


@pytest.mark.parametrize(("statuses", "message"), [
    (["PROCESSING", "PENDING"], "only finished jobs can be purged (COMPLETED, FAILED), "
                                "not PENDING, PROCESSING"),
    ([], "only finished jobs can be purged (COMPLETED, FAILED), not none"),
])
def test_a_purge_of_unfinished_statuses_is_refused_saying_which(
        db: Database, statuses: list[str], message: str) -> None:
    with db.pool.connection() as conn, pytest.raises(ValueError) as caught:
        jobrows.purge_jobs(conn, older_than_s=0, statuses=statuses)
    assert str(caught.value) == message
