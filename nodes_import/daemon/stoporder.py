"""Offsets and the stop order (parent side): a mixin of ``daemon.Daemon``.

Offsets: done positions are committed at most every ``COMMIT_EVERY_S`` (and at once on
revoke and stop); a revoked partition has its done offsets committed and its waiting
work dropped (the new owner gets it), its running jobs go on.

The stop order: 1. stop polling (pause; polling goes on only to keep the group
informed)  2. running jobs checkpoint, bounded by the drain timeout  3. commit
4. shut the pool (killing workers past the timeout)  5. release the leases, close the
consumer, the producer, the database pool and the admin API.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from psycopg_pool import ConnectionPool

from nodes_import import errors
from nodes_import.config import Config
from nodes_import.daemon.admin import Operations
from nodes_import.daemon.pool import WorkerPool
from nodes_import.daemon.window import DEAD_LETTER, RUNNING, Heartbeat, Slot
from nodes_import.kafka import deadletter as dl
from nodes_import.kafka.consumer import TP, JobConsumer, OffsetTracker, Publisher
from nodes_import.store import jobrows

log = logging.getLogger("nodes_import.daemon")  # the daemon's log lines, as before the split

POLL_S = 0.05  # poll timeout: also how quickly finished jobs are noticed
COMMIT_EVERY_S = 0.2  # commits are batched at most this often (and forced on revoke/stop)


class OffsetsAndStop:
    """Commits, rebalance callbacks, drain and close. Needs the daemon's state below."""

    cfg: Config
    owner: str
    slots: list[Slot]
    running: dict[str, Slot]
    tracker: OffsetTracker
    lag: dict[TP, int]
    _last_commit: float
    db: ConnectionPool | None
    consumer: JobConsumer | None
    publisher: Publisher | None
    pool: WorkerPool | None
    heartbeat: Heartbeat | None
    ops: Operations

    if TYPE_CHECKING:  # endings.JobEndings'; never shadowing them at run time
        def _reap(self) -> None: ...
        def _drop(self, slot: Slot) -> None: ...
        def _dead_letter(self, slot: Slot, failure: dl.Failure) -> None: ...

    def _commit(self, *, force: bool = False, tps: list[TP] | None = None) -> None:
        now = time.monotonic()
        if not force and now - self._last_commit < COMMIT_EVERY_S:
            return
        positions = self.tracker.to_commit(tps)
        if positions and self.consumer is not None and self.consumer.commit(positions):
            self.tracker.committed(positions)
        self._last_commit = now

    def _assigned(self, tps: list[TP]) -> None:
        pass  # new partitions start at their committed offsets: nothing to set up

    def _revoked(self, tps: list[TP]) -> None:
        """Commit what is done; drop waiting work of these partitions (running jobs go on)."""
        self._commit(force=True, tps=tps)
        gone = set(tps)
        for slot in [s for s in self.slots if s.state != RUNNING and s.delivery.tp in gone]:
            self._drop(slot)
        self.tracker.forget(tps)
        self.lag = {tp: n for tp, n in self.lag.items() if tp not in gone}

    # ------------------------------------------------------------------ stopping

    def _drain(self) -> None:
        """1. stop polling  2. running jobs checkpoint (bounded)  3. commit."""
        assert self.consumer is not None
        started = time.monotonic()
        deadline = started + self.cfg.executor.drain_timeout_ms / 1000.0
        self.consumer.pause()  # 1. polling goes on only to keep the group informed
        for slot in [s for s in self.slots if s.state != RUNNING]:
            if slot.state == DEAD_LETTER and slot.failure is not None:
                self._dead_letter(slot, slot.failure)  # one last try, or it comes back
            self._drop(slot)
        if self.pool is not None:
            self.pool.stop_jobs()  # 2.
        running = len(self.running)
        log.info("stopping: draining in-flight jobs", extra={"fields": {
            "running": running, "drainTimeoutMs": self.cfg.executor.drain_timeout_ms}})
        while self.running and time.monotonic() < deadline:
            self._reap()
            self.consumer.poll(POLL_S)  # a message polled now is not taken: it comes back
            self._commit()
        self._commit(force=True)  # 3.
        log.info("drained", extra={"fields": {
            "jobsLeft": len(self.running), "durationS": round(time.monotonic() - started, 2)}})

    def _close(self) -> None:
        """4. shut the pool  5. release leases, close the consumer, the producer, the db."""
        if self.pool is not None:  # jobs still running are past the drain timeout
            self.pool.shutdown(kill=bool(self.running))
        if self.heartbeat is not None:
            self.heartbeat.stopped.set()
        if self.db is not None:
            try:
                with self.db.connection() as conn:
                    jobrows.release_leases(conn, owner=self.owner)
            except (errors.StorageError, OSError) as exc:
                log.warning("cannot release leases", extra={"fields": {"error": str(exc)}})
        if self.consumer is not None:
            self.consumer.close()
        if self.publisher is not None:
            self.publisher.close()
        if self.db is not None:
            self.db.close()
        self.ops.close()
        log.info("daemon stopped", extra={"fields": {"instance": self.owner}})
