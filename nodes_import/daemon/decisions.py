"""What becomes of a job's slot once its future is done (parent side): a pure decision.

``decide`` reads how the run ended (the worker's ``JobOutcome`` and its ``Ending``, or
what became of the call: cancelled, its worker died, an internal error) and the slot's
counters, and returns one ``Decision``; ``endings.Endings`` carries it out. No I/O, no
clock, no change to the slot: unit-tested without processes.

- COMPLETED: ``Done``.
- FAILED: ``DeadLetter`` with the outcome's error, error type and stack trace.
- any other ending while the daemon stops: ``Drop`` (it resumes on the next start).
- OUTAGE (the database went away): ``Retry`` after a backoff, counted (an outage resume
  and a failure for the breaker); ``Fail`` past ``MAX_OUTAGE_RESUMES``.
- LEASE_LOST, NOT_STARTED (STOPPED too, the daemon not stopping): ``Retry`` after a
  backoff, not counted.
- its worker died (``WorkerDied``): while stopping ``Drop``; the job's own call was on
  the dead worker: ``Retry`` at once counted as a crash, ``Fail`` at ``max-job-crashes``;
  it was elsewhere in the broken pool: ``Retry`` at once, not counted.
- cancelled (queued in a pool being replaced, never started): ``Retry`` at once, silently.
- any other exception (the job could not be sent): ``Fail`` as an internal error.
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass
from typing import TypeAlias

from nodes_import import errors
from nodes_import.daemon.window import Slot
from nodes_import.jobs import Ending, JobOutcome
from nodes_import.kafka import deadletter as dl

# A job interrupted because the database went away is resumed from its checkpoint (once
# the breaker lets jobs start again) this many times at most, then FAILED.
MAX_OUTAGE_RESUMES = 10
UNKNOWN_ERROR_TYPE = "nodes_import.errors.NodesImportError"  # a FAILED outcome without one
INTERRUPTED = "job not finished (the database went away?); it resumes from its checkpoint"
DIED_ELSEWHERE = "job interrupted by another worker's death; it resumes on a new worker"
DIED_HERE = "job retried on a new worker"


# ------------------------------------------------------------------ what became of the call


@dataclass(frozen=True)
class Cancelled:
    """The call was cancelled before it started (queued in a pool being replaced)."""


CANCELLED = Cancelled()


@dataclass(frozen=True)
class WorkerDied:
    """A worker process died and broke the pool while the job's call was in it."""

    here: bool  # the job's own call ran on the dead worker (not only in its pool)


# The worker's outcome, or what became of the call instead; an exception: an internal
# error (the job could not be sent).
Result: TypeAlias = JobOutcome | Cancelled | WorkerDied | BaseException


# ------------------------------------------------------------------ the decisions


@dataclass(frozen=True)
class Done:
    """The job completed (the database answered): the slot is done, its offset committed."""


@dataclass(frozen=True)
class DeadLetter:
    """The worker FAILED the job: dead-letter it with ``failure``, then done."""

    failure: dl.Failure


@dataclass(frozen=True)
class Fail:
    """The job cannot finish: FAIL its row, dead-letter it (stage import), then done."""

    error: str
    error_type: str
    stack_trace: str | None = None
    outage: bool = False  # counts one more outage resume
    crash: bool = False  # counts one more crash of this job


@dataclass(frozen=True)
class Retry:
    """Back to waiting, to start again from its checkpoint.

    With an ``error``: after a backoff (``Window.later``), ``reason`` logged with the
    error, and an ``outage`` counted towards the breaker. Without one: at once, ``reason``
    (when set) logged.
    """

    reason: str | None = None
    error: str | None = None
    outage: bool = False  # the database went away: one more outage resume, a breaker failure
    crash: bool = False  # the job's worker died: one more crash of this job


@dataclass(frozen=True)
class Drop:
    """Out of the window without committing: the message comes back on the next start."""


Decision: TypeAlias = Done | DeadLetter | Fail | Retry | Drop


def decide(slot: Slot, result: Result, *, stopping: bool, max_job_crashes: int) -> Decision:
    """What to do with ``slot`` now that its call ended with ``result``."""
    if isinstance(result, Cancelled):
        return Retry()
    if isinstance(result, WorkerDied):
        return _worker_died(slot, result, stopping=stopping, max_job_crashes=max_job_crashes)
    if isinstance(result, JobOutcome):
        return _ended(slot, result, stopping=stopping)
    # cannot happen unless the job could not be sent
    trace = "".join(traceback.format_exception(result)) if result.__traceback__ else None
    return Fail(f"internal error: {type(result).__name__}: {result}",
                errors.type_name(result), trace)


def _ended(slot: Slot, outcome: JobOutcome, *, stopping: bool) -> Decision:
    """The worker returned: the job ended, or was interrupted (it resumes later)."""
    if outcome.ending is Ending.COMPLETED:
        return Done()
    if outcome.ending is Ending.FAILED:
        assert slot.job is not None
        return DeadLetter(dl.Failure(
            dl.STAGE_IMPORT, outcome.error or "FAILED", outcome.error_type or UNKNOWN_ERROR_TYPE,
            outcome.stack_trace, slot.job.job_id, dl.counts_of(outcome.row)))
    if stopping:  # interrupted by the drain: resumes on the next start
        return Drop()
    error = outcome.error or "the job did not finish"
    if outcome.ending is Ending.OUTAGE:
        if slot.outage_resumes + 1 > MAX_OUTAGE_RESUMES:
            return Fail(error, errors.type_name(errors.ConnectionLostError(error)), outage=True)
        return Retry(INTERRUPTED, error, outage=True)
    # a new owner took it, it could not start, or it stopped: not the database's failure
    return Retry(INTERRUPTED, error)


def _worker_died(slot: Slot, died: WorkerDied, *, stopping: bool,
                 max_job_crashes: int) -> Decision:
    """Only the job(s) of the call on the dead worker count the crash; the others were
    interrupted because the whole pool went with it."""
    if stopping:
        return Drop()
    if not died.here:
        return Retry(DIED_ELSEWHERE)
    crashes = slot.crashes + 1
    if crashes >= max_job_crashes:
        return Fail(f"the worker process died {crashes} times while running this job "
                    "(killed or out of memory)", errors.type_name(errors.WorkerDiedError()),
                    crash=True)
    return Retry(DIED_HERE, crash=True)
