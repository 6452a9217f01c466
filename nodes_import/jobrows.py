"""Job rows: the job_status lifecycle, the daemon's leases, and housekeeping queries.

The SQL of a job's own row (create, start, finish, read), of the claims daemons hold on
jobs, and of purging old jobs. The batch write, which changes a job's counters in the
same transaction as its rows, lives in ``storage``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from nodes_import.errors import StorageError
from nodes_import.storage import wrapped

# ------------------------------------------------------------------------- job rows

JOB_COLUMNS = (
    "id", "group_id", "domain_id", "status", "node_type", "source", "total_nodes",
    "success_count", "failed_count", "inserted_count", "updated_count", "unchanged_count",
    "rows_committed", "error", "attempts", "source_bytes", "bytes_read", "claimed_by",
    "created_at", "updated_at", "started_at", "finished_at", "heartbeat_at",
)
_SELECT_JOB = sql.SQL("SELECT {} FROM job_status").format(
    sql.SQL(", ").join(map(sql.Identifier, JOB_COLUMNS)))


def create_job(conn: psycopg.Connection[Any], *, job_id: str, group_id: str, domain_id: str,
               node_type: str, source: str) -> dict[str, Any]:
    """Insert the job as PENDING unless it exists; return its current row."""
    with wrapped(), conn.transaction():
        conn.execute(
            "INSERT INTO job_status (id, group_id, domain_id, status, node_type, source)"
            " VALUES (%s, %s, %s, 'PENDING', %s, %s) ON CONFLICT (id) DO NOTHING",
            (job_id, group_id, domain_id, node_type, source))
    job = get_job(conn, job_id)
    assert job is not None
    return job


def start_job(conn: psycopg.Connection[Any], *, job_id: str, partitions: int,
              source_bytes: int | None, claimed_by: str | None = None,
              resume_failed: bool = False) -> list[int] | None:
    """PENDING/PROCESSING -> PROCESSING; return the checkpoint (None: job is finished).

    With ``resume_failed`` a FAILED job is taken up again too (an explicit re-run); its
    error and finish time are cleared, its counters and checkpoint kept.
    """
    statuses = ["PENDING", "PROCESSING"] + (["FAILED"] if resume_failed else [])
    with wrapped(), conn.transaction():
        row = conn.execute(
            "UPDATE job_status SET status = 'PROCESSING', attempts = attempts + 1,"
            " started_at = coalesce(started_at, now()), updated_at = now(),"
            " heartbeat_at = now(), claimed_by = coalesce(%s, claimed_by),"
            " source_bytes = coalesce(%s, source_bytes), error = NULL, finished_at = NULL,"
            " checkpoint = coalesce(checkpoint, array_fill(0::bigint, ARRAY[%s::int]))"
            " WHERE id = %s AND status = ANY(%s) RETURNING checkpoint",
            (claimed_by, source_bytes, partitions, job_id, statuses)).fetchone()
    return None if row is None else [int(x) for x in row[0]]


def finish_job(conn: psycopg.Connection[Any], *, job_id: str, status: str,
               error: str | None = None, owner: str | None = None) -> dict[str, Any] | None:
    """PROCESSING (or PENDING) -> COMPLETED/FAILED; return the row as it is afterwards.

    With ``owner`` (a daemon's ``host:pid``) the job ends only while that daemon still holds
    it, like every batch write: a runner whose job was taken over leaves the ending to the
    new owner, and the returned row is still PROCESSING.
    """
    fence = "" if owner is None else " AND claimed_by IS NOT DISTINCT FROM %s"
    params: tuple[Any, ...] = (status, error, job_id) + (() if owner is None else (owner,))
    with wrapped(), conn.transaction():
        conn.execute(
            "UPDATE job_status SET status = %s, error = %s, finished_at = now(),"
            " updated_at = now() WHERE id = %s AND status IN ('PENDING', 'PROCESSING')"
            + fence, params)  # type: ignore[arg-type]  # constant SQL, parameters apart
    return get_job(conn, job_id)


def get_job(conn: psycopg.Connection[Any], job_id: str) -> dict[str, Any] | None:
    """One job row as a dict keyed by column name (None if unknown)."""
    with wrapped(), conn.cursor(row_factory=dict_row) as cur:
        cur.execute(_SELECT_JOB + sql.SQL(" WHERE id = %s"), (job_id,))
        row = cur.fetchone()
    if not conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
        conn.rollback()
    return row


def list_jobs(conn: psycopg.Connection[Any], *, status: str | None = None,
              limit: int = 50) -> list[dict[str, Any]]:
    """Most recent jobs first, optionally of one status."""
    query = _SELECT_JOB
    params: list[Any] = []
    if status:
        query += sql.SQL(" WHERE status = %s")
        params.append(status)
    query += sql.SQL(" ORDER BY created_at DESC LIMIT %s")
    params.append(limit)
    with wrapped(), conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(query, params).fetchall()
    conn.rollback()
    return rows


def job_failures(conn: psycopg.Connection[Any], job_id: str, limit: int = 100) -> list[dict[str, Any]]:
    """The first rejected rows of a job, by row number."""
    with wrapped(), conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            "SELECT row_number, reference_id, reason, line FROM job_failures"
            " WHERE job_id = %s ORDER BY row_number LIMIT %s", (job_id, limit)).fetchall()
    conn.rollback()
    return rows


# ------------------------------------------------------------ leases (the daemon's claims)
# A daemon instance (``host:pid``) claims a job before running it and renews the claim's
# heartbeat while the job is in its hands. Another instance may take the job over only
# once the heartbeat is older than the lease; times are the database's clock, so the
# daemons' clocks never have to agree. ``claimed_by`` stays after the job ends: the record
# of who ran it.

CLAIMED = "claimed"  # the caller holds the lease now
FINISHED = "finished"  # the job is COMPLETED or FAILED: nothing to run
HELD = "held"  # another live instance holds the lease


@dataclass(frozen=True)
class Claim:
    """The answer to ``claim_job``: the outcome, the job's status and who holds it."""

    outcome: str
    status: str
    holder: str | None
    heartbeat_age_s: float | None = None


def claim_job(conn: psycopg.Connection[Any], *, job_id: str, owner: str,
              lease_ms: int) -> Claim:
    """Take (or renew) the lease on an existing job unless another live owner holds it.

    Claimable: PENDING/PROCESSING and (no heartbeat, or ours, or older than the lease).
    """
    with wrapped(), conn.transaction():
        row = conn.execute(
            "SELECT status, claimed_by, extract(epoch FROM now() - heartbeat_at)::float8"
            " FROM job_status WHERE id = %s FOR UPDATE", (job_id,)).fetchone()
        if row is None:
            raise StorageError(f"job {job_id} does not exist; create it before claiming")
        job_status, holder, age = str(row[0]), row[1], row[2]
        if job_status in ("COMPLETED", "FAILED"):
            return Claim(FINISHED, job_status, holder, age)
        if holder is not None and holder != owner and age is not None \
                and age * 1000 < lease_ms:
            return Claim(HELD, job_status, holder, age)
        conn.execute(
            "UPDATE job_status SET claimed_by = %s, heartbeat_at = now(), updated_at = now()"
            " WHERE id = %s", (owner, job_id))
    return Claim(CLAIMED, job_status, owner, 0.0)


def renew_leases(conn: psycopg.Connection[Any], *, job_ids: Sequence[str], owner: str) -> int:
    """Refresh the heartbeat of the unfinished jobs ``owner`` holds; returns how many."""
    if not job_ids:
        return 0
    with wrapped(), conn.transaction():
        cur = conn.execute(
            "UPDATE job_status SET heartbeat_at = now() WHERE id = ANY(%s::uuid[])"
            " AND claimed_by = %s AND status IN ('PENDING', 'PROCESSING')",
            (list(job_ids), owner))
        return cur.rowcount


def release_leases(conn: psycopg.Connection[Any], *, owner: str) -> int:
    """Give up the leases of ``owner``'s unfinished jobs so the next owner need not wait.

    ``claimed_by`` is kept (who ran it last); only the heartbeat goes.
    """
    with wrapped(), conn.transaction():
        cur = conn.execute(
            "UPDATE job_status SET heartbeat_at = NULL WHERE claimed_by = %s"
            " AND status IN ('PENDING', 'PROCESSING')", (owner,))
        return cur.rowcount


# ------------------------------------------------------- housekeeping and monitoring
# Read by the daemon's admin side (scrape-time gauges, the long-running job check) and
# by ``jobs purge``. Ages are the database's clock, like the leases.

# Statuses a purge may delete: a PENDING or PROCESSING job may still be running.
PURGEABLE = ("COMPLETED", "FAILED")


def running_jobs(conn: psycopg.Connection[Any], *, limit: int = 1000) -> list[dict[str, Any]]:
    """PROCESSING jobs, oldest first, with ``age_s`` since their first start."""
    with wrapped(), conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            "SELECT id::text AS id, group_id, domain_id, claimed_by, source_bytes, bytes_read,"
            " rows_committed, status,"
            " extract(epoch FROM now() - coalesce(started_at, created_at))::float8 AS age_s"
            " FROM job_status WHERE status = 'PROCESSING'"
            " ORDER BY coalesce(started_at, created_at) LIMIT %s", (limit,)).fetchall()
    conn.rollback()
    return rows


