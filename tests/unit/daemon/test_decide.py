"""``decisions.decide``: what becomes of a job's slot once its call ended, without processes."""

from __future__ import annotations

import traceback
from typing import Any

import pytest

from nodes_import import status
from nodes_import.daemon.decisions import (
    CANCELLED,
    DIED_ELSEWHERE,
    DIED_HERE,
    INTERRUPTED,
    MAX_OUTAGE_RESUMES,
    UNKNOWN_ERROR_TYPE,
    DeadLetter,
    Decision,
    Done,
    Drop,
    Fail,
    Result,
    Retry,
    WorkerDied,
    decide,
)
from nodes_import.daemon.window import Slot
from nodes_import.jobs import Ending, ImportJob, JobOutcome, JobRow
from nodes_import.kafka import deadletter as dl
from nodes_import.kafka.offsets import Delivery

MAX_CRASHES = 3
ROW = JobRow(id="job-1", group_id="g", domain_id="d", status=status.FAILED, node_type="USER",
             source="reference-ids", total_nodes=10, success_count=7, failed_count=3,
             inserted_count=7, updated_count=0, unchanged_count=0, rows_committed=7,
             error="bad file", attempts=1, source_bytes=None, bytes_read=0, claimed_by=None,
             created_at=None, updated_at=None, started_at=None, finished_at=None,
             heartbeat_at=None)


def _slot(**counters: int) -> Slot:
    slot = Slot(Delivery("jobs", 0, 42, None, b"{}"))
    slot.job = ImportJob(job_id="job-1", group_id="g", domain_id="d", reference_ids=("a",))
    for name, value in counters.items():
        setattr(slot, name, value)
    return slot


def _outcome(ending: Ending, **fields: Any) -> JobOutcome:
    return JobOutcome("job-1", fields.pop("status", status.PROCESSING), ending=ending, **fields)


def _decide(result: Result, *, stopping: bool = False, **counters: int) -> Decision:
    return decide(_slot(**counters), result, stopping=stopping, max_job_crashes=MAX_CRASHES)


# ------------------------------------------------------------------ the worker returned


def test_a_completed_job_is_done() -> None:
    assert _decide(_outcome(Ending.COMPLETED, status=status.COMPLETED)) == Done()


def test_a_completed_job_is_done_even_while_the_daemon_stops() -> None:
    assert _decide(_outcome(Ending.COMPLETED, status=status.COMPLETED), stopping=True) == Done()


def test_a_failed_job_is_dead_lettered_with_the_outcomes_error_type_and_stack_trace() -> None:
    outcome = _outcome(Ending.FAILED, status=status.FAILED, error="bad file", row=ROW,
                       error_type="nodes_import.errors.SourceError",
                       stack_trace="Traceback (most recent call last): ...")
    assert _decide(outcome) == DeadLetter(dl.Failure(
        dl.STAGE_IMPORT, "bad file", "nodes_import.errors.SourceError",
        "Traceback (most recent call last): ...", "job-1", dl.counts_of(ROW)))


def test_a_failed_job_without_an_error_is_dead_lettered_as_failed_with_the_base_type() -> None:
    decision = _decide(_outcome(Ending.FAILED, status=status.FAILED), stopping=True)
    assert decision == DeadLetter(dl.Failure(dl.STAGE_IMPORT, "FAILED", UNKNOWN_ERROR_TYPE,
                                             None, "job-1", dl.counts_of(None)))


def test_an_outage_retries_after_a_backoff_and_counts_as_an_outage() -> None:
    decision = _decide(_outcome(Ending.OUTAGE, error="connection refused"))
    assert decision == Retry(INTERRUPTED, "connection refused", outage=True)


def test_an_outage_is_retried_up_to_max_outage_resumes_then_failed() -> None:
    last = _decide(_outcome(Ending.OUTAGE, error="gone"), outage_resumes=MAX_OUTAGE_RESUMES - 1)
    assert last == Retry(INTERRUPTED, "gone", outage=True)
    decision = _decide(_outcome(Ending.OUTAGE, error="gone"), outage_resumes=MAX_OUTAGE_RESUMES)
    assert decision == Fail("gone", "nodes_import.errors.ConnectionLostError", None,
                            outage=True)


