"""Job leases in the database: one live owner at a time, takeover only after expiry."""

from __future__ import annotations

import logging
import uuid

import pytest

from nodes_import.daemon.database import MainDatabase
from nodes_import.daemon.window import Heartbeat, Leases
from nodes_import.errors import StorageError
from nodes_import.jobs import ImportJob
from nodes_import.store import jobrows
from tests.fixtures.kafka import wait_until
from tests.fixtures.postgres import Database

DOMAIN = "3f1c1a3e-2b9d-4c55-9a57-0d3c6a1f0b21"
LEASE_MS = 30_000


def _job(db: Database) -> str:
    job_id = str(uuid.uuid4())
    with db.pool.connection() as conn:
        jobrows.create_job(conn, job_id=job_id, group_id="g", domain_id=DOMAIN,
                           node_type="USER", source="reference-ids")
    return job_id


def _claim(db: Database, job_id: str, owner: str) -> jobrows.Claim:
    with db.pool.connection() as conn:
        return jobrows.claim_job(conn, job_id=job_id, owner=owner, lease_ms=LEASE_MS)


def test_a_fresh_lease_keeps_other_daemons_waiting_but_not_its_owner(db: Database) -> None:
    job = _job(db)
    assert _claim(db, job, "a:1").outcome == jobrows.CLAIMED
    held = _claim(db, job, "b:2")
    assert (held.outcome, held.holder) == (jobrows.HELD, "a:1")
    assert _claim(db, job, "a:1").outcome == jobrows.CLAIMED  # renewing is claiming again


def test_an_expired_lease_is_taken_over_and_the_new_owner_recorded(db: Database) -> None:
    job = _job(db)
    _claim(db, job, "a:1")
    db.query("UPDATE job_status SET heartbeat_at = now() - interval '31 seconds'"
             " WHERE id = %s RETURNING 1", (job,))
    assert _claim(db, job, "b:2").outcome == jobrows.CLAIMED
    assert db.scalar("SELECT claimed_by FROM job_status WHERE id = %s", (job,)) == "b:2"


def test_a_finished_job_is_never_claimed_and_keeps_who_ran_it(db: Database) -> None:
    job = _job(db)
    _claim(db, job, "a:1")
    with db.pool.connection() as conn:
        jobrows.finish_job(conn, job_id=job, status="COMPLETED")
    claim = _claim(db, job, "b:2")
    assert (claim.outcome, claim.status, claim.holder) == (jobrows.FINISHED, "COMPLETED", "a:1")


def test_renewal_touches_only_the_owners_unfinished_jobs(db: Database) -> None:
    mine, theirs = _job(db), _job(db)
    _claim(db, mine, "a:1")
    _claim(db, theirs, "b:2")
    db.query("UPDATE job_status SET heartbeat_at = now() - interval '1 hour' RETURNING 1")
    with db.pool.connection() as conn:
        assert jobrows.renew_leases(conn, job_ids=[mine, theirs], owner="a:1") == 1
    assert _claim(db, theirs, "a:1").outcome == jobrows.CLAIMED  # b's lease had expired
    assert _claim(db, mine, "b:2").outcome == jobrows.HELD


def test_released_leases_can_be_taken_at_once(db: Database) -> None:
    job = _job(db)
    _claim(db, job, "a:1")
    with db.pool.connection() as conn:
        assert jobrows.release_leases(conn, owner="a:1") == 1
    assert _claim(db, job, "b:2").outcome == jobrows.CLAIMED


def test_a_runner_that_lost_its_lease_cannot_end_the_job(db: Database) -> None:
    job = str(uuid.uuid4())
    with db.pool.connection() as conn:
        jobrows.create_job(conn, job_id=job, group_id="g", domain_id=str(uuid.uuid4()),
                           node_type="USER", source="f.csv")
        jobrows.start_job(conn, job_id=job, partitions=1, source_bytes=None,
                          claimed_by="old:1")
        conn.execute("UPDATE job_status SET claimed_by = 'new:2' WHERE id = %s", (job,))
        conn.commit()
        row = jobrows.finish_job(conn, job_id=job, status="COMPLETED", owner="old:1")
        assert row is not None and row.status == "PROCESSING"
        row = jobrows.finish_job(conn, job_id=job, status="COMPLETED", owner="new:2")
        assert row is not None and row.status == "COMPLETED"


