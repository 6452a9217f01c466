"""A batch part written again after its COMMIT went through but the answer was lost.

The writer then sees a connection error and retries the same part: the rows are
idempotent, the counters must not be. The retry is staged by writing the very same part
twice (what the retry does), and by recording it as failed after it was committed.
"""

from __future__ import annotations

import uuid

import pyarrow as pa

from nodes_import.jobs import ImportJob
from nodes_import.pipeline import encode
from nodes_import.pipeline.parse import RawBatch
from nodes_import.store import batchwrite, connection, jobrows
from tests.fixtures.postgres import Database

DOMAIN = "3f1c1a3e-2b9d-4c55-9a57-0d3c6a1f0b21"
HEADER = ["reference_id", "plan"]


def _part(first: int, count: int, partitions: int = 1) -> encode.EncodedPart:
    keys = [f"k{n}" for n in range(first, first + count)]
    table = pa.table({"reference_id": keys, "plan": ["p"] * count})
    numbers = pa.array(range(first, first + count), pa.int64())
    return encode.encode_batch(RawBatch(table, numbers), HEADER, partitions)[0]


def _counters(db: Database, job_id: str) -> tuple:
    return db.query("SELECT total_nodes, success_count, failed_count, inserted_count,"
                    " checkpoint FROM job_status WHERE id = %s", (job_id,))[0]


def test_a_part_written_twice_is_counted_once(db: Database) -> None:
    job_id = str(uuid.uuid4())
    with db.pool.connection() as conn:
        jobrows.create_job(conn, job_id=job_id, group_id="g", domain_id=DOMAIN,
                           node_type="USER", source="test")
        jobrows.start_job(conn, job_id=job_id, partitions=1, source_bytes=None)
        new_id = connection.new_id_function(conn)
    job = ImportJob(job_id, "g", DOMAIN, node_type="USER")

    def write(part: encode.EncodedPart) -> batchwrite.PartResult:
        with db.pool.connection() as conn:
            return batchwrite.write_part(
                conn, job, part, columns=encode.staged_columns(HEADER), bytes_read=0,
                timeout_ms=30_000, new_id=new_id)

    first, second = _part(1, 10), _part(11, 5)
    assert write(first) == batchwrite.PartResult(10, 0, 0, 0)
    assert write(first) == batchwrite.PartResult(0, 0, 0, 0)  # the retry: not counted
    assert _counters(db, job_id) == (10, 10, 0, 10, [10])
    assert write(second) == batchwrite.PartResult(5, 0, 0, 0)  # the next part still counts
    with db.pool.connection() as conn:  # a retry that gave up after all: nothing recorded
        batchwrite.fail_rows(conn, job, second, [encode.Rejected(11, "k11", "x", "")],
                             bytes_read=0)
    assert _counters(db, job_id) == (15, 15, 0, 15, [15])
    assert db.scalar("SELECT count(*) FROM job_failures WHERE job_id = %s", (job_id,)) == 0
    assert db.scalar("SELECT count(*) FROM nodes") == 15
