"""Small jobs: one key partition, and rows, counters and COMPLETED in one transaction."""

from __future__ import annotations

import dataclasses
from typing import Any

import psycopg

from nodes_import.config import ImportConfig, RetryConfig
from nodes_import.jobs import ImportJob, new_job_id
from nodes_import.worker import engine
from tests.fixtures.postgres import Database

DOMAIN = "3f1c1a3e-2b9d-4c55-9a57-0d3c6a1f0b21"
FAST_RETRY = RetryConfig(max_attempts=3, initial_interval_ms=10, multiplier=2.0,
                         max_interval_ms=50)


def _cfg(**changes: Any) -> ImportConfig:
    return dataclasses.replace(ImportConfig(batch_size=1000, max_parallel_futures=2,
                                            retry=FAST_RETRY), **changes)


def _job(ids: tuple[str, ...], **kw: Any) -> ImportJob:
    return ImportJob(job_id=new_job_id(), group_id="g1", domain_id=DOMAIN, reference_ids=ids,
                     **kw)


def _run(db: Database, job: ImportJob, cfg: ImportConfig) -> dict[str, Any]:
    outcome = engine.run_import(job, cfg, db.pool)
    row = db.query("SELECT to_jsonb(j) FROM job_status j WHERE id = %s", (job.job_id,))[0][0]
    assert outcome.status == row["status"]
    return row


def _record_transactions(db: Database) -> None:
    """Test-only triggers: which top-level transaction wrote nodes, and which ended a job
    (``pg_current_xact_id`` is the top-level id, inside a savepoint too)."""
    with psycopg.connect(db.dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE seen (what text, xid text)")
        conn.execute(
            "CREATE FUNCTION seen_nodes() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
            " INSERT INTO seen VALUES ('nodes', pg_current_xact_id()::text); RETURN NULL;"
            " END $$")
        conn.execute(
            "CREATE FUNCTION seen_end() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
            " INSERT INTO seen VALUES (NEW.status, pg_current_xact_id()::text); RETURN NULL;"
            " END $$")
        conn.execute("CREATE TRIGGER seen_nodes AFTER INSERT ON nodes"
                     " FOR EACH STATEMENT EXECUTE FUNCTION seen_nodes()")
        conn.execute("CREATE TRIGGER seen_end AFTER UPDATE OF status ON job_status FOR EACH ROW"
                     " WHEN (NEW.status = 'COMPLETED') EXECUTE FUNCTION seen_end()")


def _transactions(db: Database) -> tuple[set[str], set[str]]:
    """The transactions that inserted nodes, and the one(s) that COMPLETED a job."""
    rows = db.query("SELECT what, xid FROM seen")
    return ({x for w, x in rows if w == "nodes"}, {x for w, x in rows if w == "COMPLETED"})


def test_a_small_job_commits_its_rows_counters_and_completed_in_one_transaction(
        db: Database) -> None:
    _record_transactions(db)
    job = _job(("a", "b", "c", "b", "d"))  # "b" twice: the last occurrence wins
    row = _run(db, job, _cfg())
    assert row["status"] == "COMPLETED" and row["error"] is None
    assert (row["total_nodes"], row["success_count"], row["failed_count"]) == (5, 5, 0)
    assert (row["inserted_count"], row["updated_count"], row["unchanged_count"]) == (4, 1, 0)
    assert row["rows_committed"] == 5 and row["attempts"] == 1
    assert row["checkpoint"] == [5]  # one key partition, all of it committed
    assert row["started_at"] <= row["finished_at"]
    nodes, completed = _transactions(db)
    assert len(completed) == 1 and nodes == completed  # rows and COMPLETED: one commit
    assert db.scalar("SELECT count(*) FROM nodes") == 4


def test_a_job_needing_more_than_one_batch_still_uses_every_partition(db: Database) -> None:
    _record_transactions(db)
    job = _job(tuple(f"r{n}" for n in range(10)))
    row = _run(db, job, _cfg(batch_size=3))
    assert row["status"] == "COMPLETED"
    assert (row["total_nodes"], row["success_count"], row["inserted_count"]) == (10, 10, 10)
    assert len(row["checkpoint"]) == 2 and max(row["checkpoint"]) == 10
    nodes, completed = _transactions(db)
    assert len(nodes) >= 4 and not nodes & completed  # one per batch part, then the end


def test_a_small_job_with_a_rejected_row_counts_it_exactly(db: Database) -> None:
    job = _job(("a", "", "b"))
    row = _run(db, job, _cfg())
    assert row["status"] == "COMPLETED"
    assert (row["total_nodes"], row["success_count"], row["failed_count"]) == (3, 2, 1)
    assert row["checkpoint"] == [3]
    assert db.scalar("SELECT count(*) FROM job_failures WHERE job_id = %s", (job.job_id,)) == 1


def test_a_small_job_resumed_keeps_the_partitions_of_its_stored_checkpoint(
        db: Database) -> None:
    job = _job(("a", "b", "c"))
    # A first attempt (an older version, or a bigger batch setting) chose two partitions.
    db.query("INSERT INTO job_status (id, group_id, domain_id, status, node_type, source,"
             " checkpoint) VALUES (%s, 'g1', %s, 'PROCESSING', 'USER', 'reference-ids',"
             " '{0,0}') RETURNING 1", (job.job_id, DOMAIN))
    row = _run(db, job, _cfg())
    assert row["status"] == "COMPLETED" and len(row["checkpoint"]) == 2
    assert (row["total_nodes"], row["success_count"], row["inserted_count"]) == (3, 3, 3)


def test_a_small_job_already_completed_is_not_written_again(db: Database) -> None:
    job = _job(("a", "b"))
    _run(db, job, _cfg())
    row = _run(db, job, _cfg())  # a redelivery
    assert row["status"] == "COMPLETED" and row["attempts"] == 1
    assert (row["total_nodes"], row["success_count"]) == (2, 2)


def test_a_small_job_over_max_rows_fails_without_writing(db: Database) -> None:
    job = _job(("a", "b", "c"))
    row = _run(db, job, _cfg(max_rows=2))
    assert row["status"] == "FAILED" and "max-rows" in row["error"]
    assert db.scalar("SELECT count(*) FROM nodes") == 0


def test_a_reference_id_list_over_the_small_job_size_keeps_its_parallel_writers(
        db: Database) -> None:
    job = _job(tuple(f"r{n}" for n in range(engine.SMALL_JOB_ROWS + 1)))
    row = _run(db, job, _cfg(batch_size=35_000))
    assert row["status"] == "COMPLETED" and len(row["checkpoint"]) == 2
    assert (row["total_nodes"], row["inserted_count"]) == (1001, 1001)
