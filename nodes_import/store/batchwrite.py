"""Batch write: one part of a batch, one transaction (the hot path's SQL).

The engine borrows a connection, then calls ``write_part(conn, job, part, ...)``; this
module never calls back up. In ONE transaction on that connection:
1. ``SET LOCAL statement_timeout``, ``enable_seqscan = off`` and ``DISCARD PLANS``;
2. COPY the part's payload into the connection's staging table (``ANALYZE`` it when big);
3. one statement for ``nodes`` and ``node_metadata`` that skips unchanged rows (the plain
   INSERT; on a concurrent insert of the same keys, a savepoint and the ON CONFLICT one);
4. the rejected rows into ``job_failures``;
5. the job's counters and checkpoint, fenced on the job's owner: the counters therefore
   never disagree with the rows they count. Its answer says whether a cancel of the job
   was asked for (``PartResult.cancelled``): the runner stops there.
``fail_rows`` records a part the database kept refusing as failed rows (4 and 5 only).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from nodes_import.errors import LeaseLostError, StorageError
from nodes_import.jobs import ImportJob
from nodes_import.pipeline.encode import EncodedPart
from nodes_import.pipeline.validate import Rejected
from nodes_import.store.connection import STAGE_TABLE, wrapped

log = logging.getLogger(__name__)

# Parts smaller than this are upserted without ANALYZE of the staging table: any plan is
# fast for under a thousand keys, and the ANALYZE (0.23 ms for 5 rows) was ~1/6 of the
# upsert of a 5-row job.
ANALYZE_MIN_ROWS = 1000


@dataclass(frozen=True)
class PartResult:
    """What one committed batch partition did."""

    inserted: int
    updated: int
    unchanged: int
    failed: int
    # A cancel of the job was asked for (``store.cancel``): read in the answer of the
    # counters UPDATE, so the runner learns it at each batch boundary at no extra cost.
    cancelled: bool = False

    @property
    def success(self) -> int:
        """Rows written (inserted, updated or found unchanged)."""
        return self.inserted + self.updated + self.unchanged

    @property
    def rows(self) -> int:
        """Rows accounted for: written or failed."""
        return self.success + self.failed


# The first half of both batch statements: dedupe the staged rows (last row number wins),
# look up each key's current values, mark the unchanged ones, choose ids for new keys;
# then update the changed nodes. Rows are taken in reference_id order so concurrent jobs
# on overlapping keys lock in the same order.
_LOOKUP_AND_UPDATE = """
WITH src AS (
    SELECT DISTINCT ON (reference_id) reference_id,
           coalesce(node_type, {default_type}) AS node_type, metadata
    FROM {stage} ORDER BY reference_id, row_number DESC
), cur AS (
    SELECT s.*, n.id AS node_id,
           CASE WHEN n.id IS NULL THEN {new_id} END AS new_id,
           (n.id IS NOT NULL AND n.type = s.node_type AND n.domain_id = {domain}
            AND (s.metadata IS NULL OR m.metadata IS NOT DISTINCT FROM s.metadata)) AS same
    FROM src s
    -- LATERAL ... LIMIT 1: one probe of the unique index per staged key, whatever the
    -- planner believes about the sizes (a plain join may scan the whole group per batch).
    LEFT JOIN LATERAL (
        SELECT n.id, n.type, n.domain_id FROM nodes n
        WHERE n.reference_id = s.reference_id AND n.group_id = {group} LIMIT 1) n ON true
    LEFT JOIN LATERAL (
        SELECT m.metadata FROM node_metadata m WHERE m.node_id = n.id LIMIT 1) m ON true
), upd AS (
    -- The ids to update as an array: nodes is then read through its primary key. A plain
    -- join lets the planner (which cannot know how many rows ``cur`` holds) hash the
    -- whole nodes table for every batch: ~0.7 s per batch at 2M nodes, even when no
    -- row changed, and it grows with the table.
    UPDATE nodes AS n SET type = c.node_type, domain_id = {domain}, updated_at = now()
    FROM cur c
    WHERE n.id = ANY (ARRAY(SELECT node_id FROM cur WHERE node_id IS NOT NULL AND NOT same))
      AND n.id = c.node_id AND NOT c.same
    RETURNING n.id, n.reference_id
)"""

# The careful statement: new keys inserted with ON CONFLICT, so it survives any concurrent
# insert of the same keys; their metadata follows the ids actually stored.
_UPSERT_CAREFUL = _LOOKUP_AND_UPDATE + """, ins AS (
    INSERT INTO nodes AS n (id, reference_id, group_id, type, domain_id)
    SELECT new_id, reference_id, {group}, node_type, {domain}
    FROM cur WHERE node_id IS NULL ORDER BY reference_id
    ON CONFLICT (reference_id, group_id) DO UPDATE
        SET type = EXCLUDED.type, domain_id = EXCLUDED.domain_id, updated_at = now()
    RETURNING n.id, n.reference_id, (n.xmax = 0) AS inserted
), written AS (
    SELECT id, reference_id, inserted FROM ins
    UNION ALL SELECT id, reference_id, false FROM upd
), meta AS (
    INSERT INTO node_metadata AS m (node_id, metadata)
    SELECT w.id, c.metadata FROM written w JOIN cur c USING (reference_id)
    WHERE c.metadata IS NOT NULL
    ORDER BY w.id
    ON CONFLICT (node_id) DO UPDATE SET metadata = EXCLUDED.metadata
        WHERE m.metadata IS DISTINCT FROM EXCLUDED.metadata
    RETURNING 1
)
SELECT (SELECT count(*) FROM written WHERE inserted),
       (SELECT count(*) FROM written WHERE NOT inserted),
       (SELECT count(*) FROM cur WHERE same),
       (SELECT count(*) FROM meta)
