"""Taking messages into the window and starting their jobs (parent side).

1. ``take``: a polled message gets a slot; a value that is not a valid NodeExchange is
   dead-lettered (stage parse or validate) and done; a message beyond a full window in
   backpressure ``reject`` mode is rejected; while the breaker is open it waits.
2. ``start``: the jobs of a poll are created (PENDING, idempotent) and claimed in one
   transaction; a redelivery of a job already in the window waits for the first copy.
3. each claim is acted on: a COMPLETED/FAILED job is skipped (a FAILED one dead-lettered
   again), a job whose lease another live daemon holds waits, the others are queued for
   a worker of their lane (new small jobs may go in bundles);
4. ``dispatch``: the queued jobs the lanes have room for go to the workers.
``retry_waiting`` takes up the slots whose retry time has come.
"""

from __future__ import annotations

import logging
import time

from nodes_import import errors, metrics, status
from nodes_import.config import Config
from nodes_import.daemon.admission import Admission
from nodes_import.daemon.database import MainDatabase
from nodes_import.daemon.dispatch import Dispatcher, Unsent
from nodes_import.daemon.endings import Endings
from nodes_import.daemon.window import DEAD_LETTER, REJECTING, WAITING, Slot, Window
from nodes_import.jobs import ImportJob, derived_job_id
from nodes_import.kafka import deadletter as dl
from nodes_import.kafka import payload
from nodes_import.kafka.offsets import Delivery
from nodes_import.store import jobrows

log = logging.getLogger("nodes_import.daemon")  # one logger for the daemon's job events

REDELIVERY_WAIT_S = 0.2  # a second copy of a job in the window checks this often


class Intake:
    """From polled messages to started jobs, through the window."""

    def __init__(self, cfg: Config, *, owner: str, window: Window, admission: Admission,
                 db: MainDatabase, endings: Endings, dispatcher: Dispatcher) -> None:
        self.cfg, self.owner = cfg, owner
        self.window, self.admission, self.db = window, admission, db
        self.endings, self.dispatcher = endings, dispatcher

    def take(self, delivery: Delivery) -> Slot | None:
        """1. Into the window; the slot if its job is to be started now (``start``)."""
        metrics.message_received(delivery.topic)
        slot = self.window.track(delivery)
        try:
            request = payload.parse(delivery.value,
                                    max_reference_ids=self.cfg.imports.max_reference_ids,
                                    max_message_bytes=self.cfg.kafka.max_message_bytes)
        except payload.MessageRejected as exc:
            self.endings.dead_letter(slot, dl.Failure(exc.stage, str(exc),
                                                      errors.type_name(exc)))
            return None
        slot.job = ImportJob(
            job_id=request.job_id or derived_job_id(delivery.topic, delivery.partition,
                                                    delivery.offset),
            group_id=request.group_id, domain_id=request.domain_id,
            node_type=request.node_type or self.cfg.imports.default_node_type,
            source=request.file, reference_ids=request.reference_ids, claimed_by=self.owner,
            reference_ids_file=request.reference_ids_file,
            fail_on_outage=False)  # an outage leaves it PROCESSING: resumed after the breaker
        full = self.window.full
        self.window.admit(slot)
        if not self.admission.allows_jobs:
            return None  # waits in the window until the database answers again
        if full and self.admission.reject_mode:
            slot.state = REJECTING
            self.endings.reject(slot)
            return None
        return slot

    def start(self, slots: list[Slot]) -> None:
        """2. Create and claim the slots' jobs (one transaction for all), then 3. queue
        each (or let it wait, or skip it), then 4. dispatch."""
        ready: list[Slot] = []
        for slot in slots:
            assert slot.job is not None
            # A redelivery of a job already in this window waits for the first copy to leave.
            if self.window.first_copy(slot.job.job_id) is not slot:
                slot.not_before = time.monotonic() + REDELIVERY_WAIT_S
            else:
                ready.append(slot)
        if not ready:
            return
        try:
            with self.db.conn() as conn:
                claims = jobrows.create_and_claim(
                    conn, [s.job for s in ready if s.job is not None],
                    owner=self.owner, lease_ms=self.cfg.executor.lease_timeout_ms)
        except (errors.StorageError, OSError) as exc:
            for n, slot in enumerate(ready):  # one outage counts once towards the breaker
                self.endings.retry_later(slot, "cannot start the job; retrying", exc,
                                         count=n == 0)
            return
        self.admission.database_ok()
        for slot, claim in zip(ready, claims, strict=True):
            self._claimed(slot, claim)
        self.dispatch()

    def _claimed(self, slot: Slot, claim: jobrows.Claim) -> None:
        """3. Act on the claim of a slot's job: skip it, wait for its lease, or queue it
        (a new small job that never crashed a worker may go in a bundle)."""
        if claim.outcome == jobrows.FINISHED:
            log.info("job already finished; skipped", extra={"fields": {
                **slot.ctx(), "status": claim.status, "ranBy": claim.holder}})
            if claim.status == status.FAILED:
                self.endings.dead_letter_again(slot)
            else:
                self.window.done(slot)
        elif claim.outcome == jobrows.HELD:
            if slot.waiting_for != claim.holder:
                log.info("job leased by another daemon; waiting", extra={"fields": {
                    **slot.ctx(), "holder": claim.holder,
                    "heartbeatAgeS": round(claim.heartbeat_age_s or 0.0, 1)}})
            slot.waiting_for = claim.holder
            slot.not_before = time.monotonic() + self.cfg.executor.heartbeat_interval_ms / 1e3
        else:
            self.dispatcher.queue(slot, bundle=claim.status == status.PENDING
                                  and slot.job is not None and slot.job.small
                                  and slot.crashes == 0)

    def dispatch(self) -> None:
        """4. Start the queued jobs the workers have room for (none while the breaker is
        open: they would only meet the outage)."""
        if self.admission.allows_jobs:
            self._unsent(self.dispatcher.pump())

    def _unsent(self, unsent: Unsent) -> None:
        """Jobs the broken pool did not take: they wait for a retry on its replacement."""
        for slot, exc in unsent:
            slot.state = WAITING
            self.endings.retry_later(slot, "cannot submit the job; retrying", exc)

    def retry_waiting(self) -> None:
        """Take up the slots whose retry time has come (only dead letters while the
        breaker is open: Kafka work goes on, nothing touches the database)."""
        for slot in self.window.due(time.monotonic()):
            if not self.admission.allows_jobs and slot.state != DEAD_LETTER:
                continue  # the breaker is open: only Kafka work goes on
            if slot.state == WAITING:
                self.start([slot])
            elif slot.state == REJECTING:
                self.endings.reject(slot)
            elif slot.state == DEAD_LETTER and slot.failure is not None:
                self.endings.dead_letter(slot, slot.failure)
