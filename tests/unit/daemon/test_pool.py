"""A bundle's one worker call settles one future per job (``WorkerPool.submit_bundle``)."""

from __future__ import annotations

import os
import threading
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import pytest

from nodes_import.config import ImportConfig
from nodes_import.daemon import pool as pool_module
from nodes_import.daemon.pool import WorkerPool
from nodes_import.jobs import Ending, ImportJob, JobOutcome
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
    executor.call.set_result([JobOutcome(j.job_id, "COMPLETED", ending=Ending.COMPLETED)
                              for j in JOBS])
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
    executor.call.set_result([JobOutcome("j0", "COMPLETED", ending=Ending.COMPLETED)])
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


class _Process:
    def __init__(self, exitcode: int | None) -> None:
        self.exitcode, self.killed = exitcode, False
        self.sentinel, self._end = os.pipe()  # readable (at EOF) once "exited"

    def kill(self) -> None:
        self.killed = True


class _Dying(_Process):
    """Killed with the other one, but seen alive at first: it exits once ``waited`` is
    set (the pool waiting for it), not after a guessed delay."""

    def __init__(self, waited: threading.Event) -> None:
        super().__init__(None)

        def die() -> None:
            waited.wait()
            self.exitcode = -9
            os.close(self._end)

        threading.Thread(target=die, daemon=True).start()


class _Workers:
    """Two worker processes, a future per call, and the shutdown the pool calls."""

    def __init__(self, processes: dict[int, _Process]) -> None:
        self._processes = processes
        self.shut = False

    def submit(self, *_args: Any) -> Future[Any]:
        return Future()

    def shutdown(self, **_kwargs: Any) -> None:
        self.shut = True


def _broken_pool(processes: dict[int, _Process], table: list[int]
                 ) -> tuple[WorkerPool, list[Future[JobOutcome]], int]:
    pool = WorkerPool(WorkerSettings("dbname=x", 1, 1.0), max_workers=2, core=2,
                      start_method="spawn")
    pool._executor = _Workers(processes)  # type: ignore[assignment]
    alone = pool.submit(JOBS[0], ImportConfig())  # call 1
    bundled = pool.submit_bundle(JOBS[1:], ImportConfig())  # call 2
    pool._table = table
    broken = pool.generation
    pool.start = lambda: None  # type: ignore[method-assign]  # no new processes here
    pool.replace("a worker process died")
    return pool, [alone, *bundled], broken


@pytest.fixture(autouse=True)
def _short_grace(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pool_module, "DEATH_GRACE_S", 0.3)


def test_only_the_jobs_of_the_call_on_the_dead_worker_count_the_crash() -> None:
    survivor = _Process(None)
    # pid 101 died (SIGKILL) while it ran call 2, the bundle; pid 102 was running call 1.
    pool, (alone, *bundled), broken = _broken_pool({101: _Process(-9), 102: survivor},
                                                   [101, 2, 102, 1])
    assert all(pool.died_on(f, broken) for f in bundled)
    assert not pool.died_on(alone, broken)
    assert survivor.killed  # it would have finished a job the daemon runs again


def test_a_worker_that_died_between_calls_marks_no_job() -> None:
    pool, futures, broken = _broken_pool({101: _Process(-11), 102: _Process(None)},
                                         [101, 0, 102, 1])
    assert not any(pool.died_on(f, broken) for f in futures)


def test_when_no_dead_worker_is_found_every_interrupted_job_counts_the_crash() -> None:
    pool, futures, broken = _broken_pool({101: _Process(None), 102: _Process(None)},
                                         [101, 2, 102, 1])
    assert all(pool.died_on(f, broken) for f in futures)
    assert all(pool.died_on(f, broken + 5) for f in futures)  # a generation never seen


def test_a_worker_that_dies_a_moment_after_the_first_is_still_counted_dead(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Both killed at once; the busy one (call 2) frees its memory first and is seen alive.
    # It exits only once the pool waits on the workers' sentinels: a pool that did not
    # wait would count it a survivor, whatever the machine's load. The grace is a bound,
    # not a wait: the pool's wait ends when the dying one exits.
    monkeypatch.setattr(pool_module, "DEATH_GRACE_S", 60.0)
    waited = threading.Event()
    real_wait = pool_module.mp_connection.wait

    def wait(objects: Any, timeout: float | None = None) -> Any:
        waited.set()
        return real_wait(objects, timeout)

    monkeypatch.setattr(pool_module.mp_connection, "wait", wait)
    dying = _Dying(waited)
    pool, (alone, *bundled), broken = _broken_pool({101: _Process(-9), 102: dying},
                                                   [101, 1, 102, 2])
    assert pool.died_on(alone, broken)
    assert all(pool.died_on(f, broken) for f in bundled)
    assert not dying.killed
