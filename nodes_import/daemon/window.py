"""The in-flight window's parts (parent side): one ``Slot`` per message, the lease heartbeat.

A slot goes ``waiting`` (to be claimed and submitted, or retried after an error) ->
``running`` (in a worker) -> out of the window, done or dropped; ``rejecting`` and
``dead-letter`` are the backpressure ``reject`` path and a dead letter still to be
acknowledged. The heartbeat renews the leases of every job the daemon holds, whether
it runs or waits in the window, so no other daemon takes over a job that is queued here.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from psycopg_pool import ConnectionPool

from nodes_import.errors import StorageError
from nodes_import.jobs import ImportJob, JobOutcome
from nodes_import.kafka.consumer import Delivery
from nodes_import.kafka.deadletter import Failure
from nodes_import.store import connection, jobrows

log = logging.getLogger(__name__)

WAITING, RUNNING, DEAD_LETTER, REJECTING = "waiting", "running", "dead-letter", "rejecting"


@dataclass
class Slot:
    """One message in the in-flight window, from taken to done."""

    delivery: Delivery
    job: ImportJob | None = None
    state: str = WAITING
    future: Future[JobOutcome] | None = None
    generation: int = 0  # which process pool runs it
    not_before: float = 0.0
    crashes: int = 0  # worker deaths while this job ran
    failures: int = 0  # database errors while starting it
    outage_resumes: int = 0  # times it FAILED because the database went away, and resumed
    failure: Failure | None = None  # the dead letter still to send
    waiting_for: str | None = None  # the other daemon holding its lease
    started: float = field(default_factory=time.monotonic)

    def ctx(self) -> dict[str, Any]:
        """Log fields of this job."""
        d = self.delivery
        fields: dict[str, Any] = {"topic": d.topic, "partition": d.partition, "offset": d.offset}
        if self.job is not None:
            fields.update(jobId=self.job.job_id, groupId=self.job.group_id,
                          domainId=self.job.domain_id)
        return fields


class Heartbeat(threading.Thread):
    """Renews the leases of the jobs this daemon holds, every heartbeat interval."""

    def __init__(self, pool: ConnectionPool, owner: str, interval_s: float) -> None:
        super().__init__(name="lease-heartbeat", daemon=True)
        self.pool, self.owner, self.interval_s = pool, owner, interval_s
        self.job_ids: set[str] = set()
        self.lock = threading.Lock()
        self.stopped = threading.Event()

    def hold(self, job_id: str) -> None:
        """Renew this job's lease from now on."""
        with self.lock:
            self.job_ids.add(job_id)

    def drop(self, job_id: str) -> None:
        """Stop renewing (the job is terminal, or no longer ours)."""
        with self.lock:
            self.job_ids.discard(job_id)

    def run(self) -> None:
        while not self.stopped.wait(self.interval_s):
            with self.lock:
                ids = sorted(self.job_ids)
            try:  # wrapped: a pool timeout while the database is away must not end the thread
                with connection.wrapped(), self.pool.connection() as conn:
                    jobrows.renew_leases(conn, job_ids=ids, owner=self.owner)
            except (StorageError, OSError) as exc:  # the next beat tries again
                log.warning("lease renewal failed", extra={"fields": {"error": str(exc)}})
