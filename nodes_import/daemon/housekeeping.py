"""Housekeeping (parent side): purge old finished jobs, warn about long-running ones.

``Housekeeper`` is one background thread of the daemon. Every check it:
1. logs a warning for each PROCESSING job older than
   ``node.import.long-running-warning.ms`` (once per job and daemon run: the gauge
   ``node_import_oldest_running_job_age_seconds`` carries the rest);
2. when ``node.import.retention.enabled`` and the retention interval has passed, deletes
   COMPLETED/FAILED jobs finished more than ``node.import.retention.days`` ago, with
   their job_failures rows, in batches (``jobrows.purge_jobs``; ``jobs purge`` by hand).

A database error is logged and the next check tries again; it never stops the daemon (a
pool that cannot hand out a connection too: ``connection.wrapped`` makes it a StorageError).
"""

from __future__ import annotations

import logging
import threading
import time

from psycopg_pool import ConnectionPool

from nodes_import import metrics
from nodes_import.config import OperationsConfig
from nodes_import.errors import StorageError
from nodes_import.store import connection, jobrows

log = logging.getLogger(__name__)

LONGEST_CHECK_S = 60.0  # the long-running check runs at least this often
DAY_S = 86_400


class Housekeeper(threading.Thread):
    """The daemon's housekeeping thread; ``stop`` ends it."""

    def __init__(self, pool: ConnectionPool, ops: OperationsConfig) -> None:
        super().__init__(name="housekeeping", daemon=True)
        self.pool, self.ops = pool, ops
        self.warn_after_s = ops.long_running_warning_ms / 1000.0
        # Check twice per threshold so a job is reported at most half a threshold late.
        self.check_s = min(LONGEST_CHECK_S, self.warn_after_s / 2)
        self.warned: set[str] = set()
        self.next_purge = time.monotonic()  # the first purge runs at start-up
        self.stopped = threading.Event()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Ask the thread to end and wait for it (a purge batch in progress finishes)."""
        self.stopped.set()
        if self.is_alive():
            self.join(timeout_s)

    def run(self) -> None:
        while not self.stopped.is_set():
            try:
                self.check_long_running()
                if self.ops.retention_enabled and time.monotonic() >= self.next_purge:
                    self.next_purge = time.monotonic() + self.ops.retention_interval_ms / 1e3
                    self.purge()
            except (StorageError, OSError) as exc:
                log.warning("housekeeping failed; retried at the next check",
                            extra={"fields": {"error": str(exc)}})
            self.stopped.wait(self.check_s)

    def check_long_running(self) -> list[str]:
        """Warn once about each PROCESSING job past the threshold; returns their ids."""
        with connection.wrapped(), self.pool.connection() as conn:
            rows = jobrows.running_jobs(conn)
        running = {row.id for row in rows}
        self.warned &= running  # finished jobs leave the set: it stays small
        late = []
        for row in rows:
            if row.age_s < self.warn_after_s:
                break  # oldest first: the rest are younger
            late.append(row.id)
            if row.id not in self.warned:
                self.warned.add(row.id)
                log.warning("job running for longer than expected", extra={"fields": {
                    "jobId": row.id, "groupId": row.group_id,
                    "domainId": row.domain_id, "claimedBy": row.claimed_by,
                    "ageS": round(row.age_s, 1), "rowsCommitted": row.rows_committed,
                    "progressPct": metrics.progress_percentage(row.status, row.source_bytes,
                                                               row.bytes_read),
                    "thresholdS": self.warn_after_s}})
        return late

    def purge(self) -> jobrows.Purged:
        """Delete the finished jobs past the retention period."""
        started = time.monotonic()
        with connection.wrapped(), self.pool.connection() as conn:
            purged = jobrows.purge_jobs(conn, older_than_s=self.ops.retention_days * DAY_S,
                                        batch_size=self.ops.retention_batch_size)
        metrics.jobs_purged(purged.jobs)
        if purged.jobs:
            log.info("old jobs purged", extra={"fields": {
                "jobs": purged.jobs, "failures": purged.failures,
                "olderThanDays": self.ops.retention_days,
                "durationS": round(time.monotonic() - started, 2)}})
        return purged
