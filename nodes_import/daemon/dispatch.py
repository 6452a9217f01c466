"""Handing claimed jobs to the worker processes and collecting their ends (parent side).

``Dispatcher`` owns the ``pool.WorkerPool``. A new small job (``ImportJob.small``) goes
in a bundle with the poll's other small jobs (``worker.run_bundle``: one worker call,
statement and commit per bundle), any other job alone (``worker.run_job``); either way
each job's slot gets its own future and its lease is held from the hand-over on. When a
future is done, ``collect`` says what became of the call (``decisions.Result``): a worker
that died has its pool replaced once per breakage, and only the jobs whose call was on
the dead worker count the crash.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool

from nodes_import.config import ImportConfig
from nodes_import.daemon.decisions import CANCELLED, Result, WorkerDied
from nodes_import.daemon.pool import WorkerPool
from nodes_import.daemon.window import Slot, Window
from nodes_import.jobs import ImportJob, JobOutcome
from nodes_import.worker import bundle as bundles

log = logging.getLogger("nodes_import.daemon")  # one logger for the daemon's job events

# Slots whose jobs could not be queued (the pool was broken; replaced since), and why.
Unsent = list[tuple[Slot, BrokenProcessPool]]


class Dispatcher:
    """Submits the window's claimed jobs to ``pool`` and collects their futures."""

    def __init__(self, pool: WorkerPool, window: Window, imports: ImportConfig) -> None:
        self.pool, self.window, self.imports = pool, window, imports

    def submit(self, slot: Slot) -> Unsent:
        """A job alone (``worker.run_job``)."""
        assert slot.job is not None
        job, pool = slot.job, self.pool
        return self._hand_over([slot], lambda: [pool.submit(job, self.imports)],
                               attempt=slot.crashes + 1)

    def submit_bundles(self, slots: list[Slot]) -> Unsent:
        """New small jobs as bundles (``worker.run_bundle``): one worker call, statement and
        commit per bundle instead of per job. As many bundles as workers, so that a burst
        keeps every worker busy; a job that crashed a worker is never bundled again."""
        pool, small, unsent = self.pool, list[ImportJob](), Unsent()
        for slot in slots:
            assert slot.job is not None  # only slots with a job are started
            small.append(slot.job)
        for positions in bundles.split(small, self.pool.max_workers):
            jobs = [small[n] for n in positions]
            unsent += self._hand_over([slots[n] for n in positions],
                                      functools.partial(pool.submit_bundle, jobs, self.imports),
                                      bundle=len(positions))
        return unsent

    def _hand_over(self, slots: list[Slot], submit: Callable[[], list[Future[JobOutcome]]],
                   **fields: object) -> Unsent:
        """Queue the slots' jobs as one worker call (``submit``), their leases held from
        now on; each slot RUNNING with its own future, or all of them returned when the
        pool turns out broken (it is replaced)."""
        for slot in slots:
            self.window.hold(slot)  # claimed: ours until done or dropped
        try:
            futures = submit()
        except BrokenProcessPool as exc:
            self.pool.replace("the pool broke before a submission")
            return [(slot, exc) for slot in slots]
        for slot, future in zip(slots, futures, strict=True):
            self.window.run(slot, future, self.pool.generation)
            log.info("job submitted", extra={"fields": {
                **slot.ctx(), "inFlight": self.window.in_flight, **fields}})
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
