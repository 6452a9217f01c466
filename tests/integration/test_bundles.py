"""Small jobs written in bundles: the same result as the usual path, one transaction, and a
clean fallback to the usual path whenever a bundle cannot be written whole."""

from __future__ import annotations

import dataclasses
import multiprocessing
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nodes_import.config import ImportConfig, RetryConfig
from nodes_import.daemon.pool import WorkerPool
from nodes_import.jobs import ImportJob, new_job_id
from nodes_import.store import connection, jobrows
from nodes_import.worker import WorkerSettings, bundle, engine
from tests.fixtures.postgres import Database

DOMAINS = ("3f1c1a3e-2b9d-4c55-9a57-0d3c6a1f0b21", "9a0e7c55-1b2d-4e6f-8a9b-0c1d2e3f4a5b")
OWNER = "test-host:1"
FAST_RETRY = RetryConfig(max_attempts=3, initial_interval_ms=10, multiplier=2.0,
                         max_interval_ms=50)
CFG = ImportConfig(batch_size=1000, max_parallel_futures=2, retry=FAST_RETRY)
COUNTERS = ("status", "total_nodes", "success_count", "failed_count", "inserted_count",
            "updated_count", "unchanged_count", "rows_committed", "attempts", "checkpoint")


def _job(group: str, ids: tuple[str, ...], *, domain: str = DOMAINS[0],
         node_type: str = "USER", owner: str | None = OWNER) -> ImportJob:
    return ImportJob(job_id=new_job_id(), group_id=group, domain_id=domain, node_type=node_type,
                     reference_ids=ids, claimed_by=owner)


def _claim(db: Database, jobs: list[ImportJob], owner: str = OWNER) -> None:
    with db.pool.connection() as conn:
        claims = jobrows.create_and_claim(conn, jobs, owner=owner, lease_ms=60_000)
    assert all(c.outcome == jobrows.CLAIMED for c in claims)


def _write(db: Database, jobs: list[ImportJob]) -> bundle.Written:
    with db.pool.connection() as conn:
        return bundle.write(conn, jobs, owner=OWNER, timeout_ms=10_000,
                            new_id=connection.new_id_function(conn))


def _job_row(db: Database, job_id: str) -> dict[str, Any]:
    row: dict[str, Any] = db.scalar("SELECT to_jsonb(j) FROM job_status j WHERE id = %s",
                                    (job_id,))
    return row


def _nodes(db: Database) -> set[tuple[str, ...]]:
    return {tuple(map(str, r)) for r in db.query(
        "SELECT reference_id, group_id, type, domain_id FROM nodes")}


# Jobs over few groups and few IDs, so that they overlap: repeated IDs in a job, the same
# group twice in a row, keys that exist with another type or domain, or as they are.
_ids = st.lists(st.sampled_from([f"r{n}" for n in range(6)]), max_size=6).map(tuple)
_jobs = st.lists(st.tuples(st.sampled_from(["g0", "g1", "g2"]), _ids,
                           st.sampled_from(DOMAINS), st.sampled_from(["USER", "ADMIN"])),
                 min_size=1, max_size=6)
_existing = st.lists(st.tuples(st.sampled_from([f"r{n}" for n in range(6)]),
                               st.sampled_from(["g0", "g1"]), st.sampled_from(["USER", "ADMIN"]),
                               st.sampled_from(DOMAINS)),
                     max_size=6, unique_by=lambda t: (t[0], t[1]))


