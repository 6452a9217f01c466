"""How the daemon ends a job's slot (parent side): a mixin of ``daemon.Daemon``.

A future that is done is reaped: COMPLETED is done; FAILED is dead-lettered (stage
import) then done; a job interrupted (the database went away, or a new owner took it)
waits for its retry; a worker that died has its pool replaced and the job retried from
its checkpoint, up to ``max-job-crashes`` (counted only for the jobs that were on the
dead worker: the others the pool's breakage interrupted resume without a mark). "Done"
releases the slot and lets the offset be committed; "dropped" releases it without
committing (the message comes back).
"""

from __future__ import annotations

import logging
import threading
import traceback
from concurrent.futures.process import BrokenProcessPool
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from nodes_import import errors, metrics, status
from nodes_import.config import Config
from nodes_import.daemon.admission import Admission
from nodes_import.daemon.pool import WorkerPool
from nodes_import.daemon.window import DEAD_LETTER, RUNNING, WAITING, Heartbeat, Slot
from nodes_import.jobs import Ending, JobOutcome
from nodes_import.kafka import deadletter as dl
from nodes_import.kafka.consumer import OffsetTracker
from nodes_import.store import jobrows

log = logging.getLogger("nodes_import.daemon")  # one logger for the daemon's job events

OVERLOADED = "System overloaded"  # the seed's reason for a rejected job
# A job interrupted because the database went away is resumed from its checkpoint (once
# the breaker lets jobs start again) this many times at most, then FAILED.
MAX_OUTAGE_RESUMES = 10