"""

# The usual statement. It trusts its own lookup: keys it did not find are inserted with a
# plain INSERT with the ids chosen in cur, so their metadata needs no join back to what
# was inserted and no conflict check on its fresh primary key. A concurrent job that
# inserted one of them since (the only way the lookup can be wrong) makes it fail with
# unique_violation; write_part then rolls back to a savepoint and runs _UPSERT_CAREFUL.
# Measured on PostgreSQL 15, a 35k-row batch against 2M nodes: fresh 1.44-1.67 s ->
# 1.14-1.29 s, unchanged 0.69-0.97 -> 0.62-0.87 s, every row changed within noise.
_UPSERT = _LOOKUP_AND_UPDATE + """, ins AS (
    INSERT INTO nodes (id, reference_id, group_id, type, domain_id)
    SELECT new_id, reference_id, {group}, node_type, {domain}
    FROM cur WHERE node_id IS NULL ORDER BY reference_id
    RETURNING 1
), meta_new AS (
    INSERT INTO node_metadata (node_id, metadata)
    SELECT new_id, metadata FROM cur WHERE node_id IS NULL AND metadata IS NOT NULL
    RETURNING 1
), meta_upd AS (
    INSERT INTO node_metadata AS m (node_id, metadata)
    SELECT node_id, metadata FROM cur
    WHERE node_id IS NOT NULL AND NOT same AND metadata IS NOT NULL ORDER BY node_id
    ON CONFLICT (node_id) DO UPDATE SET metadata = EXCLUDED.metadata
        WHERE m.metadata IS DISTINCT FROM EXCLUDED.metadata
    RETURNING 1
)
SELECT (SELECT count(*) FROM ins), (SELECT count(*) FROM upd),
       (SELECT count(*) FROM cur WHERE same),
       (SELECT count(*) FROM meta_new) + (SELECT count(*) FROM meta_upd)
"""

_COUNTERS = """
UPDATE job_status SET
    total_nodes = total_nodes + %(total)s,
    success_count = success_count + %(success)s,
    failed_count = failed_count + %(failed)s,
    inserted_count = inserted_count + %(inserted)s,
    updated_count = updated_count + %(updated)s,
    unchanged_count = unchanged_count + %(unchanged)s,
    rows_committed = rows_committed + %(total)s,
    checkpoint[%(slot)s] = greatest(checkpoint[%(slot)s], %(last_row)s),
    bytes_read = greatest(bytes_read, %(bytes_read)s),
    updated_at = now(), heartbeat_at = now()
