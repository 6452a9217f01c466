"""How the workers are shared between large and small jobs: the pure decision
(``lanes.plan``) and the dispatcher that acts on it, without processes."""

from __future__ import annotations

from concurrent.futures import Future
from typing import Any

from nodes_import import worker
from nodes_import.config import ImportConfig
from nodes_import.daemon.dispatch import Dispatcher
from nodes_import.daemon.lanes import Lanes, Starts, plan
from nodes_import.daemon.pool import WorkerPool
from nodes_import.daemon.window import QUEUED, RUNNING, Slot, Window
from nodes_import.jobs import Ending, ImportJob, JobOutcome
from nodes_import.kafka.consumer import Delivery

# -------------------------------------------------------------------- the decision


def test_a_small_job_takes_the_reserved_worker_while_large_jobs_wait_for_theirs() -> None:
    lanes = Lanes(workers=2, small_only=1)
    assert plan(lanes, running_large=1, running_small=0, queued_large=3,
                queued_small=1) == Starts(large=0, small=1)


def test_large_jobs_never_take_more_than_their_share_even_with_workers_free() -> None:
    lanes = Lanes(workers=3, small_only=1)
    assert plan(lanes, running_large=0, running_small=0, queued_large=4,
                queued_small=0) == Starts(large=2, small=0)
    assert plan(lanes, running_large=2, running_small=0, queued_large=2,
                queued_small=0) == Starts(large=0, small=0)


def test_large_jobs_go_first_within_their_share_and_small_ones_get_the_rest() -> None:
    lanes = Lanes(workers=2, small_only=1)
    assert plan(lanes, running_large=0, running_small=0, queued_large=1,
                queued_small=5) == Starts(large=1, small=1)


def test_a_burst_of_small_jobs_uses_every_free_worker() -> None:
    lanes = Lanes(workers=3, small_only=1)
    assert plan(lanes, running_large=0, running_small=0, queued_large=0,
                queued_small=50) == Starts(large=0, small=3)
    assert plan(lanes, running_large=1, running_small=1, queued_large=0,
                queued_small=50) == Starts(large=0, small=1)


def test_a_large_job_waits_while_small_calls_fill_the_workers() -> None:
    lanes = Lanes(workers=2, small_only=1)
    assert plan(lanes, running_large=0, running_small=2, queued_large=1,
                queued_small=3) == Starts(large=0, small=0)


def test_without_reserved_workers_small_jobs_wait_behind_large_ones() -> None:
    lanes = Lanes(workers=2, small_only=0)
    assert plan(lanes, running_large=2, running_small=0, queued_large=2,
                queued_small=1) == Starts(large=0, small=0)


def test_one_worker_always_takes_large_jobs_whatever_is_reserved() -> None:
    assert Lanes(workers=1, small_only=1).large_max == 1
    assert Lanes(workers=2, small_only=5).large_max == 1
    assert plan(Lanes(workers=1, small_only=1), running_large=0, running_small=0,
                queued_large=1, queued_small=0) == Starts(large=1, small=0)


# -------------------------------------------------------------------- the dispatcher