class JobEndings:
    """Reaping finished futures and ending slots. Needs the daemon's state below."""

    cfg: Config
    slots: list[Slot]
    running: dict[str, Slot]
    tracker: OffsetTracker
    stopping: threading.Event
    admission: Admission
    pool: WorkerPool | None
    heartbeat: Heartbeat | None
    dead: dl.DeadLetterWriter | None

    if TYPE_CHECKING:  # the daemon's own (daemon.py); never shadowing them at run time
        def _conn(self) -> AbstractContextManager[Any]: ...
        def _later(self, slot: Slot, message: str, exc: BaseException) -> None: ...

    def _reap(self) -> None:
        for slot in [s for s in self.slots if s.state == RUNNING and s.future is not None
                     and s.future.done()]:
            assert slot.job is not None and slot.future is not None
            self.running.pop(slot.job.job_id, None)
            if slot.future.cancelled():  # queued in a pool being replaced: never started
                slot.state, slot.not_before = WAITING, 0.0
                continue
            exc = slot.future.exception()
            if isinstance(exc, BrokenProcessPool):
                self._worker_died(slot)
            elif exc is not None:  # cannot happen unless the job could not be sent
                self._fail(slot, f"internal error: {type(exc).__name__}: {exc}", exc)
            else:
                self._finished(slot, slot.future.result())

    def _finished(self, slot: Slot, outcome: JobOutcome) -> None:
        assert slot.job is not None
        if outcome.ending is Ending.COMPLETED:
            self.admission.database_ok()
            self._done(slot)
        elif outcome.ending is Ending.FAILED:
            self._dead_letter(slot, dl.Failure(
                dl.STAGE_IMPORT, outcome.error or "FAILED",
                outcome.error_type or "nodes_import.errors.NodesImportError",
                outcome.stack_trace, slot.job.job_id, dl.counts_of(outcome.row)))
        elif self.stopping.is_set():  # interrupted by the drain: resumes on the next start
            self._drop(slot)
        else:  # the database went away (before or during the job), or a new owner took it
            self._interrupted(slot, outcome)

    def _interrupted(self, slot: Slot, outcome: JobOutcome) -> None:
        """Not finished: retried (from its checkpoint) once the breaker lets jobs start; a
        job the database failed ``MAX_OUTAGE_RESUMES`` times is FAILED after all."""
        error = outcome.error or "the job did not finish"
        exc: errors.NodesImportError = errors.TransientStorageError(error)
        if outcome.ending is Ending.OUTAGE:
            exc = errors.ConnectionLostError(error)
            slot.outage_resumes += 1
            if slot.outage_resumes > MAX_OUTAGE_RESUMES:
                self._fail(slot, error, exc)
                return
        slot.state = WAITING
        self._later(slot, "job not finished (the database went away?); it resumes from its "
                          "checkpoint", exc)

    def _worker_died(self, slot: Slot) -> None:
        assert slot.job is not None
        if self.pool is not None and slot.generation == self.pool.generation \
                and not self.stopping.is_set():
            self.pool.replace("a worker process died (killed or out of memory)")
        # Only the job(s) of the call on the dead worker count the crash; the others were
        # interrupted because the whole pool went with it.
        died_here = self.pool is None or slot.future is None \
            or self.pool.died_on(slot.future, slot.generation)
        slot.crashes += 1 if died_here else 0
        if self.stopping.is_set():
            self._drop(slot)
        elif not died_here:
            log.warning("job interrupted by another worker's death; it resumes on a new worker",
                        extra={"fields": slot.ctx()})
            slot.state, slot.not_before = WAITING, 0.0
        elif slot.crashes >= self.cfg.executor.max_job_crashes:
            self._fail(slot, f"the worker process died {slot.crashes} times while running "
                             "this job (killed or out of memory)", errors.WorkerDiedError())
        else:
            log.warning("job retried on a new worker", extra={"fields": {
                **slot.ctx(), "crashes": slot.crashes}})
            slot.state, slot.not_before = WAITING, 0.0

    def _fail(self, slot: Slot, error: str, exc: BaseException) -> None:
        """FAIL a job the worker could not finish, then dead-letter it."""
        job = slot.job
        assert job is not None
        try:
            with self._conn() as conn:
                row = jobrows.finish_job(conn, job_id=job.job_id, status=status.FAILED,
                                         error=error) or {}
        except (errors.StorageError, OSError) as db_exc:
            slot.state = WAITING
            self._later(slot, "cannot record the failure; retrying the job", db_exc)
            return
        trace = "".join(traceback.format_exception(exc)) if exc.__traceback__ else None
        self._dead_letter(slot, dl.Failure(dl.STAGE_IMPORT, error, errors.type_name(exc), trace,
                                        job.job_id, dl.counts_of(row)))

    def _dead_letter(self, slot: Slot, failure: dl.Failure) -> None:
        assert self.dead is not None
        try:
            self.dead.send(slot.delivery, failure)
        except errors.BrokerError as exc:  # not done until the dead letter is acknowledged
            if slot not in self.slots:
                self.slots.append(slot)
            slot.state, slot.failure = DEAD_LETTER, failure
            self._later(slot, "dead letter not acknowledged; retrying", exc)
            return
        metrics.dead_letter_produced(failure.stage)
        self._done(slot)

    def _dead_letter_again(self, slot: Slot) -> None:
        """A redelivered FAILED job: its dead letter may have been lost with a crashed
        daemon, so it is written again (dead letters are at-least-once; dedupe by job id)."""
        assert slot.job is not None
        try:
            with self._conn() as conn:
                row = jobrows.get_job(conn, slot.job.job_id) or {}
        except (errors.StorageError, OSError) as exc:
            self._later(slot, "cannot read the failed job; retrying", exc)
            return
        error = str(row.get("error") or "FAILED")
        stage = dl.STAGE_BACKPRESSURE if error == OVERLOADED else dl.STAGE_IMPORT
        self._dead_letter(slot, dl.Failure(stage, error, "nodes_import.errors.NodesImportError",
                                        None, slot.job.job_id, dl.counts_of(row)))

    def _done(self, slot: Slot) -> None:
        """Terminal: release the slot and let the offset be committed."""
        self._drop(slot)
        self.tracker.done(slot.delivery.tp, slot.delivery.offset)
        metrics.message_processed(slot.delivery.topic)

    def _drop(self, slot: Slot) -> None:
        """Out of the window without committing (the message comes back later)."""
        if slot in self.slots:
            self.slots.remove(slot)
        if slot.job is not None and self.heartbeat is not None and \
                self.running.get(slot.job.job_id) is None:
            self.heartbeat.drop(slot.job.job_id)
