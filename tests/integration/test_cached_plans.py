"""Plans a long-lived writer connection cached while `nodes` was small are not reused.

The foreign key check of each node_metadata row runs a plan cached per connection. Cached
while the statistics said `nodes` holds a few rows, it is a sequential scan, and after the
table grows it scans all of `nodes` for every row written (a 5,000-row part: 99.6 s
instead of 0.1 s against 300k nodes). Counted here by the sequential scans of `nodes`,
not by time.
"""

from __future__ import annotations

import uuid

import psycopg
import pyarrow as pa

from nodes_import.jobs import ImportJob
from nodes_import.pipeline import encode
from nodes_import.pipeline.parse import RawBatch
from nodes_import.store import batchwrite, connection, jobrows
from tests.fixtures.kafka import wait_until
from tests.fixtures.postgres import Database

DOMAIN = "3f1c1a3e-2b9d-4c55-9a57-0d3c6a1f0b21"
HEADER = ["reference_id", "plan"]


def _part(first: int, count: int) -> encode.EncodedPart:
    keys = [f"k{n}" for n in range(first, first + count)]
    table = pa.table({"reference_id": keys, "plan": ["p"] * count})
    numbers = pa.array(range(first, first + count), pa.int64())
    return encode.encode_batch(RawBatch(table, numbers), HEADER, 1)[0]


def _seq_scans(db: Database, *, inserted: int) -> int:
    """The sequential scans of ``nodes`` counted so far, read once the statistics count
    ``inserted`` rows inserted into it: the flush carrying the last write's figures has
    arrived, so a zero read here is a real zero, not a flush still on its way."""
    def counters() -> tuple[int, int]:
        with psycopg.connect(db.dsn, autocommit=True) as conn:
            conn.execute("SET stats_fetch_consistency = none")
            row = conn.execute("SELECT seq_scan, n_tup_ins FROM pg_stat_user_tables"
                               " WHERE relname = 'nodes' AND schemaname = %s",
                               (db.schema,)).fetchone()
        assert row is not None
        return int(row[0]), int(row[1])

    scans: list[int] = []

    def flushed() -> bool:
        seq, ins = counters()
        assert ins <= inserted, (ins, inserted)
        scans[:] = [seq]
        return ins == inserted

    wait_until(flushed, 30, f"the statistics to count {inserted} rows inserted into nodes")
    return scans[0]


def test_a_grown_table_is_not_scanned_per_row_by_plans_cached_when_it_was_small(
        db: Database) -> None:
    job_id = str(uuid.uuid4())
    with db.pool.connection() as conn:
        jobrows.create_job(conn, job_id=job_id, group_id="g", domain_id=DOMAIN,
                           node_type="USER", source="test")
        jobrows.start_job(conn, job_id=job_id, partitions=1, source_bytes=None)
    writer = psycopg.connect(db.dsn)
    connection._configure(writer)
    new_id = connection.new_id_function(writer)
    job = ImportJob(job_id, "g", DOMAIN, node_type="USER")

    def write(part: encode.EncodedPart) -> batchwrite.PartResult:
        result = batchwrite.write_part(
            writer, job, part, columns=encode.staged_columns(HEADER), bytes_read=0,
            timeout_ms=600_000, new_id=new_id)
        writer.execute("SELECT pg_stat_force_next_flush()")
        writer.commit()  # the writer's statistics reach the shared counters now
        return result

    try:
        write(_part(1, 10))
        with psycopg.connect(db.dsn, autocommit=True) as conn:
            conn.execute("ANALYZE nodes")  # statistics of a 10-row table
        for n in range(1, 8):  # plans cached under those statistics
            write(_part(1 + n * 10, 10))
        with psycopg.connect(db.dsn, autocommit=True) as conn:  # then the table grows
            conn.execute("INSERT INTO nodes (id, reference_id, group_id, type, domain_id)"
                         " SELECT gen_random_uuid(), 'x' || g, 'other', 'USER', %s"
                         " FROM generate_series(1, 20000) g", (DOMAIN,))
        before = _seq_scans(db, inserted=80 + 20_000)
        assert write(_part(1000, 2000)) == batchwrite.PartResult(2000, 0, 0, 0)
        scans = _seq_scans(db, inserted=80 + 20_000 + 2000) - before
    finally:
        writer.close()
    assert scans < 10, f"{scans} sequential scans of nodes for 2,000 rows written"


def test_a_table_analyzed_while_empty_is_probed_by_index_not_scanned_per_key(
        db: Database) -> None:
    """Statistics that say `nodes` is empty and no page yet (ANALYZEd while empty: a new
    database, or an autovacuum right after a TRUNCATE) cost a sequential scan per staged
    key at nothing; the statement inserts as it looks up, so each scan reads the rows it
    inserted so far: quadratic (a 17k-row part: 9.5 s instead of ~0.3 s). The statement
    must probe the index all the same."""
    job_id = str(uuid.uuid4())
    with psycopg.connect(db.dsn, autocommit=True) as conn:
        conn.execute("ANALYZE nodes")
        conn.execute("ANALYZE node_metadata")
    with db.pool.connection() as conn:
        jobrows.create_job(conn, job_id=job_id, group_id="g", domain_id=DOMAIN,
                           node_type="USER", source="test")
        jobrows.start_job(conn, job_id=job_id, partitions=1, source_bytes=None)
    writer = psycopg.connect(db.dsn)
    connection._configure(writer)
    try:
        before = _seq_scans(db, inserted=0)
        result = batchwrite.write_part(
            writer, ImportJob(job_id, "g", DOMAIN, node_type="USER"), _part(1, 2000),
            columns=encode.staged_columns(HEADER), bytes_read=0, timeout_ms=600_000,
            new_id=connection.new_id_function(writer))
        writer.execute("SELECT pg_stat_force_next_flush()")
        writer.commit()
        assert result == batchwrite.PartResult(2000, 0, 0, 0)
        scans = _seq_scans(db, inserted=2000) - before
    finally:
        writer.close()
    assert scans < 10, f"{scans} sequential scans of nodes for 2,000 keys"
