"""The batch write's own answers on a real PostgreSQL: a part recorded as failed, a cancel
read back, and why a refused part was refused (lease lost, job ended, already counted)."""

from __future__ import annotations

import logging
import uuid
from typing import Any

import pyarrow as pa
import pytest

from nodes_import.errors import LeaseLostError, StorageError
from nodes_import.jobs import ImportJob
from nodes_import.pipeline import encode
from nodes_import.pipeline.parse import RawBatch
from nodes_import.store import batchwrite, connection, jobrows
from tests.fixtures.postgres import Database

DOMAIN = "3f1c1a3e-2b9d-4c55-9a57-0d3c6a1f0b21"
HEADER = ["reference_id", "plan"]
COUNTERS = ("total_nodes", "success_count", "failed_count", "inserted_count", "updated_count",
            "unchanged_count", "rows_committed", "checkpoint")


def _part(first: int, count: int) -> encode.EncodedPart:
    keys = [f"k{n}" for n in range(first, first + count)]
    table = pa.table({"reference_id": keys, "plan": ["p"] * count})
    numbers = pa.array(range(first, first + count), pa.int64())
    return encode.encode_batch(RawBatch(table, numbers), HEADER, 1)[0]


def _started(db: Database, owner: str | None = None) -> ImportJob:
    job = ImportJob(str(uuid.uuid4()), "g", DOMAIN, node_type="USER", claimed_by=owner)
    with db.pool.connection() as conn:
        jobrows.begin_job(conn, job, partitions=1, source_bytes=None)
    return job


def _counters(db: Database, job_id: str) -> dict[str, Any]:
    row = db.query("SELECT to_jsonb(j) FROM job_status j WHERE id = %s", (job_id,))[0][0]
    return {k: row[k] for k in COUNTERS}


def _write(db: Database, job: ImportJob, part: encode.EncodedPart) -> batchwrite.PartResult:
    with db.pool.connection() as conn:
        return batchwrite.write_part(conn, job, part, columns=encode.staged_columns(HEADER),
                                     bytes_read=0, timeout_ms=30_000,
                                     new_id=connection.new_id_function(conn))


def _fail(db: Database, job: ImportJob, part: encode.EncodedPart,
          rejected: list[encode.Rejected]) -> bool:
    with db.pool.connection() as conn:
        return batchwrite.fail_rows(conn, job, part, rejected, bytes_read=0)


REJECTED = [encode.Rejected(1, "k1", "database kept refusing", "k1,p"),
            encode.Rejected(2, None, "database kept refusing", "k2,p"),
            encode.Rejected(3, "k3", "database kept refusing", "k3,p")]


def test_a_part_recorded_as_failed_counts_every_row_failed_and_keeps_each_reason(
        db: Database) -> None:
    job = _started(db)
    assert _fail(db, job, _part(1, 3), REJECTED) is False  # no cancel asked for
    assert _counters(db, job.job_id) == {
        "total_nodes": 3, "success_count": 0, "failed_count": 3, "inserted_count": 0,
        "updated_count": 0, "unchanged_count": 0, "rows_committed": 3, "checkpoint": [3]}
    assert db.query("SELECT row_number, reference_id, reason, line FROM job_failures"
                    " WHERE job_id = %s ORDER BY row_number", (job.job_id,)) == [
        (1, "k1", "database kept refusing", "k1,p"), (2, None, "database kept refusing", "k2,p"),
        (3, "k3", "database kept refusing", "k3,p")]
    assert db.scalar("SELECT count(*) FROM nodes") == 0


def test_a_failed_part_recorded_again_is_not_counted_twice_and_is_logged(
        db: Database, caplog: pytest.LogCaptureFixture) -> None:
    job = _started(db)
    part = _part(1, 3)
    _fail(db, job, part, REJECTED)
    with caplog.at_level(logging.WARNING, logger="nodes_import.store.batchwrite"):
        assert _fail(db, job, part, REJECTED) is False
    assert _counters(db, job.job_id)["failed_count"] == 3
    assert db.scalar("SELECT count(*) FROM job_failures WHERE job_id = %s", (job.job_id,)) == 3
    [record] = [r for r in caplog.records if r.name == "nodes_import.store.batchwrite"]
    assert record.getMessage() == "failed batch part was already committed; not recorded again"
    assert record.fields == {"jobId": job.job_id, "partition": 0}  # type: ignore[attr-defined]