def _reset(db: Database, existing: list[tuple[str, str, str, str]]) -> None:
    with psycopg.connect(db.dsn, autocommit=True) as conn:
        conn.execute("TRUNCATE nodes, node_metadata, job_failures, job_status")
        for ref, group, node_type, domain in existing:
            conn.execute("INSERT INTO nodes (id, reference_id, group_id, type, domain_id)"
                         " VALUES (gen_random_uuid(), %s, %s, %s, %s)",
                         (ref, group, node_type, domain))


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(specs=_jobs, existing=_existing)
def test_bundles_leave_the_nodes_and_counters_the_usual_path_leaves_job_by_job(
        db: Database, specs: list[tuple[str, tuple[str, ...], str, str]],
        existing: list[tuple[str, str, str, str]]) -> None:
    jobs = [_job(g, ids, domain=d, node_type=t) for g, ids, d, t in specs]
    # the usual path, one job after another in message order
    _reset(db, existing)
    _claim(db, jobs)
    for job in jobs:
        assert engine.run_import(job, CFG, db.pool).status == "COMPLETED"
    usual_nodes = _nodes(db)
    usual = [{k: _job_row(db, j.job_id)[k] for k in COUNTERS} for j in jobs]
    # bundles: rounds in which no group appears twice
    _reset(db, existing)
    _claim(db, jobs)
    for positions in bundle.rounds(jobs):
        written = _write(db, [jobs[n] for n in positions])
        assert [r.id for r in written.rows] == [jobs[n].job_id for n in positions]
    assert _nodes(db) == usual_nodes
    assert [{k: _job_row(db, j.job_id)[k] for k in COUNTERS} for j in jobs] == usual


