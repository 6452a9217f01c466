"""Small reference-ID jobs written together: many jobs, one statement, one commit (worker side).

A small job's cost is not its rows but its round trips, commits and per-job machinery
(threads, the encode pipeline, a begin and an end transaction). Measured before bundles,
200 jobs of 5 IDs each produced at once ran at 134-155 jobs/s on 2 cores (p50 latency
674-812 ms): ~7.5 ms of CPU per job across the daemon, the worker and PostgreSQL.

A bundle is the small jobs one daemon poll brought, sent to a worker as ONE call. In one
transaction, one statement:
1. dedupes each job's IDs and looks each key up in its job's group (one index probe);
2. updates the nodes whose type or domain changed, inserts the new ones (ids chosen up
   front, as in ``batchwrite``);
3. sets every job COMPLETED with its counters, its checkpoint and its attempt, fenced on
   the daemon that claimed it, and only if it was never started (PENDING, no checkpoint).

Everything commits together or nothing does. A bundle that cannot be written this way (a
job already started elsewhere, a lease lost, a concurrent insert of the same keys, an
error of any kind) rolls back whole, and its jobs run one by one on the usual path, which
knows how to resume, retry, fence and count failed rows. Jobs whose IDs the usual path
would reject some rows of (blank, too long) never enter a bundle.

Jobs of the same group go into successive transactions (a statement cannot insert the
same key twice), in message order.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import class_row

from nodes_import import metrics, status
from nodes_import.config import ImportConfig
from nodes_import.errors import StorageError
from nodes_import.jobs import BUNDLE_MAX_IDS, Ending, ImportJob, JobOutcome, JobRow
from nodes_import.pipeline.validate import MAX_REFERENCE_ID_CHARS
from nodes_import.store import connection, jobrows
from nodes_import.worker.jobstate import WATCHDOG_GRACE_S

log = logging.getLogger(__name__)

# The statement. ``jobs`` and the IDs arrive as arrays (parameters, never SQL text):
# ``k`` numbers the jobs, each ID carries its job's ``k``. New keys are inserted with a plain
# INSERT, so a concurrent insert of one of them fails the statement (unique_violation) and
# the bundle falls back to the usual path, which upserts with ON CONFLICT.
_BUNDLE = """
WITH jobs AS (
    SELECT * FROM unnest(%(job_ids)s::uuid[], %(groups)s::text[], %(domains)s::uuid[],
                         %(types)s::text[], %(sizes)s::bigint[]) WITH ORDINALITY
        AS j(job_id, group_id, domain_id, node_type, size, k)
), src AS (
    SELECT DISTINCT j.k, j.group_id, j.domain_id, j.node_type, r.reference_id
    FROM unnest(%(ks)s::bigint[], %(refs)s::text[]) AS r(k, reference_id)
    JOIN jobs j USING (k)
), cur AS (
    SELECT s.*, n.id AS node_id,
           CASE WHEN n.id IS NULL THEN {new_id} END AS new_id,
           (n.id IS NOT NULL AND n.type = s.node_type AND n.domain_id = s.domain_id) AS same
    FROM src s
    LEFT JOIN LATERAL (
        SELECT n.id, n.type, n.domain_id FROM nodes n
        WHERE n.reference_id = s.reference_id AND n.group_id = s.group_id LIMIT 1) n ON true
), upd AS (
    UPDATE nodes AS n SET type = c.node_type, domain_id = c.domain_id, updated_at = now()
    FROM cur c
    WHERE n.id = ANY (ARRAY(SELECT node_id FROM cur WHERE node_id IS NOT NULL AND NOT same))
      AND n.id = c.node_id AND NOT c.same
    RETURNING 1
), ins AS (
    INSERT INTO nodes (id, reference_id, group_id, type, domain_id)
    SELECT new_id, reference_id, group_id, node_type, domain_id
    FROM cur WHERE node_id IS NULL ORDER BY group_id, reference_id
    RETURNING 1
), counts AS (
    -- A plain INSERT either stores every new key or fails: new keys are the inserted ones.
    -- IDs repeated within a job count as updates (applied, then applied again), as on the
    -- usual path, so inserted + updated + unchanged is always the job's size.
    SELECT j.job_id, j.size,
           count(c.k) FILTER (WHERE c.node_id IS NULL) AS inserted,
           count(c.k) FILTER (WHERE c.same) AS unchanged
    FROM jobs j LEFT JOIN cur c USING (k)
    GROUP BY j.job_id, j.size
), done AS (
    UPDATE job_status AS js SET
        status = 'COMPLETED', attempts = js.attempts + 1, error = NULL,
        started_at = coalesce(js.started_at, now()), finished_at = now(),
        updated_at = now(), heartbeat_at = now(),
        total_nodes = js.total_nodes + c.size, success_count = js.success_count + c.size,
        inserted_count = js.inserted_count + c.inserted,
        updated_count = js.updated_count + c.size - c.inserted - c.unchanged,
        unchanged_count = js.unchanged_count + c.unchanged,
        rows_committed = js.rows_committed + c.size,
        checkpoint = ARRAY[c.size]::bigint[]
    FROM counts c
    WHERE js.id = c.job_id AND js.status = 'PENDING' AND js.checkpoint IS NULL
      AND js.claimed_by IS NOT DISTINCT FROM %(owner)s
    RETURNING {columns}
)
SELECT * FROM done
"""


class Declined(StorageError):
    """The bundle cannot be written as one (rolled back): its jobs take the usual path."""


def clean(job: ImportJob, cfg: ImportConfig) -> bool:
    """True when the usual path would write every one of the job's IDs as they are.

    Deliberately narrower than the encoder's rules (printable, not all spaces, within
    the length limits): an ID it doubts sends its job the usual way, which rejects rows
    one by one and records them in job_failures.
    """
    ids = job.reference_ids
    if ids is None or len(ids) > min(BUNDLE_MAX_IDS, cfg.max_reference_ids, cfg.max_rows):
        return False
    limit = min(MAX_REFERENCE_ID_CHARS, cfg.max_field_bytes)
    # Characters never exceed bytes, so a byte check covers both limits.
    return all(ref and ref.isprintable() and not ref.isspace() and len(ref.encode()) <= limit
               for ref in ids)


def split(jobs: Sequence[ImportJob], count: int) -> list[list[int]]:
    """The jobs' positions in at most ``count`` bundles of near-equal size (parent side:
    one bundle per worker keeps every worker busy); a group's jobs stay in one bundle, in
    message order, so no two workers write the same group's keys at once."""
    bundles: list[list[int]] = [[] for _ in range(max(1, min(count, len(jobs))))]
    home: dict[str, list[int]] = {}
    for position, job in enumerate(jobs):
        if job.group_id not in home:
            home[job.group_id] = min(bundles, key=len)
        home[job.group_id].append(position)
    return [b for b in bundles if b]


