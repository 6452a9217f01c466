"""Handing claimed jobs to the worker processes and collecting their ends (parent side).

``Dispatcher`` owns the ``pool.WorkerPool``. A claimed job waits in the window
(``queue``: state QUEUED, its lease held) until ``pump`` finds it a worker of its lane
(``lanes.plan``: some workers never start a large job, so small jobs never wait behind
large ones). The pool itself never holds a waiting job: a call goes to it only when a
worker is free for it. New small jobs (``ImportJob.small``) go in bundles with the other
small jobs waiting (``worker.run_bundle``: one worker call, statement and commit per
bundle), any other job alone (``worker.run_job``); either way each job's slot gets its
own future. When a future is done, ``collect`` says what became of the call
(``decisions.Result``): a worker that died has its pool replaced once per breakage, and
only the jobs whose call was on the dead worker count the crash.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool

from nodes_import.config import ImportConfig
from nodes_import.daemon import lanes
from nodes_import.daemon.decisions import CANCELLED, Result, WorkerDied
from nodes_import.daemon.pool import WorkerPool
from nodes_import.daemon.window import Slot, Window
from nodes_import.jobs import ImportJob, JobOutcome
from nodes_import.worker import bundle as bundles

log = logging.getLogger("nodes_import.daemon")  # one logger for the daemon's job events

# Slots whose jobs could not be queued (the pool was broken; replaced since), and why.
Unsent = list[tuple[Slot, BrokenProcessPool]]


class Dispatcher:
    """Starts the window's claimed jobs on ``pool`` as its lanes allow, and collects
    their futures."""

    def __init__(self, pool: WorkerPool, window: Window, imports: ImportConfig, *,
                 small_job_workers: int = 0) -> None:
        self.pool, self.window, self.imports = pool, window, imports
        self.lanes = lanes.Lanes(pool.max_workers, small_job_workers)

    def queue(self, slot: Slot, *, bundle: bool = False) -> None:
        """A claimed job waits for a worker (``bundle``: it may go in a bundle of small
        jobs); ``pump`` starts it."""
        self.window.queue(slot, bundle=bundle)

    def pump(self) -> Unsent:
        """Start the queued jobs the lanes have room for (``lanes.plan``): large jobs
        alone, small ones in bundles (and those that may not be bundled alone)."""
        queued = self.window.queued()
        if not queued:
            return []
        large = [s for s in queued if s.job is not None and not s.job.small]
        small = [s for s in queued if s.job is not None and s.job.small]
        running_large, running_small = self._running_calls()
        starts = lanes.plan(self.lanes, running_large=running_large,
                            running_small=running_small, queued_large=len(large),
                            queued_small=len(small))
        unsent = Unsent()
        for slot in large[:starts.large]:
            unsent += self._alone(slot)
        if starts.small:
            unsent += self._small(small, starts.small)
        return unsent

    def _running_calls(self) -> tuple[int, int]:
        """(large calls, small calls) running: a bundle is one small call."""
        calls: dict[int, bool] = {}  # id of the call -> small
        for slot in list(self.window.running.values()):
            if slot.future is not None and slot.job is not None:
                calls[id(self.pool.call_of(slot.future))] = slot.job.small
        small = sum(calls.values())
        return len(calls) - small, small

    def _alone(self, slot: Slot) -> Unsent:
        """A job alone (``worker.run_job``)."""
        assert slot.job is not None
        job, pool = slot.job, self.pool
        return self._hand_over([slot], lambda: [pool.submit(job, self.imports)],
                               attempt=slot.crashes + 1)

    def _small(self, slots: list[Slot], calls: int) -> Unsent:
        """Small jobs in at most ``calls`` worker calls: the bundleable ones in bundles
        (``worker.run_bundle``: one call, statement and commit per bundle), as many as
        the calls left by those that go alone (a job that crashed a worker, a job
        started before); the others alone, in order, while calls are left."""
        alone = [s for s in slots if not s.bundle]
        bundled = [s for s in slots if s.bundle]
        unsent = Unsent()
        if bundled:
            small: list[ImportJob] = [s.job for s in bundled if s.job is not None]
            for positions in bundles.split(small, max(1, calls - len(alone))):
                jobs = [small[n] for n in positions]
                unsent += self._hand_over(
                    [bundled[n] for n in positions],
                    functools.partial(self.pool.submit_bundle, jobs, self.imports),
                    bundle=len(positions))
                calls -= 1
        for slot in alone[:max(0, calls)]:
            unsent += self._alone(slot)
        return unsent

    def _hand_over(self, slots: list[Slot], submit: Callable[[], list[Future[JobOutcome]]],
                   **fields: object) -> Unsent:
        """Send the slots' jobs as one worker call (``submit``); each slot RUNNING with its
        own future, or all of them returned when the pool turns out broken (it is
        replaced)."""
        now = time.monotonic()
        try:
            futures = submit()
        except BrokenProcessPool as exc:
            self.pool.replace("the pool broke before a submission")
            return [(slot, exc) for slot in slots]
        for slot, future in zip(slots, futures, strict=True):
            self.window.run(slot, future, self.pool.generation)
            log.info("job submitted", extra={"fields": {
                **slot.ctx(), "inFlight": self.window.in_flight,
                "queuedMs": round((now - slot.queued_at) * 1000, 1), **fields}})
        return []

    def collect(self, slot: Slot, *, stopping: bool) -> Result:
        """What became of a finished slot's call; the slot no longer runs. A worker's death
        replaces the pool (once per breakage, not while stopping) before telling whether
        this job's call was on the dead worker."""
        future = slot.future
        assert future is not None
        self.window.reaped(slot)
        if future.cancelled():  # queued in a pool being replaced: never started
            return CANCELLED
        exc = future.exception()
        if isinstance(exc, BrokenProcessPool):
            if slot.generation == self.pool.generation and not stopping:
                self.pool.replace("a worker process died (killed or out of memory)")
            return WorkerDied(here=self.pool.died_on(future, slot.generation))
        if exc is not None:
            return exc
        return future.result()

    def busy(self) -> tuple[int, int]:
        """(worker calls running, jobs running) of the window's jobs (admin thread)."""
        return self.pool.running(self.window.futures())