@dataclass(frozen=True)
class Purged:
    """What a purge deleted (or, dry, would delete)."""

    jobs: int
    failures: int


_PURGE_WHERE = (" WHERE status = ANY(%(statuses)s)"
                " AND coalesce(finished_at, updated_at) < now() - %(age)s * interval '1 second'")


def purge_jobs(conn: psycopg.Connection[Any], *, older_than_s: float,
               statuses: Sequence[str] = PURGEABLE, batch_size: int = 500,
               dry_run: bool = False) -> Purged:
    """Delete finished jobs older than ``older_than_s`` and their job_failures rows.

    One transaction per ``batch_size`` jobs, so a big purge never holds locks for long;
    rows locked by someone else are skipped (the next purge gets them).
    """
    bad = sorted(set(statuses) - set(PURGEABLE))
    if bad or not statuses:
        raise ValueError(f"only finished jobs can be purged ({', '.join(PURGEABLE)}), "
                         f"not {', '.join(bad) or 'none'}")
    params = {"statuses": list(statuses), "age": older_than_s, "limit": batch_size}
    if dry_run:
        with wrapped():
            row = conn.execute(
                "SELECT count(*), coalesce(sum((SELECT count(*) FROM job_failures f"
                " WHERE f.job_id = j.id)), 0) FROM job_status j" + _PURGE_WHERE,
                params).fetchone()
        conn.rollback()
        assert row is not None
        return Purged(int(row[0]), int(row[1]))
    jobs = failures = 0
    while True:
        with wrapped(), conn.transaction():
            ids = [r[0] for r in conn.execute(
                "SELECT id FROM job_status" + _PURGE_WHERE + " ORDER BY finished_at"
                " LIMIT %(limit)s FOR UPDATE SKIP LOCKED", params)]
            if not ids:
                break
            failures += conn.execute("DELETE FROM job_failures WHERE job_id = ANY(%s)",
                                     (ids,)).rowcount
            jobs += conn.execute("DELETE FROM job_status WHERE id = ANY(%s)", (ids,)).rowcount
    return Purged(jobs, failures)
