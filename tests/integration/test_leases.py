"""Job leases in the database: one live owner at a time, takeover only after expiry."""

from __future__ import annotations

import uuid

from nodes_import.jobs import ImportJob
from nodes_import.store import jobrows
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
    rows = dict(db.query("SELECT id::text, claimed_by FROM job_status"))
    assert rows == {new: "a:1", held: "b:2", expired: "a:1", finished: None}
    assert db.scalar("SELECT status FROM job_status WHERE id = %s", (new,)) == "PENDING"
