"""A bundle's one worker call settles one future per job (``WorkerPool.submit_bundle``)."""

from __future__ import annotations

from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import pytest

from nodes_import.config import ImportConfig
from nodes_import.jobs import ImportJob, JobOutcome
from nodes_import.pool import WorkerPool
from nodes_import.worker import WorkerSettings


class _Executor:
    """Stands in for the process pool inside this unit test: hands out the call's future."""

    def __init__(self) -> None:
        self.call: Future[Any] = Future()

    def submit(self, *_args: Any) -> Future[Any]:
        return self.call


def _pool() -> tuple[WorkerPool, _Executor]:
    pool = WorkerPool(WorkerSettings("dbname=x", 1, 1.0), max_workers=1, core=1,
                      start_method="spawn")
    executor = _Executor()
    pool._executor = executor  # type: ignore[assignment]
    return pool, executor


JOBS = [ImportJob(f"j{n}", f"g{n}", "d", reference_ids=("a",)) for n in range(3)]


def test_each_job_gets_its_own_outcome_in_order() -> None:
    pool, executor = _pool()
    futures = pool.submit_bundle(JOBS, ImportConfig())
    assert not any(f.done() for f in futures)
    executor.call.set_result([JobOutcome(j.job_id, "COMPLETED") for j in JOBS])
    assert [f.result(0).job_id for f in futures] == ["j0", "j1", "j2"]


def test_a_worker_that_died_fails_every_job_of_its_bundle_as_broken() -> None:
    pool, executor = _pool()
    futures = pool.submit_bundle(JOBS, ImportConfig())
    executor.call.set_exception(BrokenProcessPool("gone"))
    assert all(isinstance(f.exception(0), BrokenProcessPool) for f in futures)


def test_a_bundle_cancelled_before_it_started_cancels_every_job() -> None:
    pool, executor = _pool()
    futures = pool.submit_bundle(JOBS, ImportConfig())
    assert executor.call.cancel()
    assert all(f.cancelled() for f in futures)


def test_too_few_outcomes_is_an_error_for_every_job_not_a_silent_loss() -> None:
    pool, executor = _pool()
    futures = pool.submit_bundle(JOBS, ImportConfig())
    executor.call.set_result([JobOutcome("j0", "COMPLETED")])
    with pytest.raises(RuntimeError, match="1 outcomes for 3 jobs"):
        futures[2].result(0)


def test_a_bundled_job_is_running_exactly_while_its_bundles_call_is() -> None:
    pool, executor = _pool()
    futures = pool.submit_bundle(JOBS, ImportConfig())
    assert {id(pool.call_of(f)) for f in futures} == {id(executor.call)}
    assert not pool.call_of(futures[0]).running()
    assert executor.call.set_running_or_notify_cancel()
    assert all(pool.call_of(f).running() for f in futures)
    alone: Future[JobOutcome] = Future()
    assert pool.call_of(alone) is alone
    assert pool.running([*futures, alone]) == (1, 3)  # one call, its three jobs
    assert alone.set_running_or_notify_cancel()
    assert pool.running([*futures, alone]) == (2, 4)