def test_a_part_written_again_is_not_counted_twice_and_is_logged(
        db: Database, caplog: pytest.LogCaptureFixture) -> None:
    job = _started(db)
    part = _part(1, 3)
    _write(db, job, part)
    with caplog.at_level(logging.WARNING, logger="nodes_import.store.batchwrite"):
        assert _write(db, job, part) == batchwrite.PartResult(0, 0, 0, 0)
    assert _counters(db, job.job_id)["rows_committed"] == 3
    [record] = [r for r in caplog.records if r.name == "nodes_import.store.batchwrite"]
    assert record.getMessage() == ("batch part was already committed (its acknowledgement was"
                                   " lost); not counted again")
    assert record.fields == {  # type: ignore[attr-defined]
        "jobId": job.job_id, "partition": 0, "lastRow": 3}


def test_a_cancel_asked_for_is_read_back_by_both_kinds_of_part(db: Database) -> None:
    job = _started(db)
    assert _write(db, job, _part(1, 3)).cancelled is False
    db.query("UPDATE job_status SET cancel_requested_at = now() WHERE id = %s RETURNING 1",
             (job.job_id,))
    assert _write(db, job, _part(4, 3)) == batchwrite.PartResult(3, 0, 0, 0, cancelled=True)
    assert _fail(db, job, _part(7, 3), [encode.Rejected(n, f"k{n}", "x", "") for n in (7, 8, 9)])
    assert _counters(db, job.job_id)["rows_committed"] == 9


@pytest.mark.parametrize("record_failed", [False, True], ids=["write_part", "fail_rows"])
def test_a_runner_whose_job_was_taken_over_is_refused_with_the_new_owner_named(
        db: Database, record_failed: bool) -> None:
    job = _started(db, owner="host-a:1")
    db.query("UPDATE job_status SET claimed_by = 'host-b:2' WHERE id = %s RETURNING 1",
             (job.job_id,))
    part = _part(1, 3)
    with pytest.raises(LeaseLostError, match="was taken over by host-b:2; batch rolled back"):
        if record_failed:
            _fail(db, job, part, REJECTED)
        else:
            _write(db, job, part)
    assert _counters(db, job.job_id)["rows_committed"] == 0
    assert db.scalar("SELECT count(*) FROM nodes") == 0


@pytest.mark.parametrize("owner", [None, "host-a:1"], ids=["unfenced", "its-owner"])
def test_a_part_of_a_job_that_ended_meanwhile_is_refused_as_not_processing(
        db: Database, owner: str | None) -> None:
    # claimed_by is set either way: only a runner that holds a lease can lose it
    job = _started(db, owner=owner)
    db.query("UPDATE job_status SET claimed_by = 'host-a:1' WHERE id = %s RETURNING 1",
             (job.job_id,))
    part = _part(1, 3)
    _write(db, job, part)  # counted: the checkpoint is at its last row
    db.query("UPDATE job_status SET status = 'FAILED' WHERE id = %s RETURNING 1", (job.job_id,))
    for attempt in (part, _part(4, 3)):  # one already counted, one new: both refused
        with pytest.raises(StorageError) as caught:
            _write(db, job, attempt)
        assert type(caught.value) is StorageError  # not a lost lease, not a silent replay
        assert str(caught.value) == f"job {job.job_id} is no longer PROCESSING; batch rolled back"
    assert _counters(db, job.job_id)["rows_committed"] == 3


def test_a_part_of_a_job_that_does_not_exist_is_refused(db: Database) -> None:
    job = ImportJob(str(uuid.uuid4()), "g", DOMAIN, node_type="USER")
    with pytest.raises(StorageError, match="is no longer PROCESSING"):
        _write(db, job, _part(1, 3))
    assert db.scalar("SELECT count(*) FROM nodes") == 0
