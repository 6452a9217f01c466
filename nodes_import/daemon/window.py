"""The in-flight window (parent side): its slots, the jobs running, the offsets, the leases.

One ``Slot`` per message taken and not done. A slot goes ``waiting`` (to be claimed, or
retried after an error) -> ``queued`` (claimed, waiting for a worker of its lane:
``lanes.py``) -> ``running`` (in a worker) -> out of the window, done or dropped;
``rejecting`` and ``dead-letter`` are the backpressure ``reject`` path and a dead letter
still to be acknowledged.

``Window`` owns that state and its transitions: ``done`` releases a slot and lets its
offset be committed; ``drop`` releases it without committing (the message comes back);
``later`` delays a slot's retry with backoff; ``revoke`` gives up the waiting work of
revoked partitions (their queued and running jobs go on here). A job's lease is held from
its claim until its slot leaves the window, whether it runs or waits for a worker, so no
other daemon takes over a job that is queued here; the ``Heartbeat`` thread renews every
held lease.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from nodes_import import metrics
from nodes_import.daemon.database import MainDatabase
from nodes_import.errors import StorageError
from nodes_import.jobs import ImportJob, JobOutcome
from nodes_import.kafka.deadletter import Failure
from nodes_import.kafka.offsets import TP, Delivery, OffsetTracker
from nodes_import.store import connection, jobrows

log = logging.getLogger(__name__)

WAITING, QUEUED, RUNNING = "waiting", "queued", "running"
DEAD_LETTER, REJECTING = "dead-letter", "rejecting"
RETRY_MAX_S = 5.0  # longest wait before trying a job again after a database error


def backoff_s(failures: int) -> float:
    """How long a slot waits before its next try after ``failures`` errors in a row."""
    return min(RETRY_MAX_S, 0.25 * 2 ** min(failures, 5))


@dataclass
class Slot:
    """One message in the in-flight window, from taken to done."""

    delivery: Delivery
    job: ImportJob | None = None
    state: str = WAITING
    future: Future[JobOutcome] | None = None
    generation: int = 0  # which process pool runs it
    not_before: float = 0.0
    bundle: bool = False  # queued: may go to a worker in a bundle of small jobs
    queued_at: float = 0.0  # when it was queued (monotonic)
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


class Leases:
    """The job ids whose leases this daemon holds: written by the main thread, read by
    the heartbeat."""

    def __init__(self) -> None:
        self._job_ids: set[str] = set()
        self._lock = threading.Lock()

    def hold(self, job_id: str) -> None:
        """Renew this job's lease from now on."""
        with self._lock:
            self._job_ids.add(job_id)

    def release(self, job_id: str) -> None:
        """Stop renewing (the job is terminal, or no longer ours)."""
        with self._lock:
            self._job_ids.discard(job_id)

    def held(self) -> list[str]:
        """The held job ids, sorted (a copy)."""
        with self._lock:
            return sorted(self._job_ids)


class Heartbeat(threading.Thread):
    """Renews the held ``leases`` every heartbeat interval, on the daemon's database pool
    (read at each beat: it follows ``MainDatabase.reopen``)."""

    def __init__(self, leases: Leases, db: MainDatabase, owner: str, interval_s: float) -> None:
        super().__init__(name="lease-heartbeat", daemon=True)
        self.leases, self.db, self.owner, self.interval_s = leases, db, owner, interval_s
        self.stopped = threading.Event()

    def run(self) -> None:
        """Until ``stopped``: one renewal of every held lease per interval."""
        while not self.stopped.wait(self.interval_s):
            ids = self.leases.held()
            try:  # wrapped: a pool timeout while the database is away must not end the thread
                with connection.wrapped(), self.db.pool.connection() as conn:
                    jobrows.renew_leases(conn, job_ids=ids, owner=self.owner)
            except (StorageError, OSError) as exc:  # the next beat tries again
                log.warning("lease renewal failed", extra={"fields": {"error": str(exc)}})