def rounds(jobs: Sequence[ImportJob]) -> list[list[int]]:
    """The jobs' positions in transactions where no group appears twice, message order
    kept: the n-th job of a group goes in the n-th round."""
    out: list[list[int]] = []
    seen: dict[str, int] = {}
    for position, job in enumerate(jobs):
        n = seen.get(job.group_id, 0)
        seen[job.group_id] = n + 1
        if n == len(out):
            out.append([])
        out[n].append(position)
    return out


@dataclass(frozen=True)
class Written:
    """One committed bundle: each job's row as committed, in the bundle's order."""

    rows: list[JobRow]
    seconds: float


def write(conn: psycopg.Connection[Any], jobs: Sequence[ImportJob], *, owner: str | None,
          timeout_ms: int, new_id: str) -> Written:
    """Write ``jobs`` (no group twice) and complete them, in ONE transaction.

    Raises ``Declined`` (rolled back) when any job is not PENDING, never started and
    ``owner``'s; other ``StorageError``s (rolled back too) as they come.
    """
    if len({j.claimed_by for j in jobs}) > 1 or len({j.group_id for j in jobs}) < len(jobs):
        raise Declined("a bundle holds one owner's jobs, each group once")
    params: dict[str, Any] = {
        "job_ids": [j.job_id for j in jobs], "groups": [j.group_id for j in jobs],
        "domains": [j.domain_id for j in jobs], "types": [j.node_type for j in jobs],
        "sizes": [len(j.reference_ids or ()) for j in jobs],
        "ks": [k for k, j in enumerate(jobs, 1) for _ in (j.reference_ids or ())],
        "refs": [ref for j in jobs for ref in (j.reference_ids or ())],
        "owner": owner,
    }
    query = sql.SQL(_BUNDLE).format(new_id=sql.SQL(new_id), columns=jobrows.job_columns("js"))
    started = time.monotonic()
    with connection.watchdog(conn, timeout_ms / 1000.0 + WATCHDOG_GRACE_S), connection.wrapped(), \
            conn.transaction(), conn.cursor(row_factory=class_row(JobRow)) as cur:
        # enable_seqscan off: the key lookups stay index probes whatever the statistics
        # say (as in store.batchwrite: a nodes table ANALYZEd while empty costs a
        # sequential scan per key at nothing)
        cur.execute(sql.SQL("SET LOCAL statement_timeout = {}; SET LOCAL enable_seqscan = off")
                    .format(sql.Literal(timeout_ms)))
        rows = {r.id: r for r in cur.execute(query, params).fetchall()}
        if len(rows) != len(jobs):
            raise Declined(f"{len(jobs) - len(rows)} of {len(jobs)} jobs are not new PENDING "
                           f"jobs claimed by {owner}")
    return Written([rows[str(uuid.UUID(j.job_id))] for j in jobs], time.monotonic() - started)


def outcomes(jobs: Sequence[ImportJob], written: Written) -> list[JobOutcome]:
    """Log, count and report the jobs of a committed bundle (one line per job, as the usual
    path's "job finished")."""
    out = []
    for job, row in zip(jobs, written.rows, strict=True):
        metrics.job_started()
        metrics.batch_written(job.group_id, job.domain_id, inserted=row.inserted_count,
                              updated=row.updated_count, unchanged=row.unchanged_count,
                              failed=0, seconds=written.seconds)
        metrics.job_finished(status.COMPLETED, written.seconds)
        log.info("job finished", extra={"fields": {
            "jobId": job.job_id, "groupId": job.group_id, "domainId": job.domain_id,
            "status": status.COMPLETED, "durationS": round(written.seconds, 3),
            "total": row.total_nodes, "success": row.success_count, "failed": row.failed_count,
            "inserted": row.inserted_count, "updated": row.updated_count,
            "unchanged": row.unchanged_count, "bundle": len(jobs)}})
        out.append(JobOutcome(job.job_id, status.COMPLETED, None, row, ending=Ending.COMPLETED))
    return out