def test_a_bundle_commits_every_job_and_its_nodes_in_one_transaction(db: Database) -> None:
    with psycopg.connect(db.dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE seen (what text, xid text)")
        conn.execute(
            "CREATE FUNCTION seen() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
            " INSERT INTO seen VALUES (TG_TABLE_NAME, pg_current_xact_id()::text);"
            " RETURN NULL; END $$")
        conn.execute("CREATE TRIGGER seen AFTER INSERT ON nodes"
                     " FOR EACH STATEMENT EXECUTE FUNCTION seen()")
        conn.execute("CREATE TRIGGER seen_end AFTER UPDATE OF status ON job_status FOR EACH ROW"
                     " WHEN (NEW.status = 'COMPLETED') EXECUTE FUNCTION seen()")
    jobs = [_job(f"g{n}", (f"a{n}", f"b{n}")) for n in range(5)]
    _claim(db, jobs)
    written = _write(db, jobs)
    assert [r.status for r in written.rows] == ["COMPLETED"] * 5
    assert db.scalar("SELECT count(DISTINCT xid) FROM seen") == 1
    assert db.scalar("SELECT count(*) FROM seen WHERE what = 'job_status'") == 5
    assert db.scalar("SELECT count(*) FROM nodes") == 10


def test_a_bundle_with_one_job_not_ours_writes_nothing_at_all(db: Database) -> None:
    ours = _job("g0", ("a", "b"))
    theirs = _job("g1", ("c",))
    _claim(db, [ours])
    _claim(db, [theirs], owner="other-host:2")
    with pytest.raises(bundle.Declined):
        _write(db, [ours, theirs])
    assert db.scalar("SELECT count(*) FROM nodes") == 0
    assert {_job_row(db, j.job_id)["status"] for j in (ours, theirs)} == {"PENDING"}


def test_a_bundle_never_takes_a_job_that_was_started_before(db: Database) -> None:
    job = _job("g0", ("a", "b"))
    _claim(db, [job])
    with db.pool.connection() as conn:  # an earlier attempt got as far as PROCESSING
        jobrows.start_job(conn, job_id=job.job_id, partitions=1, source_bytes=None,
                          claimed_by=OWNER)
    with pytest.raises(bundle.Declined):
        _write(db, [job])
    assert _job_row(db, job.job_id)["status"] == "PROCESSING"


def test_a_bundle_refuses_the_same_group_twice(db: Database) -> None:
    jobs = [_job("g0", ("a",)), _job("g0", ("a",))]
    _claim(db, jobs)
    with pytest.raises(bundle.Declined):
        _write(db, jobs)


def test_rounds_keep_each_groups_jobs_in_message_order() -> None:
    jobs = [_job(g, ()) for g in ("a", "b", "a", "c", "a", "b")]
    assert bundle.rounds(jobs) == [[0, 1, 3], [2, 5], [4]]


def test_a_burst_splits_into_one_bundle_per_worker_with_each_group_in_one_bundle() -> None:
    jobs = [_job(g, ()) for g in ("a", "b", "a", "c", "d", "a", "e")]
    bundles = bundle.split(jobs, 2)
    assert bundles == [[0, 2, 4, 5], [1, 3, 6]]  # "a" three times, all in the first
    assert bundle.split(jobs[:1], 2) == [[0]] and bundle.split([], 2) == []


@pytest.mark.parametrize(("ids", "clean"), [
    (("a", "b-1", "ünï"), True), ((), True), (("a", ""), False), (("  ",), False),
    (("a\tb",), False), (("x" * 255,), True), (("x" * 256,), False),
    (tuple(f"r{n}" for n in range(1001)), False)])
def test_only_jobs_whose_every_id_the_usual_path_would_write_are_bundled(
        ids: tuple[str, ...], clean: bool) -> None:
    assert bundle.clean(_job("g", ids), CFG) is clean


@pytest.fixture()
def workers(db: Database) -> Any:
    pool = WorkerPool(WorkerSettings(dsn=db.dsn, pool_size=3, connect_timeout_s=10),
                      max_workers=1, core=1, start_method="spawn")
    pool.start()
    yield pool
    pool.shutdown(kill=False)
    assert multiprocessing.active_children() == []


def test_a_worker_runs_what_a_bundle_cannot_take_one_by_one_and_in_order(
        db: Database, workers: WorkerPool) -> None:
    plain = _job("g0", ("a", "b"))
    blank = _job("g1", ("c", " "))  # a row the usual path rejects
    after_blank = _job("g1", ("c",), node_type="ADMIN")  # must follow it, not overtake it
    started = _job("g2", ("d",))  # begun by an earlier attempt
    jobs = [plain, blank, after_blank, started]
    _claim(db, jobs)
    with db.pool.connection() as conn:
        jobrows.start_job(conn, job_id=started.job_id, partitions=1, source_bytes=None,
                          claimed_by=OWNER)
    futures = workers.submit_bundle(jobs, dataclasses.replace(CFG))
    outcomes = [f.result(timeout=60) for f in futures]
    assert [o.job_id for o in outcomes] == [j.job_id for j in jobs]
    assert [o.status for o in outcomes] == ["COMPLETED"] * 4
    rows = {j.job_id: _job_row(db, j.job_id) for j in jobs}
    assert (rows[blank.job_id]["success_count"], rows[blank.job_id]["failed_count"]) == (1, 1)
    assert db.scalar("SELECT count(*) FROM job_failures WHERE job_id = %s", (blank.job_id,)) == 1
    assert rows[after_blank.job_id]["updated_count"] == 1  # ran after "blank" inserted c
    assert db.scalar("SELECT type FROM nodes WHERE reference_id = 'c'") == "ADMIN"
    assert (rows[started.job_id]["attempts"], rows[started.job_id]["inserted_count"]) == (2, 1)
    assert _nodes(db) == {("a", "g0", "USER", DOMAINS[0]), ("b", "g0", "USER", DOMAINS[0]),
                          ("c", "g1", "ADMIN", DOMAINS[0]), ("d", "g2", "USER", DOMAINS[0])}


def test_a_bundle_sent_again_after_it_committed_is_found_finished_and_not_counted_twice(
        db: Database, workers: WorkerPool) -> None:
    # What a worker sees when a bundle's COMMIT went through but its answer was lost: the
    # bundle is declined (no job is PENDING any more) and each job, run one by one, is
    # found COMPLETED and left as it is.
    jobs = [_job(f"g{n}", ("a", "b", "a")) for n in range(3)]
    _claim(db, jobs)
    first = [f.result(timeout=60) for f in workers.submit_bundle(jobs, CFG)]
    before = [_job_row(db, j.job_id) for j in jobs]
    again = [f.result(timeout=60) for f in workers.submit_bundle(jobs, CFG)]
    assert [o.status for o in first] == [o.status for o in again] == ["COMPLETED"] * 3
    after = [_job_row(db, j.job_id) for j in jobs]
    assert after == before  # same counters, attempts 1, same finished_at
    assert [(r["total_nodes"], r["inserted_count"], r["updated_count"], r["attempts"])
            for r in after] == [(3, 2, 1, 1)] * 3
    assert db.scalar("SELECT count(*) FROM nodes") == 6