class _Executor:
    """Stands in for the process pool: records each call and hands out its future."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, tuple[Any, ...], Future[Any]]] = []

    def submit(self, fn: Any, *args: Any) -> Future[Any]:
        future: Future[Any] = Future()
        self.calls.append((fn, args, future))
        return future


def _dispatcher(workers: int = 2, small_only: int = 1) -> tuple[Dispatcher, _Executor, Window]:
    pool = WorkerPool(worker.WorkerSettings("dbname=x", 1, 1.0), max_workers=workers,
                      core=workers, start_method="spawn")
    executor = _Executor()
    pool._executor = executor  # type: ignore[assignment]
    window = Window(capacity=100)
    return Dispatcher(pool, window, ImportConfig(), small_job_workers=small_only), executor, \
        window


def _queue(dispatcher: Dispatcher, window: Window, name: str, *, large: bool,
           bundle: bool = True) -> Slot:
    slot = window.track(Delivery("jobs", 0, len(window.slots), None, b"{}"))
    slot.job = ImportJob(name, f"group-{name}", "d", source="/data/big.csv.gz") if large \
        else ImportJob(name, f"group-{name}", "d", reference_ids=("a", "b"))
    window.admit(slot)
    dispatcher.queue(slot, bundle=bundle and not large)
    return slot


def _started(executor: _Executor) -> list[list[str]]:
    """The job ids of each call the pool was given, in order."""
    return [[args[0].job_id] if fn is worker.run_job else [j.job_id for j in args[0]]
            for fn, args, _future in executor.calls]


def _finish(dispatcher: Dispatcher, slot: Slot, executor: _Executor, call: int) -> None:
    """The worker call ``call`` returns; the slot is reaped as the daemon does."""
    fn, args, future = executor.calls[call]
    jobs = [args[0]] if fn is worker.run_job else args[0]
    outcomes = [JobOutcome(j.job_id, "COMPLETED", ending=Ending.COMPLETED) for j in jobs]
    future.set_result(outcomes[0] if fn is worker.run_job else outcomes)
    dispatcher.collect(slot, stopping=False)
    dispatcher.window.done(slot)


def test_a_small_job_starts_at_once_while_large_jobs_hold_their_worker() -> None:
    dispatcher, executor, window = _dispatcher(workers=2, small_only=1)
    large = [_queue(dispatcher, window, f"large{n}", large=True) for n in range(4)]
    assert dispatcher.pump() == []
    assert _started(executor) == [["large0"]]  # one worker is the small jobs'
    small = _queue(dispatcher, window, "small0", large=False)
    dispatcher.pump()
    assert _started(executor) == [["large0"], ["small0"]]
    assert small.state == RUNNING and [s.state for s in large[1:]] == [QUEUED] * 3


def test_the_next_large_job_starts_when_the_running_one_ends() -> None:
    dispatcher, executor, window = _dispatcher(workers=2, small_only=1)
    large = [_queue(dispatcher, window, f"large{n}", large=True) for n in range(2)]
    dispatcher.pump()
    dispatcher.pump()  # nothing changed: nothing more starts
    assert _started(executor) == [["large0"]]
    _finish(dispatcher, large[0], executor, 0)
    dispatcher.pump()
    assert _started(executor) == [["large0"], ["large1"]]


def test_small_jobs_waiting_together_go_in_bundles_over_the_free_workers() -> None:
    dispatcher, executor, window = _dispatcher(workers=2, small_only=1)
    for n in range(4):
        _queue(dispatcher, window, f"small{n}", large=False)
    dispatcher.pump()
    assert sorted(_started(executor)) == [["small0", "small2"], ["small1", "small3"]]
    assert all(s.state == RUNNING for s in window.slots)


def test_a_small_job_that_may_not_be_bundled_goes_alone() -> None:
    dispatcher, executor, window = _dispatcher(workers=2, small_only=1)
    _queue(dispatcher, window, "again", large=False, bundle=False)  # e.g. it crashed a worker
    _queue(dispatcher, window, "new", large=False)
    dispatcher.pump()
    assert _started(executor) == [["new"], ["again"]]
    assert executor.calls[1][0] is worker.run_job


def test_without_reserved_workers_a_small_job_waits_for_a_large_one_to_end() -> None:
    dispatcher, executor, window = _dispatcher(workers=2, small_only=0)
    large = [_queue(dispatcher, window, f"large{n}", large=True) for n in range(2)]
    _queue(dispatcher, window, "small0", large=False)
    dispatcher.pump()
    assert _started(executor) == [["large0"], ["large1"]]
    _finish(dispatcher, large[1], executor, 1)
    dispatcher.pump()
    assert _started(executor)[-1] == ["small0"]


def test_queued_jobs_stay_through_a_revocation_and_are_not_due_for_a_retry() -> None:
    dispatcher, _executor, window = _dispatcher(workers=1, small_only=0)
    running = _queue(dispatcher, window, "large0", large=True)
    dispatcher.pump()
    queued = _queue(dispatcher, window, "large1", large=True)
    window.revoke([("jobs", 0)])  # claimed here: they run here, as running ones do
    assert window.slots == [running, queued] and window.queued() == [queued]
    assert window.due(now=1e12) == [] and window.idle() == []
    assert "large1" in window.leases.held()
