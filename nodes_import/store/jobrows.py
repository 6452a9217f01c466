"""Job rows: the job_status lifecycle, the daemon's leases, and housekeeping queries.

The SQL of a job's own row (create, start, finish, read), of the claims daemons hold on
jobs, and of purging old jobs. The batch write, which changes a job's counters in the
same transaction as its rows, lives in ``batchwrite``. A job is passed whole, as the
``ImportJob`` that crosses the process boundary (``begin_job``, ``create_and_claim``); its
row comes back as a ``JobRow`` (``psycopg.rows.class_row``), never as a dict.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import class_row

from nodes_import import status as states  # "status" names job_status values here
from nodes_import.errors import CANCELLED_MESSAGE, StorageError
from nodes_import.jobs import ImportJob, JobRow
from nodes_import.store.connection import wrapped

# ------------------------------------------------------------------------- job rows

# The columns a JobRow holds, in its fields' order.
JOB_COLUMNS = tuple(f.name for f in fields(JobRow))
# The UUID columns among them, read as text (PostgreSQL's text of a UUID is str(uuid.UUID)).
_UUID_COLUMNS = frozenset({"id", "domain_id"})


def job_columns(table: str | None = None) -> sql.Composed:
    """The select list a ``JobRow`` is read from (``table``: the alias that qualifies it)."""
    def column(name: str) -> sql.Composable:
        ident = sql.Identifier(table, name) if table else sql.Identifier(name)
        if name in _UUID_COLUMNS:
            return sql.SQL("{}::text AS {}").format(ident, sql.Identifier(name))
        return ident
    return sql.SQL(", ").join(map(column, JOB_COLUMNS))


_SELECT_JOB = sql.SQL("SELECT {} FROM job_status").format(job_columns())


def create_job(conn: psycopg.Connection[Any], *, job_id: str, group_id: str, domain_id: str,
               node_type: str, source: str) -> JobRow:
    """Insert the job as PENDING unless it exists; return its current row."""
    with wrapped(), conn.transaction():
        conn.execute(
            "INSERT INTO job_status (id, group_id, domain_id, status, node_type, source)"
            " VALUES (%s, %s, %s, 'PENDING', %s, %s) ON CONFLICT (id) DO NOTHING",
            (job_id, group_id, domain_id, node_type, source))
    job = get_job(conn, job_id)
    assert job is not None
    return job


# PENDING/PROCESSING (or FAILED, for a re-run) -> PROCESSING; returns the checkpoint. A
# re-run on purpose (the last parameter) also clears a cancel request; a plain start keeps
# one that arrives while it waits for the row, so the runner still sees it.
_START = (
    "UPDATE job_status SET status = 'PROCESSING', attempts = attempts + 1,"
    " started_at = coalesce(started_at, now()), updated_at = now(),"
    " heartbeat_at = now(), claimed_by = coalesce(%s, claimed_by),"
    " source_bytes = coalesce(%s, source_bytes), error = NULL, finished_at = NULL,"
    " checkpoint = coalesce(checkpoint, array_fill(0::bigint, ARRAY[%s::int])),"
    " cancel_requested_at = CASE WHEN %s THEN NULL ELSE cancel_requested_at END"
    " WHERE id = %s AND status = ANY(%s) RETURNING checkpoint")
# A job whose cancel was asked for never starts (unless re-run on purpose): it ends FAILED
# "Cancelled" instead, in the transaction that would have started it.
_REFUSE_CANCELLED = (
    "UPDATE job_status SET status = 'FAILED', error = %s, finished_at = now(),"
    " updated_at = now() WHERE id = %s AND status IN ('PENDING', 'PROCESSING')"
    " AND cancel_requested_at IS NOT NULL")


def start_job(conn: psycopg.Connection[Any], *, job_id: str, partitions: int,
              source_bytes: int | None, claimed_by: str | None = None,
              resume_failed: bool = False) -> list[int] | None:
    """PENDING/PROCESSING -> PROCESSING; return the checkpoint (None: job is finished).

    With ``resume_failed`` a FAILED job is taken up again too (an explicit re-run); its
    error and finish time are cleared, its counters and checkpoint kept.
    """
    statuses = ["PENDING", "PROCESSING"] + (["FAILED"] if resume_failed else [])
    with wrapped(), conn.transaction():
        row = conn.execute(_START, (claimed_by, source_bytes, partitions, resume_failed,
                                    job_id, statuses)).fetchone()
    return None if row is None else [int(x) for x in row[0]]


def begin_job(conn: psycopg.Connection[Any], job: ImportJob, *, partitions: int,
              source_bytes: int | None) -> list[int] | None:
    """``create_job`` then ``start_job`` in ONE transaction and one round trip (pipeline).

    The job is inserted PENDING unless it exists and moved to PROCESSING in the same
    commit, so no reader ever sees a job that started without its row. The job's
    ``claimed_by`` becomes the row's (when set), and its ``resume_failed`` takes a FAILED
    job up again. A job whose cancel was asked for is ended FAILED "Cancelled" instead of
    started, in the same transaction (unless re-run on purpose: ``resume_failed`` clears the
    request). Returns the checkpoint (None: the job is finished).
    """
    statuses = ["PENDING", "PROCESSING"] + (["FAILED"] if job.resume_failed else [])
    with wrapped(), conn.pipeline(), conn.transaction():
        conn.execute(
            "INSERT INTO job_status (id, group_id, domain_id, status, node_type, source)"
            " VALUES (%s, %s, %s, 'PENDING', %s, %s) ON CONFLICT (id) DO NOTHING",
            (job.job_id, job.group_id, job.domain_id, job.node_type, job.source_label))
        if not job.resume_failed:
            conn.execute(_REFUSE_CANCELLED, (CANCELLED_MESSAGE, job.job_id))
        row = conn.execute(_START, (job.claimed_by, source_bytes, partitions,
                                    job.resume_failed, job.job_id, statuses)).fetchone()
    return None if row is None else [int(x) for x in row[0]]


def finish_job(conn: psycopg.Connection[Any], *, job_id: str, status: str,
               error: str | None = None, owner: str | None = None) -> JobRow | None:
    """PROCESSING (or PENDING) -> COMPLETED/FAILED; return the row as it is afterwards.

    With ``owner`` (a daemon's ``host:pid``) the job ends only while that daemon still holds
    it, like every batch write: a runner whose job was taken over leaves the ending to the
    new owner, and the returned row is still PROCESSING.
    """
    with wrapped(), conn.transaction():
        row = _end(conn, job_id, status, error, owner, ("PENDING", "PROCESSING"))
    return row if row is not None else get_job(conn, job_id)  # not ours to end: as it is


def complete_job(conn: psycopg.Connection[Any], *, job_id: str,
                 owner: str | None = None) -> JobRow:
    """PROCESSING -> COMPLETED inside the caller's open transaction (the one that wrote the
    job's last rows and counters); the row afterwards. Fenced on ``owner`` like
    ``finish_job``; a job that is not PROCESSING or not ``owner``'s raises
    ``StorageError``, so the caller's transaction rolls back."""
    with wrapped():
        row = _end(conn, job_id, "COMPLETED", None, owner, ("PROCESSING",))
    if row is None:
        raise StorageError(f"job {job_id} is not PROCESSING under {owner}; not completed")
    return row


# The ending UPDATE, unfenced and fenced on the owner; the row afterwards. Built once: the
# same text every time lets psycopg prepare it.
_END = sql.SQL("UPDATE job_status SET status = %s, error = %s, finished_at = now(),"
               " updated_at = now() WHERE id = %s AND status = ANY(%s){} RETURNING {}")
_END_QUERIES = {fenced: _END.format(
    sql.SQL(" AND claimed_by IS NOT DISTINCT FROM %s" if fenced else ""),
    job_columns()) for fenced in (False, True)}


def _end(conn: psycopg.Connection[Any], job_id: str, status: str, error: str | None,
         owner: str | None, statuses: tuple[str, ...]) -> JobRow | None:
    """The ending UPDATE (fenced on ``owner`` when given); the row, None if none matched."""
    params: tuple[Any, ...] = (status, error, job_id, list(statuses)) + (
        () if owner is None else (owner,))
    with conn.cursor(row_factory=class_row(JobRow)) as cur:
        return cur.execute(_END_QUERIES[owner is not None], params).fetchone()


def get_job(conn: psycopg.Connection[Any], job_id: str) -> JobRow | None:
    """One job's row (None if unknown)."""
    with wrapped(), conn.cursor(row_factory=class_row(JobRow)) as cur:
        cur.execute(_SELECT_JOB + sql.SQL(" WHERE id = %s"), (job_id,))
        row = cur.fetchone()
    if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        conn.rollback()
    return row


def list_jobs(conn: psycopg.Connection[Any], *, status: str | None = None,
              limit: int = 50, group_id: str | None = None,
              since_s: float | None = None) -> list[JobRow]:
    """Most recent jobs first, optionally of one status, of one group, created in the last
    ``since_s`` seconds (the database's clock)."""
    where: list[sql.Composable] = []
    params: list[Any] = []
    if status:
        where.append(sql.SQL("status = %s"))
        params.append(status)
    if group_id is not None:
        where.append(sql.SQL("group_id = %s"))
        params.append(group_id)
    if since_s is not None:
        where.append(sql.SQL("created_at >= now() - %s * interval '1 second'"))
        params.append(since_s)
    query = _SELECT_JOB
    if where:
        query += sql.SQL(" WHERE ") + sql.SQL(" AND ").join(where)
    query += sql.SQL(" ORDER BY created_at DESC LIMIT %s")
    params.append(limit)
    with wrapped(), conn.cursor(row_factory=class_row(JobRow)) as cur:
        rows = cur.execute(query, params).fetchall()
    conn.rollback()
    return rows


@dataclass(frozen=True)
class RejectedRow:
    """A row of a job's input that was not imported: a ``job_failures`` row."""

    row_number: int
    reference_id: str | None
    reason: str
    line: str | None  # an excerpt of the rejected line


def job_failures(conn: psycopg.Connection[Any], job_id: str,
                 limit: int = 100) -> list[RejectedRow]:
    """The first rejected rows of a job, by row number."""
    with wrapped(), conn.cursor(row_factory=class_row(RejectedRow)) as cur:
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
        if job_status in states.TERMINAL:
            return Claim(FINISHED, job_status, holder, age)
        if holder is not None and holder != owner and age is not None \
                and age * 1000 < lease_ms:
            return Claim(HELD, job_status, holder, age)
        conn.execute(
            "UPDATE job_status SET claimed_by = %s, heartbeat_at = now(), updated_at = now()"
            " WHERE id = %s", (owner, job_id))
    return Claim(CLAIMED, job_status, owner, 0.0)


# The intake's two statements: every new job inserted, then every claimable one claimed,
# set-based (arrays as parameters): two statements whatever the number of jobs. Rows are
# locked in id order, so two daemons claiming overlapping jobs never deadlock.
_INSERT_JOBS = (
    "INSERT INTO job_status (id, group_id, domain_id, status, node_type, source)"
    " SELECT id, group_id, domain_id, 'PENDING', node_type, source"
    " FROM unnest(%s::uuid[], %s::text[], %s::uuid[], %s::text[], %s::text[])"
    " AS j(id, group_id, domain_id, node_type, source)"
    " ON CONFLICT (id) DO NOTHING")
# Claimable exactly as in claim_job: PENDING/PROCESSING and no holder, ours, no heartbeat,
# or a heartbeat at least lease_ms old (the database's clock).
_CLAIM_JOBS = (
    "UPDATE job_status SET claimed_by = %(owner)s, heartbeat_at = now(), updated_at = now()"
    " WHERE id IN (SELECT id FROM job_status WHERE id = ANY(%(ids)s::uuid[])"
    " AND status IN ('PENDING', 'PROCESSING') AND (claimed_by IS NULL"
    " OR claimed_by = %(owner)s OR heartbeat_at IS NULL"
    " OR heartbeat_at <= now() - %(lease)s * interval '1 millisecond')"
    " ORDER BY id FOR UPDATE)"
    " RETURNING id::text, status")


def create_and_claim(conn: psycopg.Connection[Any], jobs: Sequence[ImportJob], *,
                     owner: str, lease_ms: int) -> list[Claim]:
    """``create_job`` then ``claim_job`` for each of ``jobs``, all in ONE transaction: the
    daemon's intake of the messages one poll brought. One claim per job, in order.

    The common case (new jobs, or leases free, ours or expired) is two set-based
    statements in one pipelined round trip and one commit for the lot. Only a job whose
    claim matched no row is read again, to say why (FINISHED, or HELD by a live owner).
    """
    with wrapped(), conn.pipeline(), conn.transaction():
        conn.execute(_INSERT_JOBS, ([j.job_id for j in jobs], [j.group_id for j in jobs],
                                    [j.domain_id for j in jobs], [j.node_type for j in jobs],
                                    [j.source_label for j in jobs]))
        claimed = {str(r[0]): str(r[1]) for r in conn.execute(_CLAIM_JOBS, {
            "owner": owner, "ids": [j.job_id for j in jobs], "lease": lease_ms}).fetchall()}
        keys = [str(uuid.UUID(j.job_id)) for j in jobs]  # as PostgreSQL prints them
        return [Claim(CLAIMED, claimed[key], owner, 0.0) if key in claimed
                else _unclaimed(conn, j.job_id) for j, key in zip(jobs, keys, strict=True)]


def _unclaimed(conn: psycopg.Connection[Any], job_id: str) -> Claim:
    """Why a claim matched no row: the job is finished, or another live owner holds it."""
    row = conn.execute(
        "SELECT status, claimed_by, extract(epoch FROM now() - heartbeat_at)::float8"
        " FROM job_status WHERE id = %s", (job_id,)).fetchone()
    if row is None:  # purged between the insert and now: the next attempt recreates it
        raise StorageError(f"job {job_id} vanished while being claimed")
    job_status, holder, age = str(row[0]), row[1], row[2]
    return Claim(FINISHED if job_status in states.TERMINAL else HELD,
                 job_status, holder, age)


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

# Statuses a purge may delete (declared in status.py, where the CLI reads them too).
PURGEABLE = states.PURGEABLE


@dataclass(frozen=True)
class RunningJob:
    """A PROCESSING job as housekeeping and the scrape see it (``running_jobs``)."""

    id: str
    group_id: str
    domain_id: str
    claimed_by: str | None
    source_bytes: int | None
    bytes_read: int
    rows_committed: int
    status: str
    age_s: float  # seconds since its first start (the database's clock)


def running_jobs(conn: psycopg.Connection[Any], *, limit: int = 1000) -> list[RunningJob]:
    """PROCESSING jobs, oldest first, with ``age_s`` since their first start."""
    with wrapped(), conn.cursor(row_factory=class_row(RunningJob)) as cur:
        rows = cur.execute(
            "SELECT id::text AS id, group_id, domain_id::text AS domain_id, claimed_by,"
            " source_bytes, bytes_read, rows_committed, status,"
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