class Window:
    """The messages taken and not done (``slots``, in order), the jobs running on workers
    (``running``, by job id), the offsets to commit (``tracker``) and the leases held.

    The main thread changes it; the admin thread only reads copies (``in_flight``,
    ``futures``).
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.slots: list[Slot] = []
        self.running: dict[str, Slot] = {}
        self.tracker = OffsetTracker()
        self.leases = Leases()

    # ------------------------------------------------------------------ reading

    @property
    def in_flight(self) -> int:
        """Messages in the window."""
        return len(self.slots)

    @property
    def full(self) -> bool:
        """The window holds ``capacity`` messages."""
        return len(self.slots) >= self.capacity

    def futures(self) -> list[Future[JobOutcome]]:
        """The running jobs' futures (a copy: safe from another thread)."""
        return [s.future for s in list(self.running.values()) if s.future is not None]

    def first_copy(self, job_id: str) -> Slot | None:
        """The earliest slot of this job (a redelivery waits for it to leave)."""
        return next((s for s in self.slots if s.job is not None and s.job.job_id == job_id),
                    None)

    def finished(self) -> list[Slot]:
        """Running slots whose future is done (to be reaped)."""
        return [s for s in self.slots
                if s.state == RUNNING and s.future is not None and s.future.done()]

    def due(self, now: float) -> list[Slot]:
        """Idle slots whose retry time has come."""
        return [s for s in self.idle() if s.not_before <= now]

    def idle(self, tps: Iterable[TP] | None = None) -> list[Slot]:
        """Slots neither running nor queued for a worker (of partitions ``tps`` only, when
        given)."""
        gone = None if tps is None else set(tps)
        return [s for s in self.slots if s.state not in (RUNNING, QUEUED)
                and (gone is None or s.delivery.tp in gone)]

    def queued(self) -> list[Slot]:
        """Slots claimed and waiting for a worker, in the order they were taken."""
        return [s for s in self.slots if s.state == QUEUED]

    # ------------------------------------------------------------------ changing

    def track(self, delivery: Delivery) -> Slot:
        """A message taken: its offset must be done before it is committed. Its slot
        joins the window with ``admit`` (a message dead-lettered at once never does)."""
        self.tracker.add(delivery.tp, delivery.offset)
        return Slot(delivery)

    def admit(self, slot: Slot) -> None:
        """Into the window (once)."""
        if slot not in self.slots:
            self.slots.append(slot)

    def hold(self, slot: Slot) -> None:
        """The slot's job is claimed and handed over: its lease is ours until it leaves."""
        assert slot.job is not None
        self.leases.hold(slot.job.job_id)

    def queue(self, slot: Slot, *, bundle: bool) -> None:
        """The slot's job is claimed: it waits for a worker of its lane, its lease held."""
        self.hold(slot)
        slot.state, slot.bundle, slot.queued_at = QUEUED, bundle, time.monotonic()

    def run(self, slot: Slot, future: Future[JobOutcome], generation: int) -> None:
        """The slot's job runs in a worker of pool ``generation``."""
        assert slot.job is not None
        slot.future, slot.state, slot.generation = future, RUNNING, generation
        self.running[slot.job.job_id] = slot

    def reaped(self, slot: Slot) -> None:
        """The slot's future is done: its job no longer runs."""
        assert slot.job is not None
        self.running.pop(slot.job.job_id, None)

    def requeue(self, slot: Slot) -> None:
        """Back to waiting, to be started again at once."""
        slot.state, slot.not_before = WAITING, 0.0

    def later(self, slot: Slot) -> float:
        """One more error for this slot: its next try waits ``backoff_s``; the delay."""
        slot.failures += 1
        delay = backoff_s(slot.failures)
        slot.not_before = time.monotonic() + delay
        return delay

    def done(self, slot: Slot) -> None:
        """Terminal: release the slot and let the offset be committed."""
        self.drop(slot)
        self.tracker.done(slot.delivery.tp, slot.delivery.offset)
        metrics.message_processed(slot.delivery.topic)

    def drop(self, slot: Slot) -> None:
        """Out of the window without committing (the message comes back later)."""
        if slot in self.slots:
            self.slots.remove(slot)
        if slot.job is not None and self.running.get(slot.job.job_id) is None:
            self.leases.release(slot.job.job_id)

    def revoke(self, tps: list[TP]) -> None:
        """Partitions revoked (their done offsets committed already): their waiting work
        is dropped, the new owner gets it; their running jobs go on."""
        for slot in self.idle(tps):
            self.drop(slot)
        self.tracker.forget(tps)
