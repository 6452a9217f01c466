"""The daemon (parent side): the main loop, the offsets, signals and the stop order.

One ``Daemon`` per process. Its main thread owns the Kafka consumer, the producer and
a small database pool (``database.MainDatabase``); jobs run on worker processes
(``pool.WorkerPool``, driven by ``dispatch.Dispatcher``).

One message's life:
1. polled; a value that is not a valid NodeExchange is dead-lettered (stage parse or
   validate) and done (``intake.Intake``);
2. its job row is created (PENDING, idempotent) and claimed: a COMPLETED/FAILED job is
   skipped (a redelivery), a job whose lease another live daemon holds waits;
3. the job waits for a worker of its lane (``lanes.py``: small jobs never wait behind
   large ones), then goes to it; the slot stays in the in-flight window
   (``window.Window``) until the job is done;
4. COMPLETED is done; FAILED is dead-lettered (stage import), then done; a worker that
   died has its pool replaced and the job retried (it resumes from its checkpoint):
   ``decisions.decide`` says which, ``endings.Endings`` does it;
5. done offsets are committed: per partition, up to the first message not yet done.

The window holds ``queue-capacity`` messages. When it is full, ``pause`` pauses the
assigned partitions (polling goes on, so the daemon stays in its group) and ``reject``
FAILs the new job with "System overloaded" and dead-letters it (stage backpressure).

The stop order: 1. stop polling (pause; polling goes on only to keep the group
informed)  2. running jobs checkpoint, bounded by the drain timeout  3. commit
4. shut the pool (killing workers past the timeout)  5. release the leases, close the
consumer, the producer, the database pool and the admin API.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from concurrent.futures import FIRST_COMPLETED, wait
from typing import Any

from nodes_import import errors, metrics, worker
from nodes_import.config import Config
from nodes_import.daemon.admin import Operations
from nodes_import.daemon.admission import Admission
from nodes_import.daemon.database import MainDatabase
from nodes_import.daemon.dispatch import Dispatcher
from nodes_import.daemon.endings import Endings
from nodes_import.daemon.intake import Intake
from nodes_import.daemon.pool import WorkerPool
from nodes_import.daemon.window import DEAD_LETTER, Heartbeat, Window
from nodes_import.kafka import deadletter as dl
from nodes_import.kafka.clients import client_settings
from nodes_import.kafka.consumer import JobConsumer
from nodes_import.kafka.offsets import TP
from nodes_import.kafka.producer import Publisher
from nodes_import.store import connection, jobrows

log = logging.getLogger("nodes_import.daemon")  # one logger for all the daemon's lines

POLL_S = 0.05  # poll timeout: also how quickly finished jobs are noticed
COMMIT_EVERY_S = 0.2  # commits are batched at most this often (and forced on revoke/stop)
LAG_EVERY_S = 10.0  # consumer lag is read this often (one OffsetFetch round trip)
# Messages taken per poll at most: their jobs are created and claimed in one transaction
# (one commit instead of one per message when a burst arrives).
INTAKE_MAX = 50


class Daemon:
    """Consumes job messages and runs them on worker processes until asked to stop.

    The main loop, the offsets and the stop order are here; the collaborators own the
    rest: ``Window`` the in-flight slots, offsets and leases; ``Intake`` taking messages
    and starting jobs; ``Dispatcher`` the worker pool; ``Endings`` ending slots (as
    ``decisions.decide`` says); ``Admission`` pause/resume and the database breaker.
    """

    def __init__(self, cfg: Config, *, log_level: str = "INFO") -> None:
        if not cfg.database.dsn or not cfg.kafka.bootstrap_servers:
            raise errors.ConfigError("the daemon needs a DSN and bootstrap servers "
                              "(cli.local.local_services provides local ones)")
        self.cfg, self.log_level = cfg, log_level
        self.dsn, self.bootstrap = cfg.database.dsn, cfg.kafka.bootstrap_servers
        self.owner = dl.instance_name()
        connect_timeout_s = cfg.database.connect_timeout_ms / 1000.0
        self.admission = Admission(cfg.executor, dsn=self.dsn, probe_timeout_s=connect_timeout_s)
        self.window = Window(cfg.executor.queue_capacity)
        self.db = MainDatabase(self.dsn, connect_timeout_s=connect_timeout_s)
        self.heartbeat = Heartbeat(self.window.leases, self.db, self.owner,
                                   cfg.executor.heartbeat_interval_ms / 1e3)
        self.stopping = threading.Event()
        self.ready = threading.Event()  # set once subscribed (tests and demo wait on it)
        self._last_commit = 0.0
        # Opened by ``_open``, in this order (``_close`` copes with any of them missing).
        self.consumer: JobConsumer | None = None
        self.publisher: Publisher | None = None
        self.dispatcher: Dispatcher | None = None
        self.endings: Endings | None = None
        self.intake: Intake | None = None
        self.lag: dict[TP, int] = {}  # read by the admin thread at scrape time
        self._last_lag = 0.0
        self.ops = Operations(cfg.operations, owner=self.owner, readiness=self.readiness,
                              scrape=self.scrape, lease_ms=cfg.executor.lease_timeout_ms)

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
        self.db.open()
        # 2.
        self.consumer = JobConsumer(
            client_settings(cfg.kafka, "consumer", bootstrap=self.bootstrap),
            cfg.kafka.topic_pattern, on_assign=self._assigned, on_revoke=self._revoked)
        self.consumer.open(cfg.kafka.startup_timeout_ms / 1000.0)
        self.publisher = Publisher(client_settings(cfg.kafka, "producer",
                                                   bootstrap=self.bootstrap))
        self.endings = Endings(
            self.window, self.admission, self.db,
            dl.DeadLetterWriter(self.publisher, cfg.kafka.dlq_topic, cfg.kafka.group_id),
            max_job_crashes=cfg.executor.max_job_crashes)
        # 3.
        pool = WorkerPool(
            worker.WorkerSettings(
                dsn=self.dsn, pool_size=cfg.imports.max_parallel_futures + 1,
                connect_timeout_s=cfg.database.connect_timeout_ms / 1000.0,
                log_level=self.log_level, group_label=cfg.operations.group_label,
                domain_label=cfg.operations.domain_label),
            max_workers=cfg.executor.max_pool_size, core=cfg.executor.core_pool_size,
            start_method=cfg.executor.start_method)
        self.dispatcher = Dispatcher(pool, self.window, cfg.imports,
                                     small_job_workers=cfg.executor.small_job_workers)
        pool.start()
        self.intake = Intake(cfg, owner=self.owner, window=self.window,
                             admission=self.admission, db=self.db, endings=self.endings,
                             dispatcher=self.dispatcher)
        # 4.
        self.heartbeat.start()
        self.ops.attach(self.dsn, cfg.database.connect_timeout_ms / 1000.0)
        log.info("daemon started", extra={"fields": {
            "instance": self.owner, "workers": cfg.executor.max_pool_size,
            "smallJobWorkers": cfg.executor.small_job_workers,
            "queueCapacity": self.window.capacity, "backpressure": cfg.executor.backpressure,
            "bootstrapServers": self.bootstrap, "dlq": cfg.kafka.dlq_topic}})

    def _step(self) -> None:
        """One turn of the main loop: reap, dispatch, probe, retry, steer, take, commit,
        lag."""
        assert self.consumer is not None and self.intake is not None
        self._reap()
        self.intake.dispatch()  # to the workers the reaped jobs freed
        if self.admission.check_database():
            self._reopen_db()
        self.intake.retry_waiting()
        in_flight = self.window.in_flight
        self.admission.steer(self.consumer, in_flight)
        if self.admission.holding(in_flight) and not self.consumer.paused:
            self._wait_for_room()  # full, not paused yet (admission.PAUSE_AFTER_S)
        else:
            # In pause mode never take more than the window has room for.
            room = INTAKE_MAX if self.admission.reject_mode else self.window.capacity - in_flight
            deliveries = self.consumer.poll_many(max(1, min(INTAKE_MAX, room)), POLL_S)
            self.intake.start([slot for d in deliveries
                               if (slot := self.intake.take(d)) is not None])
        self._commit()
        if time.monotonic() - self._last_lag >= LAG_EVERY_S:
            self._last_lag = time.monotonic()
            self.lag = self.consumer.lag()

    def _reap(self) -> None:
        """End the slots whose futures are done (``decisions.decide``, then ``Endings``)."""
        assert self.dispatcher is not None and self.endings is not None
        for slot in self.window.finished():
            result = self.dispatcher.collect(slot, stopping=self.stopping.is_set())
            self.endings.end(slot, result, stopping=self.stopping.is_set())

    def _wait_for_room(self) -> None:
        """Until a running job ends (or ``POLL_S``): the next step reaps it at once."""
        futures = self.window.futures()
        if futures:
            wait(futures, timeout=POLL_S, return_when=FIRST_COMPLETED)
        else:
            self.stopping.wait(POLL_S)

    def _reopen_db(self) -> None:
        """After an outage, fresh pools (``MainDatabase.reopen``, ``Operations.reopen``)."""
        try:
            self.db.reopen()
            self.ops.reopen()
        except errors.StorageError as exc:  # gone again: the old pools go on trying
            self.admission.database_failed(exc)

    # ------------------------------------------------------------------ offsets

    def _commit(self, *, force: bool = False, tps: list[TP] | None = None) -> None:
        """Commit the done positions, at most every ``COMMIT_EVERY_S`` unless ``force``."""
        now = time.monotonic()
        if not force and now - self._last_commit < COMMIT_EVERY_S:
            return
        tracker = self.window.tracker
        positions = tracker.to_commit(tps)
        if positions and self.consumer is not None and self.consumer.commit(positions):
            tracker.committed(positions)
        self._last_commit = now

    def _assigned(self, tps: list[TP]) -> None:
        pass  # new partitions start at their committed offsets: nothing to set up

    def _revoked(self, tps: list[TP]) -> None:
        """Commit what is done; drop waiting work of these partitions (running jobs go on)."""
        self._commit(force=True, tps=tps)
        self.window.revoke(tps)
        gone = set(tps)
        self.lag = {tp: n for tp, n in self.lag.items() if tp not in gone}

    # ------------------------------------------------------------------ stopping

    def _drain(self) -> None:
        """1. stop polling  2. running jobs checkpoint (bounded by the drain timeout)
        3. commit."""
        assert self.consumer is not None and self.endings is not None
        assert self.dispatcher is not None
        started = time.monotonic()
        deadline = started + self.cfg.executor.drain_timeout_ms / 1000.0
        self.consumer.pause()  # 1. polling goes on only to keep the group informed
        for slot in self.window.idle() + self.window.queued():  # queued: resume next start
            if slot.state == DEAD_LETTER and slot.failure is not None:
                self.endings.dead_letter(slot, slot.failure)  # one last try, or it comes back
            self.window.drop(slot)
        self.dispatcher.pool.stop_jobs()  # 2.
        log.info("stopping: draining in-flight jobs", extra={"fields": {
            "running": len(self.window.running),
            "drainTimeoutMs": self.cfg.executor.drain_timeout_ms}})
        while self.window.running and time.monotonic() < deadline:
            self._reap()
            self.consumer.poll(POLL_S)  # a message polled now is not taken: it comes back
            self._commit()
        self._commit(force=True)  # 3.
        log.info("drained", extra={"fields": {
            "jobsLeft": len(self.window.running),
            "durationS": round(time.monotonic() - started, 2)}})

    def _close(self) -> None:
        """4. shut the pool  5. release leases, close the consumer, the producer, the db,
        the admin API."""
        if self.dispatcher is not None:  # jobs still running are past the drain timeout
            self.dispatcher.pool.shutdown(kill=bool(self.window.running))
        self.heartbeat.stopped.set()
        if self.db.opened:
            try:  # wrapped: a pool timeout (the database away) must not end the stop order
                with connection.wrapped(), self.db.pool.connection() as conn:
                    jobrows.release_leases(conn, owner=self.owner)
            except (errors.StorageError, OSError) as exc:
                log.warning("cannot release leases", extra={"fields": {"error": str(exc)}})
        if self.consumer is not None:
            self.consumer.close()
        if self.publisher is not None:
            self.publisher.close()
        self.db.close()
        self.ops.close()
        log.info("daemon stopped", extra={"fields": {"instance": self.owner}})

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
        calls, jobs = self.dispatcher.busy() if self.dispatcher is not None else (0, 0)
        busy = min(calls, self.cfg.executor.max_pool_size)  # capped: see WorkerPool.running
        in_flight = self.window.in_flight
        snap.gauges.update({
            "node_import_executor_active_threads": busy,
            "node_import_executor_queue_size": max(0, in_flight - jobs),  # a bundle's jobs all run
            "node_import_executor_max_workers": self.cfg.executor.max_pool_size,
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
