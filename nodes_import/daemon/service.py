"""The daemon (parent side): signals, the process pool, the in-flight window, the stop order.

One ``Daemon`` per process. Its main thread owns the Kafka consumer, the producer and
a small database pool; jobs run on worker processes (``pool.WorkerPool``).

One message's life:
1. polled; a value that is not a valid NodeExchange is dead-lettered (stage parse or
   validate) and done;
2. its job row is created (PENDING, idempotent) and claimed: a COMPLETED/FAILED job is
   skipped (a redelivery), a job whose lease another live daemon holds waits;
3. the job goes to a worker; the slot stays in the in-flight window until then;
4. COMPLETED is done; FAILED is dead-lettered (stage import), then done; a worker that
   died has its pool replaced and the job retried (it resumes from its checkpoint);
5. done offsets are committed: per partition, up to the first message not yet done.

The window holds ``queue-capacity`` messages. When it is full, ``pause`` pauses the
assigned partitions (polling goes on, so the daemon stays in its group) and ``reject``
FAILs the new job with "System overloaded" and dead-letters it (stage backpressure).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, wait
from contextlib import contextmanager
from typing import Any

from psycopg_pool import ConnectionPool

from nodes_import import errors, metrics, status, worker
from nodes_import.config import Config
from nodes_import.daemon.admin import Operations
from nodes_import.daemon.admission import Admission
from nodes_import.daemon.endings import OVERLOADED, JobEndings
from nodes_import.daemon.pool import WorkerPool
from nodes_import.daemon.stoporder import POLL_S, OffsetsAndStop
from nodes_import.daemon.submission import JobSubmission
from nodes_import.daemon.window import DEAD_LETTER, REJECTING, RUNNING, WAITING, Heartbeat, Slot
from nodes_import.jobs import ImportJob, derived_job_id
from nodes_import.kafka import deadletter as dl
from nodes_import.kafka import payload
from nodes_import.kafka.consumer import (
    TP,
    Delivery,
    JobConsumer,
    OffsetTracker,
    Publisher,
    client_settings,
)
from nodes_import.store import connection, jobrows

log = logging.getLogger(__name__)

RETRY_MAX_S = 5.0  # longest wait before trying a job again after a database error
LAG_EVERY_S = 10.0  # consumer lag is read this often (one OffsetFetch round trip)
# How long the main loop waits for a pooled connection: it must go on polling (and
# reaping) while the database is away, and the breaker needs the failure quickly.
DB_WAIT_S = 2.0
# Messages taken per poll at most: their jobs are created and claimed in one transaction
# (one commit instead of one per message when a burst arrives).
INTAKE_MAX = 50


class Daemon(JobEndings, JobSubmission, OffsetsAndStop):
    """Consumes job messages and runs them on worker processes until asked to stop.

    Taking messages and starting jobs are here; handing claimed jobs to the workers is
    ``submission.JobSubmission``; ending jobs is ``endings.JobEndings``;
    commits, rebalances and the stop order are ``stoporder.OffsetsAndStop``.
    """

    def __init__(self, cfg: Config, *, log_level: str = "INFO") -> None:
        if not cfg.database.dsn or not cfg.kafka.bootstrap_servers:
            raise errors.ConfigError("the daemon needs a DSN and bootstrap servers "
                              "(cli.local.local_services provides local ones)")
        self.cfg, self.log_level = cfg, log_level
        self.dsn, self.bootstrap = cfg.database.dsn, cfg.kafka.bootstrap_servers
        self.owner = dl.instance_name()
        self.capacity = cfg.executor.queue_capacity
        self.reject_mode = cfg.executor.backpressure == "reject"
        self.admission = Admission(cfg.executor, dsn=self.dsn,
                                   probe_timeout_s=cfg.database.connect_timeout_ms / 1000.0)
        self.slots: list[Slot] = []
        self.running: dict[str, Slot] = {}
        self.tracker = OffsetTracker()
        self.stopping = threading.Event()
        self.ready = threading.Event()  # set once subscribed (tests and demo wait on it)
        self._last_commit = 0.0
        self.db: ConnectionPool | None = None
        self.consumer: JobConsumer | None = None
        self.publisher: Publisher | None = None
        self.dead: dl.DeadLetterWriter | None = None
        self.pool: WorkerPool | None = None
        self.heartbeat: Heartbeat | None = None
        self.lag: dict[TP, int] = {}  # read by the admin thread at scrape time
        self._last_lag = 0.0
        self.ops = Operations(cfg.operations, owner=self.owner, readiness=self.readiness,
                              scrape=self.scrape)

    # ----------------------------------------------------------------- lifecycle

    def request_stop(self) -> None:
        """Ask the main loop to stop (thread- and signal-safe)."""
        self.stopping.set()

    def run(self) -> None:
        """Open, consume until ``request_stop``, then drain and close in order."""
        try:
            self._open()
            self.ready.set()
            while not self.stopping.is_set():
                self._step()
            self._drain()
        finally:
            self._close()

    def _open(self) -> None:
        """0. admin API  1. database  2. Kafka (fails fast)  3. worker processes
        4. heartbeat, subscribe, housekeeping."""
        cfg = self.cfg
        # 0. first, so a taken port fails start-up at once and /healthz answers early
        self.ops.start()
        metrics.prepare()  # not inside the first message's latency
        # 1.
        self.db = connection.open_pool(self.dsn, max_size=2,
                                    timeout_s=cfg.database.connect_timeout_ms / 1000.0)
        with self.db.connection() as conn:
            connection.init_schema(conn)
        # 2.
        self.consumer = JobConsumer(
            client_settings(cfg.kafka, "consumer", bootstrap=self.bootstrap),
            cfg.kafka.topic_pattern, on_assign=self._assigned, on_revoke=self._revoked)
        self.consumer.open(cfg.kafka.startup_timeout_ms / 1000.0)
        self.publisher = Publisher(client_settings(cfg.kafka, "producer",
                                                   bootstrap=self.bootstrap))
        self.dead = dl.DeadLetterWriter(self.publisher, cfg.kafka.dlq_topic, cfg.kafka.group_id)
        # 3.
        self.pool = WorkerPool(
            worker.WorkerSettings(
                dsn=self.dsn, pool_size=cfg.imports.max_parallel_futures + 1,
                connect_timeout_s=cfg.database.connect_timeout_ms / 1000.0,
                log_level=self.log_level, group_label=cfg.operations.group_label,
                domain_label=cfg.operations.domain_label),
            max_workers=cfg.executor.max_pool_size, core=cfg.executor.core_pool_size,
            start_method=cfg.executor.start_method)
        self.pool.start()
        # 4.
        self.heartbeat = Heartbeat(self.db, self.owner, cfg.executor.heartbeat_interval_ms / 1e3)
        self.heartbeat.start()
        self.ops.attach(self.dsn, cfg.database.connect_timeout_ms / 1000.0)
        log.info("daemon started", extra={"fields": {
            "instance": self.owner, "workers": cfg.executor.max_pool_size,
            "queueCapacity": self.capacity, "backpressure": cfg.executor.backpressure,
            "bootstrapServers": self.bootstrap, "dlq": cfg.kafka.dlq_topic}})

    def _step(self) -> None:
        assert self.consumer is not None
        self._reap()
        if self.admission.check_database():
            self._reopen_db()
        self._retry_waiting()
        self.admission.steer(self.consumer, len(self.slots))
        if self.admission.holding(len(self.slots)) and not self.consumer.paused:
            self._wait_for_room()  # full, not paused yet (admission.PAUSE_AFTER_S)
        else:
            # In pause mode never take more than the window has room for.
            room = INTAKE_MAX if self.reject_mode else self.capacity - len(self.slots)
            deliveries = self.consumer.poll_many(max(1, min(INTAKE_MAX, room)), POLL_S)
            self._start([slot for d in deliveries if (slot := self._take(d)) is not None])
        self._commit()
        if time.monotonic() - self._last_lag >= LAG_EVERY_S:
            self._last_lag = time.monotonic()
            self.lag = self.consumer.lag()

    def _wait_for_room(self) -> None:
        """Until a running job ends (or ``POLL_S``): the next step reaps it at once."""
        futures = [s.future for s in self.running.values() if s.future is not None]
        if futures:
            wait(futures, timeout=POLL_S, return_when=FIRST_COMPLETED)
        else:
            self.stopping.wait(POLL_S)

    # --------------------------------------------------------------- taking messages

    def _take(self, delivery: Delivery) -> Slot | None:
        """Into the window; the slot if its job is to be started now (``_start``)."""
        metrics.message_received(delivery.topic)
        self.tracker.add(delivery.tp, delivery.offset)
        slot = Slot(delivery)
        try:
            request = payload.parse(delivery.value,
                                    max_reference_ids=self.cfg.imports.max_reference_ids,
                                    max_message_bytes=self.cfg.kafka.max_message_bytes)
        except payload.MessageRejected as exc:
            self._dead_letter(slot, dl.Failure(exc.stage, str(exc), errors.type_name(exc)))
            return None
        slot.job = ImportJob(
            job_id=request.job_id or derived_job_id(delivery.topic, delivery.partition,
                                                    delivery.offset),
            group_id=request.group_id, domain_id=request.domain_id,
            node_type=request.node_type or self.cfg.imports.default_node_type,
            source=request.file, reference_ids=request.reference_ids, claimed_by=self.owner,
            reference_ids_file=request.reference_ids_file,
            fail_on_outage=False)  # an outage leaves it PROCESSING: resumed after the breaker
        full = len(self.slots) >= self.capacity
        self.slots.append(slot)
        if not self.admission.allows_jobs:
            return None  # waits in the window until the database answers again
        if full and self.reject_mode:
            slot.state = REJECTING
            self._reject(slot)
            return None
        return slot

    def _start(self, slots: list[Slot]) -> None:
        """Create and claim the slots' jobs (one transaction for all), then submit each
        (or let it wait, or skip it)."""
        assert self.db is not None
        ready: list[Slot] = []
        for slot in slots:
            job = slot.job
            assert job is not None
            # A redelivery of a job already in this window waits for the first copy to leave.
            first = next(s for s in self.slots
                         if s.job is not None and s.job.job_id == job.job_id)
            if first is not slot:
                slot.not_before = time.monotonic() + 0.2
            else:
                ready.append(slot)
        if not ready:
            return
        try:
            with self._conn() as conn:
                claims = jobrows.create_and_claim(
                    conn, [jobrows.NewJob(s.job.job_id, s.job.group_id, s.job.domain_id,
                                          s.job.node_type, s.job.source_label)
                           for s in ready if s.job is not None],
                    owner=self.owner, lease_ms=self.cfg.executor.lease_timeout_ms)
        except (errors.StorageError, OSError) as exc:
            for n, slot in enumerate(ready):  # one outage counts once towards the breaker
                self._later(slot, "cannot start the job; retrying", exc, count=n == 0)
            return
        self.admission.database_ok()
        small: list[Slot] = []
        for slot, claim in zip(ready, claims, strict=True):
            if claim.outcome == jobrows.CLAIMED and claim.status == status.PENDING \
                    and slot.job is not None and slot.job.small and slot.crashes == 0:
                small.append(slot)  # new small jobs go to workers in bundles
            else:
                self._claimed(slot, claim)
        self._submit_bundles(small)

    def _reject(self, slot: Slot) -> None:
        """Backpressure ``reject``: FAIL the job as overloaded and dead-letter it."""
        job = slot.job
        assert job is not None and self.db is not None
        try:
            with self._conn() as conn:
                row = jobrows.create_job(conn, job_id=job.job_id, group_id=job.group_id,
                                         domain_id=job.domain_id, node_type=job.node_type,
                                         source=job.source_label)
                if row["status"] in status.TERMINAL:
                    self._done(slot)
                    return
                row = jobrows.finish_job(conn, job_id=job.job_id, status=status.FAILED,
                                         error=OVERLOADED) or row
        except (errors.StorageError, OSError) as exc:
            self._later(slot, "cannot record the rejected job; retrying", exc)
            return
        log.warning("job rejected: window full", extra={"fields": {
            **slot.ctx(), "inFlight": len(self.slots), "capacity": self.capacity}})
        self._dead_letter(slot, dl.Failure(dl.STAGE_BACKPRESSURE, OVERLOADED, errors.type_name(
            errors.OverloadedError()), job_id=job.job_id, counts=dl.counts_of(row)))

    def _later(self, slot: Slot, message: str, exc: BaseException, *,
               count: bool = True) -> None:
        if count:
            self.admission.database_failed(exc)  # only outages count towards the breaker
        slot.failures += 1
        delay = min(RETRY_MAX_S, 0.25 * 2 ** min(slot.failures, 5))
        slot.not_before = time.monotonic() + delay
        log.warning(message, extra={"fields": {**slot.ctx(), "error": str(exc),
                                               "retryInS": delay}})

    def _retry_waiting(self) -> None:
        now = time.monotonic()
        for slot in [s for s in self.slots if s.state != RUNNING and s.not_before <= now]:
            if not self.admission.allows_jobs and slot.state != DEAD_LETTER:
                continue  # the breaker is open: only Kafka work goes on
            if slot.state == WAITING:
                self._start([slot])
            elif slot.state == REJECTING:
                self._reject(slot)
            elif slot.state == DEAD_LETTER and slot.failure is not None:
                self._dead_letter(slot, slot.failure)

    # ------------------------------------------------------------ the database

    def _reopen_db(self) -> None:
        """After an outage, a fresh pool: the old one may wait out psycopg_pool's reconnect
        backoff (seconds, doubling while the database was away) before it connects."""
        try:
            fresh = connection.open_pool(self.dsn, max_size=2,
                                      timeout_s=self.cfg.database.connect_timeout_ms / 1e3)
        except errors.StorageError as exc:  # gone again: the old pool goes on trying
            self.admission.database_failed(exc)
            return
        old, self.db = self.db, fresh
        if self.heartbeat is not None:
            self.heartbeat.pool = fresh
        if old is not None:
            old.close(timeout=1.0)

    @contextmanager
    def _conn(self) -> Iterator[Any]:
        """A pooled connection for the main loop, waited for at most ``DB_WAIT_S``; a pool
        timeout becomes a ``TransientStorageError`` like any other outage."""
        assert self.db is not None
        with connection.wrapped(), self.db.connection(timeout=DB_WAIT_S) as conn:
            yield conn

    # ------------------------------------------------------------ operations hooks

    def readiness(self) -> str | None:
        """The admin API's readiness hook (admin thread): None when ready, else why not."""
        if self.stopping.is_set():
            return "stopping: draining in-flight jobs"
        if not self.ready.is_set():
            return "starting: not subscribed to Kafka yet"
        return self.admission.readiness()

    def scrape(self, snap: metrics.Scrape) -> None:
        """Scrape-time gauges of the window, the pool and the consumer (admin thread).

        Reads copies only: the main thread keeps changing these structures.
        """
        futures = [s.future for s in list(self.running.values()) if s.future is not None]
        calls, jobs = self.pool.running(futures) if self.pool is not None else (0, 0)
        busy = min(calls, self.cfg.executor.max_pool_size)  # capped: see WorkerPool.running
        in_flight = len(self.slots)
        snap.gauges.update({
            "executor_active_threads": busy,
            "executor_queue_size": max(0, in_flight - jobs),  # a bundle's jobs all run
            "executor_max_workers": self.cfg.executor.max_pool_size,
            "node_import_jobs_in_flight": in_flight,
            "kafka_consumer_paused": int(self.consumer is not None and self.consumer.paused),
            "node_import_db_circuit_state": self.admission.gauge(),
        })
        snap.lag.update(dict(self.lag))




# ------------------------------------------------------------------ the foreground service


def install_signal_handlers(daemon: Daemon) -> None:
    """SIGTERM/SIGINT: stop in order. A second one: exit at once (jobs resume next start)."""

    def handle(signum: int, _frame: Any) -> None:
        if daemon.stopping.is_set():
            log.warning("second signal: exiting now", extra={"fields": {"signal": signum}})
            os._exit(128 + signum)  # workers die with us (PDEATHSIG); leases expire
        log.info("signal received: stopping", extra={"fields": {"signal": signum}})
        daemon.request_stop()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)


def serve(cfg: Config, *, log_level: str = "INFO") -> None:
    """``nodes-import run``: the daemon in the foreground until SIGTERM/SIGINT."""
    # Before any metric exists: the workers inherit the directory through the environment.
    metrics_dir = metrics.setup_multiprocess(cfg.operations.multiproc_dir)
    try:
        daemon = Daemon(cfg, log_level=log_level)
        install_signal_handlers(daemon)
        daemon.run()
    finally:
        metrics.cleanup_multiprocess(metrics_dir)