@pytest.mark.parametrize("ending", [Ending.LEASE_LOST, Ending.NOT_STARTED, Ending.STOPPED])
def test_an_interrupted_job_retries_after_a_backoff_without_counting(ending: Ending) -> None:
    decision = _decide(_outcome(ending, error="lease lost to b:2"),
                       outage_resumes=MAX_OUTAGE_RESUMES, crashes=MAX_CRASHES)
    assert decision == Retry(INTERRUPTED, "lease lost to b:2")


def test_an_interrupted_job_without_an_error_says_it_did_not_finish() -> None:
    assert _decide(_outcome(Ending.NOT_STARTED)) == Retry(INTERRUPTED,
                                                          "the job did not finish")


@pytest.mark.parametrize("ending", [Ending.OUTAGE, Ending.LEASE_LOST, Ending.STOPPED,
                                    Ending.NOT_STARTED])
def test_an_interrupted_job_is_dropped_while_the_daemon_stops(ending: Ending) -> None:
    decision = _decide(_outcome(ending, error="x"), stopping=True,
                       outage_resumes=MAX_OUTAGE_RESUMES)
    assert decision == Drop()


# ------------------------------------------------------------------ the call did not return


def test_a_worker_death_on_this_job_retries_at_once_counted_as_a_crash() -> None:
    assert _decide(WorkerDied(here=True)) == Retry(DIED_HERE, crash=True)
    assert _decide(WorkerDied(here=True), crashes=MAX_CRASHES - 2) == Retry(DIED_HERE,
                                                                            crash=True)


def test_a_job_that_killed_its_worker_max_job_crashes_times_is_failed() -> None:
    decision = _decide(WorkerDied(here=True), crashes=MAX_CRASHES - 1)
    assert decision == Fail(f"the worker process died {MAX_CRASHES} times while running this "
                            "job (killed or out of memory)",
                            "nodes_import.errors.WorkerDiedError", None, crash=True)


def test_a_worker_death_elsewhere_in_the_pool_retries_at_once_without_counting() -> None:
    assert _decide(WorkerDied(here=False), crashes=MAX_CRASHES - 1) == Retry(DIED_ELSEWHERE)


@pytest.mark.parametrize("here", [True, False])
def test_a_worker_death_while_the_daemon_stops_drops_the_job(here: bool) -> None:
    assert _decide(WorkerDied(here=here), stopping=True, crashes=MAX_CRASHES - 1) == Drop()


@pytest.mark.parametrize("stopping", [False, True])
def test_a_cancelled_call_goes_back_to_waiting_at_once_silently(stopping: bool) -> None:
    assert _decide(CANCELLED, stopping=stopping) == Retry()


def test_an_exception_from_the_call_fails_the_job_as_an_internal_error() -> None:
    try:
        raise RuntimeError("cannot pickle the job")
    except RuntimeError as exc:
        error = exc
    decision = _decide(error)
    assert isinstance(decision, Fail)
    assert (decision.error, decision.error_type, decision.outage, decision.crash) == (
        "internal error: RuntimeError: cannot pickle the job", "builtins.RuntimeError",
        False, False)
    # the whole trace, as Python prints it: the lines joined as they are
    assert decision.stack_trace == "".join(traceback.format_exception(error))
    assert decision.stack_trace.startswith("Traceback (most recent call last):\n")


def test_an_exception_never_raised_fails_the_job_without_a_stack_trace() -> None:
    decision = _decide(RuntimeError("2 outcomes for 3 jobs"))
    assert decision == Fail("internal error: RuntimeError: 2 outcomes for 3 jobs",
                            "builtins.RuntimeError", None)


def test_deciding_changes_nothing_on_the_slot() -> None:
    slot = _slot(crashes=1, outage_resumes=2, failures=3)
    before = (slot.state, slot.crashes, slot.outage_resumes, slot.failures, slot.not_before)
    results: list[Result] = [WorkerDied(here=True), _outcome(Ending.OUTAGE), CANCELLED]
    for result in results:
        decide(slot, result, stopping=False, max_job_crashes=MAX_CRASHES)
    assert (slot.state, slot.crashes, slot.outage_resumes, slot.failures,
            slot.not_before) == before
