"""How the daemon ends a job's slot (parent side): carrying out decisions, dead letters.

``Endings`` owns the dead-letter writer. ``end`` carries out what ``decisions.decide``
made of a reaped slot: done; dead-lettered (stage import); FAILED first, then
dead-lettered; back to waiting (at once, or after a backoff); dropped. The other ways a
slot ends go through it too: a job rejected by backpressure ``reject`` (FAILED as
overloaded, stage backpressure), a redelivered FAILED job dead-lettered again, a message
that is not a valid job (``dead_letter``). A dead letter not acknowledged keeps its slot
in the window and is sent again later; a database error leaves the slot waiting for a
retry with backoff (``retry_later``), and only outages count towards the breaker.
"""

from __future__ import annotations

import logging
from typing import assert_never

from nodes_import import errors, metrics, status
from nodes_import.daemon.admission import Admission
from nodes_import.daemon.database import MainDatabase
from nodes_import.daemon.decisions import (
    UNKNOWN_ERROR_TYPE,
    DeadLetter,
    Decision,
    Done,
    Drop,
    Fail,
    Result,
    Retry,
    decide,
)
from nodes_import.daemon.window import DEAD_LETTER, WAITING, Slot, Window
from nodes_import.kafka import deadletter as dl
from nodes_import.store import jobrows

log = logging.getLogger("nodes_import.daemon")  # one logger for the daemon's job events

OVERLOADED = "System overloaded"  # the seed's reason for a rejected job


class Endings:
    """Ends the window's slots: decisions carried out, failures recorded, dead letters."""

    def __init__(self, window: Window, admission: Admission, db: MainDatabase,
                 dead: dl.DeadLetterWriter, *, max_job_crashes: int) -> None:
        self.window, self.admission, self.db, self.dead = window, admission, db, dead
        self.max_job_crashes = max_job_crashes

    def end(self, slot: Slot, result: Result, *, stopping: bool) -> None:
        """A reaped slot: decide, then carry it out."""
        self.carry_out(slot, decide(slot, result, stopping=stopping,
                                    max_job_crashes=self.max_job_crashes))

    def carry_out(self, slot: Slot, decision: Decision) -> None:
        """Do what ``decision`` says with ``slot`` (its counters first)."""
        if isinstance(decision, Fail | Retry):
            slot.crashes += int(decision.crash)
            slot.outage_resumes += int(decision.outage)
        if isinstance(decision, Done):
            self.admission.database_ok()
            self.window.done(slot)
        elif isinstance(decision, DeadLetter):
            self.dead_letter(slot, decision.failure)
        elif isinstance(decision, Fail):
            self.fail(slot, decision.error, decision.error_type, decision.stack_trace)
        elif isinstance(decision, Retry):
            self._retry(slot, decision)
        elif isinstance(decision, Drop):
            self.window.drop(slot)
        else:
            assert_never(decision)

    def _retry(self, slot: Slot, retry: Retry) -> None:
        if retry.error is not None:  # after a backoff; only an outage counts for the breaker
            assert retry.reason is not None
            exc: errors.NodesImportError = errors.ConnectionLostError(retry.error) \
                if retry.outage else errors.TransientStorageError(retry.error)
            slot.state = WAITING
            self.retry_later(slot, retry.reason, exc)
            return
        if retry.reason is not None:
            fields = {**slot.ctx(), "crashes": slot.crashes} if retry.crash else slot.ctx()
            log.warning(retry.reason, extra={"fields": fields})
        self.window.requeue(slot)

    def retry_later(self, slot: Slot, message: str, exc: BaseException, *,
                    count: bool = True) -> None:
        """A database or broker error: the slot tries again after a backoff. ``count``:
        report the error to the breaker (which counts outages only)."""
        if count:
            self.admission.database_failed(exc)
        delay = self.window.later(slot)
        log.warning(message, extra={"fields": {**slot.ctx(), "error": str(exc),
                                               "retryInS": delay}})

    def fail(self, slot: Slot, error: str, error_type: str, stack_trace: str | None) -> None:
        """FAIL a job the worker could not finish, then dead-letter it."""
        job = slot.job
        assert job is not None
        try:
            with self.db.conn() as conn:
                row = jobrows.finish_job(conn, job_id=job.job_id, status=status.FAILED,
                                         error=error)
        except (errors.StorageError, OSError) as db_exc:
            slot.state = WAITING
            self.retry_later(slot, "cannot record the failure; retrying the job", db_exc)
            return
        self.dead_letter(slot, dl.Failure(dl.STAGE_IMPORT, error, error_type, stack_trace,
                                          job.job_id, dl.counts_of(row)))

    def dead_letter(self, slot: Slot, failure: dl.Failure) -> None:
        """Dead-letter the slot's message, then done; kept in the window (state
        ``dead-letter``) and sent again later when the broker does not acknowledge it."""
        try:
            self.dead.send(slot.delivery, failure)
        except errors.BrokerError as exc:  # not done until the dead letter is acknowledged
            self.window.admit(slot)
            slot.state, slot.failure = DEAD_LETTER, failure
            self.retry_later(slot, "dead letter not acknowledged; retrying", exc)
            return
        metrics.dead_letter_produced(failure.stage)
        self.window.done(slot)

    def dead_letter_again(self, slot: Slot) -> None:
        """A redelivered FAILED job: its dead letter may have been lost with a crashed
        daemon, so it is written again (dead letters are at-least-once; dedupe by job id)."""
        assert slot.job is not None
        try:
            with self.db.conn() as conn:
                row = jobrows.get_job(conn, slot.job.job_id)
        except (errors.StorageError, OSError) as exc:
            self.retry_later(slot, "cannot read the failed job; retrying", exc)
            return
        error = row.error if row is not None and row.error else "FAILED"
        stage = dl.STAGE_BACKPRESSURE if error == OVERLOADED else dl.STAGE_IMPORT
        cancelled = row is not None and row.cancel_requested_at is not None
        error_type = errors.type_name(errors.JobCancelledError()) if cancelled \
            else UNKNOWN_ERROR_TYPE
        self.dead_letter(slot, dl.Failure(stage, error, error_type, None,
                                          slot.job.job_id, dl.counts_of(row)))

    def reject(self, slot: Slot) -> None:
        """Backpressure ``reject``: FAIL the job as overloaded and dead-letter it."""
        job = slot.job
        assert job is not None
        try:
            with self.db.conn() as conn:
                row = jobrows.create_job(conn, job_id=job.job_id, group_id=job.group_id,
                                         domain_id=job.domain_id, node_type=job.node_type,
                                         source=job.source_label)
                if row.status in status.TERMINAL:
                    self.window.done(slot)
                    return
                row = jobrows.finish_job(conn, job_id=job.job_id, status=status.FAILED,
                                         error=OVERLOADED) or row
        except (errors.StorageError, OSError) as exc:
            self.retry_later(slot, "cannot record the rejected job; retrying", exc)
            return
        log.warning("job rejected: window full", extra={"fields": {
            **slot.ctx(), "inFlight": self.window.in_flight, "capacity": self.window.capacity}})
        self.dead_letter(slot, dl.Failure(dl.STAGE_BACKPRESSURE, OVERLOADED, errors.type_name(
            errors.OverloadedError()), job_id=job.job_id, counts=dl.counts_of(row)))
