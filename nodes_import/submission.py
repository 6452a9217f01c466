"""Handing claimed jobs to the worker processes (parent side): a mixin of ``daemon.Daemon``.

A claimed job is skipped (already finished), left waiting (another live daemon holds its
lease) or submitted: a new small job (``ImportJob.small``) in a bundle with the poll's other
small jobs (``worker.run_bundle``: one worker call, statement and commit per bundle), any
other job alone (``worker.run_job``). Either way each job's slot gets its own future.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures.process import BrokenProcessPool
from typing import TYPE_CHECKING

from nodes_import import bundle as bundles
from nodes_import import jobrows, status
from nodes_import.config import Config
from nodes_import.jobs import ImportJob
from nodes_import.pool import WorkerPool
from nodes_import.window import RUNNING, WAITING, Heartbeat, Slot

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
        assert slot.job is not None and self.pool is not None and self.heartbeat is not None
        self.heartbeat.hold(slot.job.job_id)  # claimed: ours until done or dropped
        try:
            slot.future = self.pool.submit(slot.job, self.cfg.imports)
        except BrokenProcessPool as exc:
            self.pool.replace("the pool broke before a submission")
            slot.state = WAITING
            self._later(slot, "cannot submit the job; retrying", exc)
            return
        slot.state, slot.generation = RUNNING, self.pool.generation
        self.running[slot.job.job_id] = slot
        log.info("job submitted", extra={"fields": {**slot.ctx(), "inFlight": len(self.slots),
                                                     "attempt": slot.crashes + 1}})

    def _submit_bundles(self, slots: list[Slot]) -> None:
        """New small jobs as bundles (``worker.run_bundle``): one worker call, statement and
        commit per bundle instead of per job. As many bundles as workers, so that a burst
        keeps every worker busy; a job that crashed a worker is never bundled again."""
        assert self.pool is not None and self.heartbeat is not None
        if not slots:
            return
        small: list[ImportJob] = []
        for slot in slots:
            assert slot.job is not None  # _start only passes slots with a job
            small.append(slot.job)
        for positions in bundles.split(small, self.cfg.executor.max_pool_size):
            bundle, jobs = [slots[n] for n in positions], [small[n] for n in positions]
            for job in jobs:
                self.heartbeat.hold(job.job_id)
            try:
                futures = self.pool.submit_bundle(jobs, self.cfg.imports)
            except BrokenProcessPool as exc:
                self.pool.replace("the pool broke before a submission")
                for slot in bundle:
                    slot.state = WAITING
                    self._later(slot, "cannot submit the job; retrying", exc)
                continue
            for slot, future in zip(bundle, futures, strict=True):
                assert slot.job is not None
                slot.future, slot.state = future, RUNNING
                slot.generation = self.pool.generation
                self.running[slot.job.job_id] = slot
                log.info("job submitted", extra={"fields": {
                    **slot.ctx(), "inFlight": len(self.slots), "bundle": len(bundle)}})