def test_a_daemons_intake_creates_and_claims_a_batch_with_claim_jobs_answers(
        db: Database) -> None:
    held, expired, finished = _job(db), _job(db), _job(db)
    _claim(db, held, "b:2")
    _claim(db, expired, "b:2")
    db.query("UPDATE job_status SET heartbeat_at = now() - interval '31 seconds'"
             " WHERE id = %s RETURNING 1", (expired,))
    with db.pool.connection() as conn:
        jobrows.finish_job(conn, job_id=finished, status="FAILED", error="bad file")
    new = str(uuid.uuid4())
    jobs = [ImportJob(job_id, "g", DOMAIN, reference_ids=("a",))
            for job_id in (new, held, expired, finished)]
    with db.pool.connection() as conn:
        claims = jobrows.create_and_claim(conn, jobs, owner="a:1", lease_ms=LEASE_MS)
    assert [(c.outcome, c.status, c.holder) for c in claims] == [
        (jobrows.CLAIMED, "PENDING", "a:1"), (jobrows.HELD, "PENDING", "b:2"),
        (jobrows.CLAIMED, "PENDING", "a:1"), (jobrows.FINISHED, "FAILED", None)]
    assert claims[0].heartbeat_age_s == claims[2].heartbeat_age_s == 0.0  # claimed just now
    rows = dict(db.query("SELECT id::text, claimed_by FROM job_status"))
    assert rows == {new: "a:1", held: "b:2", expired: "a:1", finished: None}
    assert db.scalar("SELECT status FROM job_status WHERE id = %s", (new,)) == "PENDING"


def test_each_claim_answer_carries_the_jobs_status_holder_and_heartbeat_age(
        db: Database) -> None:
    job = _job(db)
    assert _claim(db, job, "a:1") == jobrows.Claim(jobrows.CLAIMED, "PENDING", "a:1", 0.0)
    db.query("UPDATE job_status SET heartbeat_at = now() - interval '10 seconds'"
             " WHERE id = %s RETURNING 1", (job,))
    held = _claim(db, job, "b:2")
    assert (held.outcome, held.status, held.holder) == (jobrows.HELD, "PENDING", "a:1")
    assert held.heartbeat_age_s is not None and held.heartbeat_age_s >= 10
    with db.pool.connection() as conn:
        jobrows.finish_job(conn, job_id=job, status="COMPLETED")
        [again] = jobrows.create_and_claim(conn, [ImportJob(job, "g", DOMAIN, source="f")],
                                           owner="b:2", lease_ms=LEASE_MS)
    finished = _claim(db, job, "b:2")
    assert (finished.outcome, finished.status, finished.holder) == (
        jobrows.FINISHED, "COMPLETED", "a:1")
    assert finished.heartbeat_age_s is not None and finished.heartbeat_age_s >= 10
    assert (again.outcome, again.status, again.holder) == (jobrows.FINISHED, "COMPLETED", "a:1")
    assert again.heartbeat_age_s is not None and again.heartbeat_age_s >= 10


def test_a_held_job_in_an_intake_batch_says_who_holds_it_and_since_when(db: Database) -> None:
    job = _job(db)
    _claim(db, job, "b:2")
    db.query("UPDATE job_status SET heartbeat_at = now() - interval '10 seconds'"
             " WHERE id = %s RETURNING 1", (job,))
    with db.pool.connection() as conn:
        [claim] = jobrows.create_and_claim(conn, [ImportJob(job, "g", DOMAIN, source="f")],
                                           owner="a:1", lease_ms=LEASE_MS)
    assert (claim.outcome, claim.status, claim.holder) == (jobrows.HELD, "PENDING", "b:2")
    assert claim.heartbeat_age_s is not None and claim.heartbeat_age_s >= 10


def test_a_job_that_does_not_exist_cannot_be_claimed_and_no_ids_renew_nothing(
        db: Database) -> None:
    missing = str(uuid.uuid4())
    with pytest.raises(StorageError,
                       match=f"job {missing} does not exist; create it before claiming"):
        _claim(db, missing, "a:1")
    with db.pool.connection() as conn:
        assert jobrows.renew_leases(conn, job_ids=[], owner="a:1") == 0


def test_the_heartbeat_renews_every_held_lease_until_stopped_and_outlives_an_outage(
        db: Database, caplog: pytest.LogCaptureFixture) -> None:
    held, other = _job(db), _job(db)
    _claim(db, held, "a:1")
    _claim(db, other, "a:1")
    db.query("UPDATE job_status SET heartbeat_at = now() - interval '1 hour' RETURNING 1")
    leases = Leases()
    leases.hold(held)
    main = MainDatabase(db.dsn, connect_timeout_s=5)
    beat = Heartbeat(leases, main, "a:1", interval_s=0.05)
    with caplog.at_level(logging.WARNING, logger="nodes_import.daemon.window"):
        beat.start()  # the pool is not open yet: every beat fails, the thread goes on
        wait_until(lambda: len([r for r in caplog.records
                                if r.getMessage() == "lease renewal failed"]) >= 2,
                   30, "two failed renewals logged")
        main.open()
        try:
            wait_until(lambda: db.scalar("SELECT heartbeat_at > now() - interval '1 minute'"
                                         " FROM job_status WHERE id = %s", (held,)),
                       30, "the held lease renewed")
        finally:
            beat.stopped.set()
            beat.join(timeout=30)
            main.close()
    assert not beat.is_alive()
    failed = next(r for r in caplog.records if r.getMessage() == "lease renewal failed")
    assert failed.fields == {  # type: ignore[attr-defined]
        "error": "the daemon's database pool is not open"}
    assert db.scalar("SELECT heartbeat_at < now() - interval '59 minutes' FROM job_status"
                     " WHERE id = %s", (other,))  # not held here: left to expire