WHERE id = %(job_id)s AND status = 'PROCESSING'
  AND (%(owner)s::text IS NULL OR claimed_by = %(owner)s)
  -- A partition's parts come in file order, so a part at or below its checkpoint was
  -- committed already: a retry after a lost COMMIT acknowledgement. Count it once.
  AND coalesce(checkpoint[%(slot)s], 0) < %(last_row)s
RETURNING cancel_requested_at IS NOT NULL
"""


def _copy_failures(cur: psycopg.Cursor[Any], job_id: str, rejected: Sequence[Rejected]) -> None:
    with cur.copy("COPY job_failures (job_id, row_number, reference_id, reason, line)"
                  " FROM STDIN") as copy:
        for row in rejected:  # rejected rows only: rare by definition
            copy.write_row((job_id, row.row_number, row.reference_id, row.reason, row.line))


class _Replayed(Exception):
    """This part was committed before (its acknowledgement was lost): roll back the replay."""


def _refused(cur: psycopg.Cursor[Any], job: ImportJob, part: EncodedPart) -> Exception:
    """Why the counters UPDATE matched no row: the lease went to another runner (fenced),
    the job is no longer PROCESSING, or the part is already counted (``_Replayed``).
    Raised inside the transaction, so it rolls back."""
    job_id, owner = job.job_id, job.claimed_by
    row = cur.execute("SELECT status, claimed_by, checkpoint[%s] FROM job_status WHERE id = %s",
                      (part.partition + 1, job_id)).fetchone()
    if row is not None and owner is not None and row[1] != owner:
        return LeaseLostError(f"job {job_id} was taken over by {row[1]}; batch rolled back")
    if row is not None and row[0] == "PROCESSING" and (row[2] or 0) >= part.last_row:
        return _Replayed()
    return StorageError(f"job {job_id} is no longer PROCESSING; batch rolled back")


def write_part(conn: psycopg.Connection[Any], job: ImportJob, part: EncodedPart, *,
               columns: Sequence[str], bytes_read: int, timeout_ms: int,
               new_id: str) -> PartResult:
    """Write one partition of a batch of ``job`` and its counters in ONE transaction.

    ``columns``: the staged columns of the job's header (``encode.staged_columns``);
    ``bytes_read``: how far into the source the batch ends; ``new_id``: the server's id
    function (``connection.new_id_function``). When the job is claimed (``claimed_by``)
    the write is fenced: it commits only while the job is still its claimer's, else it
    rolls back with ``LeaseLostError``.
    """
    try:
        return _write_part(conn, job, part, columns=columns, bytes_read=bytes_read,
                           timeout_ms=timeout_ms, new_id=new_id)
    except _Replayed:
        log.warning("batch part was already committed (its acknowledgement was lost); "
                    "not counted again", extra={"fields": {
                        "jobId": job.job_id, "partition": part.partition,
                        "lastRow": part.last_row}})
        return PartResult(0, 0, 0, 0)


def _write_part(conn: psycopg.Connection[Any], job: ImportJob, part: EncodedPart, *,
                columns: Sequence[str], bytes_read: int, timeout_ms: int,
                new_id: str) -> PartResult:
    inserted = updated = unchanged = 0
    with wrapped(), conn.transaction(), conn.cursor() as cur:
        # DISCARD PLANS: plans this long-lived connection cached earlier are made again
        # from the tables' current size. The foreign key check of every node_metadata row
        # runs a cached plan: cached while `nodes` was small (statistics from a few rows,
        # e.g. a new database that took small jobs first), it scans all of `nodes` per
        # row once the table has grown: a 5,000-row part took 99.6 s instead of 0.1 s
        # against 300k nodes (tests/integration/test_cached_plans.py).
        # enable_seqscan off: every lookup of nodes and node_metadata stays an index probe
        # even when the statistics say the tables are empty (ANALYZEd while empty: a new
        # database, or an autovacuum right after a TRUNCATE). The planner then costs a
        # sequential scan per staged key at nothing, and a 17k-row part took 9.5 s instead
        # of ~0.3 s against 100k nodes, minutes at 1M (found by benchmarks/mixed_load.py).
        # The staging table has no index: it is scanned as before.
        cur.execute(sql.SQL("SET LOCAL statement_timeout = {}; SET LOCAL enable_seqscan = off;"
                            " DISCARD PLANS").format(sql.Literal(timeout_ms)))
        if part.rows:
            copy_sql = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT text)").format(
                sql.Identifier(STAGE_TABLE), sql.SQL(", ").join(map(sql.Identifier, columns)))
            with cur.copy(copy_sql) as copy:
                for piece in part.payload:
                    copy.write(piece)
            # Temp tables get no statistics on their own; without them the planner guesses
            # ~200 staged rows and may join two 25k-row CTEs by nested loop (minutes).
            # Cheap: the staging columns carry statistics target 1 (see _configure).
            # Not for tiny parts (small jobs): see ANALYZE_MIN_ROWS.
            if part.rows >= ANALYZE_MIN_ROWS:
                cur.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(STAGE_TABLE)))
            names = {"stage": sql.Identifier(STAGE_TABLE), "group": sql.Literal(job.group_id),
                     "domain": sql.Literal(job.domain_id),
                     "default_type": sql.Literal(job.node_type), "new_id": sql.SQL(new_id)}
            try:
                with conn.transaction():  # a savepoint: losing the race undoes only this
                    row = cur.execute(sql.SQL(_UPSERT).format(**names)).fetchone()
            except psycopg.errors.UniqueViolation:
                log.info("a concurrent job inserted some of this batch's keys; upserting "
                         "with ON CONFLICT", extra={"fields": {"jobId": job.job_id}})
                row = cur.execute(sql.SQL(_UPSERT_CAREFUL).format(**names)).fetchone()
            assert row is not None
            inserted, updated, unchanged = int(row[0]), int(row[1]), int(row[2])
            # Rows superseded by a later duplicate in the same batch were applied and then
            # overwritten: they count as updates, so the split always adds up.
            updated += part.rows - (inserted + updated + unchanged)
        if part.rejected:
            _copy_failures(cur, job.job_id, part.rejected)
        failed = len(part.rejected)
        success = inserted + updated + unchanged
        cur.execute(_COUNTERS, {
            "job_id": job.job_id, "total": success + failed,
            "success": success, "failed": failed, "inserted": inserted,
            "updated": updated, "unchanged": unchanged, "slot": part.partition + 1,
            "last_row": part.last_row, "bytes_read": bytes_read, "owner": job.claimed_by,
        })
        if cur.rowcount != 1:
            raise _refused(cur, job, part)
        counted = cur.fetchone()
    return PartResult(inserted, updated, unchanged, failed,
                      cancelled=counted is not None and bool(counted[0]))


def fail_rows(conn: psycopg.Connection[Any], job: ImportJob, part: EncodedPart,
              rejected: Sequence[Rejected], *, bytes_read: int) -> bool:
    """Record a whole partition's rows as failed (its write kept failing) and move on.

    Fenced on the job's claimer like ``write_part``; a part already counted is left alone.
    Returns whether a cancel of the job was asked for (as ``PartResult.cancelled``)."""
    try:
        with wrapped(), conn.transaction(), conn.cursor() as cur:
            _copy_failures(cur, job.job_id, rejected)
            cur.execute(_COUNTERS, {
                "job_id": job.job_id, "total": len(rejected), "success": 0,
                "failed": len(rejected), "inserted": 0, "updated": 0, "unchanged": 0,
                "slot": part.partition + 1, "last_row": part.last_row,
                "bytes_read": bytes_read, "owner": job.claimed_by,
            })
            if cur.rowcount != 1:
                raise _refused(cur, job, part)
            counted = cur.fetchone()
    except _Replayed:
        log.warning("failed batch part was already committed; not recorded again",
                    extra={"fields": {"jobId": job.job_id, "partition": part.partition}})
        return False
    return counted is not None and bool(counted[0])
