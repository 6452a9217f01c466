"""A key inserted by a concurrent job between the batch's lookup and its INSERT.

The usual upsert trusts its lookup and inserts unknown keys with a plain INSERT; losing
that race must fall back to the ON CONFLICT form inside the same transaction, with exact
counts. The race is staged for real: another session inserts one of the batch's keys and
holds it uncommitted until the batch is seen waiting for it.
"""

from __future__ import annotations

import threading
import time
import uuid

import psycopg
import pyarrow as pa

from nodes_import.jobs import ImportJob
from nodes_import.pipeline import encode
from nodes_import.pipeline.parse import RawBatch
from nodes_import.store import batchwrite, connection, jobrows
from tests.fixtures.postgres import Database

DOMAIN = "3f1c1a3e-2b9d-4c55-9a57-0d3c6a1f0b21"
HEADER = ["reference_id", "plan"]


def test_a_key_inserted_concurrently_is_updated_not_lost(db: Database) -> None:
    job_id, group = str(uuid.uuid4()), "race"
    with db.pool.connection() as conn:
        jobrows.create_job(conn, job_id=job_id, group_id=group, domain_id=DOMAIN,
                           node_type="USER", source="test")
        jobrows.start_job(conn, job_id=job_id, partitions=1, source_bytes=None)
    keys = [f"k{n}" for n in range(50)]
    table = pa.table({"reference_id": keys, "plan": ["ours"] * len(keys)})
    (part,) = encode.encode_batch(RawBatch(table, pa.array(range(1, 51), pa.int64())), HEADER, 1)

    rival = psycopg.connect(db.dsn)
    rival_id = str(uuid.uuid4())
    rival.execute("INSERT INTO nodes (id, reference_id, group_id, type, domain_id)"
                  " VALUES (%s, 'k7', %s, 'USER', %s)", (rival_id, group, DOMAIN))
    results: list[batchwrite.PartResult] = []
    job = ImportJob(job_id, group, DOMAIN, node_type="USER")

    def write() -> None:
        with db.pool.connection() as conn:
            results.append(batchwrite.write_part(
                conn, job, part, columns=encode.staged_columns(HEADER), bytes_read=0,
                timeout_ms=30_000, new_id=connection.new_id_function(conn)))

    writer = threading.Thread(target=write)
    writer.start()
    deadline = time.monotonic() + 20
    with psycopg.connect(db.dsn, autocommit=True) as watcher:
        while not watcher.execute("SELECT count(*) FROM pg_locks WHERE NOT granted").fetchone()[0]:
            assert time.monotonic() < deadline, "the batch never waited for the rival's key"
            time.sleep(0.02)
    rival.commit()  # the batch's plain INSERT now fails on k7 and falls back
    rival.close()
    writer.join(30)
    assert results == [batchwrite.PartResult(inserted=49, updated=1, unchanged=0, failed=0)]
    rows = db.query("SELECT n.reference_id, n.id::text, m.metadata FROM nodes n"
                    " JOIN node_metadata m ON m.node_id = n.id WHERE n.group_id = %s", (group,))
    assert len(rows) == 50
    assert {ref: meta for ref, _, meta in rows} == {k: {"plan": "ours"} for k in keys}
    assert {ref: node_id for ref, node_id, _ in rows}["k7"] == rival_id
    job = db.query("SELECT total_nodes, success_count, inserted_count, updated_count"
                   " FROM job_status WHERE id = %s", (job_id,))[0]
    assert job == (50, 50, 49, 1)
