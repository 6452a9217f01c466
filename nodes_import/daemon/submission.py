"""Handing claimed jobs to the worker processes (parent side): a mixin of ``daemon.Daemon``.

A claimed job is skipped (already finished), left waiting (another live daemon holds its
lease) or submitted: a new small job (``ImportJob.small``) in a bundle with the poll's other
small jobs (``worker.run_bundle``: one worker call, statement and commit per bundle), any
other job alone (``worker.run_job``). Either way each job's slot gets its own future.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool
from typing import TYPE_CHECKING

from nodes_import import status
from nodes_import.config import Config
from nodes_import.daemon.pool import WorkerPool
from nodes_import.daemon.window import RUNNING, WAITING, Heartbeat, Slot
from nodes_import.jobs import ImportJob, JobOutcome
from nodes_import.store import jobrows
from nodes_import.worker import bundle as bundles

log = logging.getLogger("nodes_import.daemon")  # one logger for the daemon's job events


class JobSubmission:
    """Submitting claimed jobs. Needs the daemon's state below."""

    cfg: Config
    slots: list[Slot]
    running: dict[str, Slot]
    pool: WorkerPool | None
    heartbeat: Heartbeat | None

    if TYPE_CHECKING:  # the daemon's and JobEndings' own; never shadowing them at run time
        def _later(self, slot: Slot, message: str, exc: BaseException, *,
                   count: bool = True) -> None: ...
        def _done(self, slot: Slot) -> None: ...
        def _dead_letter_again(self, slot: Slot) -> None: ...

    def _claimed(self, slot: Slot, claim: jobrows.Claim) -> None:
        """Act on the claim of a slot's job: skip it, wait for its lease, or submit it."""
        if claim.outcome == jobrows.FINISHED:
            log.info("job already finished; skipped", extra={"fields": {
                **slot.ctx(), "status": claim.status, "ranBy": claim.holder}})
            if claim.status == status.FAILED:
                self._dead_letter_again(slot)
            else:
                self._done(slot)
        elif claim.outcome == jobrows.HELD:
            if slot.waiting_for != claim.holder:
                log.info("job leased by another daemon; waiting", extra={"fields": {
                    **slot.ctx(), "holder": claim.holder,
                    "heartbeatAgeS": round(claim.heartbeat_age_s or 0.0, 1)}})
            slot.waiting_for = claim.holder
            slot.not_before = time.monotonic() + self.cfg.executor.heartbeat_interval_ms / 1e3
        else:
            self._submit(slot)

    def _submit(self, slot: Slot) -> None:
        """A job alone (``worker.run_job``)."""
        assert slot.job is not None and self.pool is not None
        job, pool = slot.job, self.pool
        self._hand_over([slot], lambda: [pool.submit(job, self.cfg.imports)],
                        attempt=slot.crashes + 1)

    def _submit_bundles(self, slots: list[Slot]) -> None:
        """New small jobs as bundles (``worker.run_bundle``): one worker call, statement and
        commit per bundle instead of per job. As many bundles as workers, so that a burst
        keeps every worker busy; a job that crashed a worker is never bundled again."""
        assert self.pool is not None
        pool, small = self.pool, list[ImportJob]()
        for slot in slots:
            assert slot.job is not None  # _start only passes slots with a job
            small.append(slot.job)
        for positions in bundles.split(small, self.cfg.executor.max_pool_size):
            jobs = [small[n] for n in positions]
            self._hand_over([slots[n] for n in positions],
                            functools.partial(pool.submit_bundle, jobs, self.cfg.imports),
                            bundle=len(positions))

    def _hand_over(self, slots: list[Slot], submit: Callable[[], list[Future[JobOutcome]]],
                   **fields: object) -> None:
        """Queue the slots' jobs as one worker call (``submit``), their leases held from
        now on; each slot RUNNING with its own future, or WAITING for a retry when the
        pool turns out broken."""
        assert self.pool is not None and self.heartbeat is not None
        for slot in slots:
            assert slot.job is not None
            self.heartbeat.hold(slot.job.job_id)  # claimed: ours until done or dropped
        try:
            futures = submit()
        except BrokenProcessPool as exc:
            self.pool.replace("the pool broke before a submission")
            for slot in slots:
                slot.state = WAITING
                self._later(slot, "cannot submit the job; retrying", exc)
            return
        for slot, future in zip(slots, futures, strict=True):
            assert slot.job is not None
            slot.future, slot.state, slot.generation = future, RUNNING, self.pool.generation
            self.running[slot.job.job_id] = slot
            log.info("job submitted", extra={"fields": {
                **slot.ctx(), "inFlight": len(self.slots), **fields}})
